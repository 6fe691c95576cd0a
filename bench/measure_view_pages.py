"""What traced records cost a ``dcam view`` page: its page files' size, the time to show a page not yet
loaded, and the browser's memory as pages are shown (docs/RUNS.md, "dcam view DIR").

    OMP_NUM_THREADS=1 python bench/measure_view_pages.py [--pages 8] [--rounds 5]

Two synthetic runs' pages (``dcam.render.html.record_data`` of random maps, each record its own, the viewer's
own page and page files, ``--per-page`` 50): ``plain``, each record 50 words of 27 x 27 cells; ``traced``,
each also a trajectory of 64 steps, cut to the default 1 MiB (28 steps: the largest documented case, 1.4 MB
of base64 a record). Headless Chromium (the tests' DevTools driver, tests/runs/conftest.py) opens page 0,
then PageDown shows page 1: the seconds from the key to record 50 being current, each round in a fresh tab,
including the driver's 0.3 s settle after a key (``--rounds 0`` skips this). Then ``traced`` is paged
through ``--pages`` pages, down and back up to page 0, and the RSS of Chromium's processes printed after
each: as it stands (garbage the browser has not collected yet included) and after a full garbage
collection (what the page holds). DevTools' network domain is off for this part: it keeps a copy of each
file loaded, which a browser without DevTools open does not.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from dcam.render.html import page_html, record_data, script_json, trajectory_frames, viewer_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "runs"))
from conftest import Chromium  # noqa: E402  (the tests' headless Chromium over the DevTools protocol)

S, T, H, W = 64, 50, 27, 27


def write_pages(folder: str, records: int, traced: bool, per_page: int = 50) -> int:
    """A run's index.html and view/page-NNNNN.js of ``records`` records; returns a page file's bytes."""
    items = [{"text": f"w{k}", "number": k} for k in range(T)]

    def record(i):  # its own maps (records sharing one map shared one string in the browser: held for free)
        rng = np.random.default_rng(i)
        traj = torch.from_numpy(rng.random((S, T, H, W), dtype=np.float32)) if traced else None
        frames, labels, notes = trajectory_frames(torch.from_numpy(rng.random((T, H, W), dtype=np.float32)),
                                                  traj, None)
        return record_data(f"r{i}", "a response", items, frames, None, [64, 64], [H, W], notes=notes,
                           step_labels=labels)

    os.makedirs(os.path.join(folder, "view"), exist_ok=True)
    for page in range(-(-records // per_page)):
        recs = [record(i) for i in range(page * per_page, min(records, (page + 1) * per_page))]
        with open(os.path.join(folder, "view", f"page-{page:05d}.js"), "w", encoding="utf-8") as f:
            f.write(f"DcamViewer.page({page}, {script_json(recs)});\n")
    cfg = viewer_config([], title="bench", per_page=per_page, total=records, page_url="view/page-%05d.js")
    with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as f:
        f.write(page_html(cfg))
    return os.path.getsize(os.path.join(folder, "view", "page-00000.js"))


def current(browser) -> str:
    return browser.js("(document.querySelector('.dcv .row.cur .t') || {}).textContent || ''")


def wait_for(browser, record: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while not current(browser).startswith(f"r{record}:"):
        if time.time() > end:
            raise TimeoutError(f"record {record} was not shown")
        time.sleep(0.01)


def next_page_seconds(browser, folder: str, page: int) -> float:
    """Seconds from PageDown on page ``page - 1`` to its first record shown, the page loaded fresh."""
    browser.open("file://" + os.path.join(folder, "index.html"))
    wait_for(browser, 0)
    for p in range(1, page):
        browser.key("PageDown", "PageDown", 34)
        wait_for(browser, 50 * p)
    t0 = time.time()
    browser.key("PageDown", "PageDown", 34)
    wait_for(browser, 50 * page)
    return time.time() - t0


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its descendants, MB."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += [int(c) for c in subprocess.run(["pgrep", "-P", str(p)], capture_output=True,
                                                text=True).stdout.split()]
    out = subprocess.run(["ps", "-o", "rss=", "-p", ",".join(map(str, pids))], capture_output=True, text=True).stdout
    return sum(int(x) for x in out.split()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=8, help="pages of traced records shown for the memory line")
    ap.add_argument("--rounds", type=int, default=5, help="fresh tabs per page-switch time (0: no times)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="dcam-view-pages-")
    browser = Chromium()
    try:
        times = {}
        for name, traced in (("plain", False), ("traced", True)) if args.rounds else ():
            folder = os.path.join(root, name)
            size = write_pages(folder, 100, traced)
            times[name] = [next_page_seconds(browser, folder, 1) for _ in range(args.rounds)]
            print(json.dumps({"run": name, "page_file_MB": round(size / 1e6, 1),
                              "next_page_s_median": round(statistics.median(times[name]), 3),
                              "next_page_s_best": round(min(times[name]), 3)}), flush=True)
        if times:
            print(json.dumps({"traced / plain (median)": round(statistics.median(times["traced"])
                                                               / statistics.median(times["plain"]), 2)}))
        folder = os.path.join(root, "many")
        write_pages(folder, 50 * args.pages, True)
        browser.open("file://" + os.path.join(folder, "index.html"))
        browser.send("Network.disable")
        wait_for(browser, 0)
        held = "(function(v){return v?Object.keys(v.pages).length:null})(document.querySelector('.dcv').__dcv)"
        order = list(range(args.pages)) + list(range(args.pages - 2, -1, -1))
        for k, page in enumerate(order):
            if k:
                browser.key(*(("PageDown", "PageDown", 34) if page > order[k - 1] else ("PageUp", "PageUp", 33)))
                wait_for(browser, 50 * page)
            time.sleep(0.5)
            shown = rss_mb(browser.proc.pid)
            browser.send("HeapProfiler.collectGarbage")
            print(json.dumps({"traced pages shown": k + 1, "page": page, "chromium_rss_MB": round(shown),
                              "after_gc_MB": round(rss_mb(browser.proc.pid)), "pages_held": browser.js(held)}),
                  flush=True)
        assert browser.problems() == [], browser.problems()
    finally:
        browser.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
