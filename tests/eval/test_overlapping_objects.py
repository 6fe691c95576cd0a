"""Objects that overlap are each scored against their own mask, whole.

A TAM ``"masks"`` list (one binary mask per object) was painted into one label mask in list order:
a later mask took the pixels it shared with an earlier one, whose word was scored against less than
its own mask, or skipped as "label not in the mask" when wholly covered. COCO instances were painted
largest first: a large instance lost the pixels smaller ones shared with it. The expected numbers
below are computed with numpy (dcam.testing.support.hand_metrics), from the mask files as written,
independently of dcam.metrics."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.eval import datasets as DS
from dcam.eval.alignment import word_maps
from dcam.eval.metrics import object_metrics
from dcam.eval.runner import _Scorer
from dcam.testing.support import hand_metrics

H = W = 16


def scored(rec, maps):
    """Each object word's row, scored as dcam eval scores a record (runner._Scorer)."""
    sc = _Scorer()
    sc.add("m", rec, {i: torch.from_numpy(maps[i]) for i in rec.object_indices}, "main")
    return {r["word"]: r for r in sc.rows if r["kind"] == "object"}


def random_maps(rec, seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.random((H, W)).astype(np.float32) for i in range(len(rec.words))}


def assert_rows_match(rows, maps, rec, want_objects):
    for word, objects in want_objects.items():
        i = rec.words.index(word)
        want = hand_metrics(maps[i], objects)
        for k, v in want.items():
            assert rows[word][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (word, k)


def tam_folder(root, masks, categories, caption):
    os.makedirs(root, exist_ok=True)
    Image.new("RGB", masks[0].shape[::-1], (0, 0, 0)).save(os.path.join(root, "img.png"))
    names = []
    for j, m in enumerate(masks):
        names.append(f"m{j + 1}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(os.path.join(root, names[-1]))
    with open(os.path.join(root, "anno.json"), "w") as f:
        json.dump([{"id": "r0", "image": "img.png", "caption": caption, "masks": names,
                    "categories": categories}], f)


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_tam_masks_that_overlap_score_each_object_against_its_own_mask(tmp_path):
    circle, square = box(4, 8, 4, 8), box(6, 14, 6, 14)  # the square (listed second) covers 4 px of the circle
    tam_folder(str(tmp_path), [circle, square], {"red circle": 1, "blue square": 2},
               "a red circle and a blue square")
    rec = next(DS.load_tam(str(tmp_path)).records())
    maps = random_maps(rec)
    rows = scored(rec, maps)
    assert_rows_match(rows, maps, rec, {"circle": [circle], "red": [circle], "square": [square],
                                        "blue": [square]})
    # the circle's ground truth is its 16 pixels, not the 12 the square left it
    assert rec.word_truth(rec.words.index("circle")).sum() == 16


def test_a_tam_mask_wholly_covered_by_a_later_one_is_still_scored(tmp_path):
    circle, square = box(4, 8, 4, 8), box(2, 14, 2, 14)  # the circle lies inside the square
    tam_folder(str(tmp_path), [circle, square], {"red circle": 1, "blue square": 2},
               "a red circle and a blue square")
    ds = DS.load_tam(str(tmp_path))
    recs = list(ds.records())  # (was skipped: "label(s) [1] of 'red circle' not in the mask")
    assert ds.skipped == [] and len(recs) == 1
    maps = random_maps(recs[0], seed=1)
    assert_rows_match(scored(recs[0], maps), maps, recs[0], {"circle": [circle], "square": [square]})


def test_one_word_naming_two_overlapping_objects_takes_the_best_whole_one(tmp_path):
    a, b, cup = box(2, 10, 2, 10), box(6, 14, 6, 14), box(0, 3, 12, 16)
    tam_folder(str(tmp_path), [a, b, cup], {"square": [1, 2], "circle": 3}, "a square and a circle")
    rec = next(DS.load_tam(str(tmp_path)).records())
    maps = random_maps(rec, seed=2)
    maps[rec.words.index("square")] = np.where(a, 0.9, 0.1).astype(np.float32)  # it lights object 1, whole
    rows = scored(rec, maps)
    assert_rows_match(rows, maps, rec, {"square": [a, b], "circle": [cup]})
    assert rows["square"]["obj_iou"] == 1.0  # (object 1 painted under object 2 fitted it at 48/64)


def test_tam_masks_that_do_not_overlap_keep_one_label_mask(tmp_path):
    circle, square = box(1, 5, 1, 5), box(8, 14, 8, 14)
    tam_folder(str(tmp_path), [circle, square], {"red circle": 1, "blue square": 2},
               "a red circle and a blue square")
    rec = next(DS.load_tam(str(tmp_path)).records())
    assert rec.objects is None  # the label mask says it all
    np.testing.assert_array_equal(rec.mask, circle * 1 + square * 2)
    maps = random_maps(rec, seed=3)
    assert_rows_match(scored(rec, maps), maps, rec, {"circle": [circle], "square": [square]})


def test_coco_instances_that_overlap_score_each_instance_whole(tmp_path):
    root = str(tmp_path / "coco")
    os.makedirs(os.path.join(root, "annotations"))
    os.makedirs(os.path.join(root, "val2017"))
    Image.new("RGB", (W, H), (0, 0, 0)).save(os.path.join(root, "val2017", "a.png"))
    table, cup = box(4, 14, 2, 14), box(2, 8, 6, 10)  # the cup (smaller, painted on top) covers 8 px of the table

    def rle(m):  # COCO's uncompressed RLE: column-major runs, starting with a run of zeros
        flat = m.T.ravel().astype(np.int64)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        return {"size": [H, W], "counts": np.diff(np.concatenate([[0], edges])).tolist()}
    inst = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle(table)},
                            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": rle(cup)}],
            "categories": [{"id": 1, "name": "dining table"}, {"id": 2, "name": "cup"}]}
    with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as f:
        json.dump(inst, f)
    rec = next(DS.open_dataset(root).records())
    np.testing.assert_array_equal(DS.decode_rle(rle(table)).astype(bool), table)  # (the fixture's own RLE)
    maps = random_maps(rec, seed=4)
    assert_rows_match(scored(rec, maps), maps, rec, {"table": [table], "cup": [cup]})


def test_object_metrics_takes_stacks_of_whole_objects():
    rng = np.random.default_rng(5)
    maps = rng.random((3, H, W)).astype(np.float32)
    a, b, c = box(2, 10, 2, 10), box(6, 14, 6, 14), box(12, 16, 0, 4)
    truths = [np.stack([a, b]), np.stack([c]), a.astype(np.int64) * 7]  # stacks of 2 and 1, a label mask
    res = object_metrics(torch.from_numpy(maps), truths)
    for k, objs in enumerate([[a, b], [c], [a]]):
        want = hand_metrics(maps[k], objs)
        for name, v in want.items():
            assert res[name][k].item() == pytest.approx(v, rel=1e-9, abs=1e-12), (k, name)
    # objects that do not overlap: the same numbers as their label mask
    same = object_metrics(torch.from_numpy(maps[:1]), [np.stack([a, c])])
    label = object_metrics(torch.from_numpy(maps[:1]), [a * 1 + c * 2])
    for name in ("obj_iou", "contrast", "concentration", "f3"):
        assert same[name][0].item() == pytest.approx(label[name][0].item(), rel=1e-12)


def test_dcam_run_on_a_data_folder_scores_overlapping_objects_whole(tmp_path):
    """`dcam run` reads COCO / TAM folders with the same loaders; its metrics took the painted mask."""
    from dcam import Explainer
    from dcam.runs.records import ground_truth, record_metrics
    from dcam.runs.sources import open_source
    from dcam.testing import tiny_toy

    circle, square = np.zeros((8, 8), bool), np.zeros((8, 8), bool)  # the toy's 8x8 grid: maps need no resize
    circle[1:4, 1:4] = True
    square[2:7, 2:7] = True  # listed second, it shares 4 of the circle's 9 pixels
    tam_folder(str(tmp_path), [circle, square], {"red circle": 1, "blue square": 2},
               "a red circle and a blue square")
    rec = open_source(str(tmp_path)).load(0)
    model, proc = tiny_toy(0, layers=3, image_size=64)
    e = Explainer(model, proc).explain(rec.image, response=rec.response)
    truth = ground_truth(rec, e)
    got = record_metrics(e, truth)
    wmaps = {i: m.numpy() for i, m in word_maps(e, truth.words).items()}
    objects = {"red": circle, "circle": circle, "blue": square, "square": square}
    assert [truth.words[i] for i in got["object"]["words"]] == list(objects)
    for k, i in enumerate(got["object"]["words"]):
        want = hand_metrics(wmaps[i], [objects[truth.words[i]]])
        for name, v in want.items():
            assert got["object"][name][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (truth.words[i], name)


def test_a_records_objects_are_checked_like_its_mask():
    from dcam.eval.datasets.base import RecordError, check_record, make_record

    circle, square = box(4, 8, 4, 8), box(6, 14, 6, 14)
    words = ["a", "circle", "and", "a", "square"]
    labels = [(), (1,), (), (), (2,)]
    image = Image.new("RGB", (W, H))
    ok = make_record("r", image, " ".join(words), words, circle * 1, labels, objects=np.stack([circle, square]))
    check_record(ok)  # label 2 is not in the label mask given, but it is in objects, whole
    for objects, message in [
            (np.stack([circle, square])[:, :8], "objects' masks are 8x16, image 16x16"),
            (np.stack([circle, square]).astype(np.uint8), "objects must be a bool [L, H, W] array"),
            (np.stack([circle]), "label(s) [2] of 'square' not in the mask")]:
        with pytest.raises(RecordError) as info:
            check_record(make_record("r", image, " ".join(words), words, circle * 1, labels, objects=objects))
        assert str(info.value).startswith(message)
