"""LaViDa as its published classes behave, found by running dcam against the authors' code
(jacklishufan/LaViDa): LaViDa-Dream's decoder layers are ``@torch.compile``'d, LaViDa's LLaDA reads
no padding mask, and its ``image_newline`` is a bfloat16 first parameter. The stand-ins reproduce
each (dcam.testing.llava_dmllm); these tests hold dcam to them."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo import eval_frame

from dcam.explain import Explainer
from dcam.probe import Targets, auto_adapter, probe, published_gradients
from dcam.probe.gradients import batched_grad
from dcam.testing.llava_dmllm import tiny_lavida, tiny_lavida_dream, tiny_llada_v

IMAGES = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8))
          for s, (h, w) in enumerate([(40, 72), (60, 30), (40, 72)])]
PROMPTS = [None, "name the objects in this image", "what"]
RESPONSES = ["a red circle", "a blue square and", "a green circle"]


# ---------------------------------------------------------------- compiled Dream layers

def test_compiled_dream_layers_are_explained_with_the_eager_models_gradients():
    """Every probe of a LaViDa-Dream with compiled layers failed (the compiled backward takes no
    batched cotangents, and the fallback found its graph freed). The reference: the same weights
    uncompiled, one full forward and backward per word (published_gradients)."""
    compiled, proc = tiny_lavida_dream(seed=0, layers=4, compiled_layers=True)
    eager, _ = tiny_lavida_dream(seed=0, layers=4)
    assert type(compiled.model.layers[0]).forward is not type(eager.model.layers[0]).forward  # compiled
    a, ref_a = auto_adapter(compiled, proc), auto_adapter(eager, proc)
    prep = a.prepare(IMAGES[0], None, a.encode_response(RESPONSES[0]))
    pos = [prep.response_start + i for i in range(prep.response_length)]
    ids = prep.response_ids[:len(pos)]
    ref = published_gradients(ref_a, prep, pos, ids, 1, probe="masked")
    assert ref.abs().max() > 0
    stances = []  # the compiler's stance while the layers run: eager for the probe's forward only
    hook = compiled.model.layers[2].register_forward_hook(lambda m, i, o: stances.append(eval_frame._stance.stance))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # the batched backward runs: no fallback
            for mode in ("full", "masked"):
                got = probe(a, prep, pos, ids, 1, probe=mode).per_target_grads()
                want = ref if mode == "masked" else published_gradients(ref_a, prep, pos, ids, 1, probe=mode)
                torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    finally:
        hook.remove()
    assert stances and set(stances) == {"force_eager"} and eval_frame._stance.stance == "default"


def test_compiled_dream_layers_generate_compiled_as_the_eager_model_does():
    """Generation (no graph) keeps the published compiled layers; it decodes what the same weights
    decode uncompiled (8 slots in 8 steps: one idle step, 7 counted)."""
    compiled, proc = tiny_lavida_dream(seed=0, layers=4, compiled_layers=True)
    eager, _ = tiny_lavida_dream(seed=0, layers=4)
    a, ref_a = auto_adapter(compiled, proc), auto_adapter(eager, proc)
    prep = ref_a.prepare(IMAGES[0], None, response_length=8)
    stances = []
    hook = compiled.model.layers[2].register_forward_hook(lambda m, i, o: stances.append(eval_frame._stance.stance))
    try:
        got = a.generate(prep, steps=8, response_length=8, record=True)
    finally:
        hook.remove()
    want = ref_a.generate(prep, steps=8, response_length=8, record=True)
    assert stances and set(stances) == {"default"}
    assert got.response_ids == want.response_ids and got.steps == want.steps == 7
    assert torch.equal(got.states, want.states)


# ---------------------------------------------------------------- the per-token fallback

class _NoBatchingRule(torch.autograd.Function):
    """Doubles its input; its backward reads a value (``.item()``), which has no batching rule."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        _ = g.abs().sum().item()
        return 2 * g


def test_the_fallback_runs_after_a_batched_backward_that_failed_part_way():
    """The batched backward frees the saved tensors of the nodes it ran before it fails (tanh's
    here); on the last chunk it no longer did so, and the fallback failed ("backward through the
    graph a second time"). Gradients by hand: d/dx of tanh(2 sin x) . w[:, k] summed over n."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    w = torch.randn(3, 2, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    scores = torch.tanh(_NoBatchingRule.apply(torch.sin(leaf))).sum(1) @ w  # [1, K=2]
    got = {}
    with pytest.warns(RuntimeWarning, match="one backward per token"):
        batched_grad(scores, leaf, 4, torch.arange(4), lambda k0, k1, g: got.setdefault((k0, k1), g))
    (k0, k1), g = next(iter(got.items()))
    assert (k0, k1) == (0, 2)
    dtanh = (1 - torch.tanh(2 * torch.sin(x)) ** 2) * 2 * torch.cos(x)  # [1, 4, 3]
    for k in range(2):
        torch.testing.assert_close(g[k], dtanh * w[:, k], atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------- LaViDa's LLaDA reads no mask

def test_lavidas_llada_reads_no_padding_mask_and_its_batches_run_one_forward_per_layout(hooked_batch_sizes):
    model, proc = tiny_lavida(seed=1)
    exp = Explainer(model, proc)
    assert not exp.adapter.pads_batches
    # as the authors' model: the mask changes nothing (a padded row would read the padding)
    emb = torch.randn(2, 9, model.config.hidden_size)
    keep = torch.ones(2, 9, dtype=torch.long)
    keep[1, 6:] = 0
    with torch.no_grad():
        masked = model.get_model()(None, input_embeddings=emb, attention_mask=keep).logits
        bare = model.get_model()(None, input_embeddings=emb).logits
        alone = model.get_model()(None, input_embeddings=emb[1:, :6]).logits
    assert torch.equal(masked, bare)
    assert (masked[1, :6] - alone[0]).abs().max() > 1e-3  # the padded row is not the example alone
    ones = [exp.explain(im, prompt=p, response=r) for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch, sizes = hooked_batch_sizes(exp, lambda: exp.explain_batch(IMAGES, PROMPTS, RESPONSES))
    assert not [w for w in caught if "pads_batches" in str(w.message)]
    assert sizes == [1, 1, 1]  # no padding check, no padded forward: one per layout
    for e, one in zip(batch, ones):
        assert e.tokens == one.tokens
        torch.testing.assert_close(e.maps, one.maps, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- bfloat16 newline

@pytest.mark.parametrize("build", [tiny_lavida, tiny_lavida_dream])
def test_a_float32_lavida_with_its_bfloat16_newline_is_explained(build):
    """The published image_newline is bfloat16 and the model's first parameter: dcam cast the pixels to
    it and the float32 projector failed. The reference: the same model with a float32 newline (its
    bfloat16 values are exact in float32), whose first parameter is float32."""
    model, proc = build(seed=2, layers=3)
    name, first = next(model.named_parameters())
    assert (name, first.dtype) == ("model.image_newline", torch.bfloat16)
    assert model.model.parts.mm_projector[0].weight.dtype == torch.float32
    a = auto_adapter(model, proc)
    prep = a.prepare(IMAGES[1], None, a.encode_response(RESPONSES[0]))
    assert prep.model_inputs["images"].dtype == torch.float32
    with torch.no_grad():
        emb = a._embed(a._collapse(prep.input_ids), prep.model_inputs)[0]
    h, w = prep.grid
    s0 = int(prep.views["base"].positions[-1]) + 1
    newline_rows = torch.arange(s0 + w, s0 + h * (w + 1), w + 1)
    assert emb.dtype == torch.float32 and torch.equal(emb[newline_rows], first.float().expand(h, -1))
    got = Explainer(model, proc).explain(IMAGES[1], response=RESPONSES[0])
    reference, _ = build(seed=2, layers=3)
    reference.model.image_newline.data = reference.model.image_newline.data.float()
    assert next(reference.parameters()).dtype == torch.float32
    want = Explainer(reference, proc).explain(IMAGES[1], response=RESPONSES[0])
    torch.testing.assert_close(got.raw_maps, want.raw_maps, atol=0, rtol=0)


def test_the_memory_estimate_of_a_float32_lavida_counts_four_bytes_a_value():
    # LaViDa's first parameter is its bfloat16 image_newline whatever the model's dtype: the estimate read
    # the element size off it and sized a float32 model's gradients at half their bytes
    from dcam.probe.memory import head_cotangent_bytes, per_cotangent_bytes

    model, _ = tiny_lavida(seed=0, layers=2)
    model = model.float()
    model.get_model().image_newline.data = model.get_model().image_newline.data.bfloat16()
    assert next(model.parameters()).dtype == torch.bfloat16
    block = model.model.transformer.blocks[0]  # the sizes read off the modules
    (I, D), H = block.ff_proj.weight.shape, block.n_heads
    V = model.model.transformer.wte.weight.shape[0]
    L, above = 50, 1
    # by hand: per block above the hook (and the hooked one) L x (8D + 3I) values of 4 bytes, plus the
    # float32 attention probabilities' gradient H x L x L
    assert per_cotangent_bytes(model, L, above) == (above + 1) * (L * (8 * D + 3 * I) * 4 + H * L * L * 4)
    assert head_cotangent_bytes(model, 7) == 2 * 7 * V * 4


@pytest.mark.parametrize("build", [tiny_lavida, tiny_llada_v])
def test_a_float16_tower_beside_a_bfloat16_model_is_explained(build):
    """On a GPU the published builders leave the vision tower in float16 beside a bfloat16 model
    (``load_model`` without ``--dtype`` keeps both): the tower computes in float16 and hands its
    features back in the pixels' dtype, which must be the projector's. Pixels in the tower's dtype
    made the projector fail ("mat1 and mat2 must have the same dtype"). The reference: the same
    explanation with the pixels the bfloat16 model gets when its tower is bfloat16 too."""
    model, proc = build(seed=2, layers=3)
    model = model.to(torch.bfloat16)
    model.get_vision_tower().to(torch.float16)
    a = auto_adapter(model, proc)
    prep = a.prepare(IMAGES[1], None, a.encode_response(RESPONSES[0]))
    assert prep.model_inputs["images"].dtype == torch.bfloat16  # the projector's (the model's)
    got = Explainer(model, proc).explain(IMAGES[1], response=RESPONSES[0])
    assert len(got) > 0 and bool(torch.isfinite(got.raw_maps).all())
    ref_model, _ = build(seed=2, layers=3)
    ref_model = ref_model.to(torch.bfloat16)
    ref_model.get_vision_tower().to(torch.float16).to(torch.bfloat16)  # the same float16-rounded weights
    want = Explainer(ref_model, proc).explain(IMAGES[1], response=RESPONSES[0])
    # the tower computes in float16 on one side, bfloat16 on the other: close, not equal
    assert float((got.raw_maps - want.raw_maps).abs().max()) < 0.1  # 0.02-0.06 measured


@pytest.mark.parametrize("build", [tiny_lavida, tiny_llada_v])
def test_pixels_take_the_projectors_dtype_when_most_weights_have_another(build):
    # bfloat16 with the embedding and the LM head kept in float32 (a common mixed-precision load): most of
    # the tiny model's weights are float32 then, and pixels in that dtype failed in the bfloat16 projector
    model, proc = build(seed=2, layers=3)
    model = model.to(torch.bfloat16)
    for name, module in model.named_modules():  # the embedding and the LM head, by their published names
        if name in ("model.transformer.wte", "model.transformer.ff_out", "model.embed_tokens", "lm_head"):
            module.float()
    a = auto_adapter(model, proc)
    projector = next(m for n, m in model.named_modules() if n.endswith("mm_projector"))
    assert next(projector.parameters()).dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters() if p.dtype == torch.float32) > \
        sum(p.numel() for p in model.parameters() if p.dtype == torch.bfloat16)
    prep = a.prepare(IMAGES[1], None, a.encode_response(RESPONSES[0]))
    assert prep.model_inputs["images"].dtype == torch.bfloat16
