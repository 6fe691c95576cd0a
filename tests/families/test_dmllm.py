"""The dMLLM families on their stand-ins: LaViDa (LLaDA and Dream backbones),
LLaDA-V, MMaDA, Lumina-DiMOO, Dream-VL. For each: detection and the published
module paths, the image span against the model's own image tokens or
features, every probe's gradients against the slow published procedure
(one full forward and backward per token), the contrastive score against the
logits of a plain forward, an end-to-end explanation and a generation that
records the sampler's steps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dcam.explain import Explainer
from dcam.probe import auto_adapter
from dcam.probe.gradients import probe, published_gradients

RESPONSE = "a red circle and a blue square"
DMLLMS = ["lavida", "lavida-dream", "llada-v", "mmada", "lumina-dimoo", "dream-vl"]
#: (adapter class name, blocks path from the model, mask id, logit shift) per family (the public code's)
EXPECT = {
    "lavida": ("LlavaDMLLMAdapter", lambda m: m.model.transformer.blocks, 126336, 0),
    "lavida-dream": ("LlavaDMLLMAdapter", lambda m: m.model.layers, 151666, 1),
    "llada-v": ("LlavaDMLLMAdapter", lambda m: m.model.layers, 126336, 0),
    "mmada": ("MMaDAAdapter", lambda m: m.model.transformer.blocks, 126336, 0),
    "lumina-dimoo": ("DiMOOAdapter", lambda m: m.model.transformer.blocks, 126336, 0),
    "dream-vl": ("DreamVLAdapter", lambda m: m.model.layers, 151666, 1),
}


@pytest.mark.parametrize("name", DMLLMS)
def test_detected_with_the_published_layout(name, models):
    model, proc = models(name)
    a = auto_adapter(model, proc)
    cls, blocks, mask, shift = EXPECT[name]
    assert type(a).__name__ == cls and a.family == name
    assert a.blocks() is blocks(model)
    assert a.mask_token_id == mask and a.probes == ("full", "masked", "remask") and a.is_diffusion
    assert a.logit_positions(torch.tensor([10])).item() == 10 - shift
    assert a.default_layer() == 1  # round(4 * 10/32) = 1
    # a forced family wins over detection; an unknown one names the argument
    assert type(auto_adapter(model, proc, family=name)) is type(a)
    with pytest.raises(ValueError, match="family: unknown family 'nope'"):
        auto_adapter(model, proc, family="nope")


@pytest.mark.parametrize("name", DMLLMS)
def test_every_probe_matches_the_published_procedure(name, models, landscape):
    model, proc = models(name)
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    pos = [prep.response_start + i for i in (1, 2)]
    ids = prep.response_ids[1:3]
    for mode in a.probes:
        r = probe(a, prep, pos, ids, 1, probe=mode)
        ref = published_gradients(a, prep, pos, ids, 1, probe=mode)
        assert ref.abs().max() > 0
        torch.testing.assert_close(r.per_target_grads(), ref, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", ["lavida", "lavida-dream", "mmada", "dream-vl"])
def test_scores_read_the_family_logits(name, models, landscape):
    """logit and contrastive scores against a plain forward, the shift applied by hand."""
    model, proc = models(name)
    a = auto_adapter(model, proc)
    shift = EXPECT[name][3]
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    s = prep.response_start
    pos, ids = [s + 1, s + 2], prep.response_ids[1:3]
    with torch.no_grad():
        logits = a.forward_logits(prep.input_ids, a.batch_inputs(prep, 1))[0].float()
    r = probe(a, prep, pos, ids, 1, probe="full", want_grads=False)
    torch.testing.assert_close(r.scores, torch.stack([logits[p - shift, t] for p, t in zip(pos, ids)]))
    rc = probe(a, prep, pos, ids, 1, probe="full", target_score="contrastive", want_grads=False)
    assert rc.distractor == s  # the first response slot that is not a target
    want = torch.stack([logits[p - shift].sum() - logits[s - shift].sum() for p in pos])
    torch.testing.assert_close(rc.scores, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", DMLLMS)
def test_explains_end_to_end_and_records_the_samplers_steps(name, models, landscape):
    model, proc = models(name)
    exp = Explainer(model, proc)
    e = exp.explain(landscape, response=RESPONSE)
    assert e.tokens == RESPONSE.split() and e.probe == "masked" and e.layer == 1
    assert e.maps.shape == (7, *e.grid) and torch.isfinite(e.maps).all()
    # 8 slots in 4 steps: LLaDA's schedule commits 2 per step; Dream's linear times commit 1, 2, 2, 3
    g = exp.explain(landscape, response_length=8, steps=4)
    assert g.steps == 4 and g.steps_source == "generation" and len(g.response_ids) == 8


@pytest.mark.parametrize("name,blocks", [("mmada", 4), ("lumina-dimoo", 4), ("lavida", 1), ("llada-v", 1)])
def test_generation_is_cut_into_the_releases_blocks(name, blocks, models):
    # MMaDA's inference_mmu.py decodes max_seq_length slots in blocks of max_seq_length // 4 (Lumina-DiMOO's: 1024
    # in blocks of 256); dcam decoded them as one block, so other words came out than the release's
    model, proc = models(name)
    a = auto_adapter(model, proc)
    assert a.steps_and_blocks(None, 64) == (32, 64 // blocks)
    assert a.steps_and_blocks(8, 64) == (8, 64 // blocks)
    # 6 slots do not part in 4: LaViDa, LLaDA-V and Lumina-DiMOO one block, as a given block_length does; MMaDA's
    # release blocks of 6 // 4 = 1 (tests/families/test_release_blocks.py)
    assert a.steps_and_blocks(None, 6)[1] == (1 if name == "mmada" else 6)
    assert auto_adapter(model, proc, block_length=8).steps_and_blocks(None, 64) == (32, 8)


# --------------------------------------------------------------------------- image spans

def _embeddings(a, prep):
    """The embeddings the model itself builds for the prepared sequence."""
    with torch.no_grad():
        return a._embed(a._collapse(prep.input_ids), prep.model_inputs)[0]


@pytest.mark.parametrize("name", ["llada-v", "lavida"])
def test_llava_package_views_hold_the_models_own_features(name, models, wide):
    """The base view and the stitched high-resolution grid, found from the
    image size and the config, against the features the model packs.
    Hand-worked for a 100 x 40 (w x h) image, 28-pixel tiles of 4x4 patches,
    pinpoints (w, h) (28,56) (56,28) (56,56) (28,84) (84,28): the best fit is
    (84, 28) = 1 x 3 tiles. LLaDA-V: 4 tokens per tile side, a 4 x 12 map,
    cropped to the image's aspect: int(100 * 4 / 40) = 10 columns, 1 off each
    side -> 4 x 10. LaViDa pools 2x2 (bilinear, ceil): 2 per side, 2 x 6, no
    crop (int(100 * 2 / 40) = 5, (6 - 5) // 2 = 0)."""
    model, proc = models(name)
    a = auto_adapter(model, proc)
    prep = a.prepare(wide, None, a.encode_response(RESPONSE))
    u, grid, crop = {"llada-v": (4, (4, 10), 1), "lavida": (2, (2, 6), 0)}[name]
    assert prep.views["base"].grid == (u, u) and prep.grid == grid == prep.views["highres"].grid
    assert torch.equal(prep.image_positions, prep.views["highres"].positions)
    emb = _embeddings(a, prep)
    with torch.no_grad():
        feats = model.encode_images(prep.model_inputs["images"])  # [1 + 3 tiles, 16, D]
        if name == "lavida":  # the model pools each tile's 4x4 map to 2x2
            x = feats.view(4, 4, 4, -1).permute(0, 3, 1, 2)
            feats = F.interpolate(x, size=[2, 2], mode="bilinear").permute(0, 2, 3, 1).reshape(4, 4, -1)
    torch.testing.assert_close(emb[prep.views["base"].positions], feats[0])
    h, w = grid
    hi = emb[prep.image_positions].view(h, w, -1)
    for r in range(h):
        for c in range(w):
            col = c + crop  # column in the uncropped 1 x 3 tile strip
            tile, tr, tc = col // u, r, col % u
            torch.testing.assert_close(hi[r, c], feats[1 + tile].view(u, u, -1)[tr, tc])
    # every row of the stitched grid is followed by the model's newline embedding
    s0 = int(prep.views["base"].positions[-1]) + 1
    newline = torch.arange(s0 + w, s0 + h * (w + 1), w + 1)
    assert (emb[newline] == model.model.parts.image_newline).all()


@pytest.mark.parametrize("name", ["llada-v", "lavida"])
def test_llava_package_image_processor_is_used_as_released(name, models, wide):
    # the releases' load_pretrained_model hands out their llava package's SigLipImageProcessor, which has
    # preprocess() and cannot be called: every real LaViDa and LLaDA-V run ended in "object is not callable"
    from types import SimpleNamespace

    from transformers import SiglipImageProcessorPil

    from dcam.probe.adapters.anyres import stack_pixels

    model, proc = models(name)
    released = proc.image_processor
    assert not callable(released) and hasattr(released, "preprocess")
    # its pixels are transformers' SigLIP preprocessing of the same tiles (an independent implementation)
    side = released.size[0]
    ours = SiglipImageProcessorPil(size={"height": side, "width": side})
    tiles = [wide.resize((side, side)), wide.crop((0, 0, side, side))]
    torch.testing.assert_close(stack_pixels(tiles, released), stack_pixels(tiles, ours), atol=1e-6, rtol=0)
    # and a user's transformers processor (callable) explains alike
    a = Explainer(model, proc).explain(wide, response=RESPONSE)
    b = Explainer(model, SimpleNamespace(tokenizer=proc.tokenizer, image_processor=ours)).explain(wide, response=RESPONSE)
    torch.testing.assert_close(a.maps, b.maps)


def test_mmada_span_is_the_vq_codes_in_raster_order(models, landscape):
    model, proc = models("mmada")
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, "what do you see")
    ids = prep.input_ids[0]
    assert ids[0] == 126089 and ids[1] == 126084 and ids[2 + 64] == 126085  # <|mmu|> <|soi|> ... <|eoi|>
    # a 64-pixel centre square, 8 pixels per code: 8 x 8 codes. As torchvision's Resize(64) and
    # CenterCrop(64) in MMaDA's image_transform: 72 x 40 -> int(64 * 72 / 40) = int(115.2) = 115 wide,
    # left int(round(51 / 2)) = round(25.5) = 26 (halves to even; floor division gave 25)
    crop = landscape.resize((115, 64), resample=3).crop((26, 0, 90, 64))
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    codes = proc.vq_model.get_code(x)[0] + 126464
    assert prep.grid == (8, 8) and torch.equal(ids[prep.image_positions], codes)
    assert prep.views["image"].box == pytest.approx((26 / 115, 0.0, 90 / 115, 1.0))


def test_mmada_square_rounds_as_torchvision_resize_and_center_crop():
    """The longer side truncated, the offset rounded half to even (hand-worked):
    640 x 480 -> int(512 * 640 / 480) = int(682.67) = 682 wide, left round(85.0) = 85;
    333 x 500 -> int(768.77) = 768 high, top round(128.0) = 128;
    515 x 512 -> 515 wide, left round(1.5) = 2; 513 x 512 -> left round(0.5) = 0."""
    from dcam.probe.adapters.vq import centre_square

    for (w, h), box in (((640, 480), (85 / 682, 0, 597 / 682, 1)), ((333, 500), (0, 128 / 768, 1, 640 / 768)),
                        ((515, 512), (2 / 515, 0, 514 / 515, 1)), ((513, 512), (0, 0, 512 / 513, 1)),
                        ((512, 512), (0, 0, 1, 1))):
        img = Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8))
        out, got = centre_square(img, 512)
        assert out.size == (512, 512) and got == pytest.approx(box), (w, h)


def test_dimoo_rows_end_with_newline_tokens(models, landscape):
    """72 x 40 image, crops of at most 16 patches of 32 px: the crop with the
    closest aspect is 160 x 96 (5 x 3 patches), 16 px per token: 6 x 10."""
    model, proc = models("lumina-dimoo")
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    ids = prep.input_ids[0]
    h, w = prep.grid
    assert (h, w) == (6, 10)
    b = int((ids == 126349).nonzero())
    for r in range(h):
        row = torch.arange(b + 1 + r * (w + 1), b + 1 + r * (w + 1) + w)
        assert torch.equal(prep.image_positions[r * w:(r + 1) * w], row)
        assert ids[b + 1 + r * (w + 1) + w] == 126084  # the newline after the row
        assert ((ids[row] >= 126356) & (ids[row] < 126356 + 64)).all()
    assert ids[b + 1 + h * (w + 1)] == 126350  # <eoi>
    s, n = prep.response_start, prep.response_length
    assert ids[s - 1] == 126354 and ids[s + n] == 126355  # the canvas between <answer_start> and <answer_end>


def test_dream_vl_grid_is_the_merged_patch_grid(models, landscape):
    """Qwen2-VL's resize with 4-pixel patches merged 2x2 keeps 40 x 72 (multiples
    of 8): 10 x 18 patches -> a 5 x 9 merged grid."""
    model, proc = models("dream-vl")
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    assert prep.grid == (5, 9) and prep.image_positions.numel() == 45
    assert (prep.input_ids[0, prep.image_positions] == 151655).all()
    # the M-RoPE positions the adapter passes: (row, col) of the merged grid after the text before it
    pos, _ = model.get_rope_index(prep.input_ids, prep.model_inputs["image_grid_thw"])
    p0 = int(prep.image_positions[0])
    rows = pos[1, 0, prep.image_positions] - pos[1, 0, p0]
    cols = pos[2, 0, prep.image_positions] - pos[2, 0, p0]
    assert rows.tolist() == [r for r in range(5) for _ in range(9)]
    assert cols.tolist() == list(range(9)) * 5


def test_dream_vl_processor_without_image_token_is_held_to_one_image(models, landscape):
    # Dream-VL's released processor has no `image_token` and expands every <|image_pad|> with the next image's
    # grid: two of them in a prompt ended in the processor's IndexError
    from dcam.errors import InputError

    class DreamVLProcessor:  # the stand-in's processor, seen as the release's: no image_token
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            if name == "image_token":
                raise AttributeError(name)
            return getattr(self._inner, name)

        def __call__(self, *args, **kwargs):
            return self._inner(*args, **kwargs)

    model, proc = models("dream-vl")
    a = auto_adapter(model, DreamVLProcessor(proc))
    assert not hasattr(a.processor, "image_token")
    with pytest.raises(InputError) as info:
        a.prepare(landscape, "<|image_pad|> and <|image_pad|> describe", a.encode_response(RESPONSE))
    assert str(info.value).startswith("prompt: exactly one image marker (<|image_pad|> or ")
    assert a.prepare(landscape, None, a.encode_response(RESPONSE)).grid == (5, 9)


def test_lavida_checkpointing_is_switched_off(models):
    """The published LaViDa model turns activation checkpointing on; a checkpointed
    block would run again in the backward. The adapter turns it off."""
    from dcam.testing.llava_dmllm import tiny_lavida

    model, proc = tiny_lavida(layers=3)
    assert model.model.activation_checkpointing_strategy == "whole_layer"
    auto_adapter(model, proc)
    assert model.model.activation_checkpointing_strategy is None


def test_relative_depth_rule():
    from dcam.probe.adapters import relative_depth_layer

    # round(n * 10/32), never the last block
    assert [relative_depth_layer(n) for n in (32, 28, 4, 3, 2)] == [10, 9, 1, 1, 0]


def test_an_empty_given_response_names_response(models, landscape):
    # it said "the response has no word to explain" without naming the argument
    from dcam.errors import InputError

    exp = Explainer(*models("lavida"))
    with pytest.raises(InputError) as info:
        exp.explain(landscape, response="")
    assert str(info.value) == "response: '' has no word to explain (only eos/pad tokens)"
    # a response that starts with end-of-text ends there, though words follow it: said so (it read
    # "only eos/pad tokens", with a word in plain sight)
    eos = sorted(exp.adapter.eos_token_ids)[0]
    blue = exp.adapter.encode_response("blue")
    with pytest.raises(InputError) as info:
        exp.explain(landscape, response=[eos] + blue + [eos])
    assert str(info.value).endswith("has no word to explain (it ends at its first end-of-text token, at "
                                    "position 0, before any word)")


LLAMA3_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
                   "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
                   "\n\n{% endif %}")


@pytest.mark.parametrize("name", ["llada-v", "lavida"])
def test_llava_package_prompts_are_the_releases_conversation(name, landscape):
    # the releases prompt with a system turn (LaViDa's "llada"/"dream" templates, LLaDA-V's "llava_llada"); dcam
    # put the user turn alone, so the model read other text and the image sat elsewhere
    from dcam.errors import InputError
    from dcam.testing.standins import STANDINS

    model, proc = STANDINS[name](seed=0, layers=1)
    proc.tokenizer.chat_template = LLAMA3_TEMPLATE
    a = auto_adapter(model, proc)
    system = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
              "the user provides, and assist the user with a variety of tasks using natural language.")
    assert a.prompt_text("Describe the image.") == (
        f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|><|start_header_id|>user<|end_header_id|>"
        "\n\n<image>\nDescribe the image.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert a.prompt_text("<image> as I format it") == "<image> as I format it"
    # a prompt of the marker alone: the released models embed no image for a one-token prompt (AttributeError)
    with pytest.raises(InputError) as info:
        a.prepare(landscape, "<image>", a.encode_response("red"))
    assert str(info.value).startswith("prompt: '<image>' holds nothing but the image marker")
    # past tokenizer_model_max_length the release cuts the sequence silently (a RuntimeError here)
    n = a.prepare(landscape, "describe", a.encode_response("red")).input_ids.shape[1]
    model.config.tokenizer_model_max_length = n
    a.prepare(landscape, "describe", a.encode_response("red"))
    with pytest.raises(InputError) as info:
        a.prepare(landscape, "describe", a.encode_response("red red"))
    assert str(info.value) == (f"response: prompt and image take {n - 1} positions and the response 2, past the "
                               f"model's tokenizer_model_max_length {n}")
    with pytest.raises(InputError, match=r"^response_length: .* past the model's tokenizer_model_max_length"):
        a.prepare(landscape, "describe", None, 64)
