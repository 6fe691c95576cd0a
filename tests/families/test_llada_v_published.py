"""LLaDA-V as its published sampler behaves, found by running dcam against the authors' code
(ML-GSAI/LLaDA-V): ``generate_with_embeds`` sets the logits of 126081, 126080, 126346 and 126347 to
-inf at the masked slots. dcam's generation calls the model's own ``generate``, so only the
stand-in (dcam.testing.llava_dmllm) has to do it; this test holds the stand-in to it."""
import numpy as np
import torch
from PIL import Image
from torch import nn

from dcam.probe import auto_adapter
from dcam.testing.llava_dmllm import tiny_llada_v

SUPPRESSED = [126081, 126080, 126346, 126347]
RUNNER_UP = 6989  # an ordinary id


def test_the_sampler_never_writes_the_suppressed_ids_at_masked_slots():
    """Every suppressed id is made the top token everywhere (+1000 on its logit), an ordinary one
    the runner-up (+500): the published sampler writes the runner-up at every slot; the model's
    logits, which dcam explains, still rank the suppressed ids first."""
    model, proc = tiny_llada_v(seed=0, layers=2)
    old = model.lm_head
    model.lm_head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(old.weight)
        model.lm_head.bias.zero_()
        model.lm_head.bias[SUPPRESSED] = 1000.0
        model.lm_head.bias[RUNNER_UP] = 500.0
    a = auto_adapter(model, proc)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8))
    prep = a.prepare(image, None, response_length=4)
    got = a.generate(prep, steps=4, response_length=4)
    assert got.response_ids == [RUNNER_UP] * 4
    with torch.no_grad():
        logits = a.forward_logits(prep.input_ids, prep.model_inputs)[0, prep.response_start:]
    assert set(logits.argmax(-1).tolist()) <= set(SUPPRESSED)
