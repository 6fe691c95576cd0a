"""What an explanation carries besides its maps: the trajectory of the model's
own generation, the HTML page, maps of a model that saw a crop placed where
it looked, and the saved folder read back (dcam.load_explanation)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.cli import main
from dcam.errors import InputError
from dcam.eval.alignment import word_maps
from dcam.explain import Explainer
from dcam.render.overlay import map_on_image, upsample_map
from dcam.saved import load_explanation
from dcam.testing import tiny_toy
from dcam.trajectory import explain_trajectory
from dcam.zoo.data import generate_sample


@pytest.fixture(scope="module")
def toy():
    return tiny_toy(seed=2)


@pytest.fixture(scope="module")
def sample():
    return generate_sample((0, 2, 21), image_size=32, n_objects=2)


def test_explain_with_trajectory_equals_the_two_calls(toy, sample):
    exp = Explainer(*toy)
    e = exp.explain(sample.image, steps=4, trajectory=True)
    traj = explain_trajectory(exp, sample.image, steps=4)
    torch.testing.assert_close(e.trajectory.maps, traj.maps, atol=0, rtol=0)
    assert e.trajectory.decided_at.tolist() == traj.decided_at.tolist()
    one = exp.explain(sample.image, response=traj.response_ids, steps=traj.steps)
    torch.testing.assert_close(e.maps, one.maps, atol=0, rtol=0)
    assert e.steps == traj.steps and e.steps_source == "generation"
    with pytest.raises(InputError, match="leave response unset"):
        exp.explain(sample.image, response="a red circle", trajectory=True)


def test_cli_trajectory_files_and_refusal(toy, sample, tmp_path, capsys):
    model, proc = toy
    mdir = tmp_path / "m"
    model.save_pretrained(str(mdir))
    proc.save_pretrained(str(mdir))
    img = tmp_path / "x.png"
    sample.image.save(img)
    out = tmp_path / "out"
    assert main(["explain", str(img), "--model", str(mdir), "--steps", "3", "--trajectory", "--out", str(out),
                 "--quiet"]) == 0
    meta = json.load(open(out / "meta.json"))
    n = len(meta["tokens"])
    from safetensors.torch import load_file

    t = load_file(str(out / "trajectory.safetensors"))
    assert tuple(t["maps"].shape)[:2] == (3, n) and tuple(t["decided_at"].shape) == (n,)
    assert len(os.listdir(out / "trajectory")) == n and (out / "trajectory_sheet.png").exists()
    assert "trajectory" in meta and (out / "index.html").exists()
    capsys.readouterr()
    assert main(["explain", str(img), "--model", str(mdir), "--trajectory", "--method", "grad-cam", "--out",
                 str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dcam explain: error: --trajectory: maps are diffusion-cam maps; the explainer's method is "
                   "'grad-cam'"] and not (tmp_path / "o2").exists()


def test_page_and_notebook_view(toy, sample, tmp_path):
    e = Explainer(*toy).explain(sample.image, response=sample.caption)
    paths = e.save(str(tmp_path / "o"))
    page = open(paths["page"], encoding="utf-8").read()
    assert sample.caption.split()[1] in page and "<script" in page
    assert "http://" not in page and "https://" not in page  # works offline: nothing is fetched
    html = e._repr_html_()
    assert all(w in html for w in sample.caption.split())


def test_crop_maps_sit_where_the_model_looked():
    cam = torch.tensor([[0.0, 1.0], [1.0, 0.5]])
    full = map_on_image(cam, (4, 6), (0.5, 0.0, 1.0, 1.0))  # the right half of a 4x6 image
    assert full.shape == (4, 6) and (full[:, :3] == 0).all()
    np.testing.assert_allclose(full[:, 3:], upsample_map(cam, (4, 3)), atol=0)


def test_eval_scores_crop_maps_on_the_whole_image(toy, sample):
    e = Explainer(*toy).explain(sample.image, response=sample.caption)
    e.box = (0.25, 0.0, 0.75, 1.0)
    W, H = e.image.size
    maps = word_maps(e, sample.caption.split())
    for i, m in maps.items():
        assert tuple(m.shape) == (H, W)
        want = np.zeros((H, W), np.float32)
        want[:, 8:24] = upsample_map(e.maps[i], (H, 16))  # x0 = 0.25 * 32, x1 = 0.75 * 32
        np.testing.assert_allclose(m.numpy(), want, atol=1e-6)


def test_saving_over_an_image_file_keeps_the_image(toy, sample, tmp_path):
    # save() onto an existing file used to move the file aside and put its folder there;
    # write_files() into a file failed half-way with NotADirectoryError
    e = Explainer(*toy).explain(sample.image, response="a red circle", targets=[0])
    photo = tmp_path / "photo.png"
    sample.image.save(photo)
    before = photo.read_bytes()
    with pytest.raises(InputError, match=r"^out_dir: '.*photo.png' exists and is not a folder$"):
        e.save(str(photo))
    with pytest.raises(InputError, match=r"^folder: '.*photo.png' is not an existing folder"):
        e.write_files(str(photo))
    assert photo.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["photo.png"]


def test_save_takes_bytes_and_path_like_folders_and_refuses_other_types(toy, sample, tmp_path):
    # a bytes path ended in os.path.join's TypeError ("Can't mix bytes and non-bytes")
    import pathlib

    e = Explainer(*toy).explain(sample.image, response="a red circle", targets=[0])
    e.save(os.fsencode(str(tmp_path / "b")))
    e.save(pathlib.Path(tmp_path / "p"))
    assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "p"))
    assert "maps.safetensors" in os.listdir(tmp_path / "b")
    with pytest.raises(InputError, match="^out_dir: expected a path, got int$"):
        e.save(5)
    assert sorted(os.listdir(tmp_path)) == ["b", "p"]


def test_save_refuses_the_current_folder_and_returns_a_traced_explanations_paths(toy, sample, tmp_path,
                                                                                 monkeypatch):
    # save("", overwrite=True) replaced the current folder whole (abspath("") is the cwd), and save()
    # of a traced explanation raised a TypeError after writing (its trajectory entry is a dict)
    exp = Explainer(*toy)
    e = exp.explain(sample.image, steps=4, trajectory=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(InputError, match=r"^out_dir: an empty path$"):
        e.save("", overwrite=True)
    for target in (".", str(tmp_path)):
        with pytest.raises(InputError, match=r"holds the current folder .*; replacing it whole would delete"):
            e.save(target, overwrite=True)
    assert os.listdir(work) == ["keep.txt"]
    paths = e.save(str(tmp_path / "out"))
    flat = [paths["meta"], paths["page"], *paths["overlays"], *[p for v in paths["trajectory"].values()
                                                              for p in (v if isinstance(v, list) else [v])]]
    assert all(os.path.isfile(p) and p.startswith(str(tmp_path / "out") + os.sep) for p in flat)


def test_render_sizes_long_words_and_long_responses(toy, sample, tmp_path):
    import dataclasses

    from PIL import Image

    e = Explainer(*toy).explain(sample.image, response=sample.caption, targets=[1])
    # overlay(size=) was unchecked: PIL's ValueError on 0, 10.7 truncated, a 3-tuple taken, 1e5 out of memory
    for size in ((0, 10), (-5, 10), (10.7, 20), (1, 2, 3), 100, (8193, 10), (True, 4)):
        with pytest.raises(InputError, match=r"^size must be \(W, H\), two ints in \[1, 8192\], got "):
            e.overlay(0, size=size)
    assert e.overlay(0, size=(np.int64(40), 30)).size == (40, 30)
    # write_files took max_side=0 (1x1 overlays); save refused a numpy int
    for bad in (0, -5, 2.5, 8193):
        with pytest.raises(InputError, match=r"^max_side must be an int in \[16, 8192\]"):
            e.write_files(str(tmp_path), max_side=bad)
    assert not os.listdir(tmp_path)
    e.save(str(tmp_path / "np"), max_side=np.int64(64))
    # a 250-letter word made every file name too long; a 27,000-character response left no room for tiles
    long = dataclasses.replace(e, tokens=["y" * 250], response="word " * 5400)
    paths = long.save(str(tmp_path / "long"))
    assert os.path.basename(paths["overlays"][0]) == f"{e.word_numbers[0]:02d}_{'y' * 64}.png"
    sheet = Image.open(paths["contact_sheet"])
    assert max(sheet.size) <= 4096  # saved, title cut to MAX_TITLE_LINES lines


def test_items_sharing_a_word_number_keep_their_own_files(toy, sample, tmp_path):
    import dataclasses

    from dcam.explanation import word_file_names

    # a phrase and its first word share a word number; "red" and "red 日" shared a safe name too: one
    # overlay silently replaced the other and paths["overlays"] listed the same file twice
    assert word_file_names([0, 0, 1, 0], ["red", "red 日", "circle", "red!"], "png") == \
        ["00_red.png", "00_red_日.png", "01_circle.png", "00_red-2.png"]
    assert word_file_names([2, 2], ["日本", "日本"], "gif") == ["02_日本.gif", "02_日本-2.gif"]
    words = sample.caption.split()
    e = Explainer(*toy).explain(sample.image, response=sample.caption, targets=[words[1], f"{words[1]} {words[2]}"])
    assert e.word_numbers == [1, 1]
    twin = dataclasses.replace(e, tokens=[e.tokens[0], e.tokens[0] + " !"])
    paths = twin.save(str(tmp_path / "out"))
    assert [os.path.basename(p) for p in paths["overlays"]] == [f"01_{words[1]}.png", f"01_{words[1]}-2.png"]
    assert sorted(p.name for p in (tmp_path / "out").glob("01_*.png")) == sorted(
        os.path.basename(p) for p in paths["overlays"])


def test_page_writer_checks_its_arguments(toy, sample, tmp_path):
    # alpha=5 drew an opaque page, alpha="x" was float()'s ValueError, a missing folder open()'s error
    from dcam.render.html import write_explanation_page

    e = Explainer(*toy).explain(sample.image, response=sample.caption, targets=[0])
    for alpha in (5, -0.1, "x", True):
        with pytest.raises(InputError, match=r"^alpha must be a number in \[0, 1\]"):
            write_explanation_page(str(tmp_path), e, alpha=alpha)
    with pytest.raises(InputError, match="^folder: .* is not an existing folder"):
        write_explanation_page(str(tmp_path / "missing"), e)
    # filename is a name inside folder: "sub/x.html" was open()'s FileNotFoundError
    (tmp_path / "taken.html").mkdir()
    for name in ("sub/x.html", "", "..", "taken.html", 3):
        with pytest.raises(InputError, match="^filename: "):
            write_explanation_page(str(tmp_path), e, filename=name)
    (tmp_path / "taken.html").rmdir()
    assert os.listdir(tmp_path) == []
    assert os.path.basename(write_explanation_page(str(tmp_path), e, alpha=0.25)) == "index.html"


def test_long_words_of_four_byte_letters_get_file_names_the_file_system_takes(tmp_path):
    # 64 letters of 4 bytes were 256 bytes before "NN_" and ".png": "File name too long", nothing saved
    from dcam.explanation import safe_file_name, word_file_names

    word = "\U0001D518" * 64
    name = safe_file_name(word)
    assert name == "\U0001D518" * 40 and len(name.encode("utf-8")) == 160
    assert safe_file_name("a" * 100) == "a" * 64 and safe_file_name("é" * 100) == "é" * 64  # 128 bytes
    for fname in word_file_names([1234, 1234], [word, word], "png"):
        (tmp_path / fname).write_bytes(b"")  # the file system takes it
    assert sorted(os.listdir(tmp_path)) == [f"1234_{name}-2.png", f"1234_{name}.png"]


@pytest.mark.parametrize("name", ["meta.json", "index.html", "maps.safetensors"])
def test_write_files_refuses_a_folder_in_the_way_before_writing(toy, sample, tmp_path, name):
    # a folder named meta.json was a bare IsADirectoryError after 14 files; index.html an error naming
    # "filename" (not an argument of write_files) after 28
    e = Explainer(*toy).explain(sample.image, response=sample.caption, targets=[0, 1])
    (tmp_path / name).mkdir()
    with pytest.raises(InputError, match=f"^folder: '.*{name}' is a folder, where the explanation writes"):
        e.write_files(str(tmp_path))
    with pytest.raises(InputError, match="^alpha must be a number in"):
        e.write_files(str(tmp_path), alpha=3)
    assert os.listdir(tmp_path) == [name]


def test_meta_says_which_dtype_and_device_made_the_maps(toy, sample, tmp_path):
    # float16 and bfloat16 maps differ from float32 ones (by up to 0.18 on the toy model), and nothing in the
    # folder said which dtype had made them
    import copy
    import json

    model, proc = toy
    half = copy.deepcopy(model).to(torch.bfloat16)
    for m, dtype in ((model, "float32"), (half, "bfloat16")):
        e = Explainer(m, proc).explain(sample.image, response="a red circle", targets=[0])
        assert (e.model_dtype, e.device) == (dtype, "cpu")
        e.save(str(tmp_path / dtype))
        meta = json.load(open(tmp_path / dtype / "meta.json"))
        assert (meta["model_dtype"], meta["device"]) == (dtype, "cpu")


# ------------------------------------------------------------------ dcam.load_explanation
# the loaded explanation is compared field by field with the one in memory that was saved (maps and
# tensors bit for bit); the one thing a save does not keep, the full-size image, comes back as
# image.png holds it, scaled back to the image's size (tests/test_loaded_explanation_sizes.py)

SAME = ("tokens", "token_ids", "word_numbers", "response_indices", "pieces", "response", "response_ids",
        "response_tokens", "prompt", "steps", "steps_source", "method", "probe", "layer", "target_score",
        "repeat_ratio", "config", "model_name", "notes", "granularity", "view", "box", "model_dtype", "device")



def _same_tensor(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _assert_loaded(e, back, rendered, back_folder):
    for name in SAME:  # (tam's layer, target_score and config: None in memory as saved, not only in meta.json)
        assert getattr(back, name) == getattr(e, name), name
    assert tuple(back.grid) == tuple(e.grid)
    for name in ("maps", "scores", "raw_maps"):
        if getattr(e, name) is None:
            assert getattr(back, name) is None
        else:
            _same_tensor(getattr(e, name).float(), getattr(back, name))
    assert sorted(back.stats) == sorted(e.stats)
    for k in e.stats:
        _same_tensor(e.stats[k], back.stats[k])
    _same_tensor(e.extra["context_weights"].float(), back.extra["context_weights"])
    assert back.extra["distractor"] == e.extra["distractor"]
    # the image as image.png holds it, at the size of the image explained
    with Image.open(back_folder / "image.png") as im:
        assert im.size == tuple(rendered) != e.image.size
        assert np.array_equal(np.asarray(back.image), np.asarray(im.convert("RGB").resize(e.image.size, Image.BOX)))
    assert back.meta() == e.meta()


@pytest.mark.parametrize("method", ["diffusion-cam", "tam"])
def test_a_saved_explanation_loads_back_as_it_was(toy, sample, tmp_path, method):
    e = Explainer(*toy, method=method).explain(sample.image, steps=4)
    e.save(tmp_path / "a")
    with open(tmp_path / "a" / "meta.json") as f:
        rendered = json.load(f)["rendered_size"]
    back = load_explanation(tmp_path / "a")
    _assert_loaded(e, back, rendered, tmp_path / "a")
    if method == "tam":  # a method without a config or layer saved none, and says none again
        assert back.meta()["config"] is None and back.meta()["layer"] is None
    # saved again, the files hold the same maps and the same meta.json
    back.save(tmp_path / "b")
    from safetensors.torch import load_file

    first, second = load_file(tmp_path / "a" / "maps.safetensors"), load_file(tmp_path / "b" / "maps.safetensors")
    assert sorted(first) == sorted(second)
    for k in first:
        _same_tensor(first[k], second[k])
    with open(tmp_path / "b" / "meta.json") as f:  # (image.png is rendered again, from the scaled-back copy)
        assert {k: v for k, v in json.load(f).items() if k != "image_sha256"} == \
            {k: v for k, v in json.load(open(tmp_path / "a" / "meta.json")).items() if k != "image_sha256"}


def test_a_trajectory_loads_back_with_its_explanation(toy, sample, tmp_path):
    e = Explainer(*toy).explain(sample.image, steps=4, trajectory=True)
    e.save(tmp_path / "t")
    back = load_explanation(tmp_path / "t")
    tr, got = e.trajectory, back.trajectory
    for name in ("maps", "final_maps", "decided_at", "slot_decided_at", "states", "scores", "final_scores",
                 "remasked"):
        _same_tensor(getattr(tr, name).to(getattr(got, name).dtype), getattr(got, name))
    for k in tr.numbers:
        torch.testing.assert_close(got.numbers[k], tr.numbers[k], atol=0, rtol=0, equal_nan=True)
    assert got.word_table() == tr.word_table() and got.state_tokens == tr.state_tokens
    assert got.word_count == tr.word_count and got.cost == tr.cost
    assert got.index(-1) == tr.index(-1)  # counts back from the response's last word as before


def test_a_loaded_trajectory_saved_again_writes_the_same_pictures(toy, sample, tmp_path):
    # the loaded image is image.png scaled back to the size explained; the frames and the sheet of a
    # re-save were drawn on it resampled once more (same sizes, pixels a few levels off)
    e = Explainer(*toy).explain(sample.image, steps=4, trajectory=True)
    first = e.save(tmp_path / "a")
    again = load_explanation(tmp_path / "a").save(tmp_path / "b")
    pictures = [p for v in first["trajectory"].values() for p in (v if isinstance(v, list) else [v])
                if str(p).endswith((".gif", ".png"))]
    assert len(pictures) >= 2
    for p in pictures:
        q = tmp_path / "b" / os.path.relpath(p, tmp_path / "a")
        assert open(p, "rb").read() == open(q, "rb").read(), os.path.relpath(p, tmp_path / "a")


def test_folders_that_are_not_a_saved_explanation_are_refused(toy, sample, tmp_path):
    exp = Explainer(*toy)
    e = exp.explain(sample.image, steps=4)
    e.save(tmp_path / "a")
    with pytest.raises(InputError, match="^folder: no such folder"):
        load_explanation(tmp_path / "missing")
    with pytest.raises(InputError, match="is not a folder"):
        load_explanation(tmp_path / "a" / "meta.json")
    with pytest.raises(InputError, match="has no meta.json"):
        load_explanation(tmp_path)
    with pytest.raises(InputError, match="^folder: expected a path, got int"):
        load_explanation(3)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "a", broken)
    (broken / "meta.json").write_text("{")
    with pytest.raises(InputError, match="^folder: cannot read .*meta.json' \\(JSONDecodeError"):
        load_explanation(broken)
    (broken / "meta.json").write_text("[]")
    with pytest.raises(InputError, match="holds a JSON list"):
        load_explanation(broken)
    # maps.safetensors of another explanation (fewer words) copied beside this meta.json
    other = exp.explain(sample.image, response=e.response_ids[:1], steps=4)
    other.save(tmp_path / "other")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copy(tmp_path / "other" / "maps.safetensors", mixed / "maps.safetensors")
    with pytest.raises(InputError, match="maps.safetensors is not the file this meta.json was saved with"):
        load_explanation(mixed)
    meta = json.load(open(mixed / "meta.json"))
    del meta["maps_sha256"]  # (a folder saved without the digest: the shapes are checked)
    (mixed / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"maps.safetensors: maps must be float32 \[12, 8, 8\], found float32 "
                                         r"\[1, 8, 8\]; it is not this explanation's"):
        load_explanation(mixed)
    (mixed / "maps.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match="^folder: cannot read .*maps.safetensors'"):
        load_explanation(mixed)
    os.remove(mixed / "maps.safetensors")
    with pytest.raises(InputError, match="has no maps.safetensors"):
        load_explanation(mixed)
    # an image.png of another save (the maps would be shown on the wrong picture) is refused; one
    # saved before the image's digest was kept loads with whatever image.png holds (at the image's size)
    Image.new("RGB", (2, 2)).save(tmp_path / "a" / "image.png")
    with pytest.raises(InputError, match="image.png is not the file this meta.json was saved with"):
        load_explanation(tmp_path / "a")
    meta = json.load(open(tmp_path / "a" / "meta.json"))
    del meta["image_sha256"]
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    back = load_explanation(tmp_path / "a")
    assert back.image.size == tuple(meta["image_size"])
    assert back.image.getpixel((0, 0)) == (0, 0, 0)  # image.png's black


@pytest.mark.parametrize("key,value,message", [
    # each was a bare TypeError / ValueError / KeyError, or taken as it was (3.7 steps read as 3)
    ("tokens", 5, "tokens must be a list of texts, got 5"),
    ("steps", 3.7, "steps must be a whole number >= 1, got 3.7"),
    ("steps", 0, "steps must be a whole number >= 1, got 0"),
    ("probe", "bogus", "probe must be one of full, masked, remask, got 'bogus'"),
    ("grid", "88", "grid must be two positive whole numbers [h, w], got '88'"),
    ("token_ids", ["x"], "token_ids must be a list of whole numbers"),
    ("config", {"akd_kernal": 3}, "config: CamConfig has no field(s) ['akd_kernal']"),
    ("method", "bogus", "method must be one of "),
    ("box", [0, 1], "box must be 4 finite numbers"),
    ("pieces", None, "pieces must be a list of lists of whole numbers, got None"),
    ("trajectory", None, "trajectory must be an object, got NoneType"),
])
def test_a_damaged_meta_json_is_refused_naming_the_field(toy, sample, tmp_path, key, value, message):
    e = Explainer(*toy).explain(sample.image, steps=4)
    e.save(tmp_path / "a")
    meta = json.load(open(tmp_path / "a" / "meta.json"))
    meta[key] = value
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as info:
        load_explanation(tmp_path / "a")
    assert str(info.value).startswith(f"folder: {str(tmp_path / 'a')!r}'s meta.json") and message in str(info.value)


def test_maps_outside_zero_one_are_refused_naming_the_folder(toy, sample, tmp_path):
    from safetensors.torch import load_file, save_file

    e = Explainer(*toy).explain(sample.image, steps=4)
    e.save(tmp_path / "a")
    tensors = load_file(tmp_path / "a" / "maps.safetensors")
    tensors["maps"][0, 0, 0] = float("nan")
    save_file(tensors, tmp_path / "a" / "maps.safetensors")
    meta = json.load(open(tmp_path / "a" / "meta.json"))
    del meta["maps_sha256"]
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"maps.safetensors: maps holds values outside \[0, 1\]"):
        load_explanation(tmp_path / "a")


def test_a_damaged_trajectory_is_refused_naming_the_field(toy, sample, tmp_path):
    # edited trajectory fields were bare TypeErrors or loaded as they were; a decision step past the steps
    # was numpy's IndexError
    from safetensors.torch import load_file, save_file

    e = Explainer(*toy).explain(sample.image, steps=4, trajectory=True)
    e.save(tmp_path / "t")
    good = json.load(open(tmp_path / "t" / "meta.json"))
    cases = [("states", 5, "trajectory: states must be a list of lists of texts, got 5"),
             ("cost", [1, 2], "trajectory: cost must be an object of whole numbers, got [1, 2]"),
             ("token_ids", [t + 1 for t in good["trajectory"]["token_ids"]],
              "trajectory.safetensors and meta.json disagree on token_ids"),
             ("pieces", [], "must have one entry per traced word")]
    for key, value, message in cases:
        meta = json.loads(json.dumps(good))
        meta["trajectory"][key] = value
        (tmp_path / "t" / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(InputError) as info:
            load_explanation(tmp_path / "t")
        assert str(info.value).startswith(f"folder: {str(tmp_path / 't')!r}") and message in str(info.value), key
    tensors = load_file(tmp_path / "t" / "trajectory.safetensors")
    tensors["decided_at"] = tensors["decided_at"] + 1000
    save_file(tensors, tmp_path / "t" / "trajectory.safetensors")
    meta = json.loads(json.dumps(good))
    del meta["trajectory"]["tensors_sha256"]  # (a save without the digest: the tensors are checked)
    (tmp_path / "t" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"trajectory.safetensors: decided_at must be int64 \[\d+\] with values in "):
        load_explanation(tmp_path / "t")


def test_write_files_checks_every_map_before_the_first_file(toy, sample, tmp_path):
    # a NaN in the last word's map left the first words' overlays written, in an error naming "cam"
    # (no argument of write_files) and not the word
    e = Explainer(*toy).explain(sample.image, response="a red circle")
    assert len(e) >= 2
    k, n, word = len(e) - 1, e.word_numbers[-1], e.tokens[-1]
    e.maps = e.maps.clone()
    e.maps[k, 0, 0] = float("nan")
    (tmp_path / "wf").mkdir()
    want = rf"^maps\[{k}\] \(word {n} '{word}'\): a map must be finite, got 1 NaN/Inf value\(s\)$"
    with pytest.raises(InputError, match=want):
        e.write_files(str(tmp_path / "wf"))
    assert os.listdir(tmp_path / "wf") == []
    e.maps[k, 0, 0] = 5.0
    with pytest.raises(InputError, match=rf"^maps\[{k}\] \(word {n} '{word}'\): a map's values must be in \[0, 1\], "
                                         r"got values in \[0, 5\]$"):
        e.save(str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["wf"]


def _summary_of(page: str) -> str:
    cfg = json.loads(page.split("DcamViewer.create(document.getElementById('dcv'), ", 1)[1].split(");</script>")[0])
    return cfg["summary"]


@pytest.mark.parametrize("method, layer_shown", [("tam", False), ("grad-cam", True)])
def test_a_method_that_hooks_no_layer_shows_none_and_saves_again_the_same(toy, sample, tmp_path, method,
                                                                            layer_shown):
    # tam's contact sheet and page said "layer 0"; its loaded copy has layer None, whose save said "layer None"
    e = Explainer(*toy, method=method).explain(sample.image, response="a red circle")
    e.save(str(tmp_path / "a"))
    back = load_explanation(str(tmp_path / "a"))
    back.save(str(tmp_path / "b"))
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["layer"] == (e.layer if layer_shown else None)
    for folder in ("a", "b"):
        summary = _summary_of((tmp_path / folder / "index.html").read_text(encoding="utf-8"))
        assert summary.startswith(f"{method}, layer {e.layer}, probe " if layer_shown else f"{method}, probe ")
    # the sheet's title is the only thing that could tell them apart (the overlays are drawn on image.png,
    # which is the image at the size the sheet uses)
    assert (tmp_path / "a" / "contact_sheet.png").read_bytes() == (tmp_path / "b" / "contact_sheet.png").read_bytes()


def test_the_notebook_page_refuses_the_maps_overlay_refuses(toy, sample):
    # _repr_html_ drew a NaN as 0 and 5.0 as 1, where overlay() and save() refuse them
    import base64

    from dcam.render.html import encode_maps

    e = Explainer(*toy).explain(sample.image, response="a red circle")
    e.maps = e.maps.clone()
    e.maps[1, 0, 0] = float("nan")
    with pytest.raises(InputError, match=rf"^maps\[1\] \(word {e.word_numbers[1]} '{e.tokens[1]}'\): a map must be "
                                         r"finite"):
        e._repr_html_()
    e.maps[1, 0, 0] = 5.0
    with pytest.raises(InputError, match=r"^maps\[1\] .*: a map's values must be in \[0, 1\], got values in \[0, 5\]$"):
        e._repr_html_()
    with pytest.raises(InputError, match=r"^maps: a map must be finite, got 1 NaN/Inf value\(s\)$"):
        encode_maps(np.array([[0.5, np.nan]], np.float32))
    with pytest.raises(InputError, match=r"^maps: a map's values must be in \[0, 1\]"):
        encode_maps(np.array([[0.5, -0.01]], np.float32))
    # within the tolerance overlay() allows: drawn as 0 and 1; 0.5 -> 127.5, rounded half to even -> 128
    q = base64.b64decode(encode_maps(np.array([[0.5, 1 + 5e-7, -5e-7]], np.float32)))
    assert list(q) == [128, 255, 0]


def test_write_files_and_load_take_the_path_types_save_takes(toy, sample, tmp_path):
    # write_files(None) and write_files(b"...") were raw TypeErrors; load_explanation refused the bytes
    # path save() took
    import pathlib

    e = Explainer(*toy).explain(sample.image, response="a red circle")
    (tmp_path / "s").mkdir()
    (tmp_path / "b").mkdir()
    for bad, name in ((None, "NoneType"), (5, "int")):
        with pytest.raises(InputError, match=rf"^folder: expected a path, got {name}$"):
            e.write_files(bad)
    paths = e.write_files(os.fsencode(str(tmp_path / "b")))
    assert paths["meta"] == os.path.join(str(tmp_path / "b"), "meta.json")
    e.write_files(str(tmp_path / "s"))
    assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "s"))
    for folder in (os.fsencode(str(tmp_path / "b")), pathlib.Path(tmp_path / "b"), str(tmp_path / "b")):
        back = load_explanation(folder)
        assert back.tokens == e.tokens and torch.equal(back.maps, e.maps.float())
    with pytest.raises(InputError, match=r"^folder: expected a path, got int$"):
        load_explanation(5)


def test_load_takes_the_rounding_save_takes_at_both_ends(toy, sample, tmp_path):
    # a value 5e-7 below 0 (inside MAP_TOLERANCE, 1e-6) was saved, then refused by load_explanation,
    # which allowed 1 + 1e-6 at the top only
    from safetensors.torch import load_file, save_file

    from dcam.output import file_digest

    e = Explainer(*toy).explain(sample.image, response="a red circle")
    e.maps = e.maps.clone()
    e.maps[0, 0, 0], e.maps[0, 0, 1] = -5e-7, 1 + 5e-7
    e.save(str(tmp_path / "ok"))
    back = load_explanation(str(tmp_path / "ok"))
    assert float(back.maps[0, 0, 0]) == pytest.approx(-5e-7, abs=1e-12)
    assert float(back.maps[0, 0, 1]) == pytest.approx(1 + 5e-7, abs=1e-7)
    for value in (-2e-6, 1 + 2e-6):  # past the tolerance: save refuses, and so does load (a file edited by hand)
        e.maps[0, 0, 0] = value
        with pytest.raises(InputError, match=r"^maps\[0\] .*: a map's values must be in \[0, 1\]"):
            e.save(str(tmp_path / "bad"))
        folder = tmp_path / f"edited{value}"
        shutil.copytree(tmp_path / "ok", folder)
        tensors = load_file(str(folder / "maps.safetensors"))
        tensors["maps"][0, 0, 0] = value
        save_file(tensors, str(folder / "maps.safetensors"))
        meta = json.loads((folder / "meta.json").read_text())
        meta["maps_sha256"] = file_digest(str(folder / "maps.safetensors"))
        (folder / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(InputError, match=r"maps.safetensors: maps holds values outside \[0, 1\]$"):
            load_explanation(str(folder))


def test_a_view_of_a_one_view_explanation_is_refused_without_telling_to_pass_view_all(toy, sample):
    # the bundled model has one view: view="all" keeps no view maps, and the refusal of a view told the caller,
    # who had passed view="all", to pass it
    e = Explainer(*toy, view="all").explain(sample.image, steps=4)
    assert e.view_maps == {}
    with pytest.raises(InputError) as info:
        e.map(0, view="highres")
    assert str(info.value) == ("view: 'highres' is not among this explanation's views (none: it holds one view's "
                               "maps, .maps; view='all' keeps each view's where the model has several)")
    assert "view='all' for every" not in str(info.value)
