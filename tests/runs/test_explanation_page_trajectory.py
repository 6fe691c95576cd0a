"""An explanation made with ``trajectory=True``: its own page (index.html, Jupyter's ``_repr_html_``) gets the
step slider ``dcam view`` gives a run's trajectory (real headless Chromium): the explanation first, then
each step's maps, drawn as computed here. The page gave e.maps alone: no slider."""
import base64
import os

import matplotlib
import numpy as np
import torch

import dcam
from dcam.render.html import explanation_html, explanation_record, write_explanation_page
from dcam.render.overlay import map_on_image

#: as tests/runs/test_view.py: premultiplied-alpha rounding, a neighbouring colour at a bin's edge
TOL = 6



def _heat(m, size_hw):
    q = (np.rint(np.clip(m.numpy(), 0, 1) * 255) / 255).astype(np.float32)  # as the page stores the maps
    return np.rint(matplotlib.colormaps["jet"](map_on_image(q, size_hw))[..., :3] * 255)


def _step(browser, s):
    browser.js(f"(function(){{var s=document.querySelector('input.step');s.value={s};"
               "s.dispatchEvent(new Event('input'));})()")


def test_an_explanations_page_carries_its_trajectory(browser, bundled, run_manifest, tmp_path):
    e = dcam.Explainer(*bundled).explain(os.path.join(run_manifest["folder"], "img", "s1.png"), trajectory=True)
    S, T, h, w = e.trajectory.maps.shape
    assert S > 2 and T == len(e.tokens)
    rec = explanation_record(e)
    assert rec["steps"] == S + 1
    assert rec["step_labels"] == [f"step {s}/{S - 1}" for s in range(S)] + ["explanation"]
    # the page's bytes: the steps, then the explanation, each quantised to 1/255
    frames = torch.cat([e.trajectory.maps, e.maps[None]])
    got = np.frombuffer(base64.b64decode(rec["maps"]), np.uint8)
    assert got.size == (S + 1) * T * h * w
    np.testing.assert_array_equal(got, np.rint(frames.numpy().reshape(-1) * 255).astype(np.uint8))

    pages = {"index.html": write_explanation_page(str(tmp_path), e)}
    (tmp_path / "jupyter.html").write_text(f"<!DOCTYPE html><html><body>{e._repr_html_()}</body></html>")
    pages["jupyter"] = str(tmp_path / "jupyter.html")
    for name, path in pages.items():
        browser.open("file://" + path)
        assert browser.problems() == [], name
        assert browser.js("document.querySelector('input.step').max") == str(S), name
        assert browser.js("document.querySelector('.steplab').textContent") == " explanation", name
        browser.click(".words button[data-k='1']")
        shape = browser.js("[document.querySelector('canvas.ov').width, document.querySelector('canvas.ov').height]")
        size = (shape[1], shape[0])
        assert np.abs(browser.canvas()[..., :3].astype(int) - _heat(e.maps[1], size)).max() <= TOL, name
        for s in (0, S // 2, S - 1):
            _step(browser, s)
            assert browser.js("document.querySelector('.dcv').getAttribute('data-drawn')") == f"1:{s}"
            assert browser.js("document.querySelector('.steplab').textContent") == f" step {s}/{S - 1}"
            want = _heat(e.trajectory.maps[s, 1], size)
            assert np.abs(browser.canvas()[..., :3].astype(int) - want).max() <= TOL, (name, s)
        # the steps' maps differ from one another and from the explanation's, so the slider is what drew them
        assert not torch.equal(e.trajectory.maps[0, 1], e.trajectory.maps[S - 1, 1])
        assert browser.problems() == [], name
    # an explanation without a trajectory: no slider, as before
    plain = dcam.Explainer(*bundled).explain(os.path.join(run_manifest["folder"], "img", "s1.png"))
    rec = explanation_record(plain)
    assert rec["steps"] == 1 and rec["step_labels"] is None
    assert '"steps": 1' in explanation_html(plain)
