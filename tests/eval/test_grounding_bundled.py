"""Grounding on the bundled model (issue 3's benchmark): on 50 test images with
two or more objects, for each object word (colour or shape), does the map put
more of its mass on the named object than on any other object of the image?
A uniform map scores about 0.41.

Measured with the bundled weights (``dcam grounding --n 50 --variants``): Diffusion-CAM with the model's default config (signed channel
weights, ``grad_relu=False``) 0.83 at layer 0 with every probe (colour words
0.92, shape words 0.73); with ``CamConfig()``'s ``grad_relu=True`` 0.67. A
perfect class detector (every object of the named colour or shape lit, the
others dark) scores 0.86 on these images, because same-class objects tie and
the larger wins; per-token maps can beat that (the element-wise LayerCAM
product 0.93). Before stage 3 of the zoo training (nearly linear RMSNorm,
non-negative image embeddings) the maps scored 0.43-0.47: a pre-norm block
reads a token only through a scale invariant norm, so a token's gradient is
orthogonal to its own state (the last test), which starves SPEC section 1's
per-channel pooling of evidence.
"""
import pytest
import torch

from dcam import zoo
from dcam.eval.grounding import grounding_report
from dcam.explain import Explainer
from dcam.ops.config import CamConfig

pytestmark = pytest.mark.slow  # ~1 minute: every probe x layer on 50 images; part of .ci/run

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
        rep["spec_default"] = grounding_report(model, processor, n=N_IMAGES, probes=(exp.default_probe,),
                                               layers=[exp.layer], config=CamConfig(), progress=False)
        yield rep
    finally:
        torch.set_num_threads(n)


def test_benchmark_shape(report):
    assert report["n_images"] == N_IMAGES and report["n_words"] >= 4 * N_IMAGES
    assert 0.3 < report["chance"] < 0.6
    # a map that finds every object of the named class (but not the instance) is capped below 1
    assert report["chance"] + 0.3 < report["class_detector"] < 1


def test_probe_gradients_localise_the_named_object(report):
    # the gradients that Diffusion-CAM pools are right: their per-token norm
    # lands on the named object
    rate = report["variant_rates"]["grad-norm"]["remask"][0]
    assert rate >= MIN_RATE, f"gradient-norm grounding {rate:.3f} < {MIN_RATE}"


def test_diffusion_cam_maps_ground_object_words(report):
    # the bar, with the explainer's defaults (probe, layer and the
    # model's recommended config), and for the remask probe as well
    probe, layer = report["default"]
    for p, rates in report["rates"].items():
        rate = rates[layer]
        assert rate >= MIN_RATE, f"{p}: grounding rate {rate:.3f} < {MIN_RATE} (chance {report['chance']:.3f})"
    by_kind = report["rates_by_kind"][probe][layer]
    assert min(by_kind.values()) > report["chance"] + 0.2, by_kind


def test_positive_gradient_weights_ground_worse_on_this_model(report):
    # why the bundled config sets grad_relu=False: SPEC's default (positive
    # part of the gradients only) still grounds far above chance but below the bar
    probe, layer = report["default"]
    signed = report["rates"][probe][layer]
    positive = report["spec_default"]["rates"][probe][layer]
    assert report["chance"] + 0.15 < positive < signed


def test_explainer_uses_the_models_recommended_config():
    model, processor = zoo.load_default()
    assert Explainer(model, processor).config == CamConfig(grad_relu=False)
    assert Explainer(model, processor, config=CamConfig()).config == CamConfig()
    random_model, random_processor = zoo.build_random(seed=0)
    assert Explainer(random_model, random_processor).config == CamConfig()  # no recommendation in its config
    random_model.config.cam_config = {"grad_relu": False, "no_such_field": 1}
    with pytest.raises(ValueError, match="cam_config"):
        Explainer(random_model, random_processor)


def _state_gradient_cosines(model, processor, layer):
    """|cos(A[n], G[n])| for every image token n and object word of one test image."""
    from dcam.probe.gradients import probe as run_probe
    from dcam.eval.grounding import grounding_samples

    exp = Explainer(model, processor, layer=layer)
    s = grounding_samples(1)[0]
    a = exp.adapter
    prep = a.prepare(s.image, None, a.encode_response(s.caption))
    idx = [i for i, l in enumerate(s.word_labels) if l > 0]
    pos = [prep.response_start + i for i in idx]
    r = run_probe(a, prep, pos, [prep.response_ids[i] for i in idx], exp.layer, probe="remask",
                  target_score="logit")
    A, G = r.per_target_acts().double(), r.per_target_grads().double()
    assert G.abs().max() > 0
    return ((A * G).sum(-1) / (A.norm(dim=-1) * G.norm(dim=-1) + 1e-30)).abs()  # [T, N]


def test_gradients_are_orthogonal_to_states_under_rmsnorm():
    """Why per-channel pooling starves on a standard pre-norm transformer: a block
    reads an image token's state h only through RMSNorm(h) = g*h/sqrt(mean(h^2)+eps),
    which with a tiny eps is scale invariant, so d score / d h is orthogonal to h at
    that token. At the block before the last one this is the only path from an image
    token to a response logit, so `A[n] . G[n] = 0` exactly (a standard-eps model,
    random weights). Stage 3 of the zoo training raises eps to 1e4, far above
    mean(h^2), which makes the norm nearly linear: the bundled model's gradients are
    no longer orthogonal to the states."""
    model, processor = zoo.build_random(seed=0)
    assert model.config.text_config.rms_norm_eps < 1e-3
    last_but_one = len(model.language_model.layers) - 2
    assert _state_gradient_cosines(model, processor, last_but_one).max() < 1e-3

    bundled, bproc = zoo.load_default()
    assert bundled.config.text_config.rms_norm_eps >= 1e3
    assert _state_gradient_cosines(bundled, bproc, last_but_one).mean() > 0.05
