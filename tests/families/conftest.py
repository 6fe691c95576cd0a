"""Fixtures of the family tests: the stand-in / tiny models (built once per
session, shared read-only), test images and a tiny COCO-style data set."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def landscape():
    """40 x 72 pixels (h x w): the image the hand-worked grids below refer to."""
    return _image(40, 72)


@pytest.fixture(scope="session")
def wide():
    """40 x 100 pixels: wide enough that unpadding crops columns."""
    return _image(40, 100, seed=1)


class _Models:
    """Every family's tiny model, built on first use (seed 0)."""

    def __init__(self):
        self.cache = {}

    def __call__(self, name):
        if name not in self.cache:
            from dcam.testing.standins import STANDINS

            self.cache[name] = STANDINS[name](seed=0)
        return self.cache[name]


@pytest.fixture(scope="session")
def models():
    return _Models()


@pytest.fixture(scope="session")
def coco_dir(tmp_path_factory):
    """One 48 x 72 image with a 'dog' (red rectangle) and a 'person' (blue
    diamond), COCO layout (images/ and annotations/instances_val.json)."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    img = Image.new("RGB", (72, 48), (240, 240, 240))
    d = ImageDraw.Draw(img)
    d.rectangle([4, 6, 30, 40], fill=(200, 40, 40))
    d.polygon([(40, 24), (53, 8), (66, 24), (53, 40)], fill=(40, 40, 200))
    img.save(root / "images" / "0.png")
    anns = [dict(id=1, image_id=0, category_id=1, segmentation=[[4, 6, 30, 6, 30, 40, 4, 40]]),
            dict(id=2, image_id=0, category_id=2, segmentation=[[40, 24, 53, 8, 66, 24, 53, 40]])]
    data = dict(images=[dict(id=0, file_name="0.png", width=72, height=48)], annotations=anns,
                categories=[dict(id=1, name="dog"), dict(id=2, name="person")])
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


def _hooked_batch_sizes(exp, run):
    """(``run()``, the batch size of every forward of the explainer's hooked block during it)."""
    seen = []
    h = exp.adapter.blocks()[exp.layer].register_forward_hook(lambda m, a, o: seen.append(int(a[0].shape[0])))
    try:
        return run(), seen
    finally:
        h.remove()


@pytest.fixture
def hooked_batch_sizes():
    """``hooked_batch_sizes(exp, run)`` -> (``run()``, the batch size of every forward of the explainer's
    hooked block during it): how many forwards a batch took, and of how many rows."""
    return _hooked_batch_sizes


@pytest.fixture
def seeded():
    torch.manual_seed(0)


@pytest.fixture
def documented_adapter():
    """``documented_adapter()`` -> (MyAdapter, a MyDMLLM, an image) of docs/FAMILIES.md's
    bring-your-own example, run from the page itself, its registration undone."""
    import pathlib
    import re

    from dcam.probe.adapters import ADAPTERS

    def make():
        doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "FAMILIES.md").read_text()
        block = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "class MyAdapter" in b][0]
        before = list(ADAPTERS)
        space = {}
        try:
            exec(compile(block[:block.index("image = Image.new")], "FAMILIES.md", "exec"), space)
        finally:
            ADAPTERS[:] = before  # the example's registration must not leak into other tests
        return space["MyAdapter"], space["MyDMLLM"]().eval(), space["Image"].new("RGB", (64, 48))
    return make


@pytest.fixture
def second_block_adapter():
    """``second_block_adapter()`` -> a new subclass of the bundled toy's adapter that hooks block 1."""
    def make():
        from dcam.probe.adapters import ShapesAdapter

        class SecondBlock(ShapesAdapter):
            def default_layer(self):
                return 1
        return SecondBlock
    return make
