"""dcam.load_trajectory reads back what Trajectory.save writes (and the trajectory of an explanation's
save): every field of the Trajectory equal to the one saved, its pictures the same; a folder that holds
no trajectory, or a damaged one, is one InputError line naming it. (Trajectory.save wrote no image.png and
no response_tokens, and nothing read its folder back.)"""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import dcam
from dcam import InputError
from dcam.render.cells import Cells
from dcam.trajectory import Trajectory, explain_trajectory


def _same_field(name, want, got):
    """``got`` equals ``want``: tensors of the same dtype and shape, bit for bit (NaN where NaN: a word
    never moved has NaN numbers), images pixel for pixel, everything else by ==."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(torch.isnan(got), torch.isnan(want)) if want.is_floating_point() else True, name
        keep = ~torch.isnan(want) if want.is_floating_point() else torch.ones_like(want, dtype=torch.bool)
        assert torch.equal(got[keep], want[keep]), name
    elif isinstance(want, dict):
        assert sorted(got) == sorted(want), name
        for k in want:
            _same_field(f"{name}.{k}", want[k], got[k])
    elif isinstance(want, Image.Image):
        assert got.size == want.size and np.array_equal(np.asarray(got.convert("RGB")),
                                                        np.asarray(want.convert("RGB"))), name
    else:
        assert type(got) is type(want) and got == want, (name, want, got)


def _same_trajectory(want: Trajectory, got: Trajectory) -> None:
    """Every dataclass field (a field added later is compared too), then what is derived from them."""
    assert isinstance(got, Trajectory)
    for f in dataclasses.fields(Trajectory):
        _same_field(f.name, getattr(want, f.name), getattr(got, f.name))
    assert (got.steps, got.commit_order, got.committed_per_step) == (want.steps, want.commit_order,
                                                                       want.committed_per_step)
    assert got.word_table() == want.word_table() and got.meta() == want.meta()
    assert torch.equal(got.decision_maps, want.decision_maps)


def _same_pictures(want: Trajectory, got: Trajectory, tmp_path) -> None:
    """The loaded trajectory's own pictures are the saved one's, pixel for pixel and byte for byte."""
    _same_field("sheet", want.sheet(), got.sheet())
    word = want.word_numbers[-1]
    for k, (a, b) in enumerate(zip(want.frames(word), got.frames(word), strict=True)):
        _same_field(f"frame {k}", a, b)
    _same_field("strip", want.strip(word), got.strip(word))
    a, b = want.gif(word, tmp_path / "want.gif"), got.gif(word, tmp_path / "got.gif")
    assert open(a, "rb").read() == open(b, "rb").read()


def _saved_again_the_same(first: dict, folder, tmp_path) -> None:
    """A save of the loaded trajectory writes the files of the first save, byte for byte."""
    again = dcam.load_trajectory(folder).save(tmp_path / "again")
    files = sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, ns in os.walk(folder) for n in ns)
    assert files == sorted(os.path.relpath(os.path.join(d, n), tmp_path / "again")
                           for d, _, ns in os.walk(tmp_path / "again") for n in ns)
    assert "image.png" in files and len(files) == 4 + len(again["animations"])
    for name in files:
        assert open(os.path.join(folder, name), "rb").read() == open(tmp_path / "again" / name, "rb").read(), name
    assert first.keys() == again.keys()


def test_a_saved_trajectory_loads_back_equal_with_its_pictures(traj, tmp_path):
    # cells off the even spacing and a box past the image: both placed as saved (toy maps are 8 x 8)
    box = (0.0, -0.125, 1.0, 1.125)
    xs = (0.05, 0.1, 0.3, 0.35, 0.55, 0.6, 0.8, 0.95)
    t = dataclasses.replace(traj, box=box, cells=Cells(x=xs, y=tuple(np.linspace(-0.1, 1.1, 8).tolist())))
    first = t.save(tmp_path / "t")
    back = dcam.load_trajectory(tmp_path / "t")
    _same_trajectory(t, back)
    _same_pictures(t, back, tmp_path)
    _saved_again_the_same(first, tmp_path / "t", tmp_path)
    # the in-memory pictures are the saved files: the sheet written and the one loaded agree too
    with Image.open(tmp_path / "t" / "trajectory_sheet.png") as im:
        _same_field("trajectory_sheet.png", back.sheet(), im)


def test_a_stand_ins_trajectory_loads_back_equal(tmp_path):
    # LaViDa's stand-in: a map of 2 x 4 cells on a box of the padded square, a 72 x 40 image
    from dcam.testing.standins import STANDINS

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(40, 72, 3), dtype=np.uint8))
    t = explain_trajectory(dcam.Explainer(*STANDINS["lavida"](seed=0)), image, steps=4, response_length=8)
    assert t.grid == (2, 4) and t.box == (0.0, 0.0625, 1.0, 0.9375) and t.steps > 1
    t.save(str(tmp_path / "t"), max_side=128)  # (a str folder, and another max_side)
    with Image.open(tmp_path / "t" / "image.png") as im:
        assert im.size == (72, 40)  # enlarged by whole factors only: none fits 128 (2 x 72 = 144), as the GIFs
    back = dcam.load_trajectory(str(tmp_path / "t"))
    _same_trajectory(t, back)
    _same_pictures(t, back, tmp_path)


def test_an_explanations_save_gives_its_trajectory(tiny_explainer, image, tmp_path):
    e = tiny_explainer.explain(image, steps=6, trajectory=True)
    e.save(tmp_path / "e")
    back = dcam.load_trajectory(tmp_path / "e")
    _same_trajectory(e.trajectory, back)
    _same_trajectory(dcam.load_explanation(tmp_path / "e").trajectory, back)


def test_load_explanation_on_a_trajectory_alone_names_the_loader(traj, tmp_path):
    traj.save(tmp_path / "t")
    with pytest.raises(InputError, match=r"it is not a saved explanation \(it holds a trajectory alone: "
                                         r"dcam.load_trajectory reads it\)$"):
        dcam.load_explanation(tmp_path / "t")


def _one_line(folder, match):
    with pytest.raises(InputError) as info:
        dcam.load_trajectory(folder)
    text = str(info.value)
    assert text.startswith("folder: ") and f"'{folder}" in text and "\n" not in text, text  # it, or a file in it
    assert match in text, text


def test_folders_that_hold_no_trajectory_are_refused_in_one_line(traj, tiny_explainer, image, tmp_path):
    with pytest.raises(InputError, match=r"^folder: no such folder "):
        dcam.load_trajectory(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"^folder: '.*file' is not a folder$"):
        dcam.load_trajectory(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    _one_line(tmp_path / "empty", "has no meta.json; it is not a saved trajectory (Trajectory.save, or "
                                  "Explanation.save of one explained with trajectory=True)")
    tiny_explainer.explain(image, steps=6).save(tmp_path / "plain")  # an explanation without a trajectory
    _one_line(tmp_path / "plain", "'s meta.json holds no trajectory; it is not a saved trajectory")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "meta.json").write_text("[1]")
    _one_line(tmp_path / "list", "meta.json' holds a JSON list, not a saved trajectory's meta.json")


def _copy(traj, tmp_path, name):
    if not (tmp_path / "saved").exists():
        traj.save(tmp_path / "saved")
    shutil.copytree(tmp_path / "saved", tmp_path / name)
    return tmp_path / name


def _edit_meta(folder, edit):
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_damaged_saves_are_refused_in_one_line_naming_the_file(traj, tiny_explainer, image, tmp_path):
    cut = _copy(traj, tmp_path, "cut")  # a trajectory.safetensors cut short
    data = (cut / "trajectory.safetensors").read_bytes()
    (cut / "trajectory.safetensors").write_bytes(data[: len(data) // 2])
    _one_line(cut, "cut/trajectory.safetensors' (SafetensorError: ")
    gone = _copy(traj, tmp_path, "gone")
    os.remove(gone / "image.png")
    _one_line(gone, "has no image.png")
    # another image's image.png copied in
    other = _copy(traj, tmp_path, "other")
    Image.new("RGB", (256, 256), (1, 2, 3)).save(other / "image.png")
    _one_line(other, "image.png is not the file this meta.json was saved with")
    # a field of the wrong kind, and the tensors of another trajectory (fewer steps)
    _one_line(_edit_meta(_copy(traj, tmp_path, "tokens"), lambda meta: meta.__setitem__("response_tokens", 3)),
              "response_tokens must be a list of texts, got 3")
    mixed = _copy(traj, tmp_path, "mixed")
    explain_trajectory(tiny_explainer, image, steps=3).save(tmp_path / "three")
    shutil.copy(tmp_path / "three" / "trajectory.safetensors", mixed / "trajectory.safetensors")
    _one_line(mixed, "trajectory.safetensors is not the file this meta.json was saved with")
    _edit_meta(mixed, lambda meta: meta["trajectory"].pop("tensors_sha256"))  # (the shapes are checked then)
    _one_line(mixed, "trajectory.safetensors and meta.json disagree on decided_at; they are from two different saves")
    # (they loaded: 3 steps of maps under the other save's 6 step texts and decision steps)
    _edit_meta(mixed, lambda meta: [meta["trajectory"].pop(k) for k in ("decided_at", "slot_decided_at")])
    _one_line(mixed, "trajectory: steps and states must be the 3 steps of 12 slots trajectory.safetensors holds")


def test_a_trajectory_saved_alone_before_it_could_be_loaded_says_so(traj, tmp_path):
    # what Trajectory.save wrote before: no image.png, no image digest, no response_tokens
    old = _copy(traj, tmp_path, "old")
    os.remove(old / "image.png")
    _edit_meta(old, lambda meta: [meta.pop(k) for k in ("image_sha256", "response_tokens")])
    _one_line(old, "is a trajectory saved alone by an earlier dcam, which kept no image.png or response_tokens; "
                   "it cannot be loaded")


def test_write_files_refuses_an_image_png_no_meta_json_accounts_for(traj, tmp_path):
    # a trajectory written alone writes its own image.png: a stray one would have been replaced
    Image.new("RGB", (4, 4)).save(tmp_path / "image.png")
    before = (tmp_path / "image.png").read_bytes()
    with pytest.raises(InputError, match=r"^folder: '.*image.png' is there without a meta.json saying whose image "
                                         r"it is"):
        traj.write_files(tmp_path)
    assert os.listdir(tmp_path) == ["image.png"] and (tmp_path / "image.png").read_bytes() == before


def test_an_explanations_trajectory_from_another_save_is_refused(tiny_explainer, image, tmp_path):
    # another save's trajectory.safetensors (3 steps, the same response) beside an explanation's meta.json of
    # 6 steps, its digest gone: it loaded, 3 steps of maps under 6 step texts and the other decision steps
    tiny_explainer.explain(image, steps=6, trajectory=True).save(tmp_path / "e")
    explain_trajectory(tiny_explainer, image, steps=3).save(tmp_path / "three")
    shutil.copy(tmp_path / "three" / "trajectory.safetensors", tmp_path / "e" / "trajectory.safetensors")
    _edit_meta(tmp_path / "e", lambda meta: meta["trajectory"].pop("tensors_sha256"))
    for load in (dcam.load_explanation, dcam.load_trajectory):
        with pytest.raises(InputError, match=r"^folder: '.*e''s trajectory.safetensors and meta.json disagree on "
                                             r"decided_at; they are from two different saves$"):
            load(tmp_path / "e")
