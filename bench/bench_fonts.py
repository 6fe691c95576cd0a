"""What the pictures' font chain costs: a 64-word contact sheet drawn with the chain against DejaVu Sans alone.

    OMP_NUM_THREADS=1 python bench/bench_fonts.py [--rounds 7] [--words 64]

A contact sheet of the image and ``--words`` overlays (256 x 256 tiles, as ``Explanation.save`` draws
for a small image), labelled ``N: word``, is drawn in one process, each way once per round:

- ``plain``: the label font is DejaVu Sans as one Pillow font (``dcam.render.sheet.font`` swapped for
  it): what the pictures did before the chain, Pillow measuring and drawing each label in one call;
- ``chain``: the shipped :class:`dcam.render.fonts.FontChain` (each label checked against DejaVu's
  character map; every letter is in it, so each label is one run, drawn as ``plain`` draws it);
- ``chain cjk``: the chain with Chinese words, drawn, on a machine without a CJK font, as code
  points (the once-per-process warning silenced), with one, in a CJK font (the installed fonts are
  read before the first round).

Printed: the median and the best seconds of each, their ratios to ``plain``, and the seconds of the
first lookup of a letter DejaVu lacks in a fresh process (matplotlib's font list and ``fc-list``, read
once).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings

from PIL import Image, ImageFont

import dcam.render.sheet as sheet_module
from dcam.render.fonts import dejavu_path, font

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # script_support, as `python bench/<this>.py` has it
from script_support import require_at_least  # noqa: E402

LATIN = ["circle", "square", "triangle", "red", "green", "blue", "small", "large", "left", "right", "above", "below",
         "the", "a", "café", "Ελληνικά"]
CJK = ["一只", "红色", "的猫", "坐在", "桌子", "上面", "看着", "窗外"]

FIRST_LOOKUP = """
import time
from dcam.render.fonts import font
f = font(16)
t = time.perf_counter()
f.runs("中")
print(time.perf_counter() - t)
"""


def _sheet(tiles, words):
    labels = ["image"] + [f"{k + 1}: {words[k % len(words)]}" for k in range(len(tiles) - 1)]
    return sheet_module.contact_sheet(tiles, labels, title="a response " * 20, colormap="jet")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds of every way (default 7)")
    ap.add_argument("--words", type=int, default=64, help="words of the sheet (default 64)")
    args = ap.parse_args(argv)
    require_at_least(ap, args, ["rounds", "words"])
    tiles = [Image.new("RGB", (256, 256), (40 * (k % 6), 90, 200)) for k in range(args.words + 1)]
    plain = {}

    def plain_font(size):
        if size not in plain:
            plain[size] = ImageFont.truetype(dejavu_path(), size)
        return plain[size]

    warnings.simplefilter("ignore")  # (the code-point warning of the CJK way)
    _sheet(tiles, CJK)  # reads the installed fonts once, outside the timings
    times = {"plain": [], "chain": [], "chain cjk": []}
    for _ in range(args.rounds):
        for way in times:
            sheet_module.font = plain_font if way == "plain" else font
            t = time.perf_counter()
            _sheet(tiles, CJK if way == "chain cjk" else LATIN)
            times[way].append(time.perf_counter() - t)
    sheet_module.font = font
    # (best of the rounds as well as the median: on a shared machine the median moves by 10-20% between runs)
    base, best = statistics.median(times["plain"]), min(times["plain"])
    print(f"{'way':>10} {'median s':>9} {'/ plain':>8} {'best s':>9} {'/ plain':>8}")
    for way, ts in times.items():
        print(f"{way:>10} {statistics.median(ts):9.4f} {statistics.median(ts) / base:8.3f} {min(ts):9.4f} "
              f"{min(ts) / best:8.3f}")
    first = subprocess.run([sys.executable, "-c", FIRST_LOOKUP], capture_output=True, text=True, check=True)
    print(f"first lookup of a letter DejaVu lacks, in a fresh process: {float(first.stdout):.3f} s")


if __name__ == "__main__":
    main()
