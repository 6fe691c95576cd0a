"""The evaluation's inputs: records given to evaluate() pass the loaders' checks, the public
metric and grounding functions refuse bad input with one InputError naming the argument, and
the report tables and docs say what the JSON and the code do. Expected values are worked by
hand in the comments."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.errors import InputError
from dcam.eval import metrics as M
from dcam.eval import runner as EV
from dcam.eval.datasets.base import EvalDataset, EvalRecord, RecordError, check_record
from dcam.eval.grounding import object_word_success
from dcam.eval.report import write_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ["a", "dog", "and", "a", "cat"]


def _record(rid="r", mask=None, labels=((), (1,), (), (), (2,)), width=6, height=4):
    """A 6 wide x 4 high image; by default a mask with a dog (label 1) and a cat (label 2)."""
    if mask is None:
        mask = np.zeros((height, width), np.int64)
        mask[:2, :2] = 1
        mask[2:, 3:] = 2
    return EvalRecord(rid, Image.new("RGB", (width, height)), " ".join(WORDS), list(WORDS), mask,
                      list(labels), [w in ("a", "and") for w in WORDS])


def _refusal(records) -> str:
    # the factory is never called: the records are checked before any explainer is made
    with pytest.raises(InputError) as info:
        EV.evaluate(explainer_factory=lambda *a: None, dataset=records, methods="diffusion-cam", n=1)
    return str(info.value)


# ----------------------------------------------------------------- 1. records given in a list

def test_records_given_in_a_list_pass_the_loaders_checks():
    check_record(_record())  # the good record passes
    good = _record("good")
    # a 6x4 mask (6 high, 4 wide) for the 4 high x 6 wide image: it was stretched onto the image
    assert _refusal([good, _record("b", mask=np.zeros((6, 4), np.int64))]) == \
        "dataset[1] (record 'b'): mask is 6x4, image 4x6"
    half = good.mask.astype(np.float64) + 0.5  # labels 0.5, 1.5, 2.5; the first pixel, [0, 0], is 1.5
    assert _refusal([_record("h", mask=half)]) == \
        "dataset[0] (record 'h'): mask holds a label that is not a whole number (1.5)"
    # label 99 is not in the mask: np.isin made the word's ground truth empty, left out silently
    assert _refusal([good, good, _record("x", labels=((), (99,), (), (), (2,)))]) == \
        "dataset[2] (record 'x'): label(s) [99] of 'dog' not in the mask"
    # label 0 is in the mask: it is the background (the message said "not in the mask")
    assert _refusal([_record("z", labels=((), (0,), (), (), (2,)))]) == \
        "dataset[0] (record 'z'): label 0 of 'dog' is the background, not an object (objects are labels >= 1)"
    assert _refusal([_record("n", mask=-good.mask)]) == "dataset[0] (record 'n'): mask has negative labels"
    assert _refusal([_record("f", labels=((), (1.0,), (), (), (2,)))]) == \
        "dataset[0] (record 'f'): labels of 'dog' must be a tuple of ints, got (1.0,)"
    short = _record("s")
    short.function = short.function[:2]
    assert _refusal([short]) == ("dataset[0] (record 's'): words, word_labels and function must have one entry "
                                 "per word, got 5, 5 and 2")


def test_a_data_sets_records_pass_the_same_check():
    class Given(EvalDataset):
        def __init__(self, recs):
            super().__init__("given")
            self.recs = recs

        def __len__(self):
            return len(self.recs)

        def load(self, i):
            return self.recs[i]

    ds = Given([_record("a"), _record("b", mask=np.zeros((6, 4), np.int64)), _record("c")])
    with pytest.warns(UserWarning, match="skipped record 1"):
        ids = [r.record_id for r in ds.records()]
    assert ids == ["a", "c"] and ds.skipped == [("1", "mask is 6x4, image 4x6")]
    with pytest.raises(RecordError, match=r"^mask is 6x4, image 4x6$"):
        check_record(ds.recs[1])


# ----------------------------------------------------------------- 2. metric functions' bad input

def _message(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    return str(info.value)


def test_metric_functions_name_the_bad_argument():
    maps = np.zeros((1, 2, 2), np.float32)
    assert _message(lambda: M.object_metrics(maps, None)) == \
        "masks must be an [M, H, W] array or a list of M [H, W] label masks, got NoneType"
    assert _message(lambda: M.resize_maps(maps, (0, 3))) == "size must be (H, W) ints >= 1, got (0, 3)"
    # (2.5, 3) was cut to height 2 without a word
    assert _message(lambda: M.resize_maps(maps, (2.5, 3))) == "size must be (H, W) ints >= 1, got (2.5, 3)"
    assert _message(lambda: M.resize_maps(maps, 4)) == "size must be (H, W) ints >= 1, got 4"
    unequal = {"obj_iou": [0.5, 0.5], "contrast": [1.0], "concentration": [0.5], "f3": [0.1]}
    assert _message(lambda: M.summarize(unequal)) == ("obj must hold one value per map in each of obj_iou, "
                                                      "contrast, concentration, f3; got 2 obj_iou, 1 contrast, "
                                                      "1 concentration, 1 f3")
    text = {"obj_iou": ["x"], "contrast": [1.0], "concentration": [0.5], "f3": [0.1]}
    assert _message(lambda: M.summarize(text)) == "obj['obj_iou'] must hold real numbers (one per map), got ['x']"
    number_as_text = {"obj_iou": [0.5], "contrast": ["1.5"], "concentration": [0.5], "f3": [0.1]}
    assert _message(lambda: M.summarize(number_as_text)) == \
        "obj['contrast'] must hold real numbers (one per map), got ['1.5']"
    assert _message(lambda: M.summarize(None, {"func_iou": ["a"]})) == \
        "func['func_iou'] must hold real numbers (one per map), got ['a']"
    mask = np.array([[1, 2], [0, 0]])
    assert _message(lambda: object_word_success(np.ones((1, 2, 2), np.float32), [0], [5], mask)) == \
        "word_labels[0] is 5, not a label of the mask (its labels: [1, 2])"


def test_valid_input_keeps_its_values():
    # [[0, 1], [0, 1]] to width 4, half-pixel centres: source x = (i + 0.5) / 2 - 0.5 = -0.25 (clamped
    # to 0), 0.25, 0.75, 1.25 (past the last pixel: 1) -> 0, 0.25, 0.75, 1; numpy ints are sizes too
    m = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    got = M.resize_maps(m, (np.int64(2), np.int64(4)))
    assert got.tolist() == [[[0.0, 0.25, 0.75, 1.0], [0.0, 0.25, 0.75, 1.0]]]
    # means 0.375 / 3 / 0.5; F3 of the means 3 / (1/0.375 + 1/0.15 + 1/0.5) = 0.2647; per-map F3 mean 0.2
    s = M.summarize({"obj_iou": torch.tensor([0.5, 0.25, float("nan")]), "contrast": [2.0, 4.0, float("nan")],
                     "concentration": np.array([0.25, 0.75, np.nan]), "f3": [0.1, 0.3, float("nan")]},
                    {"func_iou": [0.5, 1.0]})
    assert s["obj_iou"] == pytest.approx(0.375) and s["contrast"] == pytest.approx(3.0)
    assert s["concentration"] == pytest.approx(0.5) and s["f3_per_map"] == pytest.approx(0.2)
    assert s["f3"] == pytest.approx(3 / (1 / 0.375 + 1 / 0.15 + 1 / 0.5))
    assert (s["n_obj"], s["n_invalid"], s["n_func"], s["func_iou"]) == (2, 1, 2, 0.75)


# ----------------------------------------------------------------- 3. f3_score on both paths

def test_f3_score_refuses_negative_terms_as_floats_and_as_tensors():
    assert _message(lambda: M.f3_score(-0.5, 1.0, 1.0)) == \
        "f3_score: obj_iou, contrast and concentration are >= 0, got -0.5, 1.0, 1.0"
    # the tensor path returned 3 / (1/-0.5 + 20 + 1) = 0.1579
    t = torch.tensor
    assert _message(lambda: M.f3_score(t([0.5, -0.5]), t([1.0, 1.0]), t([1.0, 1.0]))) == \
        "f3_score: obj_iou, contrast and concentration are >= 0, got obj_iou -0.5"
    assert _message(lambda: M.f3_score(t([0.5]), t([-1.0]), t([1.0]))) == \
        "f3_score: obj_iou, contrast and concentration are >= 0, got contrast -1.0"
    assert _message(lambda: M.f3_score(0.5, 1.0, t([-0.25]))) == \
        "f3_score: obj_iou, contrast and concentration are >= 0, got concentration -0.25"
    # valid terms agree on both paths: 3 / (1/0.5 + 1/(10/20) + 1/0.5) = 0.5; a 0 term gives 0; NaN stays NaN
    assert M.f3_score(0.5, 10.0, 0.5) == 0.5
    out = M.f3_score(t([0.5, 0.0, float("nan")]), t([10.0, 5.0, 1.0]), t([0.5, 0.5, 0.5]))
    assert out[:2].tolist() == [0.5, 0.0] and math.isnan(out[2].item())


# ----------------------------------------------------------------- 4. grounded means mass on the object

def test_a_map_without_mass_on_the_named_object_is_not_grounded():
    alone = np.array([[1, 0], [0, 0]])  # the named object (label 1) is the only one
    zero = np.zeros((1, 2, 2), np.float32)
    assert object_word_success(zero, [0], [1], alone) == [False]  # was [True]: no other object to beat
    on_it = np.array([[[0.5, 0.0], [0.0, 0.0]]], np.float32)
    assert object_word_success(on_it, [0], [1], alone) == [True]  # mass 0.5 > 0
    off_it = np.array([[[0.0, 1.0], [1.0, 1.0]]], np.float32)
    assert object_word_success(off_it, [0], [1], alone) == [False]  # mass 0 on the object
    # two objects, label 1 one pixel, label 2 two pixels
    two = np.array([[1, 2], [2, 0]])
    assert object_word_success(np.zeros((2, 2, 2), np.float32), [0, 1], [1, 2], two) == [False, False]
    # a uniform map (the chance baseline): mass = area, 2 > 1 grounds label 2 only; alone, it is grounded
    uniform = np.ones((2, 2, 2), np.float32)
    assert object_word_success(uniform, [0, 1], [1, 2], two) == [False, True]
    assert object_word_success(uniform[:1], [0], [1], alone) == [True]


# ----------------------------------------------------------------- 5. the tables show n_invalid

def test_tables_say_how_many_object_words_were_left_out(tmp_path):
    # Diffusion-CAM: 2 of 3 object words have an empty ground truth (NaN); Grad-CAM none
    dc = M.summarize({"obj_iou": [0.5, float("nan"), float("nan")], "contrast": [2.0, float("nan"), float("nan")],
                      "concentration": [0.5, float("nan"), float("nan")], "f3": [0.1, float("nan"), float("nan")]})
    gc = M.summarize({"obj_iou": [0.5], "contrast": [2.0], "concentration": [0.5], "f3": [0.1]})
    assert (dc["n_obj"], dc["n_invalid"], gc["n_invalid"]) == (1, 2, 0)
    report = {"dataset": "given", "records": 1, "skipped": [], "layer": 0, "probe": "full", "target_score": "logit",
              "main": {"diffusion-cam": dc, "grad-cam": gc}, "ablation": {"baseline": gc, "full": dc},
              "sweep": [dict(dc, probe="full", layer=0, records=1)]}
    write_outputs(report, str(tmp_path))
    main = (tmp_path / "main_table.md").read_text()
    assert main.endswith("\nObject words left out (ground truth covers no pixel; `n_invalid`): "
                         "Diffusion-CAM 2, Grad-CAM 0.\n")
    ablation = (tmp_path / "ablation_table.md").read_text()
    assert ablation.endswith("\nObject words left out (ground truth covers no pixel; `n_invalid`): "
                             "baseline 0, full 2.\n")
    sweep = (tmp_path / "sweep_table.md").read_text()
    assert sweep.splitlines()[-1].endswith("| 2 object word(s) left out (ground truth covers no pixel) |")


# ----------------------------------------------------------------- 6. the docs the code cites

def test_contrast_of_a_word_covering_the_whole_image():
    # background mean 0: contrast = 0.5 / (0 + 1e-8) = 5e7, as docs/ALGORITHM.md section 8 says
    r = M.object_metrics(np.full((1, 2, 2), 0.5, np.float32), [np.ones((2, 2), np.int64)])
    assert r["contrast"][0].item() == pytest.approx(5e7)
    # u8 = floor(127.5) = 127 everywhere: t = 0, every pixel predicted (127 > 0), Obj-IoU 4/4 = 1;
    # concentration 2 / (2 + 1e-8); F3 = 3 / (1 + 1/min(5e7/20, 1) + 1/concentration) = 1 to 1e-8
    assert r["threshold"][0].item() == 0 and r["obj_iou"][0].item() == 1.0
    assert r["concentration"][0].item() == pytest.approx(2 / (2 + 1e-8), rel=1e-12)
    assert r["f3"][0].item() == pytest.approx(1.0, abs=1e-8)


def test_algorithm_md_has_the_metrics_section_the_code_cites():
    with open(os.path.join(ROOT, "docs", "ALGORITHM.md")) as f:
        doc = f.read()
    heads = [line for line in doc.splitlines() if line.startswith("## ")]
    k = heads.index("## 8. Evaluation metrics — `dcam/eval/metrics.py`")
    assert heads[k - 1].startswith("## 7. ") and heads[k + 1].startswith("## Precision")
    for path in ("dcam/eval/metrics.py", "dcam/render/overlay.py", "dcam/eval/__init__.py"):
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        assert "docs/ALGORITHM.md section 8" in text and "SPEC section 8" not in text, path


def test_records_in_the_forms_the_explainer_takes_pass():
    """An image as a numpy array (the Explainer reads arrays), words and function flags as numpy
    arrays: the old code scored them; the checks must too (a 4 high x 6 wide array, its mask 4x6)."""
    rec = _record()
    rec.image = np.zeros((4, 6, 3), np.uint8)
    rec.function = np.array(rec.function)
    rec.words = tuple(rec.words)
    check_record(rec)
    rec.image = np.zeros((6, 4, 3), np.uint8)  # 6 high x 4 wide: the 4x6 mask is another size
    with pytest.raises(RecordError, match="^mask is 4x6, image 6x4$"):
        check_record(rec)


def test_resize_size_and_f3_paths_agree():
    maps = torch.rand(1, 3, 3)
    for size in (np.array([5, 7]), torch.tensor([5, 7]), [5, 7], (np.int64(5), 7)):
        assert tuple(M.resize_maps(maps, size).shape) == (1, 5, 7)
    for size in (np.array([5.0, 7.0]), torch.tensor([5.5, 7.0]), (2.5, 3)):
        with pytest.raises(InputError, match="^size must be"):
            M.resize_maps(maps, size)
    # the negative term is refused on both paths, NaN or not (the float path returned nan first)
    for args in ((float("nan"), -3.0, 0.5), (torch.tensor([float("nan")]), torch.tensor([-3.0]), 0.5)):
        with pytest.raises(InputError, match="contrast"):
            M.f3_score(*args)
    with pytest.raises(InputError, match=r"^f3_score: .* got \[2\], \[3\] and \[\]$"):
        M.f3_score(torch.tensor([0.5, 0.2]), torch.tensor([10.0, 30.0, 5.0]), 0.5)
    # broadcast as before: 3 / (1/0.5 + 1/0.5 + 1/0.5) = 0.5 and 3 / (1/0.2 + 2 + 2) = 1/3
    torch.testing.assert_close(M.f3_score(torch.tensor([0.5, 0.2]), torch.tensor(10.0), 0.5),
                               torch.tensor([0.5, 1 / 3], dtype=torch.float64))


def test_object_word_success_names_each_bad_argument():
    mask = np.zeros((4, 6), np.int64)
    mask[:2, :2] = 1
    maps = torch.zeros(2, 4, 6)
    maps[0, :2, :2] = 1  # all its mass on object 1
    assert object_word_success(maps[:1], [0], [1], mask) == [True]
    for idx, labels, msg in (([5], [1], r"^words_idx\[0\] must be a word number in \[0, 1\), got 5$"),
                             ([0], ["x"], r"^word_labels\[0\] must be a whole number"),
                             ([0], [None], r"^word_labels\[0\] must be a whole number"),
                             ([0], [1.7], r"^word_labels\[0\] must be a whole number .* got 1.7$")):
        with pytest.raises(InputError, match=msg):
            object_word_success(maps, idx, labels, mask)
    with pytest.raises(InputError, match="^maps: one map per object word, got 2 maps for 3 words$"):
        object_word_success(maps, [0, 0, 0], [1], mask)
