"""A run folder whose records were scored by older rules is scored again on resume, never mixed.

Session 30 scored a data folder's overlapping objects each against its own whole mask; a `dcam run` folder
started before kept its records' Obj-IoU etc. of the painted label mask (the square lost the pixels the
circle, painted over it, shares) when resumed, scored its new records the new way, and averaged both in
metrics.json. The old folder here is written as dcam wrote it then: run.json's identity without ``scoring``
(its fingerprint the same sha256 of it), the record's metrics of the painted mask. Every expected number is
worked out with numpy (dcam.testing.support.hand_metrics) from the stored maps and the mask files."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from dcam import Explainer, InputError, load_run
from dcam.runs.runner import RunOptions, run_dataset
from dcam.runs.sources import open_source
from dcam.testing import tiny_toy
from dcam.testing.support import file_tree, hand_metrics

CIRCLE = np.zeros((8, 8), bool)
CIRCLE[1:4, 1:4] = True
SQUARE = np.zeros((8, 8), bool)
SQUARE[2:7, 2:7] = True  # shares 4 of the circle's 9 pixels; painted largest first, it lost them
WORDS = [["a", "red", "circle", "and", "a", "blue", "square"], ["a", "blue", "square", "and", "a", "red", "circle"]]
OBJECT = {"red": CIRCLE, "circle": CIRCLE, "blue": SQUARE, "square": SQUARE}
PAINTED = {"red": CIRCLE, "circle": CIRCLE, "blue": SQUARE & ~CIRCLE, "square": SQUARE & ~CIRCLE}
KEYS = ("obj_iou", "contrast", "concentration", "f3")


def tam_entry(root, k):
    """Record r<k>: an 8x8 image (the toy's 8x8 grid: its maps need no resize) and the two overlapping masks."""
    Image.fromarray(np.random.default_rng(k).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"img{k}.png")
    for j, m in enumerate((CIRCLE, SQUARE)):
        Image.fromarray(m.astype(np.uint8) * 255).save(root / f"m{k}_{j + 1}.png")
    return {"id": f"r{k}", "image": f"img{k}.png", "caption": " ".join(WORDS[k]),
            "masks": [f"m{k}_1.png", f"m{k}_2.png"], "categories": {"red circle": 1, "blue square": 2}}


def word_values(maps, words, truth):
    """{word number: hand metrics} of the object words, a word's map its one token's (tokens are the words)."""
    return {i: hand_metrics(maps[i].numpy(), [truth[w]]) for i, w in enumerate(words) if w in truth}


def assert_scored(metrics, want):
    assert metrics["object"]["words"] == sorted(want)
    for k in KEYS:
        for i, v in zip(metrics["object"]["words"], metrics["object"][k]):
            assert v == pytest.approx(want[i][k], rel=1e-9, abs=1e-12), (i, k)


def as_an_older_dcam_wrote_it(out, words):
    """The folder of one done record rewritten as dcam before session 31 wrote it: no scoring in the identity,
    the record's metrics of the painted mask. Returns its maps as stored."""
    info = json.loads((out / "run.json").read_text())
    info["identity"].pop("scoring", None)
    info["fingerprint"] = hashlib.sha256(json.dumps(info["identity"], sort_keys=True, default=str).encode()).hexdigest()
    (out / "run.json").write_text(json.dumps(info, indent=2))
    record = next(iter(load_run(str(out))))
    line = dict(record.entry)
    old = word_values(record.maps, words, PAINTED)
    for k in KEYS:
        line["metrics"]["object"][k] = [old[i][k] for i in line["metrics"]["object"]["words"]]
    (out / "index.jsonl").write_text(json.dumps(line, separators=(",", ":")) + "\n")
    return record.maps.clone()


@pytest.fixture
def old_folder(tmp_path):
    """(data folder, run folder, r0's stored maps): r0 explained and scored by the older rules; r1 added since."""
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    entries = [tam_entry(data, 0), tam_entry(data, 1)]
    (data / "anno.json").write_text(json.dumps(entries[:1]))
    run_dataset(Explainer(*tiny_toy(0, layers=3, image_size=64)), open_source(str(data)), str(out),
                RunOptions(progress=False))
    maps = as_an_older_dcam_wrote_it(out, WORDS[0])
    (data / "anno.json").write_text(json.dumps(entries))
    return data, out, maps


def test_a_resume_scores_the_older_records_again_and_the_summary_is_of_one_rule(old_folder, capsys):
    data, out, r0_maps = old_folder
    old = load_run(str(out)).info["identity"]
    assert "scoring" not in old  # (the rules an older dcam scored by are not recorded)
    capsys.readouterr()
    run_dataset(Explainer(*tiny_toy(0, layers=3, image_size=64)), open_source(str(data)), str(out),
                RunOptions(progress=False))
    err = capsys.readouterr().err
    run = load_run(str(out))
    records = {r.id: r for r in run}
    assert sorted(records) == ["r0", "r1"]
    assert records["r0"].maps.equal(r0_maps)  # scored again, not explained again
    values = {}
    for k, rid in enumerate(("r0", "r1")):
        assert records[rid].tokens == WORDS[k]
        values[rid] = word_values(records[rid].maps, WORDS[k], OBJECT)
        assert_scored(records[rid].metrics, values[rid])
    # the summary: the means over the 8 object words of both records, one rule (not the painted r0's); its F3 is
    # the F3 of the means (the paper's table), f3_per_map the mean of the words' F3
    summary = run.metrics["summary"]
    assert summary["n_obj"] == 8
    mean = {k: np.mean([v[k] for rid in values for v in values[rid].values()]) for k in KEYS}
    mean["f3_per_map"], mean["f3"] = mean["f3"], 3 / (1 / mean["obj_iou"] + 1 / min(mean["contrast"] / 20, 1)
                                                      + 1 / mean["concentration"])
    for k, want in mean.items():
        assert summary[k] == pytest.approx(want, rel=1e-9), k
    assert run.info["identity"]["scoring"] == 3 and run.info["status"] == "complete"
    assert (f"dcam: scoring 1 record of '{out}' again by this dcam's rules (scoring 1 -> 3) from its stored maps\n"
            f"dcam: the records of '{out}' were scored by older rules (scoring 1, this dcam's 3: docs/RUNS.md); "
            "1 record scored again from its stored maps\n") in err
    # the painted square really scored otherwise: the values replaced were not these
    painted = word_values(r0_maps, WORDS[0], PAINTED)
    assert painted[6]["obj_iou"] != pytest.approx(values["r0"][6]["obj_iou"], rel=1e-6)


@pytest.mark.parametrize("away", ["m0_2.png", "img0.png"])
def test_a_record_whose_files_cannot_be_read_now_refuses_the_resume_and_leaves_every_file_as_it_was(old_folder,
                                                                                                    away):
    # its maps cost model time: a mask or image away for a moment (a mount down) must not delete them, as the
    # dropped line and then remove_debris did; once the file is back the resume scores it again
    data, out, r0_maps = old_folder
    moved = (data / away).read_bytes()
    os.unlink(data / away)
    before = file_tree(str(out))
    with pytest.raises(InputError) as refused:
        run_dataset(Explainer(*tiny_toy(0, layers=3, image_size=64)), open_source(str(data)), str(out),
                    RunOptions(progress=False))
    message = str(refused.value)
    assert message.startswith(f"--out: the record 'r0' of the run in '{out}' cannot be scored again by this dcam's "
                              "rules (") and "\n" not in message
    assert away in message
    assert message.endswith("; the folder is left as it was: make the record's files readable and resume again, "
                            "or pass --overwrite to start over")
    assert file_tree(str(out)) == before  # every file's bytes: index, shards, run.json (still scoring 1)
    (data / away).write_bytes(moved)
    run_dataset(Explainer(*tiny_toy(0, layers=3, image_size=64)), open_source(str(data)), str(out),
                RunOptions(progress=False))
    records = {r.id: r for r in load_run(str(out))}
    assert sorted(records) == ["r0", "r1"] and records["r0"].maps.equal(r0_maps)
    assert_scored(records["r0"].metrics, word_values(r0_maps, WORDS[0], OBJECT))


def test_a_record_whose_stored_maps_cannot_be_read_is_explained_again(old_folder, capsys):
    # the folder's own damage (a line naming maps of another shape than its shard holds) is what a resume redoes
    data, out, _ = old_folder
    line = json.loads((out / "index.jsonl").read_text())
    line["tokens"] = line["tokens"] + ["extra"]  # (T + 1 maps expected; the shard holds T)
    (out / "index.jsonl").write_text(json.dumps(line, separators=(",", ":")) + "\n")
    capsys.readouterr()
    run_dataset(Explainer(*tiny_toy(0, layers=3, image_size=64)), open_source(str(data)), str(out),
                RunOptions(progress=False))
    assert ("0 records scored again from their stored maps, 1 whose index line or stored maps could not be read is "
            "explained again\n") in capsys.readouterr().err
    records = {r.id: r for r in load_run(str(out))}
    assert sorted(records) == ["r0", "r1"] and records["r0"].tokens == WORDS[0]


def test_another_run_is_named_before_the_rules_its_records_were_scored_by(old_folder):
    data, out, _ = old_folder
    info = json.loads((out / "run.json").read_text())
    info["identity"]["scoring"] = 4  # a newer dcam's: resuming it there would be refused too (another prompt)
    info["fingerprint"] = hashlib.sha256(json.dumps(info["identity"], sort_keys=True, default=str).encode()).hexdigest()
    (out / "run.json").write_text(json.dumps(info, indent=2))
    before = file_tree(str(out))
    with pytest.raises(InputError) as refused:
        run_dataset(Explainer(*tiny_toy(0, layers=3, image_size=64)), open_source(str(data)), str(out),
                    RunOptions(progress=False, prompt="another prompt"))
    assert str(refused.value) == (f"--out: '{out}' holds a run of another model/method/config (differs in: prompt); "
                                  "pass --overwrite to start over, or choose a new folder")
    assert file_tree(str(out)) == before


def test_a_folder_scored_by_a_newer_dcam_is_refused_and_left_as_it_was(old_folder):
    data, out, _ = old_folder
    info = json.loads((out / "run.json").read_text())
    info["identity"]["scoring"] = 4
    info["fingerprint"] = hashlib.sha256(json.dumps(info["identity"], sort_keys=True, default=str).encode()).hexdigest()
    (out / "run.json").write_text(json.dumps(info, indent=2))
    before = file_tree(str(out))
    with pytest.raises(InputError) as refused:
        run_dataset(Explainer(*tiny_toy(0, layers=3, image_size=64)), open_source(str(data)), str(out),
                    RunOptions(progress=False))
    assert str(refused.value) == (f"--out: the records of the run in '{out}' were scored by a newer dcam's rules "
                                  "(scoring 4; this one scores by 3): resume it with that dcam, or pass --overwrite "
                                  "to start over")
    assert file_tree(str(out)) == before
