"""A loaded explanation renders as the one that was saved: its image comes back at the size of the
image explained (meta.json's image_size), not at the display size image.png was rendered at, so its
overlays (of every view, with view="all"), its meta() and a save of it again have the original's pixel
sizes and placement. It came back at image.png's size: a 45x29 image's overlays were 405x261 after a
reload (image.png holds it scaled up 9 times, to a shortest side of at least 256 pixels), a 1300x700
one's 1024x551 (scaled down to a longest side of 1024).

At alpha 1 an overlay is the placed heatmap alone (the image is weighted 0): the original's and the
loaded copy's must then be the same pixels, wherever the map sits."""
import json

import numpy as np
import pytest
from PIL import Image

import dcam
from dcam.errors import InputError
from dcam.testing import tiny_toy
from dcam.testing.views import TwoViewAdapter


@pytest.fixture(scope="module")
def explainer():
    model, proc = tiny_toy()
    return dcam.Explainer(adapter=TwoViewAdapter(model, proc), view="all")


def _image(w, h):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


# (the image's size, image.png's: display_size's whole factor 9 up to a 256-pixel side (29 * 9 = 261),
# or down to 1024 pixels at most (1300 x 700 * 1024 / 1300 = 1024 x 551.4))
@pytest.mark.parametrize("size, rendered", [((45, 29), (405, 261)), ((1300, 700), (1024, 551))])
def test_a_loaded_view_all_explanation_renders_at_the_sizes_and_places_of_the_saved_one(explainer, tmp_path,
                                                                                      size, rendered):
    e = explainer.explain(_image(*size), response="red circle", probe="full")
    assert sorted(e.view_maps) == ["bottom", "top"]
    e.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert tuple(meta["rendered_size"]) == rendered and tuple(meta["image_size"]) == size
    back = dcam.load_explanation(tmp_path / "a")
    assert back.image.size == size  # (was image.png's, `rendered`)
    assert back.view_boxes == e.view_boxes and back.box == e.box
    for view in (None, "top", "bottom"):
        for k in range(len(e.tokens)):
            mine, loaded = e.overlay(k, view=view, alpha=1.0), back.overlay(k, view=view, alpha=1.0)
            assert loaded.size == mine.size == size
            assert np.array_equal(np.asarray(loaded), np.asarray(mine)), (view, k)
        assert back.overlay(0, view=view).size == size
    assert back.meta() == e.meta()
    # saved again: the same files (image.png drawn on again, not the copy scaled back to it)
    back.save(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "meta.json").read_text()) == meta
    pngs = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert len(pngs) == len(e.tokens) + 2  # the overlays, contact_sheet.png, image.png
    for name in pngs:
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    # not once its image is another (of the same size): drawn on that one
    back.image = Image.new("RGB", size, (0, 0, 255))
    back.save(tmp_path / "c")
    with Image.open(tmp_path / "c" / "image.png") as im:
        assert im.size == rendered and (np.asarray(im) == (0, 0, 255)).all()


def test_a_folder_without_image_size_loads_image_png_as_it_is(explainer, tmp_path):
    e = explainer.explain(_image(45, 29), response="red circle", probe="full")
    e.save(tmp_path / "a")
    path = tmp_path / "a" / "meta.json"
    meta = json.loads(path.read_text())
    del meta["image_size"]  # (meta.json's digest is not kept: the folder loads as an older save's)
    path.write_text(json.dumps(meta))
    assert dcam.load_explanation(tmp_path / "a").image.size == (405, 261)


@pytest.mark.parametrize("bad, why", [
    ([0, 29], r"image_size must be two positive whole numbers \[W, H\], got \[0, 29\]"),
    ([45.0, 29], r"image_size must be two positive whole numbers \[W, H\], got \[45.0, 29\]"),
    ("45x29", r"image_size must be two positive whole numbers"),
    # 405x261 is 1.552 wide per tall, 45x45 is 1: not the image it was rendered from
    ([45, 45], r"image_size \[45, 45\] is not the size of an image that image.png \(405x261\) was rendered "
               r"from \(another aspect ratio\)$"),
])
def test_an_image_size_that_is_no_size_of_image_png_is_refused(explainer, tmp_path, bad, why):
    e = explainer.explain(_image(45, 29), response="red circle", probe="full")
    e.save(tmp_path / "a")
    path = tmp_path / "a" / "meta.json"
    meta = json.loads(path.read_text())
    meta["image_size"] = bad
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"^folder: '.*'s meta.json: " + why):
        dcam.load_explanation(tmp_path / "a")
