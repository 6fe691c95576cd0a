"""What a trajectory writes and tells: the files open with the documented
keys, shapes and frame counts; the per-word numbers are those worked by hand;
models whose sampler hides its steps are refused with one line."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dcam import Explainer, InputError
from dcam.trajectory import explain_trajectory
from dcam.trajectory.numbers import per_word_numbers

RED = np.array([220, 20, 60])


def test_saved_files_open(traj, tmp_path):
    out = tmp_path / "t"
    traj.save(str(out))
    S, T, Lr = 6, len(traj.tokens), 12
    tensors = load_file(str(out / "trajectory.safetensors"))
    assert tensors["maps"].shape == (S, T, 8, 8) and tensors["maps"].dtype == torch.float32
    assert tensors["decided_at"].shape == (T,) and tensors["decided_at"].dtype == torch.int64
    assert tensors["states"].shape == (S, Lr) and tensors["states"].dtype == torch.int64
    assert tensors["final_maps"].shape == (T, 8, 8)
    assert torch.equal(tensors["maps"], traj.maps) and torch.equal(tensors["states"], traj.states)
    gifs = sorted(os.listdir(out / "trajectory"))
    assert gifs == [f"{n:02d}_{traj.tokens[n]}.gif" for n in range(T)]
    for k, name in enumerate(gifs):
        with Image.open(out / "trajectory" / name) as im:
            assert im.n_frames == S
            d = int(traj.decided_at[k])
            for s in range(S):  # the decision frame, and only it, has the red border
                im.seek(s)
                corner = np.asarray(im.convert("RGB"))[1, im.width // 2]
                assert (np.abs(corner.astype(int) - RED).max() < 40) == (s == d), (k, s)
    meta = json.loads((out / "meta.json").read_text())["trajectory"]
    assert meta["steps"] == S and meta["decided_at"] == traj.decided_at.tolist()
    assert meta["commit_order"] == traj.commit_order and len(meta["words"]) == T
    assert meta["words"][0]["decided_at"] == int(traj.decided_at[0])
    assert sorted(meta["commit_order"]) == list(range(T))


def test_sheet_has_a_row_per_step_and_frames_decisions(traj, tmp_path):
    """Documented layout: 56 px of step labels, a 22 px title and 22 px of word labels, 96 px
    tiles with 4 px gaps (tiles shrink to keep the sheet within 4096 px), a 26 px colour bar."""
    p = traj.write_files(str(tmp_path))["sheet"]
    S, T, tile, pad, top = 6, len(traj.tokens), 96, 4, 22 + 22
    with Image.open(p) as im:
        assert im.size == (56 + T * (tile + pad) + pad, top + S * (tile + pad) + pad + 26)
        px = np.asarray(im.convert("RGB")).astype(int)
    for s in range(S):
        for k in range(T):
            x, y = 56 + pad + k * (tile + pad), top + pad + s * (tile + pad)
            framed = np.abs(px[y - 2, x + tile // 2] - RED).max() < 40
            assert framed == (s == int(traj.decided_at[k])), (s, k)


def test_a_wide_images_sheet_has_rows_of_its_height_with_labels_level(traj):
    # a 500 x 40 image's 96 x 8 strips sat at the top of 96 x 96 rows (90% of the sheet white), and each
    # "step s" label was drawn at the cell's middle, beside the next row's strip
    import dataclasses

    from dcam.trajectory.render import sheet

    wide = dataclasses.replace(traj, image=Image.new("RGB", (500, 40), (10, 20, 30)))
    S, T, pad, row, ch = 6, len(traj.tokens), 4, 14, round(96 * 40 / 500)  # rows: a label's 14 px; strips 96 x 8
    top = 22 + 22  # the title, then the word labels
    px = np.asarray(sheet(wide)).astype(int)
    assert px.shape == (top + S * (row + pad) + pad + 26, 56 + T * (96 + pad) + pad, 3)  # + the colour bar
    white = (px == 255).all(axis=2)
    for s in range(S):
        y = top + pad + s * (row + pad)
        strip = white[y:y + row, 56 + pad + 2:56 + pad + 94]
        filled = np.nonzero(~strip.all(axis=1))[0]  # the rows of the first column's strip
        assert filled.min() >= (row - ch) // 2 - 2 and filled.max() <= (row - ch) // 2 + ch + 1, (s, filled)
        label = np.nonzero(~white[y - 2:y + row + 2, 4:52].all(axis=1))[0]  # "step s", inside its own row
        assert len(label) and label.min() >= 0 and label.max() < row + 4, (s, label)


def test_written_into_an_explanation_folder_the_meta_gains_the_trajectory(tiny_explainer, traj, image, tmp_path):
    e = tiny_explainer.explain(image, response=traj.response_ids, steps=traj.steps)
    e.write_files(str(tmp_path))
    before = json.loads((tmp_path / "meta.json").read_text())
    traj.write_files(str(tmp_path))
    after = json.loads((tmp_path / "meta.json").read_text())
    assert {k: v for k, v in after.items() if k != "trajectory"} == before
    assert after["trajectory"]["commit_order"] == traj.commit_order


def test_write_files_refuses_another_explanations_folder_and_a_second_trajectory(tiny_explainer, traj, image,
                                                                                  tmp_path):
    # another image's trajectory went into an explanation's folder: meta.json kept that explanation's response
    # beside this trajectory, and the old trajectory's GIFs of other words stayed beside the new ones
    other = tiny_explainer.explain(image, response=traj.response_ids[:-1], steps=traj.steps)
    (tmp_path / "other").mkdir()
    (tmp_path / "own").mkdir()
    other.write_files(str(tmp_path / "other"))
    before = sorted(os.listdir(tmp_path / "other"))
    with pytest.raises(InputError, match=r"^folder: its meta.json is another explanation's \(its response_ids differ "
                                         r"from this trajectory's\)"):
        traj.write_files(str(tmp_path / "other"))
    assert sorted(os.listdir(tmp_path / "other")) == before
    traj.write_files(str(tmp_path / "own"))
    before = {n: os.path.getmtime(tmp_path / "own" / n) for n in os.listdir(tmp_path / "own")}
    with pytest.raises(InputError, match=r"^folder: '.*own' holds a trajectory already \(trajectory.safetensors, "
                                         r"trajectory, trajectory_sheet.png, meta.json's trajectory\)"):
        traj.write_files(str(tmp_path / "own"))
    assert {n: os.path.getmtime(tmp_path / "own" / n) for n in os.listdir(tmp_path / "own")} == before


def test_save_refuses_a_filled_folder(traj, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        traj.save(str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_save_refuses_an_overwrite_that_is_not_a_bool(traj, tmp_path):
    # overwrite="no" is truthy: the folder was replaced whole
    out = tmp_path / "t"
    traj.save(str(out))
    (out / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match=r"^overwrite must be True or False, got 'no'$"):
        traj.save(str(out), overwrite="no")
    assert (out / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("kw, match", [({"colormap": "nope"}, "colormap: 'nope' is not a matplotlib colormap"),
                                       ({"alpha": 2.0}, "alpha must be a number in"),
                                       ({"alpha": float("nan")}, "alpha must be a number in")])
def test_write_files_refuses_before_writing_anything(traj, tmp_path, kw, match):
    # trajectory.safetensors and trajectory/ were written before the refusal
    with pytest.raises(InputError, match=match):
        traj.write_files(str(tmp_path), **kw)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field, where, value, why", [
    ("maps", (1, 2, 0, 0), float("nan"), r"a map must be finite, got 1 NaN/Inf value\(s\)"),
    ("maps", (1, 2, 0, 0), 5.0, r"a map's values must be in \[0, 1\], got values in \[0, 5\]"),
    ("final_maps", (2, 0, 0), -1.0, r"a map's values must be in \[0, 1\], got values in \[-1, 1\]")])
def test_a_bad_map_is_named_and_nothing_is_written(tiny_explainer, traj, image, tmp_path, field, where, value, why):
    # a NaN or 5.0 in a step's map left trajectory.safetensors and trajectory/ written (with an explanation:
    # its 9 files), in an error naming "cam"
    import re
    from dataclasses import replace

    bad = getattr(traj, field).clone()
    bad[where] = value
    if field == "final_maps":
        bad[where[0]].view(-1)[1] = 1.0  # (the range in the message is the map's own: worked by hand)
    t = replace(traj, **{field: bad})
    k = where[-3]  # the word's index
    word = re.escape(f"word {t.word_numbers[k]} {t.tokens[k].strip()!r}")
    name = rf"maps\[{where[0]}\]\[{k}\] \(step {where[0]}, {word}\)" if field == "maps" else \
        rf"final_maps\[{k}\] \({word}\)"
    (tmp_path / "t").mkdir()
    with pytest.raises(InputError, match=rf"^{name}: {why}$"):
        t.write_files(str(tmp_path / "t"))
    e = tiny_explainer.explain(image, response=traj.response_ids, steps=traj.steps)
    e.trajectory = t
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match=rf"^trajectory\.{name}: {why}$"):
        e.write_files(str(tmp_path / "e"))
    with pytest.raises(InputError, match=rf"^trajectory\.{name}: {why}$"):
        e.save(str(tmp_path / "s"))
    assert sorted(os.listdir(tmp_path)) == ["e", "t"] and os.listdir(tmp_path / "t") == os.listdir(tmp_path / "e") == []


@pytest.mark.parametrize("name, make", [("trajectory", "file"), ("trajectory_sheet.png", "folder"),
                                        ("trajectory.safetensors", "folder")])
def test_write_files_refuses_a_taken_name_before_writing(traj, tmp_path, name, make):
    # a file named "trajectory" was a FileExistsError once trajectory.safetensors was written
    (tmp_path / name).mkdir() if make == "folder" else (tmp_path / name).write_text("mine")
    with pytest.raises(InputError, match=f"^folder: '.*{name}' is a {make}, where the trajectory writes"):
        traj.write_files(str(tmp_path))
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("text, match", [("[]", "holds a JSON list, not an explanation's meta.json object"),
                                         ("{not json", "cannot read .* \\(JSONDecodeError: ")])
def test_write_files_refuses_a_meta_json_it_cannot_add_to(traj, tmp_path, text, match):
    (tmp_path / "meta.json").write_text(text)
    with pytest.raises(InputError, match=f"^folder: .*{match}"):
        traj.write_files(str(tmp_path))
    assert os.listdir(tmp_path) == ["meta.json"] and (tmp_path / "meta.json").read_text() == text


def test_frames_and_sheet_keep_to_their_size_limits(traj, tmp_path):
    # a 4000 x 100 image's GIF frames were 8000 pixels wide (2x up) whatever --max-side said, and the
    # sheet of 400 words was 4,860 wide against its 4,096 limit
    import dataclasses

    from dcam.trajectory.render import sheet_geometry, word_frames

    wide = dataclasses.replace(traj, image=Image.new("RGB", (4000, 100), (10, 20, 30)))
    assert word_frames(wide, 0)[0].size[0] == 1024  # the overlays' default longest side
    fr = word_frames(wide, 0, max_side=300)[0]
    assert fr.size[0] == 300 and fr.size[1] == round(100 * 300 / 4000) + 34  # + the caption band
    for S, T in ((64, 400), (512, 64), (2000, 20), (3, 5)):
        assert max(sheet_geometry(S, T)["size"]) <= 4096, (S, T)
    assert sheet_geometry(3, 5)["tile"] == 96
    with pytest.raises(InputError, match="^folder: .* is not an existing folder"):
        traj.write_files(str(tmp_path / "missing"))
    with pytest.raises(InputError, match=r"^max_side must be an int in \[16, "):
        traj.write_files(str(tmp_path), max_side=0)
    assert os.listdir(tmp_path) == []


def test_word_numbers_worked_by_hand():
    """One word, three steps: a blob at cell (0, 0), the same, then at (3, 3).
    Otsu masks {(0,0)}, {(0,0)}, {(3,3)}: movement 0 then 1; centre of mass
    shift 0 then sqrt(18) cells. Decided at step 0; final map = the step-0 map."""
    maps = torch.zeros(3, 1, 4, 4)
    maps[0, 0, 0, 0] = maps[1, 0, 0, 0] = maps[2, 0, 3, 3] = 1.0
    nb = per_word_numbers(maps, torch.tensor([0]), maps[0])
    assert nb["movement_iou"].tolist() == [[0.0, 1.0]]
    torch.testing.assert_close(nb["centroid_shift"], torch.tensor([[0.0, 18 ** 0.5]], dtype=torch.float64))
    assert nb["decision_final_iou"].tolist() == [1.0] and nb["agrees"].tolist() == [True]
    nb = per_word_numbers(maps, torch.tensor([2]), maps[0])  # decided when the blob had moved away
    assert nb["decision_final_iou"].tolist() == [0.0] and nb["agrees"].tolist() == [False]


@pytest.fixture(scope="module")
def causal_llava():
    """A tiny causal LLaVA (autoregressive: no denoising steps to record)."""
    from dcam.testing.hf_tiny import tiny_llava

    return tiny_llava()


def test_a_model_without_exposed_steps_is_refused_in_one_line(causal_llava, image):
    exp = Explainer(*causal_llava)
    with pytest.raises(InputError, match="does not expose its denoising steps") as err:
        explain_trajectory(exp, image)
    assert "\n" not in str(err.value)


def test_other_methods_are_refused(tiny, image):
    with pytest.raises(InputError, match="diffusion-cam maps; the explainer's method is 'grad-cam'"):
        explain_trajectory(Explainer(*tiny, method="grad-cam"), image)


@pytest.mark.parametrize("kw, match", [({"steps": 0}, "steps must be an int >= 1"),
                                       ({"targets": "zebra"}, "targets: word 'zebra'"),
                                       ({"chunk_size": -1}, "chunk_size must be an int >= 1")])
def test_bad_arguments_name_the_argument(tiny_explainer, image, kw, match):
    with pytest.raises(InputError, match=match):
        explain_trajectory(tiny_explainer, image, **kw)


@pytest.mark.parametrize("kw, match", [({"probe": "nope"}, "probe must be one of"),
                                       ({"target_score": "nope"}, "target_score must be one of"),
                                       ({"granularity": "chars"}, "granularity must be one of")])
def test_explain_with_a_trajectory_checks_its_options_before_generating(tiny_explainer, image, kw, match):
    """A bad probe or target score was found only after the whole trajectory was computed
    (a bad granularity after the generation): the sampler ran for nothing."""
    calls = []
    adapter = tiny_explainer.adapter
    generate = adapter.generate
    adapter.generate = lambda *a, **k: (calls.append(1), generate(*a, **k))[1]
    try:
        with pytest.raises(InputError, match=match):
            tiny_explainer.explain(image, trajectory=True, **kw)
    finally:
        del adapter.generate  # the class's method again
    assert calls == []


@pytest.mark.parametrize("kw, match", [({"view": "bogus"}, "view: this model's images have no view 'bogus'"),
                                       ({"granularity": "chars"}, "granularity must be one of")])
def test_explain_trajectory_checks_view_and_granularity_before_generating(kw, match, image):
    # explain_trajectory itself (not through explain(trajectory=True)) ran the whole generation first
    from dcam.testing.llava_dmllm import tiny_lavida

    exp = Explainer(*tiny_lavida(seed=0, layers=2))  # a diffusion model with named views
    calls = []
    exp.adapter.generate = lambda *a, **k: calls.append(1)
    with pytest.raises(InputError, match=match):
        explain_trajectory(exp, image, **kw)
    assert calls == []


def test_explain_trajectory_generates_under_the_model_lock(tiny_explainer, image):
    # called directly (not through explain(trajectory=True)), its generation ran unlocked: an explanation in
    # another thread on the same model saw the sampler's forwards pass its hooks
    import threading

    from dcam.probe.hooks import model_lock

    adapter, seen = tiny_explainer.adapter, []
    generate = adapter.generate

    def watched(*a, **k):
        def other():  # another thread cannot take the lock while the sampler runs
            got = model_lock(adapter.model).acquire(blocking=False)
            seen.append(got)
            if got:
                model_lock(adapter.model).release()
        t = threading.Thread(target=other)
        t.start()
        t.join()
        return generate(*a, **k)

    adapter.generate = watched
    try:
        explain_trajectory(tiny_explainer, image, steps=2)
    finally:
        del adapter.generate
    assert seen == [False]


def test_trajectory_lookups_repr_and_equality(traj):
    # index() took a numpy integer for a word, == of two copies raised (tensor fields), repr printed every tensor
    import copy

    k = traj.word_numbers[1]
    assert traj.index(np.int64(k)) == traj.index(k) == 1
    assert (traj == copy.deepcopy(traj)) is False and traj == traj
    assert len(repr(traj)) < 300 and repr(traj).startswith("Trajectory(tokens=")
    word = traj.tokens[1]
    assert traj.index(word.upper() + "!") == traj.index(word)  # as targets match: case and punctuation aside


def test_negative_word_numbers_count_from_the_response_end(traj, tiny_explainer, image):
    """As ``targets`` reads them: -1 is the response's last word, traced alone or with the others
    (index(-1) was refused: only the numbers themselves were looked up)."""
    n = len(traj.tokens)
    assert traj.word_numbers == list(range(n))  # every word traced
    assert traj.index(-1) == n - 1 and traj.index(-n) == 0
    with pytest.raises(InputError, match="word number -%d is not among the traced words" % (n + 1)):
        traj.index(-n - 1)
    last = explain_trajectory(tiny_explainer, image, steps=6, targets=[n - 1])
    assert last.word_numbers == [n - 1] and last.index(-1) == 0 and last.tokens == traj.tokens[-1:]
    with pytest.raises(InputError, match="not among the traced words"):
        last.index(-2)


def test_saved_meta_places_the_maps_and_save_takes_max_side(traj, tmp_path):
    # a trajectory saved alone left out its box (a view that covers part of the image, or more: its maps
    # could not be placed), and save() had no max_side (the GIFs were always 1024 pixels long)
    import dataclasses

    wide = dataclasses.replace(traj, image=Image.new("RGB", (400, 100), (10, 20, 30)), box=(0.25, -0.1, 0.75, 1.1))
    wide.save(str(tmp_path / "t"), max_side=128)
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta["box"] == [0.25, -0.1, 0.75, 1.1] and meta["trajectory"]["box"] == [0.25, -0.1, 0.75, 1.1]
    with Image.open(tmp_path / "t" / "trajectory" / os.listdir(tmp_path / "t" / "trajectory")[0]) as im:
        assert im.size == (128, 32 + 34)  # 400 x 100 at most 128 long, plus the caption band
    with pytest.raises(InputError, match=r"^max_side must be an int in \[16, "):
        wide.save(str(tmp_path / "u"), max_side=0)
    assert not (tmp_path / "u").exists()


def test_commit_ranks_order_the_items_when_a_phrase_shares_its_first_words_number(bundled_explainer, shapes_image):
    # a phrase and its first word share a word number: ranked by number, both got the first one's rank
    words = bundled_explainer.explain(shapes_image, steps=6).tokens
    phrase = f"{words[1]} {words[2]}"
    t = explain_trajectory(bundled_explainer, shapes_image, steps=6, targets=[phrase, words[1], words[2]])
    assert t.word_numbers[:2] == [1, 1]
    table = t.word_table()
    ranks = [w["commit_rank"] for w in table]
    assert sorted(ranks) == list(range(len(t.tokens)))  # a true order: every rank once
    order = sorted(range(len(t.tokens)), key=lambda k: (int(t.decided_at[k]), t.response_indices[k], k))
    assert [order.index(k) for k in range(len(t.tokens))] == ranks


def test_write_files_takes_a_bytes_or_pathlike_folder_as_save_does(traj, tmp_path):
    # a bytes folder passed the check, then met the str file names (TypeError: Can't mix strings and bytes)
    for folder in (tmp_path / "p", os.fsencode(str(tmp_path / "b"))):
        os.makedirs(folder)
        paths = traj.write_files(folder)
        assert paths["meta"] == os.path.join(os.fsdecode(folder), "meta.json") and os.path.isfile(paths["meta"])
