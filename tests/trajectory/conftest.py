"""Fixtures of the trajectory tests: a tiny random toy dMLLM, its explainer,
an image, and a trajectory of it (computed once per session)."""
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny():
    from dcam.testing import tiny_toy

    return tiny_toy(seed=0)


@pytest.fixture(scope="session")
def tiny_explainer(tiny):
    from dcam import Explainer

    return Explainer(*tiny)


@pytest.fixture(scope="session")
def image():
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def traj(tiny_explainer, image):
    """6 steps over the 12 response slots: 2 slots committed per step."""
    from dcam.trajectory import explain_trajectory

    return explain_trajectory(tiny_explainer, image, steps=6)


@pytest.fixture(scope="session")
def shapes_image():
    """A grounded-shapes test image (three objects) for the bundled model."""
    from dcam.eval.grounding import grounding_samples

    return grounding_samples(1)[0].image


@pytest.fixture(scope="session")
def bundled_explainer(bundled):
    from dcam import Explainer

    return Explainer(*bundled)


@pytest.fixture(scope="session")
def bundled_traj(bundled_explainer, shapes_image):
    """The bundled model at 6 steps (2 slots committed per step)."""
    from dcam.trajectory import explain_trajectory

    return explain_trajectory(bundled_explainer, shapes_image, steps=6)
