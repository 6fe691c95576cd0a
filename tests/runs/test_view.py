"""`dcam view` and the explanation page in a real headless Chromium: the page
loads from file:// with no request leaving the machine and no console error;
clicking / hovering a word changes the overlay, whose pixels are the map
upsampled and coloured as computed here; keys move between records and
pages; a run holding map trajectories gets a step slider."""
import base64
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dcam
from dcam.cli import main


#: Colour difference allowed: premultiplied-alpha rounding in the canvas, and a neighbouring
#: colour-table entry where a value falls exactly between two.
TOL = 6



def _expected_heat(map_hw, size_hw):
    """The heatmap colours worked out here: quantised to bytes as the page stores it, upsampled
    bilinearly with half-pixel centres, coloured with matplotlib's jet (its own binning of the values, as
    the saved overlays'; the table looked up at round(v * 255) was the page's old rule, not the PNGs')."""
    import matplotlib

    q = np.rint(np.clip(map_hw.numpy(), 0, 1) * 255) / 255
    up = F.interpolate(torch.tensor(q, dtype=torch.float64)[None, None], size=size_hw, mode="bilinear",
                       align_corners=False)[0, 0].clamp(0, 1).numpy()
    return np.rint(matplotlib.colormaps["jet"](up)[..., :3] * 255)


def _attr(browser, name):
    return browser.js(f"document.querySelector('.dcv').getAttribute('{name}')")


@pytest.fixture(scope="module")
def viewed_run(reference_run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("view") / "run")
    shutil.copytree(reference_run, out)
    assert main(["view", out, "--per-page", "5", "--quiet"]) == 0
    return out


def test_view_writes_the_page_and_its_pages(viewed_run):
    names = sorted(os.listdir(os.path.join(viewed_run, "view")))
    assert names == ["img", "page-00000.js", "page-00001.js", "page-00002.js"]  # 8 records + 5 errors, 5 a page
    assert len(os.listdir(os.path.join(viewed_run, "view", "img"))) == 8
    text = open(os.path.join(viewed_run, "index.html")).read()
    assert "http://" not in text and "https://" not in text and "<script src" not in text


def test_view_folder_mode_and_an_unwritable_run(viewed_run, tmp_path, monkeypatch, capsys):
    # view/ came out 0700 (mkdtemp), unlike the rest of the run; a run folder that refused the page's
    # temporary folder (read-only, immutable) ended in mkdtemp's PermissionError traceback. Tests run
    # as root here, which no permission bit stops, so the refusal is injected where the OS raises it
    import tempfile

    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(os.path.join(viewed_run, "view")).st_mode & 0o777 == 0o777 & ~umask
    ro = str(tmp_path / "ro")
    shutil.copytree(viewed_run, ro)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert main(["view", ro, "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"dcam view: error: DIR: cannot write the page into {ro!r} "
                                               "(Permission denied); the page is written into the run's folder")


def test_run_page_in_chromium(browser, viewed_run):
    browser.open("file://" + os.path.join(viewed_run, "index.html"))
    assert browser.problems() == []
    run = list(dcam.load_run(viewed_run))
    assert _attr(browser, "data-record") == run[0].id
    assert browser.js("document.querySelectorAll('.list .row').length") == 5
    # the run's mean metrics, in percent as metrics.md has them, with the unit in the heading
    summary = json.load(open(os.path.join(viewed_run, "metrics.json")))["summary"]
    cells = browser.js("Array.from(document.querySelectorAll('table.runmetrics th, table.runmetrics td'))"
                       ".map(function(c){return c.textContent})")
    assert cells[0] == "Obj-IoU (%)" and cells[len(cells) // 2] == f"{100 * summary['obj_iou']:.2f}"
    assert browser.js("document.querySelectorAll('.words button').length") == len(run[0].tokens)
    assert browser.js("document.querySelector('.words').textContent") == "".join(
        t for t in run[0].tokens)
    # word 0 is shown first; its colours are the map's
    shape = browser.js("[document.querySelector('canvas.ov').width, document.querySelector('canvas.ov').height]")
    px0 = browser.canvas()
    want = _expected_heat(run[0].maps[0], (shape[1], shape[0]))
    # off by a little at most: the canvas keeps premultiplied alpha (a rounding at opacity 0.5)
    assert np.abs(px0[..., :3].astype(int) - want).max() <= TOL
    assert (px0[..., 3] == 128).all()  # opacity 0.5
    shot0 = browser.screenshot()
    # click word 2: the overlay changes to that word's map
    browser.click(".words button[data-k='2']")
    assert _attr(browser, "data-word") == "2" and _attr(browser, "data-drawn") == "2:-1"
    px2 = browser.canvas()
    assert np.abs(px2[..., :3].astype(int) - _expected_heat(run[0].maps[2], (shape[1], shape[0]))).max() <= TOL
    assert not np.array_equal(px0, px2)
    assert np.abs(browser.screenshot().astype(int) - shot0.astype(int)).sum() > 0
    stats = browser.js("Array.from(document.querySelectorAll('table.stats td')).map(function(t){return t.textContent})")
    assert stats[stats.index("kernel_size") + 1] == str(int(run[0].entry["stats"]["kernel_size"][2]))
    # hover word 1: shown while the mouse is on it
    browser.click(".words button[data-k='1']", kind="hover")
    assert _attr(browser, "data-drawn") == "1:-1"
    browser.click(".fig", kind="hover")
    assert _attr(browser, "data-drawn") == "2:-1"
    # keys: next record, next page, and the failed records at the end. Pressed while a word is
    # hovered (the mouse itself is on the picture: no new button comes under it), the next record
    # shows its own first word: its removed button's hover was kept, and that index drawn there
    browser.js("document.querySelector(\".words button[data-k='1']\").dispatchEvent(new MouseEvent('mouseenter'))")
    assert _attr(browser, "data-drawn") == "1:-1"
    browser.key("j", "KeyJ", 74)
    assert _attr(browser, "data-record") == run[1].id
    assert _attr(browser, "data-drawn") == "0:-1"
    shape = browser.js("[document.querySelector('canvas.ov').width, document.querySelector('canvas.ov').height]")
    px = browser.canvas()[..., :3].astype(int)
    assert np.abs(px - _expected_heat(run[1].maps[0], (shape[1], shape[0]))).max() <= TOL
    browser.key("PageDown", "PageDown", 34)
    assert _attr(browser, "data-record") == run[6].id
    assert browser.js("document.querySelector('.pg').textContent").startswith("page 2 / 3")
    browser.key("PageDown", "PageDown", 34)
    assert "error: " in browser.js("document.querySelector('.main').textContent")
    assert browser.problems() == []


def _trajectory_run(folder, image_path):
    """A run folder written here by hand: one record with its explanation's maps [T, h, w] and a
    map trajectory [S, T, h, w] (whose last step differs from them, as in real runs)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    traj = torch.rand(4, 2, 8, 8, generator=g)
    maps = torch.rand(2, 8, 8, generator=g)
    os.makedirs(os.path.join(folder, "shards"))
    save_file({"r000000": maps, "r000000.trajectory": traj},
              os.path.join(folder, "shards", "a.safetensors"))
    entry = {"id": "traj</script><b>", "n": 0, "where": "line 1", "image": image_path, "image_size": [64, 64],
             "prompt": None, "response": "a circle <img src=x onerror=alert(1)>", "tokens": ["a", "circle"], "word_numbers": [0, 1],
             "grid": [8, 8], "stats": {"kernel_size": [3, 5]}, "steps": 4,
             "shard": "shards/a.safetensors", "key": "r000000", "part": "x", "maps_shape": [2, 8, 8],
             "trajectory_shape": [4, 2, 8, 8]}
    with open(os.path.join(folder, "index.jsonl"), "w") as f:
        f.write(json.dumps(entry) + "\n")
    return traj, maps


def test_trajectory_gets_a_step_slider(browser, tmp_path, run_manifest):
    folder = str(tmp_path / "traj")
    traj, maps = _trajectory_run(folder, os.path.join(run_manifest["folder"], "img", "s0.png"))
    r = next(iter(dcam.load_run(folder)))
    assert torch.equal(r.trajectory, traj) and torch.equal(r.maps, maps)
    assert main(["view", folder, "--quiet"]) == 0
    browser.open("file://" + os.path.join(folder, "index.html"))
    assert browser.problems() == []  # the id and response are text, not markup
    assert _attr(browser, "data-record") == "traj</script><b>"
    assert browser.js("document.querySelector('.resp').textContent") == "a circle <img src=x onerror=alert(1)>"
    assert browser.js("document.querySelectorAll('.main img').length") == 1  # only the record's image
    # the steps 0-3, then the explanation, shown first: the statistics beside it are its own (the page
    # showed only the trajectory, the explanation's statistics beside the last step's different map)
    assert browser.js("document.querySelector('input.step').max") == "4"
    assert browser.js("document.querySelector('.steplab').textContent") == " explanation"
    shape = browser.js("[document.querySelector('canvas.ov').width, document.querySelector('canvas.ov').height]")
    size = (shape[1], shape[0])
    assert np.abs(browser.canvas()[..., :3].astype(int) - _expected_heat(maps[0], size)).max() <= TOL
    browser.js("(function(){var s=document.querySelector('input.step');s.value=3;"
               "s.dispatchEvent(new Event('input'));})()")
    assert np.abs(browser.canvas()[..., :3].astype(int) - _expected_heat(traj[3, 0], size)).max() <= TOL
    browser.js("(function(){var s=document.querySelector('input.step');s.value=1;"
               "s.dispatchEvent(new Event('input'));})()")
    assert _attr(browser, "data-drawn") == "0:1"
    assert np.abs(browser.canvas()[..., :3].astype(int) - _expected_heat(traj[1, 0], size)).max() <= TOL
    # numbered from 0, as the GIFs, the trajectory sheet and decided_at number them
    assert browser.js("document.querySelector('.steplab').textContent") == " step 1/3"
    browser.click(".words button[data-k='1']")
    assert np.abs(browser.canvas()[..., :3].astype(int) - _expected_heat(traj[1, 1], size)).max() <= TOL
    # a focused slider takes its arrow keys (the page took them for the word: the slider never moved)
    browser.js("document.querySelector('input.step').focus()")
    browser.key("ArrowLeft", "ArrowLeft", 37)
    assert browser.js("document.querySelector('input.step').value") == "0" and _attr(browser, "data-drawn") == "1:0"
    assert browser.problems() == []


def test_a_run_pages_trajectories_keep_the_steps_that_fit(tmp_path, run_manifest, capsys):
    # each record's trajectory went whole into its page script: 50 records of 3.1 MB each in one page
    folder = str(tmp_path / "traj")
    traj, maps = _trajectory_run(folder, os.path.join(run_manifest["folder"], "img", "s0.png"))
    # 2 words x 8 x 8 = 128 bytes a step: 256 bytes keep 2 of the 4 steps, the first and the last
    assert main(["view", folder, "--quiet", "--trajectory-bytes", "256"]) == 0
    text = open(os.path.join(folder, "view", "page-00000.js"), encoding="utf-8").read()
    rec = json.loads(text[text.index(", ") + 2:text.rindex(");")])[0]
    assert rec["steps"] == 3 and rec["step_labels"] == ["step 0/3", "step 3/3", "explanation"]
    want = np.rint(torch.cat([traj[[0, 3]], maps[None]]).numpy().reshape(-1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(rec["maps"]), np.uint8), want)
    assert any("the page shows 2 of the trajectory's 4 steps" in n for n in rec["notes"])
    assert main(["view", folder, "--quiet"]) == 0  # the default budget holds all 4
    text = open(os.path.join(folder, "view", "page-00000.js"), encoding="utf-8").read()
    assert json.loads(text[text.index(", ") + 2:text.rindex(");")])[0]["steps"] == 5
    capsys.readouterr()
    assert main(["view", folder, "--quiet", "--trajectory-bytes", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("dcam view: error: argument --trajectory-bytes: expected an int >= 1, "
                                               "got 0")


def test_run_page_lays_a_crop_models_maps_over_its_crop(browser, bundled, run_manifest, tmp_path):
    # the index never stored the box of a model that sees a crop (MMaDA, Lumina-DiMOO): dcam view
    # stretched its maps over the whole image, while its overlays put them on the crop
    import dataclasses

    from dcam.runs.runner import index_entry

    image = os.path.join(run_manifest["folder"], "img", "s1.png")
    e = dcam.Explainer(*bundled).explain(image, response=run_manifest["good"]["s1"]["response"])
    rec = type("Rec", (), dict(id="s1", n=0, where="line 1", image_path=image, notes=[], meta=None))()
    assert "box" not in index_entry(rec, e, None)
    e = dataclasses.replace(e, box=(0.25, 0.0, 0.75, 1.0))
    assert index_entry(rec, e, None)["box"] == [0.25, 0.0, 0.75, 1.0]
    folder = str(tmp_path / "crop")
    _trajectory_run(folder, image)  # a run folder by hand, its record given a box
    with open(os.path.join(folder, "index.jsonl")) as f:
        entry = json.loads(f.readline())
    entry["box"] = [0.25, 0.0, 0.75, 1.0]
    with open(os.path.join(folder, "index.jsonl"), "w") as f:
        f.write(json.dumps(entry) + "\n")
    r = next(iter(dcam.load_run(folder)))
    assert r.box == (0.25, 0.0, 0.75, 1.0)
    assert main(["view", folder, "--quiet"]) == 0
    browser.open("file://" + os.path.join(folder, "index.html"))
    assert browser.problems() == []
    rgba = browser.canvas().astype(int)
    H, W = rgba.shape[:2]
    x0, x1 = round(0.25 * W), round(0.75 * W)
    inner = _expected_heat(r.maps[0], (H, x1 - x0))
    assert np.abs(rgba[:, x0:x1, :3] - inner).max() <= TOL
    zero = _expected_heat(torch.zeros(8, 8), (H, W))  # outside the crop: the map's zero colour
    assert np.abs(rgba[:, :x0, :3] - zero[:, :x0]).max() <= TOL and np.abs(rgba[:, x1:, :3] - zero[:, x1:]).max() <= TOL


def test_explanation_page_and_fragment(browser, bundled, run_manifest, tmp_path):
    from dcam.render.html import explanation_html, write_explanation_page

    e = dcam.Explainer(*bundled).explain(os.path.join(run_manifest["folder"], "img", "s1.png"),
                                         response=run_manifest["good"]["s1"]["response"])
    path = write_explanation_page(str(tmp_path), e)
    assert path == str(tmp_path / "index.html")
    browser.open("file://" + path)
    assert browser.problems() == []
    assert browser.js("document.querySelectorAll('.words button').length") == len(e.tokens)
    assert browser.js("document.querySelector('.list')") is None  # one record: no list
    browser.click(".words button[data-k='5']")
    shape = browser.js("[document.querySelector('canvas.ov').width, document.querySelector('canvas.ov').height]")
    got = browser.canvas()[..., :3].astype(int)
    assert np.abs(got - _expected_heat(e.maps[5], (shape[1], shape[0]))).max() <= TOL
    # two fragments on one page (a notebook with two outputs) work side by side
    frag = explanation_html(e)
    assert frag.count("<script>") == 1 and "DcamViewer.create" in frag
    (tmp_path / "two.html").write_text(f"<!DOCTYPE html><html><body>{frag}{explanation_html(e)}</body></html>")
    browser.open("file://" + str(tmp_path / "two.html"))
    assert browser.problems() == []
    assert browser.js("document.querySelectorAll('.dcv').length") == 2
    assert browser.js("document.querySelectorAll('canvas.ov').length") == 2


def test_explanation_page_draws_the_saved_colormap_opacity_and_box(browser, bundled, run_manifest, tmp_path):
    # the page drew jet at opacity 0.5 over the whole image whatever save() was given, while the PNGs
    # used the colormap, alpha and the box of a model that sees a crop
    import dataclasses

    import matplotlib

    e = dcam.Explainer(*bundled).explain(os.path.join(run_manifest["folder"], "img", "s1.png"),
                                         response=run_manifest["good"]["s1"]["response"])
    e = dataclasses.replace(e, box=(0.25, 0.0, 0.75, 1.0))
    paths = e.save(str(tmp_path / "x"), colormap="viridis", alpha=0.9)
    browser.open("file://" + paths["page"])
    assert browser.problems() == []
    browser.click(".words button[data-k='2']")
    rgba = browser.canvas().astype(int)
    H, W = rgba.shape[:2]
    x0, x1 = round(0.25 * W), round(0.75 * W)
    q = np.rint(np.clip(e.maps[2].numpy(), 0, 1) * 255) / 255
    up = np.zeros((H, W))
    up[:, x0:x1] = F.interpolate(torch.tensor(q, dtype=torch.float64)[None, None], size=(H, x1 - x0),
                                 mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    lut = np.rint(matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255)
    assert np.abs(rgba[..., :3] - lut[np.rint(up * 255).astype(int)]).max() <= TOL
    assert np.abs(rgba[..., 3] - round(0.9 * 255)).max() <= 1


def test_a_folder_without_a_run_is_refused_naming_dir(tmp_path, capsys):
    rc = main(["view", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"dcam view: error: DIR: {str(tmp_path)!r} holds no dcam run (no index.jsonl, index/ "
                               "or run.json)"]
    assert os.listdir(tmp_path) == []


def test_an_explanations_folder_is_no_run_and_the_refusal_points_at_its_page(bundled, run_manifest, tmp_path,
                                                                           capsys):
    # dcam explain --trajectory --out DIR, then dcam view DIR: refused as an empty folder is, where the folder
    # holds its own page with the step slider
    folder = tmp_path / "e"
    dcam.Explainer(*bundled).explain(os.path.join(run_manifest["folder"], "img", "s1.png")).save(str(folder))
    before = sorted(os.listdir(folder))
    assert main(["view", str(folder), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"dcam view: error: DIR: {str(folder)!r} holds no dcam run (no "
                                               "index.jsonl, index/ or run.json); it holds a saved explanation, "
                                               "whose page is its index.html")
    assert sorted(os.listdir(folder)) == before


def test_an_unreadable_run_json_is_refused_before_anything_is_written(reference_run, tmp_path, capsys):
    """A corrupt run.json was a JSONDecodeError traceback after view/img was written, and the
    folder kept a page folder without its index.html; a missing folder was 'holds no run'."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    for name in ("view", "index.html"):
        p = out / name
        shutil.rmtree(p) if p.is_dir() else (p.unlink() if p.exists() else None)
    (out / "run.json").write_text("{not json")
    before = sorted(os.listdir(out))
    rc = main(["view", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"dcam view: error: DIR: cannot read {out / 'run.json'} (Expecting property name")
    assert sorted(os.listdir(out)) == before
    rc = main(["view", str(tmp_path / "nowhere"), "--quiet"])
    assert rc == 2 and capsys.readouterr().err.strip() == \
        f"dcam view: error: DIR: no such folder {str(tmp_path / 'nowhere')!r}"


def test_a_very_long_word_wraps_inside_the_page(browser, tmp_path):
    # a 300-character word ran the title, the response and its button past the window: the page
    # scrolled sideways
    from dcam.render.html import page_html, record_data, viewer_config

    word = "x" * 300
    rec = record_data(word, f"a {word}", [{"text": "a", "number": 0}, {"text": word, "number": 1}],
                      torch.zeros(2, 4, 4), None, [64, 64], [4, 4])
    (tmp_path / "long.html").write_text(page_html(viewer_config([rec], title=word)))
    browser.open("file://" + str(tmp_path / "long.html"))
    assert browser.problems() == []
    widths = browser.js("[document.documentElement.scrollWidth, document.documentElement.clientWidth, "
                        "document.querySelector(\".words button[data-k='1']\").getBoundingClientRect().right]")
    assert widths[0] <= widths[1] and widths[2] <= widths[1]


def test_an_image_replaced_after_the_run_is_not_shown_under_its_maps(reference_run, run_manifest, tmp_path, capsys):
    # an image replaced by another picture after the run was squeezed into the recorded frame under the old
    # maps; with --limit, the closing line counted failed records the pages did not hold
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    entries = [r.entry for r in dcam.load_run(out)]
    moved = tmp_path / "other.png"
    Image.new("RGB", (300, 40), (200, 0, 0)).save(moved)
    index = os.path.join(out, "index.jsonl")
    lines = [json.loads(line) for line in open(index)]
    lines[0]["image"] = str(moved)  # the first record's image is now another picture
    with open(index, "w") as f:
        f.write("".join(json.dumps(e) + "\n" for e in lines))
    capsys.readouterr()
    assert main(["view", out, "--limit", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith(": 3 explained records on 1 page(s)")
    imgs = sorted(os.listdir(os.path.join(out, "view", "img")))
    assert len(imgs) == 2 and imgs[0] != "000000.png"  # the replaced one is drawn on grey
    assert entries[0]["image_size"] != [300, 40]
    assert main(["view", out, "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith(f": {len(entries)} explained records on 1 page(s) and 5 failed ones")


def test_the_page_bins_values_into_colours_as_the_saved_overlays_do(browser, tmp_path):
    # the page looked a value up at round(v * 255), matplotlib (the PNG overlays) bins it at floor(v * 256),
    # 1 in the last bin: colours up to 5/255 apart. A 1 x 2 map [0, 1] on a 256-pixel-wide canvas puts a
    # value (2x + 1 - 128) / 256 under pixel x (64 <= x < 192): every one exactly on a bin's lower edge,
    # dyadic, so the same in float32 and float64 (round(v * 255) was one bin low for x >= 128)
    import matplotlib

    from dcam.render.html import page_html, record_data, viewer_config

    rec = record_data("edges", "a b", [{"text": "a", "number": 0}], torch.tensor([[[0.0, 1.0]]]), None,
                      [256, 256], [1, 2])
    (tmp_path / "edges.html").write_text(page_html(viewer_config([rec], alpha=1.0)))
    browser.open("file://" + str(tmp_path / "edges.html"))
    assert browser.problems() == []
    px = browser.canvas()
    assert px.shape == (256, 256, 4) and (px[..., 3] == 255).all()
    x = np.arange(256)
    v = np.clip((2 * x + 1 - 128) / 256, 0, 1)
    jet = matplotlib.colormaps["jet"]
    bins = np.minimum(np.floor(v * 256), 255).astype(int)  # hand-worked: the bin matplotlib takes
    assert bins[64] == 1 and bins[128] == 129 and bins[191] == 255 and bins[63] == 0
    want = np.rint(jet(v)[:, :3] * 255).astype(int)
    np.testing.assert_array_equal(want, np.rint(jet(bins)[:, :3] * 255).astype(int))
    for row in (0, 100, 255):
        np.testing.assert_array_equal(px[row, :, :3].astype(int), want)
    # and what the saved overlays draw (dcam.render.overlay at alpha 1: the heat alone)
    from dcam.render.overlay import overlay

    png = np.asarray(overlay(Image.new("RGB", (256, 256)), torch.tensor([[0.0, 1.0]]), alpha=1.0))
    np.testing.assert_array_equal(png[0].astype(int), want)


@pytest.mark.parametrize("value, taken", [("1", False), ("15", False), ("16", True), ("8192", True),
                                          ("8193", False), ("100000", False)])
def test_view_max_side_takes_the_range_of_explain(tmp_path, capsys, value, taken):
    # dcam view --max-side took 1 (1-pixel thumbnails) and 100000; dcam explain's range is [16, 8192]
    rc = main(["view", str(tmp_path / "nowhere"), "--max-side", value, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    if taken:  # past the option, on to the folder
        assert err == f"dcam view: error: DIR: no such folder {str(tmp_path / 'nowhere')!r}"
    else:
        assert err.endswith(f"argument --max-side: expected an int in [16, 8192], got '{value}'"), err
