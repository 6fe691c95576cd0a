"""A manifest's word written without spaces and labelled by name ({"红猫": 1}) is one object word of the
metrics, with one map, as an English word is. Its response read without a tokenizer has each character a word
(dcam.words.split_words), and the label made each of 红 and 猫 an object word: two words of one map, the map
counted twice in metrics.json. Expected words are written by hand; every metric value is worked out with
numpy (dcam.testing.support.hand_metrics: Otsu, Obj-IoU, contrast, concentration, F3) from the stored maps
and the mask, a word's map being the mean of the maps of the tokens that spell it (docs/RUNS.md)."""
import json

import numpy as np
import pytest
from PIL import Image
from tokenizers import decoders

from dcam import Explainer, load_run
from dcam.eval.datasets.base import PhraseMatcher, phrase
from dcam.runs.runner import RunOptions, run_dataset
from dcam.runs.sources import open_source
from dcam.testing.llada import LLADA_EOS_ID, LLADA_MASK_ID
from dcam.testing.llava_dmllm import tiny_llada_v
from dcam.testing.support import hand_metrics
from dcam.testing.vocab import word_tokenizer
from dcam.words import split_words

KEYS = ("obj_iou", "contrast", "concentration", "f3")
CAT = np.zeros((4, 4), bool)
CAT[0:2, 1:3] = True  # label 1: 4 of the 16 pixels


def explainer(pieces):
    """A tiny LLaDA-V whose tokenizer holds ``pieces`` and joins them without spaces."""
    model, proc = tiny_llada_v(0, layers=2)
    proc.tokenizer = word_tokenizer({"<|endoftext|>": LLADA_EOS_ID, "<|mdm_mask|>": LLADA_MASK_ID},
                                    words=list(pieces) + ["describe", "the", "image"],
                                    named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"},
                                    decoder=decoders.Fuse())  # "一只" "红猫" -> "一只红猫"
    return Explainer(model, proc)


def run_one(tmp_path, pieces, labels, text=None):
    """The run's one record: a 4x4 image (the tiny LLaDA-V's 4x4 grid: its maps need no resize), response
    ``pieces`` (the tokenizer's tokens, joined without spaces; given as their ids, or as ``text``), mask
    label 1 = CAT, ``labels``."""
    exp = explainer(pieces)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(CAT.astype(np.uint8)).save(tmp_path / "mask.png")
    entry = {"id": "c1", "image": "img.png", "prompt": "describe the image", "mask": "mask.png", "labels": labels,
             "response": text if text is not None else exp.adapter.tokenizer.convert_tokens_to_ids(list(pieces))}
    (tmp_path / "m.jsonl").write_text(json.dumps(entry, ensure_ascii=False) + "\n")
    run_dataset(exp, open_source(str(tmp_path / "m.jsonl")), str(tmp_path / "run"), RunOptions(progress=False))
    run = load_run(str(tmp_path / "run"))
    return run, next(iter(run))


def assert_object_words(metrics, want):
    """``want``: {word number: hand metrics}."""
    assert metrics["object"]["words"] == sorted(want)
    for k in KEYS:
        for i, v in zip(metrics["object"]["words"], metrics["object"][k]):
            assert v == pytest.approx(want[i][k], rel=1e-9, abs=1e-12), (i, k)


@pytest.mark.parametrize("pieces,spelled_by", [(["一只", "红猫"], [1]),  # 红猫 one token: its map
                                               (["一只", "红", "猫"], [1, 2])])  # two: the mean of their maps
def test_a_labelled_chinese_word_is_one_object_word(tmp_path, pieces, spelled_by):
    run, r = run_one(tmp_path, pieces, {"红猫": 1})
    assert r.tokens == pieces and r.response == "一只红猫"
    assert r.metrics["words"] == ["一", "只", "红猫"]  # (was 一 只 红 猫, object words 2 and 3 of one map)
    word_map = np.mean([r.maps[j].numpy() for j in spelled_by], axis=0)
    want = {2: hand_metrics(word_map, [CAT])}
    assert_object_words(r.metrics, want)
    summary = run.metrics["summary"]
    assert summary["n_obj"] == 1  # (was 2)
    for k in ("obj_iou", "contrast", "concentration"):
        assert summary[k] == pytest.approx(want[2][k], rel=1e-9), k


def test_labels_as_a_list_still_take_one_entry_per_character(tmp_path):
    # docs/RUNS.md: in the list form each character of a Chinese response is a word ("一只红猫" takes four); a
    # user who labels 红 and 猫 apart scores them apart (each the map of the one token 红猫 that spells both)
    run, r = run_one(tmp_path, ["一只", "红猫"], [0, 0, 1, 1], text="一只 红猫")  # (the list form needs text)
    assert r.metrics["words"] == ["一", "只", "红", "猫"]
    one = hand_metrics(r.maps[1].numpy(), [CAT])
    assert_object_words(r.metrics, {2: one, 3: one})


def test_a_names_words_are_its_runs_of_touching_characters():
    # worked by hand: characters of an unspaced script that touch are one word of the name; a space or
    # full-width punctuation parts them; a spaced script's words are as split_words reads them
    assert phrase("红猫") == ("红猫",) and phrase("红猫 蓝狗") == ("红猫", "蓝狗") == phrase("红猫，蓝狗")
    assert phrase("T恤") == ("t恤",) and phrase("Red Circles") == ("red", "circles") and phrase("(and)") == ("and",)
    matcher = PhraseMatcher({phrase("红猫"): 1, phrase("猫"): 3, phrase("red circle"): 2})
    words = split_words("一只红猫和一只猫 a red circles")
    assert words == ["一", "只", "红", "猫", "和", "一", "只", "猫", "a", "red", "circles"]
    # match(): the key of each caption word, as before; label(): a named Chinese word joined into one word
    assert matcher.match(words) == [None, None, 1, 1, None, None, None, 3, None, 2, 2]
    assert matcher.label(words) == (["一", "只", "红猫", "和", "一", "只", "猫", "a", "red", "circles"],
                                    [None, None, 1, None, None, None, 3, None, 2, 2])


def test_a_manifest_run_scored_by_the_older_rules_is_scored_again_on_resume(tmp_path, capsys):
    # the rule changed the record's metrics (scoring 3): a folder an older dcam wrote (no "scoring" in its
    # identity, 红 and 猫 scored apart) is the same run, and its resume scores it again from its stored maps
    import hashlib

    run, r = run_one(tmp_path, ["一只", "红猫"], {"红猫": 1})
    out = tmp_path / "run"
    info = json.loads((out / "run.json").read_text())
    assert info["identity"]["scoring"] == 3
    info["identity"].pop("scoring")
    info["fingerprint"] = hashlib.sha256(json.dumps(info["identity"], sort_keys=True, default=str).encode()).hexdigest()
    (out / "run.json").write_text(json.dumps(info, indent=2))
    one = hand_metrics(r.maps[1].numpy(), [CAT])
    line = dict(r.entry)
    line["metrics"] = {"object": {"words": [2, 3], **{k: [one[k], one[k]] for k in KEYS}}, "function": {"words": []},
                       "unaligned": 0, "not_targeted": 0, "words": ["一", "只", "红", "猫"]}
    (out / "index.jsonl").write_text(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
    capsys.readouterr()
    run_dataset(explainer(["一只", "红猫"]), open_source(str(tmp_path / "m.jsonl")), str(out), RunOptions(progress=False))
    assert "(scoring 1 -> 3) from its stored maps" in capsys.readouterr().err
    run = load_run(str(out))
    r2 = next(iter(run))
    assert r2.maps.equal(r.maps) and r2.metrics["words"] == ["一", "只", "红猫"]
    assert_object_words(r2.metrics, {2: one})
    assert run.metrics["summary"]["n_obj"] == 1 and run.info["identity"]["scoring"] == 3
