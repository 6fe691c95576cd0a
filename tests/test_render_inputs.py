"""dcam.render's public functions on bad and unusual input: maps that are NaN, Inf, out of [0, 1] or
empty, boxes, labels and arrays are refused (or read) with one-line InputErrors naming the argument;
non-ASCII labels are drawn; one long label leaves the contact sheet's layout alone; narrow images'
trajectory frames keep their captions whole."""
import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dcam import InputError
from dcam.render import colorize, contact_sheet, overlay, show_cam_on_image, upsample_map
from dcam.render.overlay import FULL_BOX, map_on_image
from dcam.render.sheet import font

BLACK_IMAGE = np.zeros((8, 8, 3), np.uint8)


def _ink(text, f, size=(60, 40)):
    """bool bitmap of ``text`` drawn white on black at (10, 10)."""
    im = Image.new("L", size, 0)
    ImageDraw.Draw(im).text((10, 10), text, fill=255, font=f)
    return np.asarray(im) > 127


# ------------------------------------------------------------------ fonts

def test_accented_greek_and_cyrillic_letters_are_drawn_not_boxes():
    # Pillow's default font covered ASCII only: every one of these was the missing-glyph box
    f = font(14)
    missing = _ink("\U0010FFFD", f)  # a noncharacter: no font has a glyph for it
    for ch in ("é", "ü", "ñ", "ß", "Ω", "Ж"):
        assert not np.array_equal(_ink(ch, f), missing), ch
    # the accent of "é" is ink above the top of "e", over the same columns
    e, e_acute = _ink("e", f), _ink("é", f)
    e_top = np.nonzero(e.any(axis=1))[0].min()
    cols = np.nonzero(e.any(axis=0))[0]
    assert e_acute[:e_top, cols.min():cols.max() + 1].any()
    # ... and in a word: "café" differs from "cafe" only above the e's x-height
    word, plain = _ink("café", f, (120, 40)), _ink("cafe", f, (120, 40))
    differ = np.nonzero((word != plain).any(axis=1))[0]
    assert differ.size and differ.max() < e_top


# ------------------------------------------------------------------ maps

@pytest.mark.parametrize("cam,match", [
    (np.full((4, 4), np.nan), r"^cam: a map must be finite, got 16 NaN/Inf value\(s\)$"),
    (torch.full((4, 4), float("inf")), r"^cam: a map must be finite, got 16 NaN/Inf value\(s\)$"),
    (np.full((4, 4), 5.0), r"^cam: a map's values must be in \[0, 1\], got values in \[5, 5\]$"),
    (np.full((4, 4), -1.0), r"^cam: a map's values must be in \[0, 1\], got values in \[-1, -1\]$"),
    (np.zeros((0, 4)), r"^cam: a map must hold at least one value, got shape \(0, 4\)$"),
])
def test_bad_maps_are_refused_by_every_public_function(cam, match):
    # NaN was drawn as 0, Inf and 5 as 1, -1 as 0; an empty map was torch's RuntimeError
    pil = Image.new("RGB", (8, 8))
    for call in (lambda: show_cam_on_image(BLACK_IMAGE, cam), lambda: overlay(pil, cam),
                 lambda: overlay(pil, cam, box=(0.25, 0.0, 0.75, 1.0)), lambda: upsample_map(cam, (8, 8)),
                 lambda: colorize(cam)):
        with pytest.raises(InputError, match=match):
            call()


def test_a_map_one_rounding_past_one_is_drawn_as_one():
    # float32 normalisation may land a unit in the last place past 1: jet at 1 is (0.5, 0, 0) -> 128
    over = np.full((2, 2), np.nextafter(np.float32(1.0), np.float32(2.0)), np.float32)
    assert (colorize(over) == np.array([128, 0, 0], np.uint8)).all()
    assert upsample_map(over, (3, 3)).max() == 1.0


@pytest.mark.parametrize("size", [(0, 5), (-3, 20), (2.7, 5), (5,), (True, 5), "55", 5])
def test_a_map_size_that_is_not_two_positive_ints_is_refused(size):
    # (0, 5) was torch's RuntimeError, (-3, 20) numpy's ValueError, (2.7, 5) was taken as (2, 5)
    m = np.full((4, 4), 0.5, np.float32)
    for call in (lambda: upsample_map(m, size), lambda: map_on_image(m, size),
                 lambda: map_on_image(m, size, (0, 0, 0.5, 0.5))):
        with pytest.raises(InputError, match=r"^size must be \(H, W\), two ints >= 1, got "):
            call()
    # numpy's ints are ints: a constant map upsampled stays that constant
    np.testing.assert_allclose(upsample_map(m, (np.int64(3), np.int32(7))), np.full((3, 7), 0.5), atol=1e-7)


@pytest.mark.parametrize("call,match", [
    (lambda: upsample_map("abc", (5, 5)), r"^cam: a map must be an array of numbers, got str of dtype <U3$"),
    (lambda: upsample_map(np.array([[None, 0.5]], dtype=object), (2, 2)),
     r"^cam: a map must be an array of numbers, got ndarray of dtype object$"),  # (was "1 NaN/Inf value(s)")
    (lambda: colorize(0.5), r"^cam: a map must be 2-D \[H, W\], got shape \(\)$"),  # (a TypeError)
    (lambda: show_cam_on_image("abc", np.zeros((2, 2))), r"^image must be an array of numbers, got str"),
])
def test_maps_and_images_that_are_not_numbers_are_refused(call, match):
    with pytest.raises(InputError, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_tensor_image_is_drawn(dtype):
    # numpy has no bfloat16: such an image was a TypeError. 0.5 is exact in both; alpha 0 leaves the
    # image: 0.5 * 255 = 127.5 -> 128
    out = show_cam_on_image(torch.full((3, 4, 3), 0.5, dtype=dtype), np.zeros((2, 2)), alpha=0.0)
    assert out.dtype == np.uint8 and (out == 128).all()


def test_a_nan_float_image_is_refused():
    img = np.full((8, 8, 3), 0.5, np.float32)
    img[0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"^image: a float image must be in \[0, 1\], with no NaN or Inf$"):
        show_cam_on_image(img, np.zeros((4, 4)))


# ------------------------------------------------------------------ overlay's image and box

def test_overlay_takes_an_array_as_dcam_reads_one():
    # an array was an AttributeError ('numpy.ndarray' object has no attribute 'convert'); worked by hand:
    # jet(0) = (0, 0, 0.5) -> heat (0, 0, 128), half of it over black -> (0, 0, 64)
    out = np.asarray(overlay(BLACK_IMAGE, torch.zeros(4, 4)))
    assert out.shape == (8, 8, 3) and (out == np.array([0, 0, 64], np.uint8)).all()
    with pytest.raises(InputError, match="^image: unsupported type int"):
        overlay(3, torch.zeros(4, 4))


def test_overlay_draws_a_pil_image_as_the_same_array_or_file():
    # a PIL image went through .convert("RGB"): a fully transparent red pixel showed red, 16-bit grey
    # clipped to white, where the same array or file was composited on white / scaled by its range
    # (0..60000 -> 0..255: 30000 -> 127.5 -> 128)
    import tempfile

    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red, alpha 0
    grey16 = np.tile(np.array([0, 30000, 60000], np.uint16), (10, 1))
    m = np.zeros((2, 2), np.float32)
    cases = ((Image.fromarray(rgba, "RGBA"), rgba, np.full((10, 20, 3), 255)),
             (Image.fromarray(grey16), grey16, np.tile(np.array([0, 128, 255])[None, :, None], (10, 1, 3))))
    with tempfile.TemporaryDirectory() as tmp:
        for pil, array, expected in cases:
            path = f"{tmp}/im.png"
            pil.save(path)
            for im in (pil, array, path):
                np.testing.assert_array_equal(np.asarray(overlay(im, m, alpha=0.0)), expected,
                                              err_msg=f"{pil.mode} {type(im).__name__}")


@pytest.mark.parametrize("box", [np.array([0, -0.4, 1, 1.4]), torch.tensor([0, -0.4, 1, 1.4]),
                                 [np.float32(0), np.float32(-0.4), np.float32(1), np.float32(1.4)]])
def test_a_box_of_four_numbers_in_an_array_or_tensor_is_taken(box):
    # a numpy array (a box read from a file) was refused; the map of a 20 x 10 image padded to a square:
    # the box's 0.4 past each edge is 4 rows of 10, its height 18 rows, a 2 x 2 map of rows 0 and 1
    # upsampled bilinearly to 18 rows: the image's rows 0..9 are the box's rows 4..13
    cam = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    got = map_on_image(cam, (10, 20), box)
    ref = torch.nn.functional.interpolate(torch.from_numpy(cam)[None, None], size=(18, 20),
                                                  mode="bilinear", align_corners=False)[0, 0].numpy()[4:14]
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert ref[0, 0] < 0.5 < ref[-1, 0]
    assert overlay(Image.new("RGB", (20, 10)), cam, box=box).size == (20, 10)


@pytest.mark.parametrize("box", [np.zeros((2, 2)), np.array([0, 0, 1]), torch.tensor(0.5), np.array([0, 0, 1, 1]) > 0])
def test_an_array_box_that_is_not_four_numbers_is_refused(box):
    with pytest.raises(InputError, match=r"^box must be 4 finite fractions .*, got [^\n]*$"):
        map_on_image(np.zeros((2, 2)), (4, 4), box)


@pytest.mark.parametrize("box", [(float("nan"), 0, 1, 1), (0.5, 0.5, 0.2, 0.2), (0, 0, 1), (0, 0, True, 1),
                                 (0, 0, float("inf"), 1), (1.0, 0.0, 2.0, 1.0), "0011", (0, 0, 0.5, 0.0)])
def test_overlay_refuses_a_box_that_is_not_one(box):
    # NaN was a ValueError; an inverted box drew no heatmap at all; one beside the image likewise
    with pytest.raises(InputError, match=r"^box must be 4 finite fractions \(x0, y0, x1, y1\) with x0 < x1"):
        overlay(Image.new("RGB", (8, 8)), torch.zeros(4, 4), box=box)


def test_a_box_past_the_edges_of_a_padded_image_is_taken():
    # a wide image padded to a square: the map's square runs a quarter past the top and the bottom
    cam = torch.ones(2, 2)
    got = map_on_image(cam, (4, 8), (0.0, -0.5, 1.0, 1.5))
    np.testing.assert_array_equal(got, np.ones((4, 8), np.float32))
    assert map_on_image(cam, (4, 8), [0, 0, 1, 1]).shape == (4, 8) and FULL_BOX == (0.0, 0.0, 1.0, 1.0)


# ------------------------------------------------------------------ contact sheets

@pytest.mark.parametrize("n,labels,match", [
    (2, ["a"], r"^labels: 1 label\(s\) for 2 tile\(s\); give one label per tile$"),
    (1, ["a", "b"], r"^labels: 2 label\(s\) for 1 tile\(s\); give one label per tile$"),
    (2, "ab", r"^labels must be a list of strings, one per tile, got str$"),
    (2, ["a", 3], r"^labels must be a list of strings, one per tile, got list$"),
])
def test_contact_sheet_wants_one_label_per_tile(n, labels, match):
    # two tiles and one label was an IndexError; two labels for one tile and a string were drawn
    with pytest.raises(InputError, match=match):
        contact_sheet([Image.new("RGB", (8, 8))] * n, labels)


def test_one_long_label_leaves_the_cells_alone_and_stays_in_its_cell():
    # one 300-letter word widened every cell to ~1,000 pixels and still ran off the sheet
    from dcam.render.sheet import fit_text

    tiles = [Image.new("RGB", (256, 256), (90, 90, 200)) for _ in range(9)]
    labels = [f"{i}: w" for i in range(8)] + ["8: " + "x" * 300]
    sheet = np.asarray(contact_sheet(tiles, labels).convert("L"))
    assert sheet.shape[1] == 3 * (256 + 4) + 4  # three 256-pixel cells, 4-pixel gaps (as with short labels)
    # labels 25 pixels high (a tenth of the tile) under each tile, in a 21-pixel font
    label_rows = np.concatenate([np.arange(r * (256 + 25 + 4) + 4 + 256, r * (256 + 25 + 4) + 4 + 256 + 25)
                                 for r in range(3)])
    gaps = [c for g in range(4) for c in range(g * 260, g * 260 + 4)]
    assert (sheet[np.ix_(label_rows, gaps)] == 255).all()  # no label ink between cells or at the edges
    last = sheet[label_rows[-25:], 2 * 260 + 4:3 * 260]
    assert (last < 128).any()  # the long label is there, cut
    f = font(21)
    cut = fit_text(labels[-1], f, 254)
    assert cut.endswith("…") and cut.startswith("8: xxx") and f.getlength(cut) <= 254 < f.getlength(labels[-1])


TITLES = ["THE MOST IMPORTANT WORDS ARE WRITTEN IN CAPITALS HERE, MOSTLY W AND M: WWW MMM",
          "Ελληνικά και ρωσικά: Привет, как дела? Съешь же ещё этих мягких французских булок",
          "一只红色的猫坐在一张蓝色的桌子上面看着窗外的小鸟在树上唱歌一只红色的猫坐在一张蓝色的桌子上面"]


@pytest.mark.filterwarnings("ignore:no installed font has a glyph")  # (CJK without a CJK font: tested elsewhere)
@pytest.mark.parametrize("title", TITLES)
@pytest.mark.parametrize("n,side", [(2, 40), (5, 200)])
def test_every_title_line_fits_the_sheet(title, n, side):
    # titles were wrapped by letter count (a width // 8): capitals ran 20 pixels past a 320-pixel sheet's
    # right edge, the CJK line 20 past it. The sheets are 320 and 3 x 204 + 4 = 616 wide as before, and
    # the title's rows hold no ink in the 4-pixel margin at the right
    sheet = np.asarray(contact_sheet([Image.new("RGB", (side, side), (0, 255, 0))] * n, title=title))
    assert sheet.shape[1] == (320 if side == 40 else 616)
    top = sheet[:30]  # the first title line (and a margin below it)
    assert (top[:, :-4] != 255).any() and (top[:, -4:] == 255).all()


def test_wrap_text_measures_lines_keeps_words_whole_and_breaks_long_ones():
    from dcam.render.fonts import text_length
    from dcam.render.sheet import wrap_text

    f = font(14)
    width = 312
    for title in TITLES:
        # (as drawn: letters no installed font has are measured as the code points drawn for them, so a
        # CJK title takes more lines on a machine without a CJK font; 40 lines hold it whole either way)
        lines = wrap_text(title, f, width, 40)
        assert all(text_length(line, f) <= width for line in lines), lines
        sep = "" if " " not in title else " "  # words kept whole: the lines are the words in order
        assert sep.join(lines) == title
        # each line is full: the next line's first word (or letter) would not have fitted on it
        for a, b in zip(lines, lines[1:]):
            assert text_length(a + sep + (b.split()[0] if sep else b[0]), f) > width
    # more than max_lines: the last line kept ends in an ellipsis and still fits
    lines = wrap_text("word " * 200, f, 130, 3)
    assert f.getlength("word word word") <= 130 < f.getlength("word word word word")
    assert lines[:2] == ["word word word", "word word word"]
    assert lines[2].startswith("word word") and lines[2].endswith("…") and f.getlength(lines[2]) <= 130


@pytest.mark.parametrize("breaking", ["\n", "\r\n", "\u2028"])
def test_a_label_with_a_line_break_is_drawn_on_one_line(breaking):
    # Pillow raised "can't measure length of multiline text"
    tiles = [Image.new("RGB", (40, 40), (0, 255, 0))] * 3
    got = contact_sheet(tiles, [f"a{breaking}b", "c", "d"])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(contact_sheet(tiles, ["a b", "c", "d"])))


@pytest.mark.parametrize("kwargs,match", [
    (dict(cols=-1), r"^cols must be an int >= 1, got -1$"),  # (Pillow's ValueError)
    (dict(cols=0), r"^cols must be an int >= 1, got 0$"),
    (dict(cols=2.5), r"^cols must be an int >= 1, got 2.5$"),
    (dict(title=123), r"^title must be a string or None, got int$"),  # (textwrap's AttributeError)
    (dict(cols=2000), r"^a contact sheet of 3 tiles in 2000 columns cannot fit 4096 pixels$"),
])
def test_contact_sheet_refuses_bad_cols_and_titles(kwargs, match):
    with pytest.raises(InputError, match=match):
        contact_sheet([Image.new("RGB", (40, 40))] * 3, **kwargs)


@pytest.mark.parametrize("tiles,match", [
    ([Image.new("RGB", (0, 0))] * 3, r"^tiles: tile 0 is 0 x 0 pixels; every tile must be a PIL image"),
    ([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 0))], r"^tiles: tile 1 is 5 x 0 pixels;"),
    ([Image.new("RGB", (4, 4)), np.zeros((4, 4, 3))], r"^tiles: tile 1 is ndarray;"),
])
def test_contact_sheet_refuses_empty_tiles(tiles, match):
    # a 0 x 0 tile was a ZeroDivisionError
    with pytest.raises(InputError, match=match):
        contact_sheet(tiles)


def test_many_columns_shrink_the_tiles_to_keep_max_side():
    # fit_tile assumed ceil(sqrt(3)) = 2 columns: 100 columns of 40-pixel tiles made a 4,404-pixel sheet.
    # By hand: (4096 - 4) / 100 - 4 = 36.92 pixels a tile -> 36; 100 x (36 + 4) + 4 = 4004
    sheet = contact_sheet([Image.new("RGB", (40, 40), (0, 255, 0))] * 3, cols=100)
    assert sheet.size == (4004, 44)
    green = (np.asarray(sheet) == np.array([0, 255, 0])).all(-1)
    assert green.sum() == 3 * 36 * 36 and green[4:40, 4:40].all() and green[4:40, 44:80].all()


@pytest.mark.parametrize("side", [200, 280])
@pytest.mark.parametrize("label", ["Ễ", "Ẫ", "É"])
def test_a_labels_stacked_accents_stay_below_its_tile(side, label):
    # drawn at the font's ascender line one pixel under the tile, Ễ and Ẫ rose 2 pixels above it and
    # overwrote 6 to 9 pixels of the tile's bottom row
    sheet = np.asarray(contact_sheet([Image.new("RGB", (side, side), (0, 255, 0))], [label]))
    x0 = 4  # (the tile at the first cell, after a 4-pixel pad)
    assert (sheet[4:4 + side, x0:x0 + side] == np.array([0, 255, 0])).all()
    below = sheet[4 + side:, :]
    assert (below[0] == 255).all() and (below < 128).any()  # a white row, then the label's ink


# ------------------------------------------------------------------ trajectory frames

def _trajectory(size, steps=12, decided=11):
    return types.SimpleNamespace(image=Image.new("RGB", size, (200, 30, 30)), steps=steps, decided_at=[decided],
                                 word_numbers=[0], tokens=["a"], maps=torch.zeros(steps, 1, 2, 2), box=FULL_BOX)


@pytest.mark.parametrize("size", [(50, 1000), (1, 2000)])
def test_narrow_images_frames_keep_their_captions_whole(size):
    # a 50-pixel-wide image's frames cut "step 3/11" to "step 3/1"; a 1 x 2000 image's were 1 pixel wide
    from dcam.trajectory.render import word_frames

    traj = _trajectory(size)
    frames = word_frames(traj, 0)
    W, H = frames[0].size[0], frames[0].size[1] - 34
    f = font(13)
    for s, fr in enumerate(frames):
        band = np.asarray(fr)[H:H + 20]
        colour = (220, 20, 60) if s == 11 else (0, 0, 0)
        caption = f"step {s}/11" + ("  decided" if s == 11 else "")
        drawn = []
        for text in (caption, f"0: a  {caption}"):  # (with the word where it fits)
            ref = Image.new("RGB", (1000, 20), (255, 255, 255))
            ImageDraw.Draw(ref).text((4, 2), text, fill=colour, font=f)
            ref = np.asarray(ref)
            drawn.append(not (ref[:, W:] != 255).any() and np.array_equal(band, ref[:, :W]))
        assert any(drawn), (s, W)
    # the image sits whole in the middle of its frame
    img = np.asarray(frames[0])[:H]
    assert (img[:, (W - (H * size[0] // size[1] or 1)) // 2] != 255).any()


@pytest.mark.parametrize("size,shown,ring", [((2000, 1), (1024, 1), 0), ((16, 2000), (8, 1024), 1),
                                             ((64, 64), (256, 256), 4)])
def test_the_decided_frames_border_is_a_thin_ring_of_the_image(size, shown, ring):
    # the 4-pixel border covered a 1024 x 1 image whole and ran into the caption band under it. Shown
    # sizes by hand (display_size): 2000 x 1 -> 1024 x 1; 16 x 2000 scaled by 1024 / 2000 -> 8 x 1024;
    # 64 x 64 by 4 -> 256 x 256; the ring: min(4, shorter side // 8) pixels, none under 8 pixels
    from dcam.trajectory.render import word_frames

    frames = word_frames(_trajectory(size), 0)  # every step's map alike: the frames differ by the border
    decided, other = np.asarray(frames[11]), np.asarray(frames[0])
    W, H = decided.shape[1], decided.shape[0] - 34
    assert H == shown[1]
    x0 = (W - shown[0]) // 2
    expected = np.zeros((H, W), bool)
    expected[:, x0:x0 + shown[0]] = True
    expected[ring:H - ring, x0 + ring:x0 + shown[0] - ring] = False
    if ring == 0:
        expected[:] = False
    red = (decided[:H] == np.array([220, 20, 60])).all(-1)
    np.testing.assert_array_equal(red, expected)
    np.testing.assert_array_equal(decided[:H][~expected], other[:H][~expected])
    assert not (decided[H:H + 2] == np.array([220, 20, 60])).all(-1).any()  # the caption band's top rows


def test_tiles_get_the_room_their_own_label_needs():
    # hand-worked: 20 tiles of 100 x 1000 in one column, max_side 1000, no title or bar: a tile of height H
    # takes H + label(H) + 4 pixels, label(H) = 12 below 130 pixels, so 20 (H + 16) + 4 <= 1000: H = 33 (width
    # 100 * 33.8 / 1000 -> 3). The full-size tile's 28-pixel label was reserved instead: 17-pixel tiles, and
    # 40 tiles were refused though 8-pixel ones fit
    from dcam.render.sheet import _fit_with_labels

    assert _fit_with_labels(20, (100, 1000), 1000, 4, 0, 1, True) == (3, 33)
    assert _fit_with_labels(40, (100, 1000), 1000, 4, 0, 1, True)[1] == 8  # 40 (8 + 16) + 4 = 964
    sheet = contact_sheet([Image.new("RGB", (100, 1000))] * 40, [str(k) for k in range(40)], cols=1,
                          max_side=1000, colormap=None)
    assert max(sheet.size) <= 1000


def test_wrap_text_and_fit_tile_check_their_arguments():
    from dcam.render.sheet import fit_tile, font, wrap_text

    f = font(14)
    for bad in (-1, 0, 2.5):
        with pytest.raises(InputError, match="^max_lines"):
            wrap_text("hello world", f, 100, bad)
    assert wrap_text("hello world", f, 3, 2) == []  # narrower than "…": nothing fits (9-14 px lines came back)
    for bad in (0, 2.5, True, -1):
        with pytest.raises(InputError, match="^cols"):
            fit_tile(3, (40, 40), cols=bad)
