"""The evaluation's pictures draw captions, words and record ids as written: matplotlib reads
"$...$" in any text as maths, and a caption it cannot parse ("worth $x_$") raised out of
``dcam eval`` and lost the whole evaluation."""
import numpy as np
import pytest
import torch
from PIL import Image

from dcam.eval.datasets.base import EvalRecord
from dcam.eval.report import _bar_chart, _example_sheet

CAPTION = "a dog worth $x_$ on the table"


def test_the_caption_is_one_matplotlib_cannot_parse_as_maths():
    # the input below is the one that crashed: as maths it is a syntax error
    from matplotlib.mathtext import MathTextParser
    with pytest.raises(ValueError):
        MathTextParser("agg").parse("$x_$")


def test_example_sheet_draws_a_caption_with_dollars(tmp_path):
    img = Image.new("RGB", (40, 30), (200, 10, 10))
    words = CAPTION.split()
    mask = np.zeros((30, 40), np.int64)
    mask[5:20, 5:25] = 1
    objects = [(1,) if w == "dog" else () for w in words]
    rec = EvalRecord("id $\\frac$", img, CAPTION, words, mask, objects, [False] * len(words))
    path = _example_sheet({"record": rec, "maps": {"diffusion-cam": {1: torch.rand(4, 4)}}},
                          str(tmp_path / "sheet.png"))
    with Image.open(path) as sheet:
        assert sheet.size == (440, 230)  # figsize (2.2 * 2, 2.3 * 1) inches at 100 dpi


def test_bar_chart_draws_method_names_and_title_with_dollars(tmp_path):
    rows = {"my $method_": {"obj_iou": 0.5, "contrast": 2.0, "concentration": 0.3, "f3": 0.4}}
    path = _bar_chart(rows, str(tmp_path / "bars.png"), "run $x_$")
    with Image.open(path) as chart:
        assert chart.size == (1408, 396)  # figsize (12.8, 3.6) inches at 110 dpi
