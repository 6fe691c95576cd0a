"""Grounding on the bundled model: on 50 test images with two or more objects,
each object word's Diffusion-CAM map (default probe and layer) puts more of
its mass on the named object than on any other object of the image, for at
least 80% of the words (a uniform map scores about 0.4).

Full per-probe / per-layer figures: ``python -m dcam.cli_explain grounding``.
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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_default_maps_ground_object_words():
    model, processor = zoo.load_default()
    exp = Explainer(model, processor)
    rep = grounding_report(model, processor, n=N_IMAGES, probes=(exp.default_probe,), layers=[exp.layer],
                           progress=False)
    rate = rep["rates"][exp.default_probe][exp.layer]
    assert rep["n_images"] == N_IMAGES and rep["n_words"] >= 4 * N_IMAGES
    assert rep["chance"] < 0.6
    assert rate >= MIN_RATE, f"grounding rate {rate:.3f} < {MIN_RATE} (chance {rep['chance']:.3f})"
