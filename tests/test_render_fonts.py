"""The words of dcam's pictures in any script: each letter is drawn in the first font that has it
(``DCAM_FONT``'s file, DejaVu Sans, then the installed fonts), letters no font has as their code
points with one warning, and a ``DCAM_FONT`` that is not a font is refused in one line. The expected
pictures are drawn here with Pillow and the named font files, by hand."""
import os
import shutil
import subprocess
import types
import warnings

import numpy as np
import pytest
import torch
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont

from dcam import InputError
from dcam.render import contact_sheet
from dcam.render.overlay import FULL_BOX

MPL_DEJAVU = os.path.join(os.path.dirname(__import__("matplotlib").__file__), "mpl-data", "fonts", "ttf",
                          "DejaVuSans.ttf")
LIBERATION = "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"


def _cmap(path):
    return set(FT2Font(path).get_charmap())


def _ink(im):
    """The picture cropped to its ink (every pixel that is not white)."""
    a = np.asarray(im.convert("RGB"))
    rows, cols = np.nonzero((a != 255).any(-1))
    return a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _runs_drawn(runs, size=(400, 60)):
    """``runs``: (text, font file) pairs drawn black on white, left to right on one baseline, each
    after the previous one's advance (Pillow's own measure)."""
    im = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(im)
    x = 10.0
    for text, path in runs:
        f = ImageFont.truetype(path, 16)
        draw.text((x, 40), text, fill=(0, 0, 0), font=f, anchor="ls")
        x += f.getlength(text)
    return im


def _label_only_sheet(label):
    # a white 200 x 200 tile and no title or colour bar: the only ink is the label, 20 pixels under the
    # tile (a tenth of it) in a 16-pixel font (20 - 4)
    return contact_sheet([Image.new("RGB", (200, 200), (255, 255, 255))], [label])


@pytest.fixture
def fresh_warning(monkeypatch):
    """The once-per-process warning not yet said (another test may have said it)."""
    from dcam.render import fonts

    monkeypatch.setattr(fonts, "_warned", False)


def _an_installed_font_has(cp):
    """Whether fontconfig knows a font with the glyph (matplotlib's own fonts have no CJK ones)."""
    fc = shutil.which("fc-list")
    if fc is None:
        return False
    return bool(subprocess.run([fc, f":charset={cp:x}", "file"], capture_output=True, text=True).stdout.strip())


@pytest.mark.skipif(not os.path.exists(LIBERATION), reason="needs Liberation Sans (fonts-liberation)")
def test_a_letter_dcam_fonts_file_lacks_is_drawn_in_dejavu_on_the_same_baseline(monkeypatch):
    # Pillow drew a whole label in one font: a letter it lacks was its empty box
    lacks = sorted(c for c in _cmap(MPL_DEJAVU) - _cmap(LIBERATION) if 0x2190 <= c < 0x2200)
    arrow = chr(lacks[0])  # an arrow DejaVu Sans has and Liberation Sans has not (U+2196 "↖")
    monkeypatch.setenv("DCAM_FONT", LIBERATION)
    label = f"ab{arrow}cd"
    got = _ink(_label_only_sheet(label))
    want = _ink(_runs_drawn([("ab", LIBERATION), (arrow, MPL_DEJAVU), ("cd", LIBERATION)]))
    np.testing.assert_array_equal(got, want)
    # (Liberation alone draws a box there; DejaVu alone other letters)
    for alone in (LIBERATION, MPL_DEJAVU):
        other = _ink(_runs_drawn([(label, alone)]))
        assert other.shape != got.shape or not np.array_equal(other, got)


@pytest.mark.skipif(not os.path.exists(LIBERATION), reason="needs Liberation Sans (fonts-liberation)")
@pytest.mark.parametrize("side", [200, 280])
def test_a_label_wholly_in_a_fallback_font_sits_on_the_first_fonts_baseline_under_its_tile(monkeypatch, side):
    # every letter in the second font: its ink box (which places the label under the tile) is that font's;
    # the first font's was taken, the box of its missing-glyph box, and DejaVu's stacked accents rose 2 to 4
    # pixels into the tile
    monkeypatch.setenv("DCAM_FONT", LIBERATION)
    label = "\u01d7\u1ea8"  # ǗẨ: DejaVu Sans has them, Liberation Sans has not
    assert not {0x1D7, 0x1EA8} & _cmap(LIBERATION) and {0x1D7, 0x1EA8} <= _cmap(MPL_DEJAVU)
    sheet = contact_sheet([Image.new("RGB", (side, side), (255, 255, 255))], [label])
    size = min(28, side // 10) - 4  # the label font: a tenth of the tile, less 4 pixels
    lib, dejavu = ImageFont.truetype(LIBERATION, size), ImageFont.truetype(MPL_DEJAVU, size)
    ascent = lib.getmetrics()[0]
    top = ascent + dejavu.getbbox(label, anchor="ls")[1]  # the ink's top under a baseline at the ascent
    ref = Image.new("RGB", sheet.size, (255, 255, 255))
    # drawn 1 pixel under the tile, lower by the ink's rise above the first font's ascender line, if any
    baseline = 4 + side + 1 + max(0, -top) + ascent
    ImageDraw.Draw(ref).text((4 + 2, baseline), label, fill=(0, 0, 0), font=dejavu, anchor="ls")
    np.testing.assert_array_equal(np.asarray(sheet), np.asarray(ref))


def test_a_word_of_letters_only_dejavu_has_is_drawn_as_before():
    # the common case keeps DejaVu Sans's own drawing of the whole label (one run, kerning and all)
    label = "0: Ελληνικά café"
    np.testing.assert_array_equal(_ink(_label_only_sheet(label)), _ink(_runs_drawn([(label, MPL_DEJAVU)])))


@pytest.mark.skipif(_an_installed_font_has(0x4E2D), reason="a CJK font is installed: 中 is drawn")
def test_a_cjk_word_no_font_has_is_drawn_as_code_points_with_one_warning(fresh_warning):
    # 中文 was drawn as two empty boxes, without a word
    with pytest.warns(Warning) as said:
        got = _ink(_label_only_sheet("1: 中文"))
    lines = [str(w.message) for w in said]
    assert len(lines) == 1 and said[0].category.__name__ == "MissingGlyphWarning"
    assert "\n" not in lines[0]
    assert "中 U+4E2D, 文 U+6587" in lines[0] and "fonts-noto-cjk" in lines[0] and "DCAM_FONT" in lines[0]
    np.testing.assert_array_equal(got, _ink(_runs_drawn([("1: [U+4E2D U+6587]", MPL_DEJAVU)])))
    with warnings.catch_warnings():  # once per process: the next word draws the same way, silently
        warnings.simplefilter("error")
        again = _ink(_label_only_sheet("日本"))
    np.testing.assert_array_equal(again, _ink(_runs_drawn([("[U+65E5 U+672C]", MPL_DEJAVU)])))


@pytest.mark.skipif(_an_installed_font_has(0x4E2D), reason="a CJK font is installed: 中 is drawn")
def test_a_trajectory_frames_cjk_word_reads_as_code_points(fresh_warning):
    from dcam.trajectory.render import word_frames

    traj = types.SimpleNamespace(image=Image.new("RGB", (64, 64), (255, 255, 255)), steps=2, decided_at=[1],
                                 word_numbers=[3], tokens=["中"], maps=torch.zeros(2, 1, 2, 2), box=FULL_BOX)
    with pytest.warns(Warning, match="中 U\\+4E2D"):
        frame = word_frames(traj, 0)[0]
    # the 64-pixel image is drawn at 256 x 256 (display_size); the caption 2 pixels under it, at x = 4
    ref = Image.new("RGB", frame.size, (255, 255, 255))
    ImageDraw.Draw(ref).text((4, 256 + 2), "3: [U+4E2D]  step 0/1", fill=(0, 0, 0),
                             font=ImageFont.truetype(MPL_DEJAVU, 13))
    np.testing.assert_array_equal(np.asarray(frame)[256:256 + 18], np.asarray(ref)[256:256 + 18])


@pytest.mark.skipif(any(map(_an_installed_font_has, (0x3000, 0x9, 0xE0100))),
                    reason="an installed font (a CJK one) has U+3000: it is drawn in that font")
def test_spaces_and_invisible_letters_no_font_has_are_not_boxes(fresh_warning):
    # an ideographic space (U+3000, in Chinese and Japanese text) and a tab were DejaVu's empty box; a
    # variation selector (U+E0100) draws nothing in any font
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (nothing here is a letter drawn as a code point)
        got = _ink(_label_only_sheet("a\u3000b\tc\U000E0100d"))
    np.testing.assert_array_equal(got, _ink(_runs_drawn([("a b cd", MPL_DEJAVU)])))


def _a_font_without_latin(path):
    """A font whose character map has U+3000 alone (a single-script font has no Latin letters either), its
    missing-glyph box drawn, as real fonts draw it."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder([".notdef", "uni3000"])
    fb.setupCharacterMap({0x3000: "uni3000"})
    box = TTGlyphPen(None)
    box.moveTo((50, 0)), box.lineTo((50, 700)), box.lineTo((450, 700)), box.lineTo((450, 0)), box.closePath()
    fb.setupGlyf({".notdef": box.glyph(), "uni3000": TTGlyphPen(None).glyph()})
    fb.setupHorizontalMetrics({".notdef": (500, 0), "uni3000": (1000, 0)})
    fb.setupHorizontalHeader(ascent=880, descent=-120)
    fb.setupNameTable({"familyName": "No Latin", "styleName": "Regular"})
    fb.setupOS2()
    fb.setupPost()
    fb.save(str(path))
    return str(path)


def test_code_points_are_drawn_in_a_font_that_has_their_letters(tmp_path, monkeypatch, fresh_warning):
    # they were drawn in the chain's first font, DCAM_FONT's: one without Latin letters drew "[U+10FFFD]" as
    # its boxes. U+10FFFD (the last private-use code point) is in no font
    monkeypatch.setenv("DCAM_FONT", _a_font_without_latin(tmp_path / "NoLatin.ttf"))
    with pytest.warns(Warning, match="U\\+10FFFD"):
        got = _ink(_label_only_sheet("1: \U0010FFFD"))
    np.testing.assert_array_equal(got, _ink(_runs_drawn([("1: [U+10FFFD]", MPL_DEJAVU)])))


def test_a_letter_no_font_has_keeps_no_installed_fonts_character_map(fresh_warning):
    # every installed font's whole map was read and kept for the process (some 5 MiB a CJK face): only the
    # chain's own fonts are kept
    from dcam.render import fonts

    fonts.coverage.cache_clear()
    fonts._first_installed.pop("\U0010FFFE", None)
    with pytest.warns(Warning):
        runs = fonts.font(15).file_runs("a\U0010FFFE")
    assert runs == [("a[U+10FFFE]", (fonts.dejavu_path(), 0))]
    assert fonts.coverage.cache_info().currsize <= 1 and fonts._first_installed["\U0010FFFE"] is None


@pytest.mark.parametrize("content,why", [
    (None, r"is not a file; name a font file \(\.ttf, \.otf or \.ttc\) or unset it$"),
    (b"not a font, a text file\n", r"is not a font Pillow can scale \(.+\); name a \.ttf, \.otf or \.ttc file or "
                                   r"unset it$"),
])
def test_a_dcam_font_that_is_not_a_font_is_refused_in_one_line(tmp_path, monkeypatch, content, why):
    path = tmp_path / "font.ttf"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("DCAM_FONT", str(path))
    with pytest.raises(InputError, match=f"^DCAM_FONT: '{path}' {why}") as got:
        contact_sheet([Image.new("RGB", (8, 8))], ["a"])
    assert "\n" not in str(got.value)


@pytest.mark.parametrize("command", ["explain", "demo", "eval"])
def test_a_bad_dcam_font_stops_the_picture_commands_before_the_model_runs(tmp_path, monkeypatch, capsys, command):
    from dcam.cli import main

    bad = tmp_path / "font.ttf"
    bad.write_text("not a font")
    monkeypatch.setenv("DCAM_FONT", str(bad))
    out = tmp_path / "out"
    capsys.readouterr()
    argv = {"explain": ["explain", str(tmp_path / "missing.png")], "demo": ["demo"], "eval": ["eval"]}[command]
    rc = main(argv + ["--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"dcam {command}: error: DCAM_FONT: '{bad}' is not a font")
    assert not out.exists()
