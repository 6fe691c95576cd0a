"""A processor that does not go with the model's family is refused when the
Explainer is made, in one line naming ``processor`` (it crashed deep in
transformers, or was blamed on the model); what ``steps`` do on a causal VLM;
the note saying why a sampler used fewer steps than asked."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.probe.adapters.anyres import stack_pixels
from dcam.testing.support import one_line_refusal

#: the tail of the llava-package families' refusal of a transformers processor
LLAVA_PACKAGE_TAIL = ("does not go with this llava_llada model; pass the (tokenizer, image_processor) of the model's "
                      "own checkpoint (its llava package's load_pretrained_model)")


def _image(h=40, w=80):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- LaViDa / LLaDA-V (llava packages)

@pytest.mark.parametrize("family", ["lavida", "llada-v"])
@pytest.mark.parametrize("other, cls", [("llava-next", "LlavaNextProcessor"), ("qwen-vl", "Qwen2VLProcessor"),
                                        ("idefics3", "Idefics3Processor")])
def test_a_transformers_processor_is_refused_by_the_llava_package_families(models, family, other, cls):
    # they ended in "ValueError: too many values to unpack (expected 4)" in modeling_siglip.py
    model, _ = models(family)
    message = one_line_refusal(lambda: Explainer(model, models(other)[1]))
    assert message == f"processor: a {cls} {LLAVA_PACKAGE_TAIL}"


def test_an_image_processor_of_another_family_is_refused_by_its_pixels(models):
    # (tokenizer, LLaVA-NeXT's image processor): the tiles' pixels are [n, tiles, 3, 32, 32], not what the
    # SigLIP tower takes. An 80 x 40 image in the stand-in's pinpoints (w, h) 28x56, 56x28, 56x56, 28x84, 84x28
    # of 28-pixel tiles: 56x28 holds it at scale 0.7 (1568 pixels, as 56x56 and 84x28 do) and wastes nothing,
    # so two tiles after the base one: 3 tiles of [3, 28, 28]
    model, proc = models("lavida")
    foreign = models("llava-next")[1].image_processor
    exp = Explainer(model, (proc.tokenizer, foreign))
    message = one_line_refusal(lambda: exp.explain(_image(), response="a red circle"))
    assert message.startswith(f"processor: its image processor ({type(foreign).__name__}) gave pixel values [")
    assert message.endswith("for 3 tiles, not [3, 3, 28, 28]: it is not this model's (pass the image processor of "
                            "its checkpoint)")


class _FixedPixels:
    """An image processor returning ``shape`` zeros (or ``out`` as given)."""

    def __init__(self, shape=None, out=None):
        self.shape, self.out = shape, out

    def preprocess(self, images, return_tensors):
        return self.out if self.out is not None else {"pixel_values": torch.zeros(self.shape)}


def test_stack_pixels_takes_only_square_tiles_of_the_towers_size():
    tiles = [_image(8, 8), _image(8, 8)]
    assert stack_pixels(tiles, _FixedPixels((2, 3, 8, 8)), 8).shape == (2, 3, 8, 8)
    assert stack_pixels(tiles, _FixedPixels((2, 3, 6, 6))).shape == (2, 3, 6, 6)  # (no size: any square)
    want = "processor: its image processor (_FixedPixels) gave pixel values {} for 2 tiles, not [2, 3, 8, 8]: it " \
        "is not this model's (pass the image processor of its checkpoint)"
    for shape in [(2, 3, 16, 16), (2, 3, 8, 6), (1, 2, 3, 8, 8), (3, 3, 8, 8), (2, 1, 8, 8), (2, 192)]:
        assert one_line_refusal(lambda: stack_pixels(tiles, _FixedPixels(shape), 8)) == want.format(list(shape))
    assert one_line_refusal(lambda: stack_pixels(tiles, _FixedPixels((2, 3, 8, 6)))).endswith("not [2, 3, S, S]: it is "
                                                                                      "not this model's (pass the "
                                                                                      "image processor of its "
                                                                                      "checkpoint)")
    assert one_line_refusal(lambda: stack_pixels(tiles, _FixedPixels(out={"image": 1}), 8)) == \
        "processor: its image processor (_FixedPixels) returned no pixel_values"
    assert one_line_refusal(lambda: stack_pixels(tiles, SimpleNamespace(), 8)) == \
        "processor: its image processor (SimpleNamespace) has no preprocess() and cannot be called"


def test_the_llava_package_families_messages_name_the_processor(models):
    model, proc = models("lavida")
    assert one_line_refusal(lambda: Explainer(model, None)) == \
        "processor: the lavida adapter needs a processor with a tokenizer, got NoneType"
    tok = proc.tokenizer
    assert one_line_refusal(lambda: Explainer(model, tok)) == \
        f"processor: the lavida adapter needs (tokenizer, image_processor), got {type(tok).__name__}"
    assert one_line_refusal(lambda: Explainer(model, SimpleNamespace(tokenizer=tok))) == \
        "processor: the lavida adapter needs (tokenizer, image_processor), got SimpleNamespace"


# ---------------------------------------------------------------- transformers VLMs

@pytest.mark.parametrize("family, kind", [("llava-next", "llava_next"), ("qwen-vl", "qwen2_vl")])
def test_a_processor_that_cannot_be_called_is_refused_by_a_transformers_vlm(models, family, kind):
    # LaViDa's (tokenizer, image_processor) namespace raised "'types.SimpleNamespace' object is not callable"
    model, _ = models(family)
    foreign = models("lavida")[1]
    assert one_line_refusal(lambda: Explainer(model, foreign)) == \
        f"processor: this {kind} model needs its transformers processor (with a tokenizer), got SimpleNamespace"


def test_gemma4_keeps_its_namespace_processor(models):
    # its encode() reads .tokenizer and .image_processor and never calls the processor
    model, proc = models("gemma4")
    assert isinstance(proc, SimpleNamespace)
    assert Explainer(model, proc).adapter.processor is proc


# ---------------------------------------------------------------- MMaDA / Lumina-DiMOO

def test_the_vq_families_name_what_a_foreign_processor_lacks(models):
    # "LLaDAForMultiModalGeneration has no image token id; it cannot be explained" blamed the model
    dimoo, _ = models("lumina-dimoo")
    assert one_line_refusal(lambda: Explainer(dimoo, models("llava-next")[1])) == \
        ("processor: the lumina-dimoo adapter needs a dcam.probe.adapters.DiMOOProcessor; a LlavaNextProcessor has "
         "no vqvae, max_patches, newline_id, image_token_offset, boi_id, eoi_id, answer_start_id, answer_end_id")
    mmada, _ = models("mmada")
    assert one_line_refusal(lambda: Explainer(mmada, models("lavida")[1])) == \
        ("processor: the mmada adapter needs a dcam.probe.adapters.MMaDAProcessor; a SimpleNamespace has no "
         "vq_model, resolution, image_token_offset, soi_id, eoi_id, mmu_id")
    assert one_line_refusal(lambda: Explainer(mmada, None)).startswith("processor: ")


# ---------------------------------------------------------------- steps on a causal VLM

def test_steps_do_not_cut_a_causal_models_answer(models):
    # --steps 2 answered two tokens; now the answer runs to response_length (the adapter's default: 16 for the
    # transformers VLMs) and the steps given are AKD's (LLaVA: the random LLaVA-NeXT stand-in writes <video>
    # tokens, which its answer given back below may not hold)
    model, proc = models("llava")
    exp = Explainer(model, proc)
    img = _image()
    free = exp.explain(img)
    assert len(free.response_ids) == 16 and free.steps == 16 and free.notes == []  # one step per token
    assert free.steps_source == "generation"
    two = exp.explain(img, steps=2)
    assert two.response_ids == free.response_ids and two.steps == 2 and two.notes == []
    assert two.steps_source == "given"  # the caller's, not the sampler's 16
    three = exp.explain(img, steps=2, response_length=3)
    assert three.response_ids == free.response_ids[:3] and three.steps == 2
    # AKD reads the steps: the maps are those of the given answer explained with steps=2
    given = exp.explain(img, response=free.response_ids, steps=2)
    torch.testing.assert_close(two.maps, given.maps)


# ---------------------------------------------------------------- the steps note

def _dream_history_idle(model, adapter, img, steps, length) -> int:
    """The Dream sampler's steps that committed no token, from its raw history (not dcam's count)."""
    prep = adapter.prepare(img, None, None, length)
    L = prep.response_start
    with torch.no_grad():
        prompt = prep.input_ids[:, :L]
        out = model.diffusion_generate(prompt, attention_mask=torch.ones_like(prompt, dtype=torch.bool),
                                       max_new_tokens=length, steps=steps, alg=adapter.alg, output_history=True,
                                       return_dict_in_generate=True, **prep.model_inputs)
    unmasked = [int((h.reshape(-1)[L:L + length] != adapter.mask_token_id).sum()) for h in out.history]
    assert len(unmasked) == steps
    return sum(1 for before, after in zip([0] + unmasked, unmasked) if after == before)


# Dream's schedule (8 slots, times 1 - i * 0.999 / S): step i commits int(masked * (t_i - t_i+1) / t_i), the last
# all that remain. S = 8: 8 * 0.1249 -> 0, then 1, 1, 1, 1, 1, 1 and the last 2: one idle step, 7 used.
# S = 12: 8 * 0.0833 / t_i stays below 1 for i = 0..4 (0.67, 0.73, 0.80, 0.89, 0.998), then 1 x 6 and 2: five idle.
DREAM_NOTES = {8: "steps: 8 requested, the sampler used 7 (1 step committed no token and is not counted)",
               12: "steps: 12 requested, the sampler used 7 (5 steps committed no token and are not counted)"}


@pytest.mark.parametrize("steps", [8, 12])
def test_the_dream_samplers_note_counts_the_steps_that_committed_nothing(models, steps):
    # the note said "(it commits at least one token per step)" of a sampler that ran every step asked for
    img = _image()
    model, proc = models("dream-vl")
    exp = Explainer(model, proc)
    idle = _dream_history_idle(model, exp.adapter, img, steps, 8)
    assert idle == {8: 1, 12: 5}[steps]
    for family in ("dream-vl", "lavida-dream"):
        e = Explainer(*models(family)).explain(img, steps=steps, response_length=8)
        assert e.steps == steps - idle == 7 and e.notes == [DREAM_NOTES[steps]]


def test_the_llada_samplers_note_counts_the_steps_that_committed_nothing(models):
    # 8 slots in 12 linear steps: 8 // 12 = 0 each, one more in the first 8: four steps commit nothing
    e = Explainer(*models("llada-v")).explain(_image(), steps=12, response_length=8)
    assert e.steps == 8
    assert e.notes == ["steps: 12 requested, the sampler used 8 (4 steps committed no token and are not counted)"]


def test_diffusion_gemma_refuses_another_family_s_processor_up_front(models):
    """DiffusionGemma's processor is transformers' Gemma4Processor: a LlavaProcessor ended in
    "KeyError: 'image_position_ids'" inside explain(), None in a message without 'processor:'."""
    model, proc = models("diffusion-gemma")
    _, llava_proc = models("llava")
    assert one_line_refusal(lambda: Explainer(model, llava_proc)) == \
        "processor: a LlavaProcessor does not go with this diffusion_gemma model; pass the processor of the " \
        "model's own checkpoint"
    assert one_line_refusal(lambda: Explainer(model, None)) == \
        "processor: DiffusionGemma needs its processor (with .image_processor and .tokenizer), got NoneType"
    Explainer(model, proc)  # its own is taken (the stand-in's: a tokenizer and Gemma 4's image processor)


def test_a_processor_that_places_no_image_token_of_the_model_is_named():
    """The Dream-VL stand-in given the Qwen2-VL stand-in's processor (a Qwen processor, so not refused
    by its class): the sequence it makes holds none of the model's image tokens. The message blamed
    "the input sequence" without naming the argument to change."""
    from dcam.testing.standins import STANDINS

    model, _ = STANDINS["dream-vl"]()
    _, qwen_proc = STANDINS["qwen-vl"]()
    image_id = int(model.config.image_token_id)
    message = one_line_refusal(lambda: Explainer(model, qwen_proc).explain(_image(), response="a dog"))
    assert message == (f"processor: the input sequence it made holds no image token of this model (id {image_id}); "
                       "pass the processor of the model's own checkpoint")
