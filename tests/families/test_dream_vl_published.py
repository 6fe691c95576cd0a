"""Dream-VL as its published code behaves when run (a trial against the authors' own classes,
DreamLM/Dream-VLX @a72fa41, with tiny random weights), reproduced by the stand-in:

- ``diffusion_generate`` refuses to run without ``attention_mask`` ("attention_mask should be
  provided."), and on a CPU its SDPA attention hands that mask to torch as it is, which takes no
  integer mask. dcam called the sampler with no mask, so every explanation that generates its own
  response (and every trajectory) failed on the real model.
- Its eager attention (``attn_implementation="eager"``) adds a 4-D mask to the scores. dcam handed
  padded batches a boolean mask, which eager adds as 1 and 0 (nothing hidden): the padding check
  caught it, warned that the adapter ignores the mask, and explained the examples apart.

The references are computed here: the sampler called directly, as the published evaluation calls
it, and each example's logits from a forward of its own unpadded sequence."""
import warnings

import numpy as np
import torch
from PIL import Image

from dcam.explain import Explainer
from dcam.probe.padding import pad_rows
from dcam.testing.dream_vl import tiny_dream_vl

IMAGES = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8))
          for s, (h, w) in enumerate([(40, 72), (60, 30)])]
PROMPTS = [None, "name the objects in this image"]
RESPONSES = ["a red circle", "a blue square and a"]


def test_generation_hands_the_published_sampler_a_boolean_mask():
    model, proc = tiny_dream_vl(seed=0)
    exp = Explainer(model, proc)
    got = exp.explain(IMAGES[0], steps=4, response_length=6)
    prep = exp.adapter.prepare(IMAGES[0], None, None, 6)
    prompt = prep.input_ids[:, :prep.response_start]
    with torch.no_grad():
        out = model.diffusion_generate(prompt, attention_mask=torch.ones_like(prompt, dtype=torch.bool),
                                       max_new_tokens=6, steps=4, alg="maskgit_plus", output_history=True,
                                       return_dict_in_generate=True, **prep.model_inputs)
    assert got.response_ids == out.sequences[0, prep.response_start:].tolist()
    traj = exp.explain(IMAGES[0], steps=4, response_length=6, trajectory=True)
    assert traj.response_ids == got.response_ids


def test_eager_attention_keeps_the_padded_forward_and_its_logits_equal_each_example_alone():
    model, proc = tiny_dream_vl(seed=0, attn_implementation="eager")
    assert model.model.layers[0].self_attn.config._attn_implementation == "eager"
    exp = Explainer(model, proc)
    preps = [exp.adapter.prepare(im, p, exp.adapter.tokenizer(r, add_special_tokens=False)["input_ids"])
             for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    lengths = [p.input_ids.shape[1] for p in preps]
    assert lengths[0] != lengths[1]
    ids, inputs = pad_rows(exp.adapter, [p.input_ids for p in preps], preps)
    with torch.no_grad():
        padded = exp.adapter.forward_logits(ids, inputs)
        for b, p in enumerate(preps):
            alone = exp.adapter.forward_logits(p.input_ids, p.model_inputs)[0]
            torch.testing.assert_close(padded[b, :lengths[b]], alone, atol=2e-5, rtol=1e-4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = exp.explain_batch(IMAGES, PROMPTS, RESPONSES)
    assert not [w for w in caught if "pads_batches" in str(w.message)]
    for e, im, p, r in zip(batch, IMAGES, PROMPTS, RESPONSES):
        torch.testing.assert_close(e.maps, exp.explain(im, p, response=r).maps, atol=1e-4, rtol=0)
