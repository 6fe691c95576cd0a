"""MMaDA and Lumina-DiMOO as their published code behaves when run (trials against the authors' own
classes, Gen-Verse/MMaDA and Alpha-VLLM/Lumina-DiMOO, with tiny random weights), reproduced by the
stand-ins in dcam.testing.vq_dmllm:

- Lumina-DiMOO's LLaDA blocks call SDPA with ``attn_mask=None``: its attention bias (and the
  ``attention_mask`` folded into it) hides nothing, so a padded row is not what it is alone (off by up
  to 0.82). dcam padded its batches anyway: the padding check warned and explained the examples apart.
  MMaDA's blocks read the bias: its batches stay padded.
- Lumina-DiMOO's ``forward`` without ``infer=True`` is the training path, which needs ``labels``.
- Its ``center_crop`` halves an image at least twice the crop on both sides (``Image.BOX``) before the
  bicubic resize; dcam went straight to bicubic (91% of a photo's pixels differed, and VQ codes).
- Its ``VaeImageProcessor`` hands the VQ encoder a ``[1, H, W, 3]`` array transposed; dcam's tensor had
  the same values with batch stride 3, which ran another convolution kernel (a VQ code flipped).
- Its ``LLaDAConfig`` fills a missing ``mask_token_id`` with 50256; its sampler uses 126336.

The references are computed here, by hand or with PIL / numpy directly."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.explain import Explainer
from dcam.probe.adapters.vq import _pixels, aspect_crop, crop_sizes


def _image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hiding_key_3_changes(llada):
    """How far hiding the last key (by attention bias, then by attention mask) moves the logits."""
    x = torch.tensor([[1, 2, 3, 4]])
    bias = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    bias[..., 3] = False
    with torch.no_grad():
        plain = llada(x).logits
        by_bias = llada(x, attention_bias=bias).logits
        by_mask = llada(x, attention_mask=torch.tensor([[1, 1, 1, 0]])).logits
    return float((by_bias - plain).abs().max()), float((by_mask - plain).abs().max())


def test_dimoo_attention_hides_no_key_and_mmada_hides_it(models):
    dimoo, _ = models("lumina-dimoo")
    assert _hiding_key_3_changes(dimoo.model) == (0.0, 0.0)
    mmada, _ = models("mmada")
    by_bias, by_mask = _hiding_key_3_changes(mmada.model)
    assert by_bias > 1e-3 and by_mask > 1e-3


def test_dimoo_forward_without_infer_is_the_training_path(models):
    model, _ = models("lumina-dimoo")
    with pytest.raises(TypeError, match="labels"):
        model(torch.tensor([[1, 2, 3]]))
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]]), infer=True).logits.shape[:2] == (1, 3)


def test_dimoo_batches_run_one_layout_at_a_time_and_mmada_pads(models):
    model, proc = models("lumina-dimoo")
    exp = Explainer(model, proc)
    assert not exp.adapter.pads_batches
    assert Explainer(*models("mmada")).adapter.pads_batches
    images = [_image(40, 72, 0), _image(60, 30, 1)]  # 6 x 10 and 10 x 6 codes: two layouts
    prompts, responses = [None, "name the objects in this image"], ["a red circle", "a blue square and"]
    ones = [exp.explain(im, prompt=p, response=r) for im, p, r in zip(images, prompts, responses)]
    sizes = []
    hook = exp.adapter.blocks()[exp.layer].register_forward_hook(lambda m, a, o: sizes.append(int(a[0].shape[0])))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = exp.explain_batch(images, prompts, responses)
    finally:
        hook.remove()
    assert not [w for w in caught if "pads_batches" in str(w.message)]
    assert sizes == [1, 1]  # no padding check (it pads two examples), one forward per layout
    for e, one in zip(batch, ones):
        assert e.grid == one.grid and e.response == one.response
        assert torch.equal(e.raw_maps, one.raw_maps) and torch.equal(e.maps, one.maps)


def test_dimoo_crop_halves_a_large_image_with_box_first():
    """901 x 401 against crops of at most 16 patches of 32 px: the closest aspect is 160 x 64
    (rem 0.899; 192 x 64: 0.75). Halved (sides floored) while at least 320 x 128: 450 x 200, then
    225 x 100; scaled by max(160/225, 64/100) to 160 x 71 (bicubic); centre crop rows 3..67."""
    img = _image(401, 901, 3)
    out, box = aspect_crop(img, crop_sizes(16, 32))
    halved = img.resize((450, 200), Image.BOX).resize((225, 100), Image.BOX)
    expected = halved.resize((160, 71), Image.BICUBIC).crop((0, 3, 160, 67))
    assert out.size == (160, 64)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert box == pytest.approx((0, 3 / 71, 1, 67 / 71))
    # (the halving matters: straight to bicubic gives other pixels)
    straight = img.resize((160, 71), Image.BICUBIC).crop((0, 3, 160, 67))
    assert not np.array_equal(np.asarray(out), np.asarray(straight))


def test_dimoo_crop_does_not_halve_an_image_under_twice_the_crop():
    """72 x 40 -> 160 x 96 (5 x 3 patches): scaled by max(160/72, 96/40) = 2.4 to 173 x 96, centre
    crop columns 6..166."""
    img = _image(40, 72, 4)
    out, box = aspect_crop(img, crop_sizes(16, 32))
    expected = img.resize((173, 96), Image.BICUBIC).crop((6, 0, 166, 96))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert box == pytest.approx((6 / 173, 0, 166 / 173, 1))


def test_pixels_have_the_published_memory_layout():
    """Lumina-DiMOO: diffusers' VaeImageProcessor stacks ``[H, W, 3]`` float arrays into ``[1, H, W, 3]``
    and transposes it (strides H*W*3, 1, W*3, 3); MMaDA: torchvision's ToTensor, contiguous ``[3, H, W]``,
    normalised to [-1, 1], with a batch dimension."""
    img = _image(32, 48, 5)
    arr = np.asarray(img).astype(np.float32) / 255.0
    dimoo = _pixels(img, 0)
    published = torch.from_numpy(np.stack([arr]).transpose(0, 3, 1, 2))
    assert dimoo.shape == published.shape == (1, 3, 32, 48)
    assert dimoo.stride() == published.stride() == (32 * 48 * 3, 1, 48 * 3, 3)
    assert torch.equal(dimoo, published)
    conv = torch.nn.Conv2d(3, 8, 16, stride=16)
    with torch.no_grad():
        assert torch.equal(conv(dimoo), conv(published))
    mmada = _pixels(img, -1)
    assert mmada.is_contiguous() and mmada.stride() == (3 * 32 * 48, 32 * 48, 48, 1)
    assert torch.equal(mmada, torch.from_numpy(arr.transpose(2, 0, 1).copy())[None] * 2 - 1)


def test_dimoo_mask_id_is_the_published_one_whatever_the_config_says(models):
    model, proc = models("lumina-dimoo")
    assert model.config.mask_token_id == 50256  # the published LLaDAConfig's default
    exp = Explainer(model, proc)
    assert exp.adapter.mask_token_id == 126336
    prep = exp.adapter.prepare(_image(40, 72, 0), None, None, 4)
    assert prep.input_ids[0, prep.response_start:prep.response_start + 4].tolist() == [126336] * 4
    e = exp.explain(_image(40, 72, 0), response_length=4, steps=2, trajectory=True)
    assert (e.trajectory.states[0] == 126336).all()


def test_dimoo_prompt_keeps_the_special_tokens_its_tokenizer_adds():
    # the published inference_mmu.py tokenises the prompt with tokenizer(prompt) (special tokens on) and puts
    # the image before its last token; dcam tokenised without special tokens, so a tokenizer that opens every
    # call with BOS (LLaMA-style) gave the model a prompt without it
    from tokenizers import processors

    from dcam.probe.adapters.vq import DiMOOAdapter
    from dcam.testing.vq_dmllm import tiny_dimoo

    model, proc = tiny_dimoo(seed=0, layers=1)
    proc.tokenizer.add_special_tokens({"bos_token": "<|startoftext|>"})
    proc.tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", proc.tokenizer.bos_token_id)])
    a = DiMOOAdapter(model, proc)
    prep = a.prepare(_image(40, 72, 0), "describe the image")
    ids = prep.input_ids[0, :prep.response_start].tolist()
    # as the published script builds it: text[:-1] + <boi> codes-with-newlines <eoi> + text[-1:] + <answer start>
    text = proc.tokenizer(a.default_prompt_template.format("describe the image"))["input_ids"]
    assert text[0] == proc.tokenizer.bos_token_id
    boi, eoi = ids.index(proc.boi_id), ids.index(proc.eoi_id)
    assert ids == text[:-1] + ids[boi:eoi + 1] + text[-1:] + [proc.answer_start_id]
    assert ids[0] == proc.tokenizer.bos_token_id and ids.count(proc.tokenizer.bos_token_id) == 1
