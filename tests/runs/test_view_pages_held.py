"""`dcam view` holds only the pages near the one shown (real headless Chromium): the page kept every page
it had shown, records and script elements, so the browser grew by a page's size (about 70 MB of traced
records) for each page viewed. Pages further than one from the current one are dropped and loaded again
from their files when shown; what is shown then is what the files hold."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dcam
from dcam.cli import main
from dcam.render.html import page_html, record_data, script_json, viewer_config

#: as tests/runs/test_view.py: canvas rounding and a neighbouring colour where a value falls on a bin's edge
TOL = 6

#: the held pages, the page script elements left in the document, the records in the list
HELD = ("(function(){var v=document.querySelector('.dcv').__dcv;return [Object.keys(v.pages).map(Number)"
        ".sort(function(a,b){return a-b}),document.querySelectorAll('script[src]').length,"
        "document.querySelectorAll('.list .row').length];})()")


def _expected_heat(map_hw, size_hw):
    """As tests/runs/test_view.py works it out: the byte-quantised map upsampled bilinearly (half-pixel
    centres) and coloured with matplotlib's jet."""
    import matplotlib

    q = np.rint(np.clip(map_hw.numpy(), 0, 1) * 255) / 255
    up = F.interpolate(torch.tensor(q, dtype=torch.float64)[None, None], size=size_hw, mode="bilinear",
                       align_corners=False)[0, 0].clamp(0, 1).numpy()
    return np.rint(matplotlib.colormaps["jet"](up)[..., :3] * 255)


def _shown(browser, rid, timeout=60.0):
    """Waits (the page's script loading) until record ``rid`` is the one shown; fails past ``timeout``."""
    import time

    end = time.time() + timeout
    while browser.js("document.querySelector('.dcv').getAttribute('data-record')") != rid:
        assert time.time() < end, f"record {rid!r} was not shown"
        time.sleep(0.02)
    return True


def _page_file(folder, page):
    """The records of ``view/page-NNNNN.js``, read here from the file."""
    text = open(os.path.join(folder, "view", f"page-{page:05d}.js"), encoding="utf-8").read()
    assert text.startswith(f"DcamViewer.page({page}, ")
    return json.loads(text[text.index(", ") + 2:text.rindex(");")])


def _held_records(browser, page):
    return browser.js(f"JSON.parse(JSON.stringify(document.querySelector('.dcv').__dcv.pages[{page}]))")


@pytest.fixture(scope="module")
def paged_run(reference_run, tmp_path_factory):
    """The reference run's page, 2 records a page: 8 explained and 5 failed records on 7 pages."""
    out = str(tmp_path_factory.mktemp("paged") / "run")
    shutil.copytree(reference_run, out)
    assert main(["view", out, "--per-page", "2", "--quiet"]) == 0
    assert sorted(os.listdir(os.path.join(out, "view")))[-1] == "page-00006.js"
    return out


def test_paging_through_holds_three_pages_and_going_back_shows_the_files_records(browser, paged_run):
    files = [_page_file(paged_run, p) for p in range(7)]
    browser.open("file://" + os.path.join(paged_run, "index.html"))
    assert browser.js(HELD) == [[0], 0, 2]
    for page in range(1, 7):
        browser.key("PageDown", "PageDown", 34)
        assert _shown(browser, files[page][0]["id"])
        # the page shown and the one before it (kept: PageUp shows it at once); no page script stays behind
        assert browser.js(HELD) == [[page - 1, page], 0, len(files[page])], page
    assert _held_records(browser, 6) == files[6] and _held_records(browser, 5) == files[5]
    for page in range(5, -1, -1):
        browser.key("PageUp", "PageUp", 33)
        assert _shown(browser, files[page][0]["id"])
        assert browser.js("document.querySelector('.pg').textContent").startswith(f"page {page + 1} / 7")
        assert browser.js(HELD) == [[page, page + 1], 0, 2], page
        # reloaded from its file: the records are the file's, whole
        assert _held_records(browser, page) == files[page], page
    # page 0 again, dropped and loaded back: its list, its record and its maps as the run's files hold them
    run = list(dcam.load_run(paged_run))
    rows = browser.js("Array.from(document.querySelectorAll('.list .row .t')).map(function(t){return t.textContent})")
    assert rows == [f"{r.id}: {r.response}" for r in run[:2]]
    assert _shown(browser, run[0].id)
    assert browser.js("document.querySelector('.resp').textContent") == run[0].response
    shape = browser.js("[document.querySelector('canvas.ov').width, document.querySelector('canvas.ov').height]")
    px = browser.canvas()[..., :3].astype(int)
    assert np.abs(px - _expected_heat(run[0].maps[0], (shape[1], shape[0]))).max() <= TOL
    # a record of a neighbouring page by keys (j across the edge), then a row click on it
    browser.key("j", "KeyJ", 74)
    browser.key("j", "KeyJ", 74)
    assert _shown(browser, run[2].id) and browser.js(HELD) == [[0, 1], 0, 2]
    browser.click(".list .row[data-n='3']")
    assert _shown(browser, run[3].id)
    assert browser.problems() == []


def test_a_link_to_a_record_loads_its_page_alone_and_keys_go_on_from_it(browser, paged_run):
    files = [_page_file(paged_run, p) for p in range(7)]
    browser.open("file://" + os.path.join(paged_run, "index.html") + "#r=11")
    assert _shown(browser, files[5][1]["id"])  # a failed record: the errors come last
    assert "error: " + files[5][1]["error"] in browser.js("document.querySelector('.main').textContent")
    assert browser.js(HELD) == [[5], 0, 2]
    for rec in (10, 9, 8, 7, 6):  # up 5 records, to page 3: page 5 is dropped on the way
        browser.key("k", "KeyK", 75)
        assert _shown(browser, files[rec // 2][rec % 2]["id"])
    assert browser.js(HELD) == [[3, 4], 0, 2]
    browser.key("PageUp", "PageUp", 33)
    assert _shown(browser, files[2][0]["id"])
    browser.key("PageUp", "PageUp", 33)
    assert _shown(browser, files[1][0]["id"]) and browser.js(HELD) == [[1, 2], 0, 2]
    assert browser.problems() == []


def _big_pages(folder, pages):
    """``pages`` page files of one record each, its maps 40 steps x 24 words of 64 x 64 (3.9 MB; 5.2 MB of
    base64 in the page), each page's its own, and the viewer's page over them."""
    rng = np.random.default_rng(0)
    items = [{"text": f"w{k}", "number": k} for k in range(24)]
    os.makedirs(os.path.join(folder, "view"))
    for page in range(pages):
        rec = record_data(f"r{page}", "a response", items, rng.random((40, 24, 64, 64), dtype=np.float32), None,
                          [64, 64], [64, 64])
        with open(os.path.join(folder, "view", f"page-{page:05d}.js"), "w", encoding="utf-8") as f:
            f.write(f"DcamViewer.page({page}, {script_json([rec])});\n")
    cfg = viewer_config([], per_page=1, total=pages, page_url="view/page-%05d.js")
    with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as f:
        f.write(page_html(cfg))


def _renderers_mb(browser):
    """Resident memory of Chromium's renderer processes after a full garbage collection, MB (the maps'
    strings lie outside what the JavaScript heap's own figures count)."""
    browser.send("HeapProfiler.collectGarbage")
    total = 0
    for proc in browser.send("SystemInfo.getProcessInfo", browser=True)["processInfo"]:
        if proc["type"] == "renderer":
            with open(f"/proc/{proc['id']}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return total


def test_the_browsers_memory_stays_flat_however_many_pages_are_viewed(browser, tmp_path):
    # each page holds 5.2 MB of base64 maps: kept, the 8 pages past the first two held 42 MB more
    folder = str(tmp_path / "big")
    _big_pages(folder, 10)
    browser.open("file://" + os.path.join(folder, "index.html"))
    browser.send("Network.disable")  # DevTools' network domain keeps a copy of each file loaded
    assert _shown(browser, "r0")
    browser.key("j", "KeyJ", 74)
    assert _shown(browser, "r1")
    base = _renderers_mb(browser)  # two pages held
    for page in range(2, 10):
        browser.key("j", "KeyJ", 74)
        assert _shown(browser, f"r{page}")
    grown = _renderers_mb(browser) - base
    assert grown < 5.2, f"the renderers grew {grown:.1f} MB over 8 pages more"  # less than one page more held
    assert browser.js(HELD) == [[8, 9], 0, 1]
    assert browser.problems() == []
