"""An explanation made with ``trajectory=True``: its own page (index.html, Jupyter's ``_repr_html_``) gets the
step slider ``dcam view`` gives a run's trajectory (real headless Chromium): the explanation first, then
each step's maps, drawn as computed here. The page gave e.maps alone: no slider."""
import base64
import os

import matplotlib
import numpy as np
import pytest
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


def test_page_steps_hand_worked():
    from dcam.render.html import page_steps

    assert page_steps(10, 32, 320) == list(range(10))  # 10 steps of 32 bytes fit 320: every one
    assert page_steps(10, 32, 128) == [0, 3, 6, 9]  # 4 fit: 0 to 9 in 3 equal strides
    assert page_steps(12, 10, 40) == [0, 4, 7, 11]  # 4 fit: 11/3 = 3.67 apart, rounded
    assert page_steps(10, 32, 10) == [0, 9]  # not even one fits: the first and the last still
    assert page_steps(1, 5, 1) == [0]


def _long_trajectory(e, S):
    """``e`` with a trajectory of ``S`` steps: its own steps over and over, each step's map scaled by a
    value of its own so that no two steps are alike (decided_at kept: its steps are among the first 12)."""
    import dataclasses

    t = e.trajectory
    reps = -(-S // t.steps)
    scale = torch.linspace(0.2, 1.0, S)[:, None, None, None]
    maps = torch.cat([t.maps] * reps)[:S] * scale
    return dataclasses.replace(e, trajectory=dataclasses.replace(t, maps=maps))


def test_a_long_trajectorys_page_keeps_evenly_spaced_steps_within_its_budget(bundled, run_manifest, tmp_path):
    # the page carried every step: 64 steps x 50 words of 27 x 27 cells added 3.1 MB to index.html (and to a
    # notebook's output, past Jupyter's output rate limit); the files keep every step
    e = dcam.Explainer(*bundled).explain(os.path.join(run_manifest["folder"], "img", "s1.png"), trajectory=True)
    T, h, w = e.maps.shape
    step = T * h * w
    S = (1 << 20) // step * 3 + 5  # about 3 MiB of steps: a third of them fit 1 MiB
    long = _long_trajectory(e, S)
    keep = (1 << 20) // step
    want = [round(i * (S - 1) / (keep - 1)) for i in range(keep)]  # evenly from the first step to the last
    assert len(set(want)) == keep and want[0] == 0 and want[-1] == S - 1
    rec = explanation_record(long)
    assert rec["steps"] == keep + 1
    assert rec["step_labels"] == [f"step {s}/{S - 1}" for s in want] + ["explanation"]
    got = np.frombuffer(base64.b64decode(rec["maps"]), np.uint8)
    frames = torch.cat([long.trajectory.maps[want], e.maps[None]])
    np.testing.assert_array_equal(got, np.rint(frames.numpy().reshape(-1) * 255).astype(np.uint8))
    assert got.size - step <= 1 << 20  # the trajectory's part within the budget
    assert f"the page shows {keep} of the trajectory's {S} steps" in " ".join(rec["notes"])
    # a budget of the caller's: every step, no note
    rec = explanation_record(long, trajectory_bytes=S * step)
    assert rec["steps"] == S + 1 and not any("the page shows" in n for n in rec["notes"])
    # a short trajectory (the bundled model's 12 steps) is whole, as before
    assert explanation_record(e)["steps"] == e.trajectory.steps + 1
    # a bad budget names the argument given (it named trajectory_frames' own "budget")
    for bad in (0, -3, 1.5, "1MB", True):
        with pytest.raises(dcam.InputError, match=r"^trajectory_bytes must be an int >= 1"):
            explanation_record(e, trajectory_bytes=bad)


def test_a_budget_page_in_chromium_labels_its_kept_steps(browser, bundled, run_manifest, tmp_path):
    e = dcam.Explainer(*bundled).explain(os.path.join(run_manifest["folder"], "img", "s1.png"), trajectory=True)
    S, T, h, w = e.trajectory.maps.shape
    assert S == 12
    path = write_explanation_page(str(tmp_path), e, trajectory_bytes=4 * T * h * w)  # 4 of the 12 steps fit
    browser.open("file://" + path)
    assert browser.problems() == []
    assert browser.js("document.querySelector('input.step').max") == "4"  # 4 steps, then the explanation
    assert "the page shows 4 of the trajectory's 12 steps" in browser.js("document.querySelector('.main').textContent")
    browser.click(".words button[data-k='1']")
    shape = browser.js("[document.querySelector('canvas.ov').width, document.querySelector('canvas.ov').height]")
    size = (shape[1], shape[0])
    for position, s in enumerate([0, 4, 7, 11]):  # 11/3 apart, rounded
        _step(browser, position)
        assert browser.js("document.querySelector('.steplab').textContent") == f" step {s}/11"
        want = _heat(e.trajectory.maps[s, 1], size)
        assert np.abs(browser.canvas()[..., :3].astype(int) - want).max() <= TOL, s
    for bad in (0, -3, 1.5, "1MB", True):
        with pytest.raises(dcam.InputError, match=r"^trajectory_bytes must be an int >= 1"):
            write_explanation_page(str(tmp_path / "bad"), e, trajectory_bytes=bad)
    assert not (tmp_path / "bad").exists() or os.listdir(tmp_path / "bad") == []
