"""What an explanation carries besides its maps: the trajectory of the model's
own generation, the HTML page, and maps of a model that saw a crop placed
where it looked."""
import json
import os

import numpy as np
import pytest
import torch

from dcam.cli import main
from dcam.errors import InputError
from dcam.eval.alignment import word_maps
from dcam.explain import Explainer
from dcam.render.overlay import map_on_image, upsample_map
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
