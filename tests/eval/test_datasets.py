"""dcam.datasets: COCO (polygon, RLE list, RLE string) and TAM fixtures built
here, bad records reported and skipped, layout detection, the shapes set."""
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from dcam.errors import InputError
from dcam.eval import datasets as DS


# ----------------------------------------------------------------- RLE


def encode_counts(counts):
    """Independent encoder of COCO's compressed RLE string (the inverse of the
    documented format: deltas from the 3rd count on, 5-bit groups, 0x20
    continuation, sign from bit 0x10 of the last group)."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        while True:
            g = x & 0x1F
            x >>= 5
            more = (x != -1) if (g & 0x10) else (x != 0)
            if more:
                g |= 0x20
            out.append(chr(g + 48))
            if not more:
                break
    return "".join(out)


def mask_to_counts(m):
    flat = m.T.reshape(-1)  # column-major
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def test_rle_string_hand_examples():
    # small counts are single characters '0' + value
    assert DS.rle_string_to_counts("054") == [0, 5, 4]
    # 4th count stored as delta to the 2nd: 2 - 5 = -3 -> group 29 ('M'), sign bit set
    assert DS.rle_string_to_counts("151M") == [1, 5, 1, 2]
    m = DS.decode_rle({"size": [3, 3], "counts": "151M"})
    assert m.tolist() == [[0, 1, 0], [1, 1, 1], [1, 1, 1]]
    # uncompressed counts, column-major: 4x3 image, pixels 1..2 of column 0 set
    m = DS.decode_rle({"size": [4, 3], "counts": [1, 2, 9]})
    assert m.tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_rle_string_round_trip():
    rng = np.random.default_rng(0)
    for shape in [(7, 5), (40, 33), (64, 80)]:
        m = (rng.random(shape) < 0.3).astype(np.uint8)
        m[5:, 2:] = 1  # long runs -> multi-group and negative deltas
        counts = mask_to_counts(m)
        s = encode_counts(counts)
        assert DS.rle_string_to_counts(s) == counts
        np.testing.assert_array_equal(DS.decode_rle({"size": list(shape), "counts": s}), m)
        np.testing.assert_array_equal(DS.decode_rle({"size": list(shape), "counts": counts}), m)


def test_rle_errors():
    with pytest.raises(ValueError):
        DS.decode_rle({"size": [3, 3], "counts": [1, 2]})  # wrong total
    with pytest.raises(ValueError):
        DS.rle_string_to_counts("1\x7f")
    with pytest.raises(ValueError):
        DS.rle_string_to_counts("P")  # continuation bit with nothing after


def test_polygon_mask():
    m = DS.polygons_to_mask([[2, 2, 5, 2, 5, 5, 2, 5]], 8, 10)
    assert m.shape == (8, 10)
    assert m.sum() == 16 and m[2:6, 2:6].all()
    with pytest.raises(ValueError, match="needs >= 3"):  # < 3 points: the object would lose its ground truth
        DS.polygons_to_mask([[1, 1, 2, 2]], 4, 4)


# ----------------------------------------------------------------- COCO fixture

def _img(path, w, h, color=(120, 130, 140)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)


def make_coco(root, with_captions=True):
    W, H = 10, 8
    _img(os.path.join(root, "val2017", "a.png"), W, H)
    _img(os.path.join(root, "val2017", "b.png"), W, H)
    _img(os.path.join(root, "val2017", "c.png"), W + 1, H)  # size mismatch
    _img(os.path.join(root, "val2017", "e.png"), W, H)
    dog = np.zeros((H, W), np.uint8)
    dog[0:3, 6:9] = 1
    images = [
        {"id": 1, "file_name": "a.png", "height": H, "width": W},
        {"id": 2, "file_name": "b.png", "height": H, "width": W},
        {"id": 3, "file_name": "c.png", "height": H, "width": W},
        {"id": 4, "file_name": "missing.png", "height": H, "width": W},
        {"id": 5, "file_name": "e.png", "height": H, "width": W},
        {"id": 6, "file_name": "a.png", "height": H, "width": W},  # no annotation: not a candidate
    ]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 5, 2, 5, 5, 2, 5]]},
        {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": encode_counts(mask_to_counts(dog))}},
        {"id": 12, "image_id": 2, "category_id": 3, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": mask_to_counts(dog)}},
        {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 4, 3, 4, 3, 7, 0, 7]]},
        {"id": 14, "image_id": 3, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]},
        {"id": 15, "image_id": 4, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]},
        {"id": 16, "image_id": 5, "category_id": 2, "iscrowd": 1,
         "segmentation": {"size": [H + 1, W], "counts": [(H + 1) * W]}},  # RLE of the wrong size
    ]
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "teddy bear"}]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    if with_captions:
        caps = [{"id": 101, "image_id": 1, "caption": "Two men, and a puppy."},
                {"id": 100, "image_id": 1, "caption": "A man with his dog on the grass."},
                {"id": 102, "image_id": 2, "caption": "A woman holds teddy bears and a cat."}]
        with open(os.path.join(root, "annotations", "captions_val2017.json"), "w") as f:
            json.dump({"annotations": caps}, f)


def test_coco_loader(tmp_path):
    root = str(tmp_path / "coco")
    make_coco(root)
    assert DS.detect_layout(root) == "coco"
    ds = DS.open_dataset(root, split="val")
    assert ds.kind == "coco" and len(ds) == 5
    with pytest.warns(UserWarning, match="skipped record"):
        recs = list(ds.records())
    assert [r.record_id for r in recs] == ["1", "2"]
    reasons = dict(ds.skipped)
    assert set(reasons) == {"3", "4", "5"}
    assert "10x11" in reasons["3"] or "8x11" in reasons["3"]
    assert "no such file" in reasons["4"] and "missing.png" in reasons["4"]
    assert "RLE" in reasons["5"] or "mask is" in reasons["5"]

    r1 = recs[0]
    # lowest caption annotation id wins
    assert r1.caption == "A man with his dog on the grass."
    assert r1.words == ["a", "man", "with", "his", "dog", "on", "the", "grass"]
    person, dog = r1.word_labels[1], r1.word_labels[4]
    assert person and dog and person != dog
    pm = r1.word_mask(1)
    assert (pm > 0).sum() == 16 and (pm[2:6, 2:6] > 0).all()
    dm = r1.word_mask(4)
    assert (dm > 0).sum() == 9 and (dm[0:3, 6:9] > 0).all()
    assert r1.word_mask(7) is None  # "grass": not a category, not scored
    assert r1.function == [True, False, True, True, False, True, True, False]
    assert r1.object_indices == [1, 4] and r1.function_indices == [0, 2, 3, 5, 6]

    r2 = recs[1]
    # multi-word category with a plural head; "cat" is not in this image -> not scored
    assert r2.words[3:5] == ["teddy", "bears"]
    assert r2.word_labels[3] == r2.word_labels[4] != ()
    assert r2.word_labels[1] != ()  # woman -> person
    assert r2.words[7] == "cat" and r2.word_labels[7] == ()


def test_coco_annotation_without_pixels_skips_the_record_with_its_reason(tmp_path):
    """An empty polygon list or an all-zero RLE (both occur in real COCO files) gave an empty
    instance mask that was dropped without a word: the record loaded, and a caption word
    naming that object was scored as absent from the image."""
    root = str(tmp_path / "coco")
    make_coco(root)
    path = os.path.join(root, "annotations", "instances_val2017.json")
    data = json.load(open(path))
    data["images"] += [{"id": 7, "file_name": "a.png", "height": 8, "width": 10},
                       {"id": 8, "file_name": "a.png", "height": 8, "width": 10}]
    good = [[2, 2, 5, 2, 5, 5, 2, 5]]
    data["annotations"] += [
        {"id": 20, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": good},
        {"id": 21, "image_id": 7, "category_id": 2, "iscrowd": 0, "segmentation": []},
        {"id": 22, "image_id": 8, "category_id": 1, "iscrowd": 0, "segmentation": good},
        {"id": 23, "image_id": 8, "category_id": 2, "iscrowd": 1, "segmentation": {"size": [8, 10], "counts": [80]}}]
    json.dump(data, open(path, "w"))
    ds = DS.open_dataset(root, split="val")
    with pytest.warns(UserWarning, match="skipped record"):
        ids = [r.record_id for r in ds.records()]
    assert ids == ["1", "2"]
    reasons = dict(ds.skipped)
    assert reasons["7"] == "annotation 21: its segmentation covers no pixel"
    assert reasons["8"] == "annotation 23: its segmentation covers no pixel"


def test_coco_built_caption(tmp_path):
    root = str(tmp_path / "coco")
    make_coco(root, with_captions=False)
    ds = DS.open_dataset(root, split="val")
    recs = list(ds.records(2))  # the first two entries are good: nothing skipped
    assert ds.skipped == []
    assert recs[0].caption == "a dog and a person in the picture"
    assert recs[0].object_indices == [1, 4]
    assert recs[1].caption == "a person and a teddy bear in the picture"
    assert recs[1].object_indices == [1, 4, 5]


# ----------------------------------------------------------------- TAM fixture

def make_tam(root):
    W, H = 12, 9
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    _img(os.path.join(root, "images", "0.png"), W, H)
    lab = np.zeros((H, W), np.uint8)
    lab[1:4, 1:5] = 1
    lab[5:8, 6:11] = 2
    Image.fromarray(lab).save(os.path.join(root, "masks", "0.png"))
    m1 = np.zeros((H, W), np.uint8)
    m1[0:2, 0:2] = 255
    m2 = np.zeros((H, W), np.uint8)
    m2[6:9, 9:12] = 255
    Image.fromarray(m1).save(os.path.join(root, "masks", "1a.png"))
    Image.fromarray(m2).save(os.path.join(root, "masks", "1b.png"))
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(os.path.join(root, "masks", "big.png"))
    with open(os.path.join(root, "images", "bad.png"), "wb") as f:
        f.write(b"not a png at all")
    anno = [
        {"id": "good-label", "image": "images/0.png", "caption": "A dog chases two balls.",
         "mask": "masks/0.png", "categories": {"dog": 1, "ball": 2}},
        {"id": "good-list", "file_name": "images/0.png", "caption": "a hot dog near the cups",
         "masks": ["masks/1a.png", "masks/1b.png"], "category_map": {"hot dog": 1, "cup": [2]}},
        {"id": "no-mask-file", "image": "images/0.png", "caption": "a dog", "mask": "masks/nope.png",
         "categories": {"dog": 1}},
        {"id": "size", "image": "images/0.png", "caption": "a dog", "mask": "masks/big.png",
         "categories": {"dog": 1}},
        {"id": "label", "image": "images/0.png", "caption": "a dog", "mask": "masks/0.png",
         "categories": {"dog": 3}},
        {"id": "unreadable", "image": "images/bad.png", "caption": "a dog", "mask": "masks/0.png",
         "categories": {"dog": 1}},
        {"id": "no-image", "image": "images/none.png", "caption": "a dog", "mask": "masks/0.png",
         "categories": {"dog": 1}},
    ]
    with open(os.path.join(root, "anno.json"), "w") as f:
        json.dump(anno, f)


def test_tam_loader(tmp_path):
    root = str(tmp_path / "tam")
    make_tam(root)
    assert DS.detect_layout(root) == "tam"
    ds = DS.open_dataset(root)
    assert ds.kind == "tam" and len(ds) == 7
    with pytest.warns(UserWarning, match="skipped record"):
        recs = list(ds.records())
    assert [r.record_id for r in recs] == ["good-label", "good-list"]
    reasons = dict(ds.skipped)
    assert list(reasons) == ["no-mask-file", "size", "label", "unreadable", "no-image"]
    assert "missing mask" in reasons["no-mask-file"]
    assert "10x12" in reasons["size"]
    assert "not in the mask" in reasons["label"]
    assert "cannot read" in reasons["unreadable"] and "bad.png" in reasons["unreadable"]
    assert "no such file" in reasons["no-image"]

    r = recs[0]
    assert r.words == ["a", "dog", "chases", "two", "balls"]
    assert r.word_labels == [(), (1,), (), (), (2,)]
    assert r.function == [True, False, False, False, False]
    assert (r.word_mask(1) > 0).sum() == 12 and (r.word_mask(4) == 2).sum() == 15
    r = recs[1]
    assert r.word_labels == [(), (1,), (1,), (), (), (2,)]
    assert r.size == (9, 12) and (r.mask == 2).sum() == 9 and (r.mask == 1).sum() == 4


def test_records_n_and_detection_errors(tmp_path):
    root = str(tmp_path / "tam")
    make_tam(root)
    ds = DS.load_tam(root)
    assert [r.record_id for r in ds.records(1)] == ["good-label"]
    assert ds.skipped == []
    with pytest.raises(ValueError):
        DS.detect_layout(str(tmp_path / "nothing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="neither"):
        DS.open_dataset(str(tmp_path / "empty"))


def test_shapes_records():
    ds = DS.open_dataset("shapes", split="test", size=3, image_size=64)
    recs = list(ds.records())
    assert len(recs) == 3 and ds.skipped == []
    for r in recs:
        assert r.size == (64, 64) and r.image.size == (64, 64)
        for i, w in enumerate(r.words):
            if w in ("a", "and"):
                assert r.function[i] and r.word_labels[i] == ()
            else:
                m = r.word_mask(i)
                assert m is not None and (m > 0).any() and set(np.unique(m)) <= {0, r.word_labels[i][0]}


def test_tam_entries_with_bad_labels_or_mask_paths_are_skipped_records(tmp_path):
    # "dog" as a label raised a ValueError that stopped the whole run (None a TypeError, 1.9 became
    # label 1); "mask": null looked for a file "None"; "masks": "x.png" was read one character at a
    # time; a float mask's 1.7 was read as label 1
    root = str(tmp_path / "tam")
    make_tam(root)
    H, W = 9, 12
    Image.fromarray(np.full((H, W), 1.7, np.float32)).save(os.path.join(root, "masks", "float.tif"))
    base = {"image": "images/0.png", "caption": "a dog", "mask": "masks/0.png"}
    anno = [dict(base, id="str-label", categories={"dog": "dog"}), dict(base, id="none-label", categories={"dog": None}),
            dict(base, id="float-label", categories={"dog": 1.9}), dict(base, id="bool-label", categories={"dog": True}),
            dict(base, id="null-mask", mask=None, categories={"dog": 1}),
            {"id": "text-masks", "image": "images/0.png", "caption": "a dog", "masks": "masks/0.png",
             "categories": {"dog": 1}},
            dict(base, id="float-mask", mask="masks/float.tif", categories={"dog": 1}),
            dict(base, id="fine", categories={"dog": 1})]
    with open(os.path.join(root, "anno.json"), "w") as f:
        json.dump(anno, f)
    ds = DS.load_tam(root)
    with pytest.warns(UserWarning, match="skipped record"):
        assert [r.record_id for r in ds.records()] == ["fine"]
    reasons = dict(ds.skipped)
    for rid, label in (("str-label", "'dog'"), ("none-label", "None"), ("float-label", "1.9"), ("bool-label", "True")):
        assert reasons[rid] == f"categories['dog'] must be a label (int >= 0) or a list of them, got {label}"
    assert reasons["null-mask"] == "'mask' must be a path, got None"
    assert reasons["text-masks"] == "'masks' must be a list of paths, got 'masks/0.png'"
    assert reasons["float-mask"].endswith("float.tif holds a label that is not a whole number (1.7)")


def test_malformed_coco_files_are_refused_naming_file_and_entry(tmp_path):
    # each of these was a KeyError / ValueError / AttributeError traceback, some only once the model
    # was loaded and the record came up
    def broken(name, edit, captions=False):
        root = str(tmp_path / name)
        make_coco(root)
        path = os.path.join(root, "annotations", ("captions" if captions else "instances") + "_val2017.json")
        with open(path) as f:
            data = json.load(f)
        data = edit(data)
        with open(path, "w") as f:
            json.dump(data, f)
        with pytest.raises(InputError) as info:
            DS.open_dataset(root, split="val2017")
        return str(info.value).replace(path, "FILE")

    def drop(key, k, field):
        def edit(d):
            del d[key][k][field]
            return d
        return edit

    assert broken("a", drop("annotations", 0, "category_id")) == "dataset: FILE: annotations[0] has no 'category_id'"
    assert broken("b", drop("annotations", 2, "image_id")) == "dataset: FILE: annotations[2] has no 'image_id'"
    assert broken("c", drop("categories", 1, "name")) == "dataset: FILE: categories[1] has no 'name'"
    assert broken("d", drop("images", 0, "id")) == "dataset: FILE: images[0] has no 'id'"
    assert broken("e", lambda d: dict(d, annotations=[dict(d["annotations"][0], category_id="abc")])) == \
        "dataset: FILE: annotations[0].category_id must be an integer id, got 'abc'"
    assert broken("f", lambda d: [1, 2]).endswith("FILE has no 'images'; not a COCO instances file")
    for bad in ("--5", "\u00b2", 1.5):  # (int() of "--5" and "²" was a ValueError traceback)
        assert broken(f"i{bad!r}", lambda d, b=bad: dict(d, images=[dict(d["images"][0], id=b)])) == \
            f"dataset: FILE: images[0].id must be an integer id, got {bad!r}"
    assert broken("g", lambda d: dict(d, images={"id": 1})) == "dataset: FILE: 'images' must be a list, got dict"
    assert broken("h", drop("annotations", 0, "caption"), captions=True) == \
        "dataset: FILE: annotations[0] has no 'caption'"
    # a null name or caption was read as the word "None" (a category silently never matched); a height
    # of "abc" or null was a ValueError / TypeError traceback once the record came up
    assert broken("j", lambda d: dict(d, categories=[dict(d["categories"][0], name=None)])) == \
        "dataset: FILE: categories[0].name must be a non-empty string, got None"
    assert broken("k", lambda d: dict(d, annotations=[dict(d["annotations"][0], caption=None)]), captions=True) == \
        "dataset: FILE: annotations[0].caption must be a non-empty string, got None"
    for side, bad in (("height", "abc"), ("width", None), ("height", 64.7)):
        assert broken(f"l{side}{bad!r}", lambda d, s=side, b=bad: dict(d, images=[dict(d["images"][0], **{s: b})])) \
            == f"dataset: FILE: images[0].{side} must be a whole number of pixels, got {bad!r}"


def test_an_explicit_coco_split_the_folder_lacks_is_refused(tmp_path):
    # --split train2017 on a folder of val2017 only evaluated val2017 without a word
    root = str(tmp_path / "coco")
    make_coco(root)
    for split in ("train2017", "test"):  # "test" too: given, it is no default (it gave val2017)
        with pytest.raises(InputError, match=rf"^split: no instances_{split}\*\.json in .* \(its COCO files: "
                                             r"instances_val2017\.json\)$"):
            DS.open_dataset(root, split=split)
    assert DS.open_dataset(root, split="val2017").name == DS.open_dataset(root).name  # the default: val


def test_masks_refuse_non_finite_polygons_and_fractional_run_lengths():
    # a NaN vertex painted 17 pixels of no shape; RLE counts [1.2, 3.4] were truncated to [1, 3]
    with pytest.raises(ValueError, match="NaN or infinite"):
        DS.polygons_to_mask([[1, 1, 3, 1, 3, float("nan")]], 4, 4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        DS.polygons_to_mask([[1, 1, 3, 1, float("inf"), 3]], 4, 4)
    for counts in ([1.2, 2.8], [None, 4], [True, 3], None):
        with pytest.raises(ValueError, match="whole number|must be a list"):
            DS.decode_rle({"size": [2, 2], "counts": counts})
    assert DS.decode_rle({"size": [2, 2], "counts": [1.0, 3]}).tolist() == [[0, 1], [1, 1]]  # 1.0 is a whole 1


def test_repeated_coco_image_or_category_ids_are_refused_naming_the_id(tmp_path):
    # a repeated category id relabelled objects (the later name won: every person became "dog"); a
    # repeated image id paired the later picture with the first one's annotations
    for name, key, extra, msg in (
            ("cat", "categories", {"id": 1, "name": "dog"}, "categories[3].id 1 repeats categories[0].id"),
            ("img", "images", {"id": "2", "file_name": "e.png"}, "images[6].id 2 repeats images[1].id")):
        root = str(tmp_path / name)
        make_coco(root)
        path = os.path.join(root, "annotations", "instances_val2017.json")
        with open(path) as f:
            data = json.load(f)
        data[key].append(extra)
        with open(path, "w") as f:
            json.dump(data, f)
        with pytest.raises(InputError) as info:
            DS.open_dataset(root)
        assert str(info.value) == f"dataset: {path}: {msg} (ids must be unique)"


def test_repeated_tam_entry_ids_are_refused_naming_the_id(tmp_path):
    # records are named by id (skips, per_map.jsonl): two entries "r0" were accepted as two records "r0";
    # an entry without an id is named by its index, so an explicit "2" collides with the third entry
    root = str(tmp_path / "tam")
    make_tam(root)
    base = {"image": "images/0.png", "caption": "a dog", "mask": "masks/0.png", "categories": {"dog": 1}}
    for anno, msg in (([dict(base, id="r0"), dict(base, id="x"), dict(base, id="r0")],
                       "entry 2 has the id 'r0' of entry 0"),
                      ([dict(base, id="2"), dict(base, id="x"), base], "entry 2 has the id '2' of entry 0")):
        with open(os.path.join(root, "anno.json"), "w") as f:
            json.dump(anno, f)
        with pytest.raises(InputError) as info:
            DS.open_dataset(root)
        assert str(info.value) == f"dataset: {os.path.join(root, 'anno.json')}: {msg} (ids must be unique)"


def _exif_jpeg(path, stored_hw, orientation):
    """A JPEG of ``stored_hw`` pixels whose EXIF says ``orientation``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", stored_hw[::-1], (200, 30, 30)).save(path, exif=exif, quality=95)


def _upright_by_pil(mask, orientation):
    """``mask`` turned by PIL's own ImageOps.exif_transpose (the independent reference)."""
    im = Image.fromarray(mask.astype(np.uint8))
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    return np.asarray(ImageOps.exif_transpose(im)).astype(np.int64)


def test_tam_masks_are_turned_with_an_exif_rotated_image(tmp_path):
    # the image was shown upright (EXIF applied) but its mask read as stored: the object's ground
    # truth sat where the object was not
    root = str(tmp_path / "tam")
    Hs, Ws = 6, 10  # stored; orientation 6 shows it 10x6
    stored = np.zeros((Hs, Ws), np.uint8)
    stored[1:3, 0:4] = 1  # off-centre blocks: any wrong turn or flip moves them
    stored[4, 7:10] = 2
    os.makedirs(os.path.join(root, "masks"))
    Image.fromarray(stored).save(os.path.join(root, "masks", "stored.png"))
    Image.fromarray(_upright_by_pil(stored, 6).astype(np.uint8)).save(os.path.join(root, "masks", "upright.png"))
    Image.fromarray((stored == 1).astype(np.uint8)).save(os.path.join(root, "masks", "one.png"))
    _exif_jpeg(os.path.join(root, "images", "rot.jpg"), (Hs, Ws), 6)
    _exif_jpeg(os.path.join(root, "images", "square.jpg"), (Ws, Ws), 6)
    _exif_jpeg(os.path.join(root, "images", "flip.jpg"), (Hs, Ws), 2)
    cats = {"dog": 1, "cat": 2}
    anno = [{"id": "stored", "image": "images/rot.jpg", "caption": "a dog", "mask": "masks/stored.png",
             "categories": cats},
            {"id": "upright", "image": "images/rot.jpg", "caption": "a dog", "mask": "masks/upright.png",
             "categories": cats},
            {"id": "list", "image": "images/rot.jpg", "caption": "a dog", "masks": ["masks/one.png"],
             "categories": {"dog": 1}},
            {"id": "square", "image": "images/square.jpg", "caption": "a dog", "mask": "masks/stored.png",
             "categories": cats},
            {"id": "flip", "image": "images/flip.jpg", "caption": "a dog", "mask": "masks/stored.png",
             "categories": cats}]
    with open(os.path.join(root, "anno.json"), "w") as f:
        json.dump(anno, f)
    ds = DS.load_tam(root)
    with pytest.warns(UserWarning, match="skipped record"):
        recs = {r.record_id: r for r in ds.records()}
    expected = _upright_by_pil(stored, 6)
    assert expected.shape == (Ws, Hs) and recs["stored"].image.size == (Hs, Ws)
    assert np.array_equal(recs["stored"].mask, expected)
    assert np.array_equal(recs["upright"].mask, expected)  # drawn upright: kept
    assert np.array_equal(recs["list"].mask, (expected == 1).astype(np.int64))
    reasons = dict(ds.skipped)
    assert list(reasons) == ["square", "flip"]
    assert reasons["square"] == ("image has EXIF orientation 6 and is 10x10 stored and upright: cannot tell whether "
                                 "mask is drawn on the stored or the upright image")
    assert reasons["flip"].startswith("image has EXIF orientation 2 and is 6x10 stored and upright")


def test_coco_segmentations_are_turned_with_an_exif_rotated_image(tmp_path):
    # polygons and RLE are drawn on the stored pixels (COCO's height x width); the image is explained
    # upright, so its masks must turn with it (the record was refused for its size, or scored unturned)
    root = str(tmp_path / "coco")
    Hs, Ws = 6, 10
    _exif_jpeg(os.path.join(root, "val2017", "rot.jpg"), (Hs, Ws), 8)
    _exif_jpeg(os.path.join(root, "val2017", "square.jpg"), (Ws, Ws), 3)
    dog = np.zeros((Hs, Ws), np.uint8)
    dog[4:6, 6:10] = 1
    person = np.zeros((Hs, Ws), np.uint8)
    person[0:3, 0:2] = 1  # the polygon below, filled with its outline (x 0..1, y 0..2)
    sq = np.zeros((Ws, Ws), np.uint8)
    sq[0:2, 0:5] = 1
    images = [{"id": 1, "file_name": "rot.jpg", "height": Hs, "width": Ws},
              {"id": 2, "file_name": "square.jpg", "height": Ws, "width": Ws},
              {"id": 3, "file_name": "rot.jpg", "height": Ws, "width": Hs}]  # drawn on the upright image
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1, 0, 1, 2, 0, 2]]},
            {"id": 11, "image_id": 1, "category_id": 2, "segmentation": {"size": [Hs, Ws],
                                                                         "counts": mask_to_counts(dog)}},
            {"id": 12, "image_id": 2, "category_id": 2, "segmentation": {"size": [Ws, Ws],
                                                                         "counts": mask_to_counts(sq)}},
            {"id": 13, "image_id": 3, "category_id": 2, "segmentation": [[0, 0, 1, 0, 1, 2, 0, 2]]}]
    os.makedirs(os.path.join(root, "annotations"))
    with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]}, f)
    recs = list(DS.open_dataset(root).records())
    assert [r.record_id for r in recs] == ["1", "2", "3"]
    r = recs[0]
    assert r.image.size == (Hs, Ws) and r.size == (Ws, Hs)
    assert r.words[:5] == ["a", "dog", "and", "a", "person"]
    dog_label, person_label = r.word_labels[1][0], r.word_labels[4][0]
    assert np.array_equal(r.mask == person_label, _upright_by_pil(person, 8) == 1)
    assert np.array_equal(r.mask == dog_label, _upright_by_pil(dog, 8) == 1)
    assert np.array_equal(recs[1].mask > 0, _upright_by_pil(sq, 3) == 1)  # COCO's frame is the stored one
    upright = np.zeros((Ws, Hs), bool)
    upright[0:3, 0:2] = True
    assert np.array_equal(recs[2].mask > 0, upright)  # its height x width say upright: kept as drawn


def test_coco_split_names_one_file_and_a_tam_folder_has_no_split(tmp_path):
    # split "val" (and the default) beside val2014 and val2017 took val2014 without a word; split="val"
    # on a TAM folder was taken and ignored (dcam eval refused --split there)
    root = str(tmp_path / "coco")
    make_coco(root)
    ann = os.path.join(root, "annotations")
    with open(os.path.join(ann, "instances_val2017.json")) as f:
        data = json.load(f)
    data["annotations"] = data["annotations"][:1]  # val2014: image 1 only
    with open(os.path.join(ann, "instances_val2014.json"), "w") as f:
        json.dump(data, f)
    files = "(instances_val2014.json, instances_val2017.json); name one split: val2014, val2017"
    with pytest.raises(InputError) as info:
        DS.open_dataset(root, split="val")
    assert str(info.value) == f"split: 'val' matches several COCO files in {root!r} {files}"
    with pytest.raises(InputError) as info:
        DS.open_dataset(root)
    assert str(info.value) == f"split: none given and {root!r} has several COCO files it could mean {files}"
    assert (DS.open_dataset(root, split="val2017").name, len(DS.open_dataset(root, split="val2017"))) == \
        ("coco:instances_val2017.json", 5)
    assert (DS.open_dataset(root, split="val2014").name, len(DS.open_dataset(root, split="val2014"))) == \
        ("coco:instances_val2014.json", 1)
    # an exact name wins over a longer file it begins
    with open(os.path.join(ann, "instances_val2017_extra.json"), "w") as f:
        json.dump(data, f)
    assert DS.open_dataset(root, split="val2017").name == "coco:instances_val2017.json"
    tam = str(tmp_path / "tam")
    make_tam(tam)
    with pytest.raises(InputError) as info:
        DS.open_dataset(tam, split="val")
    assert str(info.value) == "split: a TAM data folder has no splits (only shapes and COCO do); leave split out"
    assert len(DS.open_dataset(tam)) == 7
