"""An explanation records the settings its method used, and None for the rest, alike in memory, in
meta.json and after load_explanation.

tam carried the adapter's default CamConfig, target_score "logit" and layer 1 in memory while meta.json
saved null for them and a load gave back a default CamConfig with target_score and layer None: three
copies that disagreed. grad-cam and llava-cam carried the CamConfig they never apply."""
import json

import numpy as np
import pytest

import dcam
from dcam.testing import tiny_toy

TOY_LAYER = 1  # the toy's default_probe_layer (dcam/testing/__init__.py)

# method -> (uses a CamConfig, target score, layer): what each method uses (docs/ALGORITHM.md, the methods)
USED = {
    "diffusion-cam": (True, "logit", TOY_LAYER),
    "grad-cam": (False, "logit", TOY_LAYER),
    "llava-cam": (False, "contrastive", TOY_LAYER),
    "tam": (False, None, None),  # reads the final states: no score differentiated, no block hooked
}


@pytest.fixture(scope="module")
def toy():
    return tiny_toy(0)


@pytest.mark.parametrize("method", sorted(USED))
def test_in_memory_saved_and_loaded_settings_agree(toy, tmp_path, method):
    uses_config, target_score, layer = USED[method]
    image = np.full((32, 32, 3), 90, np.uint8)
    e = dcam.Explainer(*toy, method=method).explain(image, response="a red circle")
    want_config = dcam.CamConfig() if uses_config else None  # the toy's default config is CamConfig()
    assert (e.config, e.target_score, e.layer, e.hooked_layer) == (want_config, target_score, layer, layer)
    e.save(tmp_path / "x")
    meta = json.loads((tmp_path / "x" / "meta.json").read_text())
    assert (meta["config"], meta["target_score"], meta["layer"]) == \
        (want_config.as_dict() if uses_config else None, target_score, layer)
    back = dcam.load_explanation(tmp_path / "x")
    assert (back.config, back.target_score, back.layer, back.hooked_layer) == \
        (want_config, target_score, layer, layer)
    assert back.meta() == e.meta()
    # the pictures and the page are written for a method without a config or a layer too
    assert (tmp_path / "x" / "contact_sheet.png").is_file() and "<" in e._repr_html_()
