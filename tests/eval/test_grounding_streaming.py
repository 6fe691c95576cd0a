"""``dcam grounding`` holds one image at a time: it used to generate every
image (with its masks) up front and explain them setting by setting, so --n
100000 took ~4.5 GB before the first explanation. Each image now goes through
every (probe, layer) setting and is dropped; the report must be the one the
old order (settings outer, images inner) gives, bit for bit."""
import gc
import json
import weakref

import pytest

import dcam.zoo.data as data
from dcam.cli import main
from dcam.eval.grounding import _variant_maps, class_detector_maps, grounding_report, object_word_success
from dcam.explain import Explainer
from dcam.zoo.data import COLOURS

N = 6
PROBES = ("full", "remask")
LAYERS = (0, 1)


def _old_order_report(model, processor, samples, probes, layers, variants):
    """The report as the module computed it before: every image held, baselines first, then one
    fresh Explainer per setting over every image."""
    words = [[i for i, l in enumerate(s.word_labels) if l > 0] for s in samples]
    kind = {w: "colour" if w in COLOURS else "shape" for s in samples for w in s.words}
    n_words = sum(len(idx) for idx in words)
    n_kind = {"colour": 0, "shape": 0}
    chance = detector = 0
    for s, idx in zip(samples, words):
        for i in idx:
            n_kind[kind[s.words[i]]] += 1
        uniform = [[[1.0, 1.0], [1.0, 1.0]]] * len(idx)
        chance += sum(object_word_success(uniform, idx, s.word_labels, s.mask))
        detector += sum(object_word_success(class_detector_maps(s, idx), idx, s.word_labels, s.mask))
    rep = {"chance": chance / n_words, "class_detector": detector / n_words, "n_images": len(samples),
           "n_words": n_words, "rates": {}, "rates_by_kind": {}}
    variant_rates = {}
    for probe in probes:
        for layer in layers:
            exp = Explainer(model, processor, layer=layer)
            hits, kinds, v_hits = 0, {"colour": 0, "shape": 0}, {}
            for s, idx in zip(samples, words):
                e = exp.explain(s.image, response=s.caption, targets=idx, probe=probe, target_score="logit")
                ok = object_word_success(e.maps, idx, s.word_labels, s.mask)
                hits += sum(ok)
                for i, good in zip(idx, ok):
                    kinds[kind[s.words[i]]] += int(good)
                if variants:
                    for name, vm in _variant_maps(exp, e, s, idx, probe, "logit").items():
                        v_hits[name] = v_hits.get(name, 0) + sum(object_word_success(vm, idx, s.word_labels, s.mask))
            rep["rates"].setdefault(probe, {})[layer] = hits / n_words
            rep["rates_by_kind"].setdefault(probe, {})[layer] = {k: v / n_kind[k] for k, v in kinds.items()}
            for name, v in v_hits.items():
                variant_rates.setdefault(name, {}).setdefault(probe, {})[layer] = v / n_words
    if variants:
        rep["variant_rates"] = variant_rates
    return rep


def test_one_pass_over_the_images_gives_the_old_order_s_report_bit_for_bit(bundled,
                                                                           first_with_two_objects):
    model, processor = bundled
    samples = first_with_two_objects(N)
    want = _old_order_report(model, processor, samples, PROBES, LAYERS, variants=True)
    got = grounding_report(model, processor, n=N, probes=PROBES, layers=LAYERS, progress=False, variants=True)
    assert set(want["variant_rates"]) == {"raw", "grad-norm", "layercam"}
    for key, value in want.items():  # every number, exactly (== on floats; 0.1 + 0.2 != 0.3 would fail)
        assert got[key] == value, key
    assert {k: got[k] for k in want} == want
    # and in the same order: the --json text of these numbers is the old one
    assert json.dumps({k: got[k] for k in want}) == json.dumps(want)
    assert got["n_images"] == N and got["split"] == "test" and got["target_score"] == "logit"


def test_at_most_two_images_are_alive_at_once(bundled, monkeypatch):
    """The one the settings are explaining and the one the loop is replacing: not every image."""
    model, processor = bundled
    alive, most = set(), [0]
    real = data.generate_sample

    def tracked(*args, **kwargs):
        gc.collect()
        most[0] = max(most[0], len(alive))
        s = real(*args, **kwargs)
        alive.add(id(s))
        weakref.finalize(s, alive.discard, id(s))
        return s

    monkeypatch.setattr(data, "generate_sample", tracked)
    rep = grounding_report(model, processor, n=N, probes=["full"], layers=[0], progress=False)
    assert rep["n_images"] == N
    gc.collect()
    assert most[0] <= 2  # before: all N (and --n 100000 held 100000)


def test_the_bar_counts_images_times_settings(bundled, capsys):
    model, processor = bundled
    grounding_report(model, processor, n=3, probes=PROBES, layers=[0], progress=True)
    err = capsys.readouterr().err
    assert "grounding: 100%" in err and " 6/6 " in err


@pytest.mark.parametrize("after", [1, 4])  # during the first image; during the third
def test_ctrl_c_during_the_explanations_writes_nothing(tmp_path, capsys, monkeypatch, after):
    calls = [0]
    real = Explainer.explain

    def interrupted(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", interrupted)
    out = tmp_path / "g.json"
    assert main(["grounding", "--n", "3", "--probes", "full,masked", "--layers", "0", "--json", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "dcam grounding: interrupted; nothing was written"
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert calls[0] == after + 1


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_a_bad_number_of_images_is_refused_by_name(n):
    # the CLI refused --n 0; the API ran over 73 images for n=0, gave an empty report for -1 and named
    # "size" for 2.5
    from dcam import InputError
    from dcam.eval.grounding import grounding_report, iter_grounding_samples

    with pytest.raises(InputError, match=r"^n must be an int >= 1, got "):
        grounding_report(n=n, probes=["full"], layers=[0], progress=False)
    with pytest.raises(InputError, match=r"^n must be an int >= 1, got "):
        next(iter_grounding_samples(n))
