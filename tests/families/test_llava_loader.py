"""``load_model`` of a LLaDA-V / LaViDa folder goes through the authors' ``llava`` package
(``llava.model.builder.load_pretrained_model``). The published builders (LLaDA-V train/llava
and LaViDa, ``model/builder.py``) move the vision tower to CUDA in float16 whenever
``device_map != "auto"``. dcam passed ``device_map="cpu"``, so on a machine without CUDA every
``--model DIR`` of these families ended in a raw ``AssertionError: Torch not compiled with CUDA
enabled`` (found by running the authors' own builder with tiny random weights).

The builder below is ours: it keeps the published rule (and its signature) and hands back the
LLaDA-V stand-in, so the test checks what dcam asks of it."""
import json
import sys

import pytest
import torch
import transformers  # noqa: F401  (before the importable `accelerate` below: its import-time check never sees it)

from dcam.errors import InputError
from dcam.models import load_model

BUILDER = '''
import torch

calls = []


def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False, device_map="auto",
                          torch_dtype="float16", attn_implementation="flash_attention_2", **kwargs):
    calls.append(dict(device_map=device_map, torch_dtype=torch_dtype, attn_implementation=attn_implementation))
    from dcam.testing.llava_dmllm import tiny_llada_v

    model, processor = tiny_llada_v(seed=0)
    if device_map != "auto":  # as published: the tower goes to CUDA in float16
        model.get_model().parts.vision_tower.to(device="cuda", dtype=torch.float16)
    return processor.tokenizer, model, processor.image_processor, 4096
'''


@pytest.fixture
def llava_package(tmp_path, monkeypatch):
    """A ``llava`` package on sys.path whose builder keeps the published device rule; a LLaDA-V folder."""
    pkg = tmp_path / "pkgs" / "llava" / "model"
    pkg.mkdir(parents=True)
    (tmp_path / "pkgs" / "llava" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "builder.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    names = ("llava", "llava.model", "llava.model.builder", "accelerate")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llava_llada"}))
    yield str(ckpt)
    for name in names:  # imported during the test: gone with the folder, or later tests load this builder
        sys.modules.pop(name, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rule concerns machines without CUDA")
def test_without_cuda_the_builder_is_asked_to_place_the_model_itself(llava_package, tmp_path, monkeypatch):
    # what "auto" needs, importable (our builder does not use it)
    (tmp_path / "pkgs" / "accelerate").mkdir()
    (tmp_path / "pkgs" / "accelerate" / "__init__.py").write_text("")
    monkeypatch.delitem(sys.modules, "accelerate", raising=False)
    model, processor = load_model(llava_package, device="cpu", dtype="float32")
    import llava.model.builder as builder

    assert builder.calls == [dict(device_map="auto", torch_dtype="float32", attn_implementation="sdpa")]
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rule concerns machines without CUDA")
def test_without_cuda_or_accelerate_the_folder_is_refused_in_one_line(llava_package, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate -> ImportError
    with pytest.raises(InputError) as info:
        load_model(llava_package, device="cpu")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("model: ") and "pip install accelerate" in msg
    import llava.model.builder as builder

    assert builder.calls == []  # refused before the builder ran
