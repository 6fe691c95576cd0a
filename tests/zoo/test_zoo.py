"""Tests of the toy dMLLM, its processor and the bundled weights (dcam.zoo)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.zoo.data import ShapesDataset
from dcam.zoo import WEIGHTS_DIR, ShapesDMLLM, ShapesProcessor, build_random, load_default, load_pretrained

torch.set_num_threads(2)
HAVE_WEIGHTS = os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors"))


@pytest.fixture(scope="module")
def rand():
    return build_random(seed=0)


@pytest.fixture(scope="module")
def images():
    return [s.image for s in ShapesDataset("test", 4)]


@pytest.fixture(scope="module")
def bundled():
    if not HAVE_WEIGHTS:
        pytest.skip("no bundled weights (run python -m dcam.zoo.train --out dcam/zoo/weights)")
    return load_default()


def test_config_and_processor_agree(rand):
    model, proc = rand
    c = model.config
    assert c.grid == (16, 16) and c.image_size == 64 and proc.grid == c.grid and proc.image_size == c.image_size
    t = proc.tokenizer
    assert (c.pad_token_id, c.eos_token_id, c.mask_token_id, c.bos_token_id) == \
        (t.pad_token_id, t.eos_token_id, t.mask_token_id, t.bos_token_id)
    assert c.image_token_id == t.convert_tokens_to_ids("<image>") == proc.image_token_id
    assert len({c.pad_token_id, c.eos_token_id, c.mask_token_id, c.bos_token_id, c.image_token_id}) == 5
    assert 0 <= model.default_probe_layer < len(model.language_model.layers) - 1
    assert model.lm_head.out_features == c.text_config.vocab_size >= len(t.get_vocab())


def test_processor_layout(rand, images):
    model, proc = rand
    enc = proc(images[0])
    ids = enc["input_ids"]
    s0, s1 = enc["image_span"]
    L = ids.shape[1]
    assert ids.shape[0] == 1 and enc["pixel_values"].shape == (1, 3, 64, 64)
    assert ids[0, 0] == proc.bos_token_id
    assert (ids[0, s0:s1] == proc.image_token_id).all() and s1 - s0 == 256
    assert (ids[0, :s0] != proc.image_token_id).all()
    assert enc["response_start"] == s1 and L == s1 + enc["response_length"]
    assert (ids[0, s1:] == proc.mask_token_id).all()
    assert proc.decode(ids[0, 1:s0]) == "describe the image"
    # build with a caption: eos-filled response, decode round trip
    enc2 = proc.build(images[0], None, "a red circle and a blue square")
    r = enc2["input_ids"][0, enc2["response_start"]:]
    assert proc.decode(r) == "a red circle and a blue square"
    assert (r[7:] == proc.eos_token_id).all()
    assert torch.equal(enc2["input_ids"][0, :s1], ids[0, :s1])
    # another prompt moves the image span; batches of images
    enc3 = proc(images, prompt="what is in the image")
    assert enc3["input_ids"].shape[0] == 4 and enc3["image_span"][0] == s0 + 2
    assert torch.allclose(enc3["pixel_values"][0], enc["pixel_values"][0])


def test_processor_converts_and_rejects(rand, images):
    _, proc = rand
    ref = proc(images[0])["pixel_values"]
    rgba = images[0].convert("RGBA")
    assert torch.allclose(proc(rgba)["pixel_values"], ref)
    assert torch.allclose(proc(np.asarray(images[0]))["pixel_values"], ref)
    big = images[0].resize((96, 96), Image.NEAREST)
    assert proc(big)["pixel_values"].shape == (1, 3, 64, 64)
    grey = images[0].convert("L")
    assert proc(grey)["pixel_values"].shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="image"):
        proc("not an image")
    with pytest.raises(ValueError, match="image"):
        proc(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="prompt"):
        proc(images[0], prompt="describe the zebra")
    with pytest.raises(ValueError, match="response"):
        proc.build(images[0], None, list(range(40)))


def test_attention_is_bidirectional(rand, images):
    model, proc = rand
    enc = proc(images[0])
    ids = enc["input_ids"]
    ids2 = ids.clone()
    ids2[0, -1] = proc.tokenizer.convert_tokens_to_ids("red")  # change the LAST token
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=enc["pixel_values"]).logits
        b = model(input_ids=ids2, pixel_values=enc["pixel_values"]).logits
    # every earlier position (prompt, image, response) sees the change
    diff = (a[0, :-1] - b[0, :-1]).abs().amax(-1)
    assert (diff > 0).all()


def test_logits_at_equals_forward_at_those_positions(rand, images):
    # the last block run at the scored rows only: same logits as the full forward
    model, proc = rand
    enc = [proc(im) for im in images[:2]]
    ids = torch.cat([e["input_ids"] for e in enc])
    ids[1, -3:] = proc.tokenizer.convert_tokens_to_ids("red")
    pix = torch.cat([e["pixel_values"] for e in enc])
    L = ids.shape[1]
    keep = torch.ones(2, L)
    keep[1, :1] = 0  # a padded key in row 1
    with torch.no_grad():
        for mask in (None, keep):
            full = model(input_ids=ids, pixel_values=pix, attention_mask=mask).logits
            shared = torch.tensor([L - 1, L - 5, 3, 0])
            got = model.logits_at(shared, input_ids=ids, pixel_values=pix, attention_mask=mask)
            torch.testing.assert_close(got, full[:, shared], rtol=0, atol=1e-5)
            per_row = torch.tensor([[L - 1, 7], [L - 2, L - 1]])
            got = model.logits_at(per_row, input_ids=ids, pixel_values=pix, attention_mask=mask)
            want = torch.stack([full[b, per_row[b]] for b in range(2)])
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for bad, msg in ((torch.tensor([L]), "positions must lie"), (torch.tensor([-1]), "positions must lie"),
                     (torch.zeros(3, 1, dtype=torch.long), "positions must be")):
        with pytest.raises(ValueError, match=msg):
            model.logits_at(bad, input_ids=ids, pixel_values=pix)


def test_logits_at_gradient_equals_full_forward_gradient(rand, images):
    # what explanations differentiate: the image embeddings' gradient is the same
    model, proc = rand
    enc = proc(images[0])
    emb = model.embed(enc["input_ids"], enc["pixel_values"]).detach().requires_grad_(True)
    pos = torch.tensor([emb.shape[1] - 2, emb.shape[1] - 1])
    g_full = torch.autograd.grad(model(inputs_embeds=emb).logits[0, pos, 5].sum(), emb)[0]
    g_rows = torch.autograd.grad(model.logits_at(pos, inputs_embeds=emb)[0, :, 5].sum(), emb)[0]
    assert g_full.abs().max() > 0
    torch.testing.assert_close(g_rows, g_full, rtol=0, atol=1e-6)


def test_embed_scatters_image_features(rand, images):
    model, proc = rand
    for prompt in (None, "what is in this image"):
        enc = proc(images[:2], prompt=prompt)
        ids, pix = enc["input_ids"], enc["pixel_values"]
        s0, s1 = enc["image_span"]
        with torch.no_grad():
            emb = model.embed(ids, pix)
            feats = model.get_image_features(pix)
            tok = model.language_model.embed_tokens(ids)
        assert torch.equal(emb[:, s0:s1], feats)
        assert torch.equal(emb[:, :s0], tok[:, :s0]) and torch.equal(emb[:, s1:], tok[:, s1:])
        # forward from input_ids == forward from the embeddings
        with torch.no_grad():
            l1 = model(input_ids=ids, pixel_values=pix).logits
            l2 = model(inputs_embeds=emb).logits
        assert torch.allclose(l1, l2, atol=1e-6)
    with pytest.raises(ValueError, match="pixel_values"):
        model.embed(ids, None)
    short = ids.clone()
    short[:, s0] = proc.tokenizer.convert_tokens_to_ids("red")  # one image token too few
    with pytest.raises(ValueError, match="image tokens"):
        model.embed(short, pix)


def test_last_block_image_gradient_is_zero(rand, images):
    model, proc = rand
    enc = proc.build(images[0], None, "a red circle")
    s0, s1 = enc["image_span"]
    r = enc["response_start"] + 1  # the colour word's slot
    outs = {}

    def keep(i):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h.retain_grad()
            outs[i] = h
        return hook

    layers = model.language_model.layers
    handles = [layers[i].register_forward_hook(keep(i)) for i in (model.default_probe_layer, len(layers) - 1)]
    try:
        logits = model(input_ids=enc["input_ids"], pixel_values=enc["pixel_values"]).logits
        logits[0, r, enc["input_ids"][0, r]].backward()
    finally:
        for h in handles:
            h.remove()
    last = outs[len(layers) - 1].grad[0, s0:s1]
    probe = outs[model.default_probe_layer].grad[0, s0:s1]
    assert last.abs().max() == 0
    assert probe.abs().max() > 0


def test_save_load_roundtrip(rand, images, tmp_path):
    model, proc = rand
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    m2, p2 = load_pretrained(str(tmp_path))
    assert isinstance(m2, ShapesDMLLM) and isinstance(p2, ShapesProcessor) and not m2.training
    enc, enc2 = proc(images), p2(images)
    assert torch.equal(enc["input_ids"], enc2["input_ids"]) and torch.equal(enc["pixel_values"], enc2["pixel_values"])
    with torch.no_grad():
        a = model(input_ids=enc["input_ids"], pixel_values=enc["pixel_values"]).logits
        b = m2(input_ids=enc2["input_ids"], pixel_values=enc2["pixel_values"]).logits
    assert torch.equal(a, b)
    assert m2.config.grid == model.config.grid and m2.default_probe_layer == model.default_probe_layer


def test_image_embedding_options(images, tmp_path):
    base, proc = build_random(seed=1)
    model, _ = build_random(seed=1, projector_relu=True, image_offset=50.0, image_offset_channels=3)
    pix = proc(images)["pixel_values"]
    with torch.no_grad():
        plain = base.get_image_features(pix)
        emb = model.get_image_features(pix)
    # the same projector weights: relu of the plain features, plus 50 on the last 3 channels
    expect = plain.clamp(min=0)
    expect[..., -3:] += 50.0
    torch.testing.assert_close(emb, expect)
    assert (emb[..., :-3] >= 0).all() and (emb[..., -3:] >= 50.0).all()
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    m2, _ = load_pretrained(str(tmp_path))
    assert m2.config.projector_relu and m2.config.image_offset == 50.0 and m2.config.image_offset_channels == 3
    with torch.no_grad():
        assert torch.equal(m2.get_image_features(pix), emb)


def test_set_rms_norm_eps_keeps_the_scale_of_typical_states():
    from dcam.zoo.train import set_rms_norm_eps

    model, _ = build_random(seed=2)
    norms = [m for m in model.language_model.modules() if hasattr(m, "variance_epsilon")]
    h = torch.randn(3, 7, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    h = h / h.pow(2).mean(-1, keepdim=True).sqrt() * 4.0  # RMS exactly 4 per row
    with torch.no_grad():
        before = [m(h) for m in norms]
        set_rms_norm_eps(model, 1e4, typical_rms=4.0)
        after = [m(h) for m in norms]
        # nearly linear afterwards: doubling the state nearly doubles the output (the
        # deviation is 1 - sqrt((1e4 + 16) / (1e4 + 64)) = 0.24%; a scale-invariant norm: 50%)
        doubled = [m(2 * h) / 2 for m in norms]
    assert model.config.text_config.rms_norm_eps == 1e4 and all(m.variance_epsilon == 1e4 for m in norms)
    for b, a, d in zip(before, after, doubled):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert ((d - a).abs().max() / a.abs().max()) < 3e-3


def test_generation_deterministic_and_complete(rand, images):
    model, proc = rand
    enc = proc(images)
    a = model.generate_diffusion(enc["input_ids"], enc["pixel_values"], steps=4, response_length=12)
    b = model.generate_diffusion(enc["input_ids"], enc["pixel_values"], steps=4, response_length=12)
    assert a.shape == (4, 12) and a.dtype == torch.long and torch.equal(a, b)
    assert (a != proc.mask_token_id).all()
    # steps that do not divide the length, and more steps than tokens
    for steps in (5, 12, 20):
        out, hist = model.generate_diffusion(enc["input_ids"], enc["pixel_values"], steps=steps, response_length=12,
                                             return_history=True)
        assert len(hist) == steps and (out != proc.mask_token_id).all()
        n_masked = [int((h == proc.mask_token_id).sum()) for h in hist]
        assert n_masked == sorted(n_masked, reverse=True) and n_masked[-1] == 0
    assert model.transfer_schedule(12, 5) == [3, 3, 2, 2, 2]


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="no bundled weights")
def test_bundled_weights_caption_test_images(bundled):
    model, proc = bundled
    assert not model.training and next(model.parameters()).device.type == "cpu"
    samples = list(ShapesDataset("test", 10))
    enc = proc([s.image for s in samples])
    out = model.generate_diffusion(enc["input_ids"], enc["pixel_values"], steps=12,
                                   response_length=enc["response_length"])
    caps = proc.batch_decode(out)
    correct = sum(c == s.caption for c, s in zip(caps, samples))
    assert correct >= 8, list(zip(caps, [s.caption for s in samples]))


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="no bundled weights")
def test_bundled_weights_files_small():
    size = sum(os.path.getsize(os.path.join(WEIGHTS_DIR, f)) for f in os.listdir(WEIGHTS_DIR))
    assert size < 20 * 2 ** 20
    for f in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
              "training_report.json"):
        assert os.path.exists(os.path.join(WEIGHTS_DIR, f)), f
