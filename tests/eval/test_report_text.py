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


def _sheet_of(tmp_path, name, words, caption):
    img = Image.new("RGB", (40, 30), (200, 10, 10))
    mask = np.zeros((30, 40), np.int64)
    mask[5:20, 5:25] = 1
    rec = EvalRecord("r1", img, caption, words, mask, [(1,)] * len(words), [False] * len(words))
    cam = torch.linspace(0, 1, 16).reshape(4, 4)
    path = _example_sheet({"record": rec, "maps": {"diffusion-cam": {0: cam, 1: cam}}}, str(tmp_path / name))
    with Image.open(path) as sheet:
        return np.asarray(sheet.convert("RGB"))


def _a_cjk_font_is_installed():
    import shutil
    import subprocess
    fc = shutil.which("fc-list")
    return fc is not None and bool(subprocess.run([fc, ":charset=4e2d", "file"], capture_output=True,
                                                  text=True).stdout.strip())


@pytest.mark.skipif(_a_cjk_font_is_installed(), reason="a CJK font is installed: the words are drawn")
def test_example_sheet_draws_cjk_words_no_font_has_as_code_points(tmp_path, monkeypatch):
    # matplotlib drew 一只 and 猫 in DejaVu Sans as empty boxes, with a warning per letter
    import warnings

    from dcam.render import fonts

    monkeypatch.setattr(fonts, "_warned", False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got = _sheet_of(tmp_path, "cjk.png", ["一只", "猫"], "一只 猫")
    assert [type(w.message).__name__ for w in said] == ["MissingGlyphWarning"]  # (none of matplotlib's)
    by_hand = _sheet_of(tmp_path, "hand.png", ["[U+4E00 U+53EA]", "[U+732B]"], "[U+4E00 U+53EA] [U+732B]")
    np.testing.assert_array_equal(got, by_hand)


def test_figures_use_dcam_fonts_file_then_dejavu_for_the_letters_it_lacks(monkeypatch):
    import os

    from matplotlib.ft2font import FT2Font

    from dcam.render.fonts import dejavu_path, figure_fonts

    liberation = "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"
    if not os.path.exists(liberation):
        pytest.skip("needs Liberation Sans (fonts-liberation)")
    arrow = "\u2196"  # "↖": DejaVu Sans has it, Liberation Sans has not
    assert ord(arrow) in FT2Font(dejavu_path()).get_charmap() and ord(arrow) not in FT2Font(liberation).get_charmap()
    monkeypatch.setenv("DCAM_FONT", liberation)
    assert figure_fonts(["ab"]) == {"font.family": ["Liberation Sans", "DejaVu Sans"]}
    assert figure_fonts([f"ab{arrow}"]) == {"font.family": ["Liberation Sans", "DejaVu Sans"]}
    monkeypatch.delenv("DCAM_FONT")
    assert figure_fonts([f"ab{arrow}"]) == {"font.family": ["DejaVu Sans"]}
