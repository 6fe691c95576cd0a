"""Grounding on the bundled model (issue 3's benchmark): on 50 test images with
two or more objects, for each object word (colour or shape), does the map put
more of its mass on the named object than on any other object of the image?
A uniform map scores about 0.41.

Measured with the bundled weights (``python -m dcam.grounding_report --n 50
--variants``): the probe's gradients localise the named object (gradient-norm
map, remask probe, layer 0: 0.975; the element-wise LayerCAM product 0.95+),
but Diffusion-CAM's maps do not (0.43-0.47 with the full probe, 0.28-0.37
masked/remask): SPEC section 1 averages the gradient over all image tokens
into one weight per channel, and on this pre-norm model a token's gradient is
orthogonal to its own state (RMSNorm is scale invariant; see the last test).
The issue's bar (>= 0.8) is kept as a strict xfail so that it is re-checked on
every run and flips loudly when a model or method change meets it.
"""
import os

import pytest
import torch

from dcam import zoo
from dcam.cli_explain import grounding_report
from dcam.explain import Explainer

HAVE_WEIGHTS = os.path.exists(os.path.join(zoo.WEIGHTS_DIR, "model.safetensors"))
pytestmark = pytest.mark.skipif(not HAVE_WEIGHTS, reason="bundled weights (dcam/zoo/weights) not present")

N_IMAGES = 50
MIN_RATE = 0.8


@pytest.fixture(scope="module")
def report():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, processor = zoo.load_default()
        exp = Explainer(model, processor)
        probes = tuple(dict.fromkeys((exp.default_probe, "remask")))
        rep = grounding_report(model, processor, n=N_IMAGES, probes=probes, layers=sorted({0, exp.layer}),
                               progress=False, variants=True)
        rep["default"] = (exp.default_probe, exp.layer)
        yield rep
    finally:
        torch.set_num_threads(n)


def test_benchmark_shape(report):
    assert report["n_images"] == N_IMAGES and report["n_words"] >= 4 * N_IMAGES
    assert 0.3 < report["chance"] < 0.6


def test_probe_gradients_localise_the_named_object(report):
    # the gradients that Diffusion-CAM pools are right: their per-token norm
    # lands on the named object
    rate = report["variant_rates"]["grad-norm"]["remask"][0]
    assert rate >= MIN_RATE, f"gradient-norm grounding {rate:.3f} < {MIN_RATE}"


@pytest.mark.xfail(strict=True, reason="issue 3 bar not met: Diffusion-CAM grounding ~0.44 on the bundled "
                                       "model (chance 0.41); see the module docstring")
def test_diffusion_cam_maps_ground_object_words(report):
    probe, layer = report["default"]
    rate = report["rates"][probe][layer]
    assert rate >= MIN_RATE, f"grounding rate {rate:.3f} < {MIN_RATE} (chance {report['chance']:.3f})"


def test_gradients_are_orthogonal_to_states_before_the_last_block():
    """Why per-channel pooling struggles on a pre-norm transformer: a block reads an
    image token's hidden state h only through RMSNorm(h), which is scale invariant,
    so d score / d h is orthogonal to h at that token. At the block before the last
    one this is the only path from an image token to a response logit, so
    `A[n] . G[n] = 0` exactly for every image token (and nearly so at earlier
    blocks). Gradient-times-activation carries no per-token evidence there; what
    Diffusion-CAM pools is the cross-token alignment of relu(A) with relu(G)."""
    from dcam.adapters.probing import probe as run_probe
    from dcam.cli_explain import grounding_samples

    model, processor = zoo.load_default()
    exp = Explainer(model, processor, layer=len(model.language_model.layers) - 2)
    s = grounding_samples(1)[0]
    a = exp.adapter
    prep = a.prepare(s.image, None, a.encode_response(s.caption))
    idx = [i for i, l in enumerate(s.word_labels) if l > 0]
    pos = [prep.response_start + i for i in idx]
    r = run_probe(a, prep, pos, [prep.response_ids[i] for i in idx], exp.layer, probe="full", target_score="logit")
    A, G = r.per_target_acts().double(), r.per_target_grads().double()
    cos = (A * G).sum(-1) / (A.norm(dim=-1) * G.norm(dim=-1) + 1e-30)  # [T, N]
    assert G.abs().max() > 0
    assert cos.abs().max() < 1e-3, cos.abs().max()
