"""The last decoder block at the scored rows only (dcam.probe.rows).

Against the layer's own full forward (outputs at the rows) and against the
published one-forward-and-backward-per-token procedure, which runs every
block at every row (gradients at the hooked block); a layer that only looks
like a supported one is caught by the once-per-model check and runs whole."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from dcam.probe import auto_adapter
from dcam.probe.gradients import probe, published_gradients
from dcam.probe.rows import LastBlockAtRows, supports_rows
from dcam.testing.standins import STANDINS

RESPONSE = "a red circle and a blue square"


def _layer(causal: bool, kv_heads: int = 1):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=kv_heads,
                      num_hidden_layers=1, vocab_size=16)
    cfg._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(cfg, 0).eval()
    layer.self_attn.is_causal = causal
    return layer, LlamaRotaryEmbedding(cfg)


def _masks(B, L):
    torch.manual_seed(1)
    keep = torch.rand(B, 1, L, L) > 0.3
    keep |= torch.eye(L, dtype=torch.bool)  # every row sees itself
    additive = torch.zeros(B, 1, L, L).masked_fill(~keep, torch.finfo(torch.float32).min)
    return {"none": None, "bool": keep, "additive": additive}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_rows_equal_the_full_layer(causal, mask_kind):
    B, L = 2, 9
    layer, rotary = _layer(causal, kv_heads=2)  # grouped-query attention
    x = torch.randn(B, L, 32)
    pe = rotary(x, torch.arange(L)[None].expand(B, -1))
    mask = _masks(B, L)[mask_kind]
    with torch.no_grad():
        full = layer(x, attention_mask=mask, position_embeddings=pe)
        positions = torch.tensor([[6, 2, 6], [0, 8, 2]])  # per-row positions with a repeat
        with LastBlockAtRows(layer, positions, L) as at_rows:
            got = layer(x, attention_mask=mask, position_embeddings=pe)
    rows = [0, 2, 6, 8]
    assert at_rows.ran == 1
    torch.testing.assert_close(got[:, rows], full[:, rows], atol=1e-5, rtol=1e-5)
    others = [r for r in range(L) if r not in rows]
    assert torch.count_nonzero(got[:, others]) == 0
    # outside the context the layer is itself again
    with torch.no_grad():
        torch.testing.assert_close(layer(x, attention_mask=mask, position_embeddings=pe), full)


def test_gradients_through_the_rows_equal_the_full_layers_with_repeated_positions():
    """Padding repeats a position (probe_batch): each row must still count once."""
    B, L = 1, 7
    layer, rotary = _layer(False)
    x = torch.randn(B, L, 32, requires_grad=True)
    pe = rotary(x, torch.arange(L)[None])
    w = torch.randn(B, 2, 32)
    (g_full,) = torch.autograd.grad((layer(x, position_embeddings=pe)[:, [5, 2]] * w).sum(), x)
    with LastBlockAtRows(layer, torch.tensor([5, 2, 5, 5]), L):
        (g_rows,) = torch.autograd.grad((layer(x, position_embeddings=pe)[:, [5, 2]] * w).sum(), x)
    torch.testing.assert_close(g_rows, g_full, atol=1e-6, rtol=1e-5)


def test_other_calls_run_the_whole_layer():
    """A sequence of another length, or a call with a cache, is not touched."""
    layer, rotary = _layer(True)
    x = torch.randn(1, 5, 32)
    pe = rotary(x, torch.arange(5)[None])
    with torch.no_grad():
        full = layer(x, position_embeddings=pe)
        with LastBlockAtRows(layer, torch.tensor([1]), length=7) as at_rows:
            same = layer(x, position_embeddings=pe)
        with LastBlockAtRows(layer, torch.tensor([1]), length=5) as cached:
            same_cached = layer(x, position_embeddings=pe, use_cache=True)
    assert at_rows.ran == 0 and cached.ran == 0
    torch.testing.assert_close(same, full)
    torch.testing.assert_close(same_cached, full)


def _image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(40, 72, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["llada-v", "lavida-dream", "llava", "qwen3-vl"])
def test_probe_runs_the_last_block_at_the_rows_with_unchanged_gradients(name):
    model, proc = STANDINS[name](seed=0)
    a = auto_adapter(model, proc)
    prep = a.prepare(_image(), None, a.encode_response(RESPONSE))
    s = prep.response_start
    pos, ids = [s + 3, s + 1], [prep.response_ids[3], prep.response_ids[1]]
    mode = "masked" if "masked" in a.probes else "full"  # the AR VLMs have no mask
    mlp_rows = []
    hook = a.blocks()[-1].mlp.register_forward_hook(lambda m, i, o: mlp_rows.append(i[0].shape[1]))
    try:
        r = probe(a, prep, pos, ids, 0, probe=mode)
    finally:
        hook.remove()
    assert a.check_rows_only(prep.input_ids, a.batch_inputs(prep, 1), a.logit_positions(torch.tensor(pos)), s)
    # the once-per-model check ran the block whole and at the rows; the probe at the 2 rows
    assert mlp_rows[-1] == 2, mlp_rows
    ref = published_gradients(a, prep, pos, ids, 0, probe=mode)
    assert ref.abs().max() > 0
    torch.testing.assert_close(r.per_target_grads(), ref, atol=1e-7, rtol=1e-5)


def test_a_lookalike_layer_is_caught_and_runs_whole():
    """Same parts as a LLaMA layer, other arithmetic: the check refuses it (one
    warning) and the probe's gradients stay right."""
    model, proc = STANDINS["llada-v"](seed=0)
    a = auto_adapter(model, proc)
    last = a.blocks()[-1]

    class Shifted(LlamaDecoderLayer):  # (a scale would not do: the final RMSNorm removes it)
        def forward(self, hidden_states, *args, **kwargs):
            return super().forward(hidden_states, *args, **kwargs) + 1.0

    last.__class__ = Shifted
    assert supports_rows(last)
    prep = a.prepare(_image(), None, a.encode_response(RESPONSE))
    s = prep.response_start
    pos, ids = [s + 2], [prep.response_ids[2]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = probe(a, prep, pos, ids, 0, probe="masked")
    assert [str(w.message) for w in caught if "scored rows" in str(w.message)] == [
        "Shifted at the scored rows only does not reproduce the full block's logits on this model; "
        "the last block runs at every row"]
    assert a.check_rows_only(prep.input_ids, a.batch_inputs(prep, 1), torch.tensor(pos), s) is False
    torch.testing.assert_close(r.per_target_grads(), published_gradients(a, prep, pos, ids, 0, probe="masked"),
                               atol=1e-7, rtol=1e-5)


def test_unsupported_layouts_are_not_attempted():
    model, proc = STANDINS["lavida"](seed=0)  # OLMo-style LLaDA blocks
    a = auto_adapter(model, proc)
    assert not supports_rows(a.blocks()[-1])


def test_a_rows_path_that_fails_is_reported_and_the_block_runs_whole(monkeypatch):
    import dcam.probe.rows as rows_module

    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(rows_module, "layer_at_rows", broken)
    model, proc = STANDINS["llada-v"](seed=0)
    a = auto_adapter(model, proc)
    prep = a.prepare(_image(), None, a.encode_response(RESPONSE))
    s = prep.response_start
    pos, ids = [s + 2], [prep.response_ids[2]]
    with pytest.warns(RuntimeWarning, match=r"LlamaDecoderLayer at the scored rows only failed on this model "
                                            r"\(RuntimeError: no such kernel\); the last block runs at every row"):
        r = probe(a, prep, pos, ids, 0, probe="masked")
    torch.testing.assert_close(r.per_target_grads(), published_gradients(a, prep, pos, ids, 0, probe="masked"),
                               atol=1e-7, rtol=1e-5)


def test_a_block_whose_forward_is_wrapped_already_is_left_alone():
    layer, _ = _layer(True)
    assert supports_rows(layer)
    layer._hf_hook = object()  # accelerate's offloading hook
    assert not supports_rows(layer)
    del layer._hf_hook
    layer.forward = layer.forward  # an instance-level wrapper
    assert not supports_rows(layer)
