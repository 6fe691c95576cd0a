"""dcam.load_explanation: a saved folder read back into the explanation that wrote it.

The loaded explanation is compared field by field with the one in memory that
was saved (maps and tensors bit for bit); the one thing a save does not keep,
the full-size image, comes back as image.png holds it."""
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.saved import load_explanation
from dcam.testing import tiny_toy
from dcam.zoo.data import generate_sample

SAME = ("tokens", "token_ids", "word_numbers", "response_indices", "pieces", "response", "response_ids",
        "response_tokens", "prompt", "steps", "steps_source", "method", "probe", "layer", "target_score",
        "repeat_ratio", "config", "model_name", "notes", "granularity", "view", "box", "model_dtype", "device")


@pytest.fixture(scope="module")
def toy():
    return tiny_toy(seed=2)


@pytest.fixture(scope="module")
def sample():
    return generate_sample((0, 2, 21), image_size=32, n_objects=2)


def _same_tensor(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _assert_loaded(e, back, rendered):
    unused = {k for k in ("layer", "target_score", "config") if e.meta()[k] is None}  # (tam's: saved as none)
    for name in SAME:
        if name not in unused:
            assert getattr(back, name) == getattr(e, name), name
    assert tuple(back.grid) == tuple(e.grid)
    for name in ("maps", "scores", "raw_maps"):
        if getattr(e, name) is None:
            assert getattr(back, name) is None
        else:
            _same_tensor(getattr(e, name).float(), getattr(back, name))
    assert sorted(back.stats) == sorted(e.stats)
    for k in e.stats:
        _same_tensor(e.stats[k], back.stats[k])
    _same_tensor(e.extra["context_weights"].float(), back.extra["context_weights"])
    assert back.extra["distractor"] == e.extra["distractor"]
    assert back.image.size == tuple(rendered)  # the image as image.png holds it
    meta, got = e.meta(), back.meta()
    assert got.pop("image_size") == list(rendered) and meta.pop("image_size") == list(e.image.size)
    assert got == meta


@pytest.mark.parametrize("method", ["diffusion-cam", "tam"])
def test_a_saved_explanation_loads_back_as_it_was(toy, sample, tmp_path, method):
    e = Explainer(*toy, method=method).explain(sample.image, steps=4)
    e.save(tmp_path / "a")
    with open(tmp_path / "a" / "meta.json") as f:
        rendered = json.load(f)["rendered_size"]
    back = load_explanation(tmp_path / "a")
    _assert_loaded(e, back, rendered)
    if method == "tam":  # a method without a config or layer saved none, and says none again
        assert back.meta()["config"] is None and back.meta()["layer"] is None
    # saved again, the files hold the same maps and the same meta.json
    back.save(tmp_path / "b")
    from safetensors.torch import load_file

    first, second = load_file(tmp_path / "a" / "maps.safetensors"), load_file(tmp_path / "b" / "maps.safetensors")
    assert sorted(first) == sorted(second)
    for k in first:
        _same_tensor(first[k], second[k])
    with open(tmp_path / "b" / "meta.json") as f:
        assert {k: v for k, v in json.load(f).items() if k != "image_size"} == \
            {k: v for k, v in json.load(open(tmp_path / "a" / "meta.json")).items() if k != "image_size"}


def test_a_trajectory_loads_back_with_its_explanation(toy, sample, tmp_path):
    e = Explainer(*toy).explain(sample.image, steps=4, trajectory=True)
    e.save(tmp_path / "t")
    back = load_explanation(tmp_path / "t")
    tr, got = e.trajectory, back.trajectory
    for name in ("maps", "final_maps", "decided_at", "slot_decided_at", "states", "scores", "final_scores",
                 "remasked"):
        _same_tensor(getattr(tr, name).to(getattr(got, name).dtype), getattr(got, name))
    for k in tr.numbers:
        torch.testing.assert_close(got.numbers[k], tr.numbers[k], atol=0, rtol=0, equal_nan=True)
    assert got.word_table() == tr.word_table() and got.state_tokens == tr.state_tokens
    assert got.word_count == tr.word_count and got.cost == tr.cost
    assert got.index(-1) == tr.index(-1)  # counts back from the response's last word as before


def test_folders_that_are_not_a_saved_explanation_are_refused(toy, sample, tmp_path):
    exp = Explainer(*toy)
    e = exp.explain(sample.image, steps=4)
    e.save(tmp_path / "a")
    with pytest.raises(InputError, match="^folder: no such folder"):
        load_explanation(tmp_path / "missing")
    with pytest.raises(InputError, match="is not a folder"):
        load_explanation(tmp_path / "a" / "meta.json")
    with pytest.raises(InputError, match="has no meta.json"):
        load_explanation(tmp_path)
    with pytest.raises(InputError, match="^folder: expected a path, got int"):
        load_explanation(3)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "a", broken)
    (broken / "meta.json").write_text("{")
    with pytest.raises(InputError, match="^folder: cannot read .*meta.json' \\(JSONDecodeError"):
        load_explanation(broken)
    (broken / "meta.json").write_text("[]")
    with pytest.raises(InputError, match="holds a JSON list"):
        load_explanation(broken)
    # maps.safetensors of another explanation (fewer words) copied beside this meta.json
    other = exp.explain(sample.image, response=e.response_ids[:1], steps=4)
    other.save(tmp_path / "other")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copy(tmp_path / "other" / "maps.safetensors", mixed / "maps.safetensors")
    with pytest.raises(InputError, match="maps.safetensors does not hold its meta.json's maps"):
        load_explanation(mixed)
    (mixed / "maps.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match="^folder: cannot read .*maps.safetensors'"):
        load_explanation(mixed)
    os.remove(mixed / "maps.safetensors")
    with pytest.raises(InputError, match="has no maps.safetensors"):
        load_explanation(mixed)
    Image.new("RGB", (2, 2)).save(tmp_path / "a" / "image.png")  # (image.png is only read)
    assert load_explanation(tmp_path / "a").image.size == (2, 2)
