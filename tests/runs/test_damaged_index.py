"""A run's index line whose fields are damaged (cells of another grid, a box out of order, a text where numbers
belong, a shard outside the folder) is refused, when the field is read, with one InputError line naming the
file, the line, the record and the field: `load_run`'s records gave the value as it was (`r.cells` a Cells of 7
columns for an 8-column map, drawn wrong by overlays and `dcam view`), or a raw traceback. A good run reads back
exactly what was written."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import dcam
from dcam.cli import main
from dcam.errors import InputError
from dcam.testing.support import file_tree

# 36-px tiles of 8-px patches on a 72-px image (tests/runs/test_view_cells.py): the centres of 8 stitched cells
CENTRES = [(36 * (f // 4) + 8 * (f % 4) + 4) / 72 for f in range(8)]
BOX = [0.0, 0.0, 68 / 72, 68 / 72]
SMALL = [0.125, 0.375, 0.625, 0.875]  # the base view's 4 cells, evenly over the whole image


def _entry(**changes):
    """An index line of a --view all record (one word; the highres view's maps stitched, the base view's even)."""
    entry = {"id": "r0", "n": 0, "where": "line 1", "image": None, "image_size": [72, 72], "prompt": None,
             "response": "circle", "tokens": ["circle"], "word_numbers": [0], "grid": [8, 8], "steps": 1,
             "stats": {"peak": [0.5], "degenerate": [False]}, "shard": "shards/a.safetensors", "key": "r000000",
             "part": "x", "maps_shape": [1, 8, 8], "box": BOX, "cells": {"x": CENTRES, "y": CENTRES},
             "view": "highres", "view_shapes": {"highres": [1, 8, 8], "base": [1, 4, 4]},
             "view_boxes": {"highres": BOX, "base": [0.0, 0.0, 1.0, 1.0]},
             "view_cells": {"highres": {"x": CENTRES, "y": CENTRES}}}
    entry.update(changes)
    return entry


def _run(folder, line):
    """A run folder holding one index line (``line``: its text) and the shard of the line of :func:`_entry`."""
    os.makedirs(os.path.join(folder, "shards"))
    save_file({"r000000": torch.rand(1, 8, 8), "r000000.view.highres": torch.rand(1, 8, 8),
               "r000000.view.base": torch.rand(1, 4, 4)}, os.path.join(folder, "shards", "a.safetensors"))
    with open(os.path.join(folder, "index.jsonl"), "w") as f:
        f.write(line + "\n")
    return folder


def _swapped(values, i):
    out = list(values)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


CELLS = "cells must be null or {x: 8 centres, y: 8 centres} inside the box, got "
BOX_WANT = "must be 4 finite numbers [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got "
#: (what is damaged, the line's changed fields, the record's attribute read, the message after the record's place)
DAMAGED = [
    ("cells: 7 columns on an 8-column grid", {"cells": {"x": CENTRES[:7], "y": CENTRES}}, "cells", CELLS),
    ("cells: texts", {"cells": {"x": ["a"] * 8, "y": CENTRES}}, "cells", CELLS),
    ("cells: NaN", {"cells": {"x": [float("nan")] + CENTRES[1:], "y": CENTRES}}, "cells", CELLS),
    ("cells: a row past the image", {"cells": {"x": CENTRES, "y": CENTRES[:7] + [1.5]}}, "cells", CELLS),
    ("cells: a column past the box", {"cells": {"x": CENTRES[:7] + [0.95], "y": CENTRES}}, "cells", CELLS),
    ("cells: not increasing", {"cells": {"x": _swapped(CENTRES, 2), "y": CENTRES}}, "cells", CELLS),
    ("cells: no y", {"cells": {"x": CENTRES}}, "cells", CELLS),
    ("cells: a list", {"cells": [CENTRES]}, "cells", CELLS),
    ("view_cells: 4 columns on the 8-column view", {"view_cells": {"highres": {"x": SMALL, "y": SMALL}}},
     "view_cells", "view_cells: highres must be null or {x: 8 centres, y: 8 centres} inside the box, got "),
    ("view_cells: a view without a box", {"view_cells": {"side": {"x": SMALL, "y": SMALL}}}, "view_cells",
     "view_cells must be cell centres of some of its boxed views (base, highres), got "),
    ("view_cells: a list", {"view_cells": [1]}, "view_cells",
     "view_cells must be cell centres of some of its boxed views (base, highres), got [1]"),
    ("view_boxes: out of order", {"view_boxes": {"highres": [0.5, 0, 0.2, 1], "base": [0, 0, 1, 1]}},
     "view_boxes", "view_boxes: highres " + BOX_WANT + "[0.5, 0, 0.2, 1]"),
    ("view_boxes: a view without maps", {"view_boxes": {"side": [0, 0, 1, 1]}}, "view_boxes",
     "view_boxes must be a box for some of its views (base, highres), got {'side': [0, 0, 1, 1]}"),
    ("view_shapes: not the shard's", {"view_shapes": {"highres": [1, 8, 8], "base": [1, 5, 5]}}, "view_maps",
     "by its view_shapes the maps are [1, 5, 5], but r000000.view.base in shards/a.safetensors is [1, 4, 4]"),
    ("box: out of order", {"box": [0.5, 0, 0.2, 1]}, "box", "box " + BOX_WANT + "[0.5, 0, 0.2, 1]"),
    ("box: three numbers, read for the cells", {"box": [0, 0, 1]}, "cells", "box " + BOX_WANT + "[0, 0, 1]"),
    ("grid: a text", {"grid": [8, "8"]}, "grid", "grid must be two positive whole numbers [h, w], got [8, '8']"),
    ("grid: read for the cells", {"grid": [8]}, "cells", "grid must be two positive whole numbers [h, w], got [8]"),
    ("grid: not the maps'", {"grid": [8, 9], "cells": None}, "maps",
     "by its tokens and grid the maps are [1, 8, 9], but r000000 in shards/a.safetensors is [1, 8, 8]"),
    ("tokens: a text", {"tokens": "circle"}, "tokens", "tokens must be a list of texts, got 'circle'"),
    ("tokens: two for one map", {"tokens": ["red", "circle"], "word_numbers": [0, 1]}, "maps",
     "by its tokens and grid the maps are [2, 8, 8], but r000000 in shards/a.safetensors is [1, 8, 8]"),
    ("word_numbers: two for one token", {"word_numbers": [0, 1]}, "word_numbers",
     "word_numbers must be one whole number per token (1), got [0, 1]"),
    ("word_numbers: a text", {"word_numbers": ["0"]}, "word_numbers",
     "word_numbers must be a list of whole numbers, got ['0']"),
    ("response: a number", {"response": 7}, "response", "response must be a text, got 7"),
    ("steps: a fraction", {"steps": 1.5}, "steps", "steps must be a whole number >= 1 or null, got 1.5"),
    ("steps: 0", {"steps": 0}, "steps", "steps must be a whole number >= 1 or null, got 0"),
    ("stats: a text", {"stats": {"peak": ["x"]}}, "stats",
     "stats must be an object of lists of numbers, true/false or nulls, one per token (1), got {'peak': ['x']}"),
    ("stats: two values for one token", {"stats": {"peak": [0.5, 0.5]}}, "stats",
     "stats must be an object of lists of numbers, true/false or nulls, one per token (1), got {'peak': [0.5, 0.5]}"),
    ("image_size: a text", {"image_size": [72, "72"]}, "image_size",
     "image_size must be two positive whole numbers [W, H], got [72, '72']"),
    ("image: a number", {"image": 3}, "image", "image must be a text or null, got 3"),
    ("notes: a text", {"notes": "note"}, "notes", "notes must be a list of texts, got 'note'"),
    ("view: a list", {"view": ["highres"]}, "view", "view must be a text or null, got ['highres']"),
    ("metrics: a list", {"metrics": [1]}, "metrics", "metrics must be an object or null, got [1]"),
    ("metrics: a text value", {"metrics": {"object": {"words": [0], "obj_iou": ["0.5"]}}}, "metrics",
     "metrics: object must be an object of lists of numbers or nulls (obj_iou, contrast, concentration, f3), got "
     "{'words': [0], 'obj_iou': ['0.5']}"),
    ("metrics: a count that is a text", {"metrics": {"unaligned": "2"}}, "metrics",
     "metrics: unaligned must be a whole number >= 0, got '2'"),
    ("metrics: a value list longer than its words",
     {"metrics": {"object": {"words": [0], "obj_iou": [0.5, 0.25], "contrast": [2.0], "concentration": [0.5],
                             "f3": [0.5]}, "words": ["circle"]}}, "metrics",
     "metrics: object: obj_iou must be one number or null per word of object.words (1), got [0.5, 0.25]"),
    ("metrics: a value list shorter than its words",
     {"metrics": {"function": {"words": [0], "func_iou": []}, "words": ["circle"]}}, "metrics",
     "metrics: function: func_iou must be one number or null per word of function.words (1), got []"),
    ("metrics: a word number past the record's words",
     {"metrics": {"object": {"words": [1], "obj_iou": [0.5]}, "words": ["circle"]}}, "metrics",
     "metrics: object: words must be numbers of the record's words (below 1), got [1]"),
    ("trajectory_shape: another record's", {"trajectory_shape": [2, 2, 8, 8]}, "trajectory",
     "trajectory_shape must be [S, 1, *grid] (S >= 1), got [2, 2, 8, 8]"),
    ("shard: outside the folder", {"shard": "../a.safetensors"}, "maps",
     "shard and key must be a file in shards/ and the text of its tensor, got ('../a.safetensors', 'r000000')"),
    ("shard: none", {"shard": None}, "maps",
     "shard and key must be a file in shards/ and the text of its tensor, got (None, 'r000000')"),
    ("key: not in the shard", {"key": "r000009"}, "maps", None),
]


@pytest.mark.parametrize("what, changes, attribute, message", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_field_is_one_line_naming_the_file_the_record_and_the_field(what, changes, attribute, message,
                                                                              tmp_path):
    folder = _run(str(tmp_path / "run"), json.dumps(_entry(**changes)))
    r = next(iter(dcam.load_run(folder)))  # read lazily: the line is taken, a field checked when it is read
    with pytest.raises(InputError) as info:
        value = getattr(r, attribute)
        value() if callable(value) else None
    text = str(info.value)
    place = f"run: {os.path.join(folder, 'index.jsonl')} line 1, record 'r0': "
    if message is None:  # (the key: named with the shard's path)
        message = f"key 'r000009' is not a tensor of the shard {os.path.join(folder, 'shards', 'a.safetensors')}"
    assert "\n" not in text and text.startswith(place + message), text
    assert len(text) < 300  # (the damaged value is shown cut: a line, not the whole list)


def test_the_stats_as_lists_are_checked_too(tmp_path):
    folder = _run(str(tmp_path / "run"), json.dumps(_entry(stats={"peak": "high"})))
    with pytest.raises(InputError, match=r"record 'r0': stats must be an object of lists"):
        next(iter(dcam.load_run(folder))).stats_lists()


@pytest.mark.parametrize("line, message", [
    ('{"id": 5, "tokens": []}', "line 1: id must be a text, got 5"),
    ('{"tokens": []}', "line 1: id must be a text, got None"),
    ('["r0"]', "line 1 is corrupt (a JSON list, not a record's object)"),
])
def test_an_index_line_that_is_no_record_is_refused_as_it_is_read(line, message, tmp_path):
    # an int id passed as it was (r.id 5; `dcam view`'s page said "5"), a line without one was a KeyError
    # (`len(run)`, `dcam run`'s resume), a list line an AttributeError
    folder = _run(str(tmp_path / "run"), line)
    with pytest.raises(InputError) as info:
        list(dcam.load_run(folder))
    assert str(info.value) == f"run: {os.path.join(folder, 'index.jsonl')} {message}"


@pytest.mark.parametrize("changes, message", [
    ({"cells": {"x": CENTRES[:7], "y": CENTRES}}, CELLS + "{'x': [0.05555555555555555, 0.16666666666666666, "
                                                         "0.277777777..."),
    ({"word_numbers": ["0"]}, "word_numbers must be a list of whole numbers, got ['0']"),  # (int('0') passed)
    ({"word_numbers": ["a"]}, "word_numbers must be a list of whole numbers, got ['a']"),  # (a ValueError)
    ({"image_size": [72, "x"]}, "image_size must be two positive whole numbers [W, H], got [72, 'x']"),
    ({"grid": [8, 8, 8]}, "grid must be two positive whole numbers [h, w], got [8, 8, 8]"),
], ids=["cells", "word_numbers-digits", "word_numbers-text", "image_size", "grid"])
def test_dcam_view_of_a_damaged_line_exits_2_naming_it_and_writes_no_page(changes, message, tmp_path, capsys):
    # the page drew 7 columns' centres over an 8-column map (or took the text "0" for word 0)
    folder = _run(str(tmp_path / "run"), json.dumps(_entry(**changes)))
    before = sorted(os.listdir(folder))
    capsys.readouterr()
    rc = main(["view", folder, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    index = os.path.join(folder, "index.jsonl")
    assert (rc, err) == (2, [f"dcam view: error: DIR: {index} line 1, record 'r0': {message}; the page was not "
                             "written"])
    assert sorted(os.listdir(folder)) == before  # no index.html, no view/, nothing half-written


def test_a_good_line_reads_every_field_as_written(tmp_path):
    # the checked values are the line's, as numbers of the same kind: compared with the line and shard as written
    folder = _run(str(tmp_path / "run"), json.dumps(_entry(metrics={"object": {"words": [0]}}, notes=["n"])))
    r = next(iter(dcam.load_run(folder)))
    assert r.cells == (tuple(CENTRES), tuple(CENTRES)) and r.box == tuple(BOX) and r.grid == (8, 8)
    assert r.view_cells == {"highres": (tuple(CENTRES), tuple(CENTRES))}
    assert r.view_boxes == {"highres": tuple(BOX), "base": (0.0, 0.0, 1.0, 1.0)}
    assert (r.tokens, r.word_numbers, r.response, r.steps, r.view, r.image, r.image_size, r.notes, r.where) == (
        ["circle"], [0], "circle", 1, "highres", None, (72, 72), ["n"], "line 1")
    assert r.metrics == {"object": {"words": [0]}} and r.stats_lists() == {"peak": [0.5], "degenerate": [False]}
    with safe_open(os.path.join(folder, "shards", "a.safetensors"), framework="pt") as f:
        assert torch.equal(r.maps, f.get_tensor("r000000"))
        assert {k: v.tolist() for k, v in r.view_maps.items()} == {
            v: f.get_tensor(f"r000000.view.{v}").tolist() for v in ("highres", "base")}
    # a line of a model that saw the whole image, evenly: no box, no cells (an old line's null box too)
    folder = _run(str(tmp_path / "even"), json.dumps(_entry(box=None, cells=None, view=None, view_shapes={},
                                                            view_boxes={}, view_cells={})))
    r = next(iter(dcam.load_run(folder)))
    assert (r.box, r.cells, r.view_boxes, r.view_cells, r.view_maps) == ((0.0, 0.0, 1.0, 1.0), None, {}, {}, {})


def test_a_run_written_by_dcam_run_reads_back_bit_for_bit(tmp_path):
    # a --view all run of a stitched anyres model, through the real runner and writer; its index line and shard are
    # read here without dcam, and the record's cells compared with the explanation's, made outside the run
    from dcam.render.cells import Cells
    from dcam.runs import RunOptions, open_source, run_dataset
    from dcam.testing.hf_tiny import tiny_llava_onevision

    model, proc = tiny_llava_onevision(tile=36)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8))
    img.save(tmp_path / "img.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image": "img.png", "response": "a red circle"}) + "\n")
    explainer = dcam.Explainer(model, proc, view="all")
    out = str(tmp_path / "run")
    run_dataset(explainer, open_source(str(tmp_path / "m.jsonl")), out, RunOptions(progress=False))
    e = explainer.explain(img, response="a red circle")
    with open(os.path.join(out, "index.jsonl")) as f:
        line = json.loads(f.readline())
    (r,) = list(dcam.load_run(out))
    assert r.cells == e.cells and isinstance(r.cells, Cells) and r.cells.x == tuple(line["cells"]["x"])
    assert r.view_cells == e.view_cells and set(r.view_cells) == {"highres"}
    assert r.view_boxes == e.view_boxes and r.box == e.box == tuple(line["box"])
    assert (r.grid, r.tokens, r.word_numbers, r.steps) == (tuple(e.grid), e.tokens, list(e.word_numbers), e.steps)
    assert r.stats_lists() == line["stats"] and set(r.stats) == set(e.stats)
    with safe_open(os.path.join(out, line["shard"]), framework="pt") as f:
        assert r.maps.dtype == torch.float32 and torch.equal(r.maps, f.get_tensor(line["key"]))
        for view, maps in r.view_maps.items():
            assert torch.equal(maps, f.get_tensor(f"{line['key']}.view.{view}"))
    assert set(r.view_maps) == {"highres", "base"}
    assert main(["view", out, "--quiet"]) == 0  # the page of a good run is written


# ---------------------------------------------------------------- a run folder that cannot be read


def test_load_run_of_a_file_says_it_cannot_read_the_folder(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    with pytest.raises(InputError) as info:  # it said "holds no dcam run"
        dcam.load_run(str(path))
    assert str(info.value) == f"run: cannot read the folder {str(path)!r}: a file is in its place"


def test_load_run_of_an_index_that_is_a_folder_is_an_input_error(tmp_path):
    folder = str(tmp_path / "run")
    os.makedirs(os.path.join(folder, "index.jsonl"))
    run = dcam.load_run(folder)
    for read in (list, len, lambda run: run.errors):  # (the raw IsADirectoryError of the index's open())
        with pytest.raises(InputError) as info:
            read(run)
        assert str(info.value) == (f"run: cannot read {os.path.join(folder, 'index.jsonl')!r} (IsADirectoryError: "
                                   "Is a directory)")


@pytest.mark.parametrize("name", ["index", "errors"])
def test_load_run_of_a_parts_folder_that_cannot_be_listed_is_an_input_error(name, tmp_path):
    # a file in the place of the folder of index (or error) parts: glob found no part in it, and the run was read
    # without the lines it held
    folder = _run(str(tmp_path / "run"), json.dumps(_entry()))
    with open(os.path.join(folder, name), "w") as f:
        f.write("{}\n")
    run = dcam.load_run(folder)
    with pytest.raises(InputError) as info:
        list(run) if name == "index" else run.errors
    assert str(info.value) == f"run: cannot read {os.path.join(folder, name)!r} (NotADirectoryError: Not a directory)"


def _copied_run(reference_run, tmp_path):
    """A copy of the reference run in tmp_path/run: (its folder, its index.jsonl, the index's lines, to damage)."""
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    index = os.path.join(out, "index.jsonl")
    with open(index) as f:
        return out, index, [json.loads(x) for x in f]


def _write_index(index, lines):
    with open(index, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)


def _text_among_values(line):
    line["metrics"]["object"]["obj_iou"][0] = "x"
    return "object must be an object of lists of numbers or nulls (obj_iou, contrast, concentration, f3), got {"


def _value_dropped(line):
    values = line["metrics"]["object"]
    values["contrast"] = values["contrast"][:-1]
    return f"object: contrast must be one number or null per word of object.words ({len(values['words'])}), got ["


@pytest.mark.parametrize("damage, scored_words", [(_text_among_values, 1), (_value_dropped, 2)])
def test_dcam_run_resuming_over_damaged_metrics_exits_2_naming_them(damage, scored_words, run_manifest, reference_run,
                                                                    tmp_path, capsys):
    # the run's metrics.json is reduced from every index line's metrics at its end: a text among the values was a
    # ValueError traceback there (and a number in a text, "0.5", was counted as 0.5); a value dropped from a
    # record's list was reduced as it was (its other values taken for other words')
    out, index, lines = _copied_run(reference_run, tmp_path)
    k = next(i for i, x in enumerate(lines)
             if len((x.get("metrics") or {}).get("object", {}).get("words", [])) >= scored_words)
    why = damage(lines[k])
    _write_index(index, lines)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = f.read()
    rc, err = _resumed(run_manifest, out, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(
        f"dcam run: error: run: {index} line {k + 1}, record {lines[k]['id']!r}: metrics: {why}"), err
    with open(os.path.join(out, "metrics.json")) as f:
        assert f.read() == metrics  # the metrics of the run as they were


def _unreadable(path, mode):
    """chmod ``path`` to ``mode``; skips the test where that leaves it readable (root, CAP_DAC_READ_SEARCH)."""
    os.chmod(path, mode)
    if os.access(path, os.R_OK):
        os.chmod(path, 0o755)
        pytest.skip("this user reads a folder whatever its mode (root)")


def test_load_run_of_an_index_parts_folder_without_permission_is_an_input_error(tmp_path):
    folder = _run(str(tmp_path / "run"), json.dumps(_entry()))
    parts = os.path.join(folder, "index")
    os.mkdir(parts)
    _unreadable(parts, 0)
    try:
        with pytest.raises(InputError) as info:
            list(dcam.load_run(folder))
    finally:
        os.chmod(parts, 0o755)
    assert str(info.value) == f"run: cannot read {parts!r} (PermissionError: Permission denied)"


RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _resumed(run_manifest, out, capsys):
    capsys.readouterr()
    rc = main(["run", run_manifest["path"], "--out", out, *RUN_ARGS])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("name", ["index", "errors", "shards"])
def test_dcam_run_into_a_folder_whose_part_folder_is_a_file_says_it_cannot_read_it(name, run_manifest, reference_run,
                                                                                   tmp_path, capsys):
    # it was "--out: writing '<out>' failed (FileExistsError: ...)" (index/, errors/: once the first part was
    # written, the records of the session explained for nothing) or a silent pass over the shards left by a kill
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    path = os.path.join(out, name)
    shutil.rmtree(path, ignore_errors=True)  # (a finished run has no parts, maybe no errors/)
    if os.path.isfile(path):
        os.unlink(path)
    with open(path, "w") as f:
        f.write("a file\n")
    with open(os.path.join(out, "index.jsonl")) as f:  # one record to do again: the resume has work to write
        lines = f.readlines()
    with open(os.path.join(out, "index.jsonl"), "w") as f:
        f.writelines(lines[:-1])
    rc, err = _resumed(run_manifest, out, capsys)
    assert (rc, err) == (2, [f"dcam run: error: --out: cannot read {path!r} (NotADirectoryError: Not a directory); "
                             "what was written is kept: make it readable and rerun the same command to resume, or "
                             "pass --overwrite to start over"])
    with open(os.path.join(out, "index.jsonl")) as f:
        assert f.readlines() == lines[:-1]  # left as it was found


def test_dcam_run_resuming_over_a_line_without_its_shard_exits_2_naming_it(run_manifest, reference_run, tmp_path,
                                                                           capsys):
    # a line whose shard was named outside shards/: the resume took it (and deleted the line's real shard as
    # debris when no other line named it); a line without a shard was a KeyError traceback
    out, index, lines = _copied_run(reference_run, tmp_path)
    lines[0]["shard"] = "../" + lines[0]["shard"]
    _write_index(index, lines)
    before = sorted(os.listdir(os.path.join(out, "shards")))
    rc, err = _resumed(run_manifest, out, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(
        f"dcam run: error: run: {index} line 1, record {lines[0]['id']!r}: shard and key must be a file in "
        f"shards/ and the text of its tensor, got ('../shards/"), err
    assert sorted(os.listdir(os.path.join(out, "shards"))) == before


@pytest.mark.parametrize("mode", [0o300, 0o000], ids=["write-only", "no-permission"])
def test_dcam_run_into_a_folder_without_read_permission_says_it_cannot_read_it(mode, run_manifest, reference_run,
                                                                              tmp_path, capsys):
    # it was "--out: writing '<out>' failed (PermissionError ...)" (0o300: writable, not listable) and
    # "--out: cannot write into '<out>'" (0o000)
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    _unreadable(out, mode)
    try:
        rc, err = _resumed(run_manifest, out, capsys)
    finally:
        os.chmod(out, 0o755)
    assert (rc, err) == (2, [f"dcam run: error: --out: cannot read the folder {out!r} (permission denied); a run "
                             "resumes from what its folder holds: make it readable, or choose another folder"])


@pytest.mark.parametrize("tokens, shown", [("circle", "'circle'"), (7, "7"), ({"circle": 1}, "{'circle': 1}"),
                                           (["circle", 3], "['circle', 3]")])
def test_dcam_run_resuming_over_a_line_whose_tokens_are_damaged_exits_2_naming_them(
        tokens, shown, run_manifest, reference_run, tmp_path, capsys):
    # the resume counted len(tokens) into run.json's words: a text's letters (6 words for "circle"), a number's a
    # TypeError traceback at the run's end; the line is refused as load_run refuses it, before anything is written
    out, index, lines = _copied_run(reference_run, tmp_path)
    lines[2]["tokens"] = tokens
    _write_index(index, lines)
    before = file_tree(out)
    rc, err = _resumed(run_manifest, out, capsys)
    assert (rc, err) == (2, [f"dcam run: error: run: {index} line 3, record {lines[2]['id']!r}: tokens must be a "
                             f"list of texts, got {shown}"])
    assert file_tree(out) == before  # refused before the folder was written (run.json, its counts, as they were)
    with pytest.raises(InputError) as info:  # load_run says the same of the record
        next(r for r in dcam.load_run(out) if r.id == lines[2]["id"]).tokens
    assert str(info.value) == err[0][len("dcam run: error: "):]


def test_scan_index_counts_the_words_of_good_lines(tmp_path):
    # the words of every line (its tokens), a line without tokens refused as load_run refuses it
    from dcam.runs.store import scan_index

    folder = str(tmp_path / "run")
    _run(folder, json.dumps(_entry(id="a", tokens=["red", "circle"], key="k1")))
    with open(os.path.join(folder, "index.jsonl"), "a") as f:
        f.write(json.dumps(_entry(id="b", tokens=["x", "y", "z"], key="k2")) + "\n")
    assert scan_index(folder) == ({"a", "b"}, {"shards/a.safetensors"}, 5)
    with open(os.path.join(folder, "index.jsonl"), "a") as f:
        f.write(json.dumps({k: v for k, v in _entry(id="c", key="k3").items() if k != "tokens"}) + "\n")
    with pytest.raises(InputError) as info:
        scan_index(folder)
    assert str(info.value) == f"run: {os.path.join(folder, 'index.jsonl')} line 3, record 'c' lacks 'tokens'"
