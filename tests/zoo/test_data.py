"""Tests of the grounded-shapes data set (dcam.data)."""
import numpy as np
import pytest
from PIL import Image

from dcam.zoo.data import (COLOURS, FILLER_WORDS, MIN_VISIBLE, SHAPES, ShapesDataset, generate_sample, make_split,
                       split_seed)


@pytest.fixture(scope="module")
def samples():
    return make_split("test", 60)


def test_determinism_by_seed():
    a = ShapesDataset("train", 10)[7]
    b = ShapesDataset("train", 10, cache=False)[7]
    c = generate_sample(split_seed("train", 7))
    for s in (b, c):
        assert s.caption == a.caption
        assert np.array_equal(np.asarray(s.image), np.asarray(a.image))
        assert np.array_equal(s.mask, a.mask)
    d = ShapesDataset("train", 10)[8]
    assert not np.array_equal(np.asarray(d.image), np.asarray(a.image))
    e = ShapesDataset("train", 10, base_seed=1)[7]
    assert not np.array_equal(np.asarray(e.image), np.asarray(a.image))


def test_splits_disjoint():
    seeds = {sp: {ShapesDataset(sp, 50)[i].seed for i in range(50)} for sp in ("train", "val", "test")}
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"] and not seeds["val"] & seeds["test"]
    imgs = {sp: {np.asarray(s.image).tobytes() for s in make_split(sp, 50)} for sp in ("train", "val", "test")}
    assert not imgs["train"] & imgs["val"] and not imgs["train"] & imgs["test"] and not imgs["val"] & imgs["test"]


def test_sample_format(samples):
    for s in samples:
        assert isinstance(s.image, Image.Image) and s.image.mode == "RGB" and s.image.size == (64, 64)
        assert s.mask.shape == (64, 64) and s.mask.dtype == np.int64
        assert s.words == s.caption.split()
        assert len(s.word_labels) == len(s.words)
        assert 1 <= len(s.objects) <= 3


def test_mask_labels_match_objects_and_words(samples):
    for s in samples:
        k = len(s.objects)
        assert sorted(np.unique(s.mask).tolist()) == list(range(k + 1))
        for j, ob in enumerate(s.objects):
            assert ob["label"] == j + 1 and ob["colour"] in COLOURS and ob["shape"] in SHAPES
            ys, xs = np.nonzero(s.mask == ob["label"])
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(ob["bbox"])
            assert ob["visible"] >= MIN_VISIBLE
            # the object's pixels carry (roughly) its colour
            rgb = np.asarray(s.image)[s.mask == ob["label"]].astype(float).mean(0)
            nearest = min(COLOURS, key=lambda c: np.sum((np.asarray(COLOURS[c]) - rgb) ** 2))
            assert nearest == ob["colour"]
        for w, lab in zip(s.words, s.word_labels):
            if w in FILLER_WORDS:
                assert lab == 0
            else:
                ob = s.objects[lab - 1]
                assert w in (ob["colour"], ob["shape"])


def test_caption_order_left_to_right(samples):
    seen_multi = 0
    for s in samples:
        xs = [np.nonzero(s.mask == ob["label"])[1].mean() for ob in s.objects]
        assert xs == sorted(xs)
        expected = " and ".join(f"a {ob['colour']} {ob['shape']}" for ob in s.objects)
        assert s.caption == expected
        seen_multi += len(s.objects) > 1
    assert seen_multi > 10


def test_class_coverage():
    ss = make_split("train", 200)
    assert {ob["shape"] for s in ss for ob in s.objects} == set(SHAPES)
    assert {ob["colour"] for s in ss for ob in s.objects} == set(COLOURS)
    assert {len(s.objects) for s in ss} == {1, 2, 3}


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("bogus", 3)
    with pytest.raises(ValueError, match="n_objects"):
        generate_sample(0, n_objects=5)
    with pytest.raises(ValueError, match="image_size"):
        generate_sample(0, image_size=8)
    with pytest.raises(IndexError):
        ShapesDataset("test", 3)[3]


def test_forced_object_count_and_other_size():
    s = generate_sample((0, 9, 1), image_size=96, n_objects=3)
    assert len(s.objects) == 3 and s.mask.shape == (96, 96)
