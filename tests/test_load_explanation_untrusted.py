"""A saved explanation from a folder someone else wrote: meta.json's image_size is the size the loaded image is
made at, so a claim of [60000, 60000] beside a 1x1 image.png took 10.8 GB (a MemoryError, or the OOM killer
ending the process). It is held to Pillow's refusal size, 2 x PIL.Image.MAX_IMAGE_PIXELS (no image file dcam
reads is larger), which a user loading a folder they trust can raise. The limit is lowered here so that the
sizes stay small (to 40000 pixels: image.png, 256x256, is under the refusal size of 80000). And
``write_files`` into a folder others can write to never writes through a link put at one of its names."""
import json

import numpy as np
import pytest
from PIL import Image

import dcam
from dcam.errors import InputError
from dcam.testing import tiny_toy

# (image.png is past the lowered limit's warning size: Pillow warns, as it should)
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved explanation of a 32x32 image (image.png: square)."""
    folder = tmp_path_factory.mktemp("saved") / "e"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    dcam.Explainer(*tiny_toy()).explain(image, response="red circle").save(folder)
    return folder


def _claiming(saved, tmp_path, size):
    import shutil

    folder = tmp_path / "claim"
    shutil.copytree(saved, folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["image_size"] = size
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_an_image_size_past_pillows_refusal_size_is_refused_in_one_line(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40000)  # refusal size 80000 pixels
    folder = _claiming(saved, tmp_path, [283, 283])  # 80089 pixels, the aspect of image.png
    with pytest.raises(InputError) as info:
        dcam.load_explanation(folder)
    assert str(info.value) == (
        f"folder: {str(folder)!r}'s meta.json: image_size [283, 283] (80089 pixels) is past Pillow's "
        "decompression-bomb limit of 80000 pixels (2 x PIL.Image.MAX_IMAGE_PIXELS), the largest image dcam reads from a file; raise "
        "PIL.Image.MAX_IMAGE_PIXELS to load a folder you trust")


def test_an_image_size_within_the_limit_loads_at_that_size(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40000)
    assert dcam.load_explanation(_claiming(saved, tmp_path, [282, 282])).image.size == (282, 282)  # 79524 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own switch for no limit
    assert dcam.load_explanation(_claiming(saved, tmp_path / "b", [283, 283])).image.size == (283, 283)


@pytest.mark.parametrize("name", ["meta.json", "00_red.png", "maps.safetensors"])
def test_write_files_never_writes_through_a_link_in_the_folder(saved, tmp_path, name):
    # write_files() writes straight into an existing folder: a link put at one of its names (in a folder others
    # can write to) had the file it pointed to overwritten (the PNGs, the tensors and meta.json were opened for
    # writing through it); now refused before the first file
    e = dcam.load_explanation(saved)
    folder, victim = tmp_path / "shared", tmp_path / "victim.json"
    folder.mkdir()
    victim.write_text("{}\n")
    (folder / name).symlink_to(victim)
    with pytest.raises(InputError) as info:
        e.write_files(folder)
    assert str(info.value) == (
        f"folder: {str(folder / name)!r} is a symbolic link (to {str(victim)!r}), where the explanation writes its "
        f"file {name}; dcam writes into the folder, never through a link (remove it, or save into a new folder)")
    assert victim.read_text() == "{}\n" and sorted(p.name for p in folder.iterdir()) == [name]
