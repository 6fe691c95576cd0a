"""What dcam eval's tables and messages say, checked against hand-written text, and the records it refuses.

- main_table / ablation_table / sweep_table named no CamConfig (only report.json did), though the config moves
  the numbers and the bundled model's default (grad_relu=False) is not CamConfig()'s;
- "no record could be evaluated" listed the first 3 skipped records and no count;
- a TAM caption that is a number was explained as the text "123";
- the faithfulness table explained what `mean` is when the fill was a colour;
- the toy processor refused the Unicode punctuation the loaders strip ("—", "…", curly quotes, brackets)."""
import json
import os
from dataclasses import replace

import pytest
import torch
from PIL import Image

from dcam.errors import InputError
from dcam.eval import runner as EV
from dcam.eval.datasets import load_shapes, load_tam
from dcam.eval.report import skipped_text, write_outputs
from dcam.ops.config import CamConfig
from dcam.testing import tiny_toy
from dcam.words import split_words
from dcam.zoo.processing import build_vocab, normalise_words

ROW = {"obj_iou": 0.5, "contrast": 2.0, "concentration": 0.25, "f3": 0.2, "f3_per_map": 0.2, "func_iou": 0.75,
       "n_obj": 2, "n_func": 1, "n_invalid": 0}


def report(**kw):
    return {"dataset": "d", "records": 2, "skipped": [], "methods": ["diffusion-cam"], "layer": 0,
            "probe": "masked", "target_score": "logit", "config": None, "main": {"diffusion-cam": ROW}, **kw}


def third_line(path):
    with open(path) as f:
        return f.read().split("\n")[2]


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_toy(0, layers=3, image_size=64)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------- the config in the tables' headers

def test_every_table_names_the_config_by_its_changes(tmp_path):
    cfg = CamConfig(sicd="context", grad_relu=False).as_dict()
    rep = report(config=cfg, ablation={"full": ROW},
                 sweep=[{"probe": "masked", "layer": 0, "records": 2, **ROW}])
    write_outputs(rep, str(tmp_path))
    want = ("Data set: d (2 records, 0 skipped). Every method: layer 0, probe `masked`, target score `logit`. "
            "Diffusion-CAM config: CamConfig() with sicd=context, grad_relu=False.")
    assert third_line(tmp_path / "main_table.md") == want
    assert third_line(tmp_path / "ablation_table.md") == want
    assert third_line(tmp_path / "sweep_table.md") == ("Data set: d, first 2 records, target score `logit`. "
                                                       "Diffusion-CAM config: CamConfig() with sicd=context, "
                                                       "grad_relu=False.")
    js = json.loads((tmp_path / "main_table.json").read_text())
    assert js["header"] == want and js["config"] == cfg


def test_a_default_config_is_named_and_no_config_is_not_invented(tmp_path):
    write_outputs(report(config=CamConfig().as_dict()), str(tmp_path / "a"))
    assert third_line(tmp_path / "a" / "main_table.md").endswith(
        "target score `logit`. Diffusion-CAM config: CamConfig() as it is.")
    write_outputs(report(methods=["tam"], layer=None, target_score=None), str(tmp_path / "b"))  # tam: none
    assert third_line(tmp_path / "b" / "main_table.md") == (
        "Data set: d (2 records, 0 skipped). Every method: probe `masked` (no method hooks a layer).")


def test_evaluate_writes_the_config_it_ran_into_the_comparison_table(tiny, tmp_path):
    model, proc = tiny
    EV.evaluate(model, proc, "shapes", methods="diffusion-cam", n=1, n_examples=0, out_dir=str(tmp_path / "ev"),
                config=CamConfig(grad_relu=False, akd_kernel=5))
    assert third_line(tmp_path / "ev" / "main_table.md").endswith(
        ". Diffusion-CAM config: CamConfig() with akd_kernel=5, grad_relu=False.")


# ----------------------------------------------------------------- the count of skipped records

def test_the_skip_summary_counts_every_skipped_record():
    skips = [("a", "x"), ("b", "y\nz"), ("c", "w"), ("d", "v")]
    assert skipped_text(skips) == "4 records skipped: 'a' (x), 'b' (y; z), 'c' (w) and 1 more"
    assert skipped_text(skips[:1]) == "1 record skipped: 'a' (x)"
    assert skipped_text(skips[:3]) == "3 records skipped: 'a' (x), 'b' (y; z), 'c' (w)"


def test_no_record_evaluated_says_how_many_were_skipped(tiny):
    model, proc = tiny
    good = next(load_shapes(split="test", size=1, image_size=64).records())
    bad = [replace(good, record_id=f"b{k}", caption="a zebra") for k in range(4)]  # outside the vocabulary
    with pytest.warns(UserWarning), pytest.raises(InputError) as info:
        EV.evaluate(model, proc, bad, methods="diffusion-cam", n=4, n_examples=0)
    msg = str(info.value)
    assert msg.startswith("dataset: no record of records could be evaluated; 4 records skipped: 'b0' (explain "
                          "failed: response: 1 word not in the model's vocabulary: 'zebra'")
    assert msg.endswith(" and 1 more") and "'b2' (" in msg and "'b3'" not in msg


# ----------------------------------------------------------------- a caption that is not a text

def test_a_tam_caption_that_is_not_a_text_is_refused_by_type(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    Image.new("L", (8, 8), 1).save(tmp_path / "m.png")
    entries = [{"id": f"c{k}", "image": "img.png", "caption": cap, "mask": "m.png", "categories": {"circle": 1}}
               for k, cap in enumerate([123, ["a", "circle"], True])]
    (tmp_path / "anno.json").write_text(json.dumps(entries))
    ds = load_tam(str(tmp_path))
    with pytest.warns(UserWarning):
        assert list(ds.records()) == []
    assert ds.skipped == [("c0", "'caption' must be a text, got 123"),
                          ("c1", "'caption' must be a text, got ['a', 'circle']"),
                          ("c2", "'caption' must be a text, got True")]


def test_a_record_whose_caption_is_not_a_text_is_refused_before_any_work(tiny):
    model, proc = tiny
    good = next(load_shapes(split="test", size=1, image_size=64).records())
    with pytest.raises(InputError) as info:
        EV.evaluate(model, proc, [replace(good, caption=123)], methods="diffusion-cam", n=1)
    assert str(info.value) == "dataset[0] (record 'test-0'): caption must be a text, got 123"


# ----------------------------------------------------------------- the fill the faithfulness table names

def faithfulness(fill):
    row = {"deletion_auc": 0.25, "insertion_auc": 0.75, "insertion_minus_deletion": 0.5, "words": 3}
    return {"probe": "masked", "steps": 10, "fill": fill, "records": 1, "methods": {"diffusion-cam": row}}


@pytest.mark.parametrize("fill,said", [
    ([0.0, 0.0, 0.0], "grid cells blanked with the colour `rgb(0, 0, 0)`, 10 steps"),
    ([255.0, 127.5, 3.0], "grid cells blanked with the colour `rgb(255, 127.5, 3)`, 10 steps"),
    ("mean", "grid cells blanked with each image's mean colour (fill `mean`), 10 steps"),
])
def test_the_faithfulness_table_says_the_fill_it_used(tmp_path, fill, said):
    write_outputs(report(faithfulness=faithfulness(fill)), str(tmp_path))
    assert third_line(tmp_path / "faithfulness_table.md") == (
        f"First 1 records; {said}; probability of the word's token, probe `masked`. Deletion AUC lower is "
        "better, insertion AUC higher is better.")


# ----------------------------------------------------------------- the toy processor and the loaders agree

@pytest.mark.parametrize("caption", [
    "a red circle — and a blue square", "a red circle and a blue square…", "a red circle “and” a blue square",
    "a red circle (and) a blue square", "«a» red circle, and a blue square.", "a red circle ‘and’ a blue square!",
])
def test_the_toy_processor_reads_the_words_the_loaders_read(caption):
    words, unknown = normalise_words(caption, build_vocab())
    assert unknown == [] and words == split_words(caption) == "a red circle and a blue square".split()


def test_the_toy_processor_still_refuses_words_outside_its_vocabulary(tiny):
    _, proc = tiny
    assert normalise_words("a red-circle (zebra) —", build_vocab()) == (["a"], ["red-circle", "(zebra)"])
    with pytest.raises(InputError, match="^response: holds '\\[EOS\\]', a special token"):
        proc.encode_response("a red circle [EOS]")
    same = proc.encode_response("a red circle and a blue square")
    assert proc.encode_response("a red circle — and a blue square…") == same
