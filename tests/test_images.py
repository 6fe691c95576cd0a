"""dcam.images: any image a user hands over becomes the RGB picture the model
sees, each conversion stated in the notes; what cannot be read is an
InputError naming the image. Expected pixels are computed here with numpy."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from dcam.errors import InputError
from dcam.images import load_image, load_image_with_notes, parse_colour


def _rgb(im):
    return np.asarray(im.convert("RGB"), dtype=np.int64)


def test_rgba_composited_on_the_background():
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[0, :, 3] = 0  # row 0 fully transparent
    rgba[1, :, 3] = 128  # row 1 half
    rgba[2:, :, 3] = 255  # rest opaque
    for background in ((255, 255, 255), (16, 32, 48)):
        im, notes = load_image_with_notes(Image.fromarray(rgba, "RGBA"), background)
        a = rgba[..., 3:4] / 255.0
        want = np.rint(a * rgba[..., :3] + (1 - a) * np.array(background)).astype(np.int64)
        assert im.mode == "RGB" and np.abs(_rgb(im) - want).max() <= 1
        assert notes == [f"transparency composited on rgb{background}"]
    # LA and a palette image with a transparent index
    la = Image.fromarray(np.stack([np.full((2, 2), 10, np.uint8), np.zeros((2, 2), np.uint8)], -1), "LA")
    assert _rgb(load_image(la)).tolist() == [[[255, 255, 255]] * 2] * 2
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    assert _rgb(load_image(p, (0, 0, 255))).tolist() == [[[0, 0, 255], [200, 10, 10]]]


def test_opaque_rgba_has_no_note():
    im, notes = load_image_with_notes(Image.new("RGBA", (3, 3), (1, 2, 3, 255)))
    assert notes == [] and _rgb(im)[0, 0].tolist() == [1, 2, 3]


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((120, 160, 3), dtype=np.uint8)  # stored 160 wide, 120 high
    arr[:10, :10] = (255, 0, 0)  # a red block in the stored top-left corner
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.png"
    im.save(path, exif=exif)
    out, notes = load_image_with_notes(str(path))
    assert out.size == (120, 160)  # (W, H): upright
    want = np.rot90(arr, k=-1)  # clockwise: the red block moves to the top-right
    assert np.array_equal(np.asarray(out), want)
    assert notes == ["EXIF orientation 6 applied"]


def test_16_bit_grayscale_scaled_by_its_range(tmp_path):
    vals = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 200 + 1000)  # 1000 .. 3200
    path = tmp_path / "g16.png"
    Image.fromarray(vals).save(path)
    out, notes = load_image_with_notes(str(path))
    want = np.rint((vals - 1000) * (255.0 / 2200)).astype(np.int64)
    got = _rgb(out)
    assert np.array_equal(got[..., 0], want) and np.array_equal(got[..., 1], want)
    assert got.min() == 0 and got.max() == 255  # neither all white nor all black
    assert notes == ["I;16-mode image scaled by its range [1000, 3200] to 0..255"]


def test_float_tiff_scaled(tmp_path):
    wide = np.linspace(-3, 7, 12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "f.tif"
    Image.fromarray(wide).save(path)
    out, notes = load_image_with_notes(str(path))
    want = np.rint((wide.astype(np.float64) + 3) * (255.0 / 10)).astype(np.int64)
    assert np.array_equal(_rgb(out)[..., 2], want)
    assert notes == ["F-mode image scaled by its range [-3, 7] to 0..255"]
    unit = np.linspace(0.2, 0.4, 12, dtype=np.float32).reshape(3, 4)  # a float image in [0, 1]: times 255
    Image.fromarray(unit).save(path)
    out, notes = load_image_with_notes(str(path))
    assert np.array_equal(_rgb(out)[..., 0], np.rint(unit.astype(np.float64) * 255).astype(np.int64))
    assert notes == ["F-mode image in [0, 1] scaled by 255"]


def test_constant_and_nan_float_images():
    out, notes = load_image_with_notes(np.full((2, 2), 5.0, np.float32))
    assert _rgb(out).tolist() == [[[128] * 3] * 2] * 2 and "constant" in notes[0]
    bad = np.zeros((2, 2), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="^image: the float32 image holds NaN or infinite values$"):
        load_image(bad)


def test_palette_cmyk_and_one_bit_converted():
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    p.putpixel((1, 0), 1)
    assert _rgb(load_image(p)).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # full magenta + yellow: red
    out, notes = load_image_with_notes(cmyk)
    assert _rgb(out).tolist() == [[[255, 0, 0]]] and notes == ["CMYK image converted to RGB"]
    one = Image.new("1", (2, 1))
    one.putpixel((1, 0), 1)
    assert _rgb(load_image(one)).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    out, notes = load_image_with_notes(str(path))
    assert _rgb(out)[0, 0].tolist() == [255, 0, 0]
    assert notes == ["animated image: its first frame of 3 is explained"]


def test_arrays():
    u16 = np.array([[0, 65535]], dtype=np.uint16)
    assert _rgb(load_image(u16))[0, :, 0].tolist() == [0, 255]
    assert _rgb(load_image(np.array([[True, False]])))[0, :, 0].tolist() == [255, 0]
    assert _rgb(load_image(np.full((2, 2, 1), 7, np.uint8)))[0, 0].tolist() == [7, 7, 7]
    for bad in (np.zeros((2, 2, 2), np.uint8), np.zeros((0, 3), np.uint8), np.zeros((2, 2, 3, 1), np.uint8)):
        with pytest.raises(InputError, match="^image: an array must be H x W"):
            load_image(bad)
    with pytest.raises(InputError, match="^image: unsupported array dtype"):
        load_image(np.array([["a"]]))


def test_unreadable_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="^image: no such file"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(InputError, match="is a folder, not an image file"):
        load_image(str(tmp_path))
    os.mkfifo(tmp_path / "pipe.png")  # reading it waited forever for a writer
    for special in (str(tmp_path / "pipe.png"), "/dev/zero"):
        with pytest.raises(InputError, match=r"^image: .* is not a regular file \(a pipe, socket or device\)$"):
            load_image(special)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"^image: cannot read .*junk\.png' \(UnidentifiedImageError: "):
        load_image(str(junk))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG", compress_level=0)
    cut = tmp_path / "cut.png"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match=r"^image: cannot read .*cut\.png' \("):
        load_image(str(cut))
    with pytest.raises(InputError, match="^image: unsupported type int"):
        load_image(3)


def test_parse_colour():
    assert parse_colour("white") == (255, 255, 255) and parse_colour("#102030") == (16, 32, 48)
    assert parse_colour(" 1,2,3 ") == (1, 2, 3)
    for bad in ("purple", "#12345", "1,2", "1,2,256", "#gggggg"):
        with pytest.raises(InputError, match="^background: expected white, black, #rrggbb or r,g,b"):
            parse_colour(bad)


def test_a_transparent_colour_of_a_grey_or_rgb_png_is_composited():
    """tRNS on a grey or RGB PNG (one colour transparent) stayed that colour, black here,
    with no note; only palette images were composited."""
    for mode, key in (("L", 0), ("RGB", (0, 0, 0))):
        im = Image.new(mode, (3, 2), key)
        im.putpixel((2, 1), 200 if mode == "L" else (200, 10, 10))
        buf = io.BytesIO()
        im.save(buf, "PNG", transparency=key)
        out, notes = load_image_with_notes(Image.open(buf), (16, 32, 48))
        want = np.tile(np.array([16, 32, 48]), (2, 3, 1))
        want[1, 2] = [200, 200, 200] if mode == "L" else [200, 10, 10]
        assert (_rgb(out) == want).all() and notes == ["transparency composited on rgb(16, 32, 48)"]


def test_exif_orientation_of_a_pil_image_is_applied_once():
    """A PIL image kept its sideways pixels (by path it was turned): the maps and overlays
    of one photo depended on how it was passed. Orientation 6: turned 90 degrees clockwise."""
    a = np.zeros((2, 3, 3), np.uint8)
    a[0, 0] = [255, 0, 0]  # top left
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif)
    out, notes = load_image_with_notes(Image.open(buf))
    assert out.size == (2, 3) and notes == ["EXIF orientation 6 applied"]
    assert tuple(_rgb(out)[0, 1]) == (255, 0, 0)  # the top-left pixel is now top right
    again, notes = load_image_with_notes(out)  # the turned image carries no orientation: never turned twice
    assert again.size == (2, 3) and notes == []
    for bad in (0, 9):  # not an orientation: nothing turned, nothing said
        exif[0x0112] = bad
        buf = io.BytesIO()
        im.save(buf, "PNG", exif=exif)
        out, notes = load_image_with_notes(Image.open(buf))
        assert out.size == (3, 2) and notes == []


def test_background_is_checked():
    """(300, 0, 0) was clamped to red silently and 'black' was a TypeError."""
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert tuple(_rgb(load_image(rgba, "black"))[0, 0]) == (0, 0, 0)
    assert tuple(_rgb(load_image(rgba, np.array([1, 2, 3])))[0, 0]) == (1, 2, 3)
    for bad in ((300, 0, 0), (0, 0, 0, 0), None, (1.5, 2, 3), "purple"):
        with pytest.raises(InputError, match="^background: expected"):
            load_image(rgba, bad)


def test_rgba_array_alpha_is_alpha_and_la_mode_converts():
    """A float RGBA array's alpha was range-scaled with its colours (red 2.0 with alpha 1
    came out pink); mode 'La' was a ValueError."""
    a = np.zeros((2, 2, 4), np.float32)
    a[..., 0], a[..., 3] = 2.0, 1.0
    out, notes = load_image_with_notes(a)
    assert (_rgb(out) == [255, 0, 0]).all()
    a16 = np.zeros((2, 2, 4), np.uint16)
    a16[..., 0], a16[..., 3] = 20000, 65535
    assert (_rgb(load_image(a16)) == [255, 0, 0]).all()
    a[..., 3] = 2.0
    with pytest.raises(InputError, match="alpha channel of a float RGBA array must lie in"):
        load_image(a)
    la = Image.new("La", (2, 2))
    assert load_image(la).mode == "RGB"


def test_bytes_are_a_path_or_refused_without_echoing_them():
    with pytest.raises(InputError, match=r"^image: 5000 bytes are not a path"):
        load_image(b"\x89PNG" + b"x" * 4996)


def test_a_16_bit_rgb_png_says_it_was_read_at_8_bits(tmp_path):
    """Pillow decodes a 16-bit RGB PNG to 8 bits per channel (the high byte) before dcam sees
    it; a 16-bit grey one is range-scaled. The RGB case gave 12-bit data as 15 with no note.
    The PNG is written chunk by chunk (Pillow cannot write 16-bit RGB)."""
    import struct
    import zlib

    arr = np.full((2, 2, 3), 4095, np.uint16)
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(2))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff)
    path = tmp_path / "rgb16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out, notes = load_image_with_notes(str(path))
    assert notes == ["16-bit RGB PNG: decoded at 8 bits per channel (each channel's high byte)"]
    assert (_rgb(out) == 4095 >> 8).all()


def test_a_16_bit_grey_png_with_a_transparent_value_is_composited(tmp_path):
    # the transparent value (tRNS) of a 16-bit grey PNG was dropped: its pixels came out black without a word
    vals = np.full((2, 8), 40000, dtype=np.uint16)
    vals[:, :4] = 0  # transparent
    path = tmp_path / "g16trns.png"
    Image.fromarray(vals).save(path, transparency=0)
    assert Image.open(path).info.get("transparency") == 0
    out, notes = load_image_with_notes(str(path), background=(10, 20, 30))
    got = _rgb(out)
    assert got[0, :4].tolist() == [[10, 20, 30]] * 4 and got[0, 4:].tolist() == [[255, 255, 255]] * 4
    assert notes == ["I;16-mode image scaled by its range [0, 40000] to 0..255",
                     "transparency composited on rgb(10, 20, 30)"]


def test_a_pil_image_is_decoded_here_and_left_as_found(tmp_path):
    # a truncated file opened by the caller raised Pillow's OSError (a path gave one line naming the image), a closed
    # image an AssertionError; an animated image was left at frame 0
    good = tmp_path / "ok.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[:-30])
    with pytest.raises(InputError) as info:
        load_image(Image.open(tmp_path / "trunc.png"))
    assert str(info.value) == "image: cannot read the PIL image (OSError: image file is truncated)"
    with Image.open(good) as im:
        pass
    with pytest.raises(InputError, match=r"^image: cannot read the PIL image \("):
        load_image(im)
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    anim = Image.open(tmp_path / "anim.gif")
    anim.seek(2)
    out, notes = load_image_with_notes(anim)
    assert _rgb(out)[0, 0].tolist() == [255, 0, 0] and notes == ["animated image: its first frame of 3 is explained"]
    assert anim.tell() == 2 and _rgb(out)[0, 0].tolist() == [255, 0, 0]


def test_an_image_past_pillows_warning_size_is_a_note(tmp_path, monkeypatch):
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; lowered here so that
    # a 40 x 40 image (1,600 pixels) is "large" and a 50 x 50 one (2,500) too large
    import threading
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "large.png")
    Image.new("RGB", (50, 50)).save(tmp_path / "huge.png")
    filters, show = list(warnings.filters), warnings.showwarning
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own warning is the library user's to filter
        im, notes = load_image_with_notes(tmp_path / "large.png")
    assert im.size == (40, 40) and im.getpixel((0, 0)) == (10, 20, 30)
    assert notes == ["large image: 40x40 (1600 pixels) is past Pillow's decompression-bomb warning size of 1000 "
                     "pixels"]
    with pytest.raises(InputError, match="image: .*huge.png' is too large to decode safely"):
        load_image(tmp_path / "huge.png")
    # loading in threads leaves the process's warning state as it was (capturing Pillow's warning swapped
    # it, and two threads at once left every later warning swallowed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inner_filters, inner_show = list(warnings.filters), warnings.showwarning
        threads = [threading.Thread(target=load_image_with_notes, args=(tmp_path / "large.png",)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert warnings.filters == inner_filters and warnings.showwarning is inner_show
    assert warnings.filters == filters and warnings.showwarning is show


def test_the_cli_states_a_large_image_as_a_note_and_keeps_stderr_quiet(tmp_path, monkeypatch, capsys):
    from dcam.cli import main

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12000)  # (the sheet's text is drawn through images too)
    Image.new("RGB", (120, 120), (200, 30, 30)).save(tmp_path / "large.png")
    assert main(["explain", str(tmp_path / "large.png"), "--out", str(tmp_path / "out"), "--quiet",
                 "--response", "a red circle"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # Pillow's warning reached stderr under --quiet
    assert "note: large image: 120x120 (14400 pixels)" in out
