"""The page's trajectory budget in Explanation.save / write_files (``trajectory_bytes=``) and ``dcam explain
--trajectory-bytes``, as write_explanation_page and ``dcam view --trajectory-bytes`` take it: index.html keeps
the steps the budget allows, worked out here by hand. (Neither had the option: a saved explanation's page
always kept 1 MiB of steps.)"""
import base64
import json
import os

import numpy as np
import pytest
import torch

from dcam import InputError
from dcam.cli import main

PAGE_START = "DcamViewer.create(document.getElementById('dcv'), "


def _page_record(folder) -> dict:
    """The one record of the folder's index.html (its viewer config, as the page's script reads it)."""
    text = open(os.path.join(folder, "index.html"), encoding="utf-8").read()
    start = text.index(PAGE_START) + len(PAGE_START)
    return json.loads(text[start:text.rindex(");</script>")])["records"][0]


def _kept_steps(rec, S) -> list:
    labels = rec["step_labels"]
    assert labels[-1] == "explanation"
    return [int(label[len("step "):-len(f"/{S - 1}")]) for label in labels[:-1]]


@pytest.fixture(scope="module")
def traced(tiny_explainer, image):
    """An explanation with its trajectory: 6 steps of T maps of 8 x 8 cells, so T * 64 page bytes a step."""
    e = tiny_explainer.explain(image, steps=6, trajectory=True)
    S, T, h, w = e.trajectory.maps.shape
    assert (S, h, w) == (6, 8, 8) and T == len(e.tokens)
    return e


def _step_bytes(e) -> int:
    return len(e.tokens) * 8 * 8  # one uint8 per cell of each word's map


# (budget in steps' bytes, the steps kept): keep = min(6, max(2, budget // step_bytes)) steps, at
# rint(linspace(0, 5, keep)): keep 2 -> 0, 5; keep 3 -> 0, 2.5, 5 -> 0, 2, 5 (rint: half to even);
# keep 4 -> 0, 1.67, 3.33, 5 -> 0, 2, 3, 5; keep 5 -> 0, 1.25, 2.5, 3.75, 5 -> 0, 1, 2, 4, 5
BUDGETS = {"1 byte": (lambda b: 1, [0, 5]), "3 steps": (lambda b: 3 * b, [0, 2, 5]),
           "a byte under 5 steps": (lambda b: 5 * b - 1, [0, 2, 3, 5]), "5 steps": (lambda b: 5 * b, [0, 1, 2, 4, 5]),
           "6 steps": (lambda b: 6 * b, [0, 1, 2, 3, 4, 5]), "the default 1 MiB": (lambda b: None, list(range(6)))}


@pytest.mark.parametrize("budget, kept", list(BUDGETS.values()), ids=list(BUDGETS))
def test_save_keeps_the_steps_its_budget_allows(traced, tmp_path, budget, kept):
    e, n = traced, budget(_step_bytes(traced))
    e.save(tmp_path / "s", trajectory_bytes=n)
    rec = _page_record(tmp_path / "s")
    assert _kept_steps(rec, 6) == kept
    frames = torch.cat([e.trajectory.maps[kept], e.maps[None]])  # the kept steps, then the explanation's maps
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(rec["maps"]), np.uint8),
                                  np.rint(frames.numpy().reshape(-1) * 255).astype(np.uint8))
    said = [note for note in rec["notes"] if "of the trajectory's 6 steps" in note]
    assert said == ([] if len(kept) == 6 else [
        f"the page shows {len(kept)} of the trajectory's 6 steps (evenly spaced, the first and last among them: "
        f"{n} bytes of maps at most); the saved trajectory keeps every step"])
    # the files keep every step whatever the page shows
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "s" / "trajectory.safetensors"))["maps"].shape[0] == 6


def test_write_files_takes_the_budget_too(traced, tmp_path):
    traced.write_files(str(tmp_path), trajectory_bytes=3 * _step_bytes(traced))
    assert _kept_steps(_page_record(tmp_path), 6) == [0, 2, 5]


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "100"])
def test_a_bad_budget_is_refused_before_anything_is_written(traced, tmp_path, value):
    # the message write_explanation_page gives for the same value
    with pytest.raises(InputError, match=rf"^trajectory_bytes must be an int >= 1, got {value!r}$".replace(".", r"\.")):
        traced.save(tmp_path / "s", trajectory_bytes=value)
    assert not (tmp_path / "s").exists()
    (tmp_path / "w").mkdir()
    with pytest.raises(InputError, match=r"^trajectory_bytes must be an int >= 1, got "):
        traced.write_files(str(tmp_path / "w"), trajectory_bytes=value)
    assert os.listdir(tmp_path / "w") == []


@pytest.fixture(scope="module")
def toy_folder(tiny, image, tmp_path_factory):
    """The tiny toy saved as a model folder, and the test image as a file."""
    root = tmp_path_factory.mktemp("cli")
    model, proc = tiny
    model.save_pretrained(str(root / "m"))
    proc.save_pretrained(str(root / "m"))
    image.save(root / "x.png")
    return root


def test_dcam_explain_takes_the_budget(traced, toy_folder, tmp_path):
    step_bytes = _step_bytes(traced)  # (the CLI's generation is the fixture's: same model, image and steps)
    args = ["explain", str(toy_folder / "x.png"), "--model", str(toy_folder / "m"), "--steps", "6", "--trajectory",
            "--quiet", "--trajectory-bytes", str(3 * step_bytes)]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "one" / "meta.json").read_text())["tokens"] == traced.tokens
    assert _kept_steps(_page_record(tmp_path / "one"), 6) == [0, 2, 5]
    # several images: each one's page (written by write_files into its subfolder)
    assert main(args[:2] + [str(toy_folder / "x.png")] + args[2:-1] + [str(5 * step_bytes - 1),
                                                                      "--out", str(tmp_path / "two")]) == 0
    for name in ("x", "x_2"):
        assert _kept_steps(_page_record(tmp_path / "two" / name), 6) == [0, 2, 3, 5]


def test_dcam_explain_refuses_a_bad_budget_in_one_line(toy_folder, tmp_path, capsys):
    base = ["explain", str(toy_folder / "x.png"), "--model", str(toy_folder / "m"), "--quiet"]
    assert main(base + ["--trajectory", "--trajectory-bytes", "0", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == ("dcam explain: error: argument --trajectory-bytes: expected an int "
                                               ">= 1, got 0")
    # without --trajectory it would change nothing: said, before the model is read (a missing one here)
    assert main(["explain", str(toy_folder / "x.png"), "--model", str(tmp_path / "no-model"), "--quiet",
                 "--trajectory-bytes", "1000", "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "dcam explain: error: --trajectory-bytes: sets how much of a trajectory index.html shows; without "
        "--trajectory there is none (add --trajectory or leave it out)"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
