"""Property test: whatever file a user hands `dcam explain` (random bytes, a real
image file cut short, any PIL mode and size) ends in exit 0 with outputs that
open, or exit 2 with one error line and no output folder; never a traceback.
Derandomized (the same examples every run), few and small examples."""
import io
import json
import os
import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
EXTENSIONS = (".png", ".jpg", ".gif", ".tif", ".webp", ".bmp")
#: Formats each PIL mode can be written in (checked with Pillow 10-13).
FORMATS = {"1": ("PNG", "TIFF", "GIF"), "L": ("PNG", "JPEG", "TIFF", "WEBP"), "P": ("PNG", "GIF", "TIFF"),
           "RGB": ("PNG", "JPEG", "TIFF", "WEBP"), "RGBA": ("PNG", "TIFF", "WEBP"), "LA": ("PNG", "TIFF"),
           "I": ("TIFF",), "I;16": ("PNG", "TIFF"), "F": ("TIFF",), "CMYK": ("JPEG", "TIFF")}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp"}


def _random_image(mode, w, h, seed, special):
    rng = np.random.default_rng(seed)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    if mode in ("L", "P"):
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        if mode == "P":
            im = im.convert("P")
            im.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
            if special:
                im.info["transparency"] = 0
        return im
    if mode in ("RGB", "RGBA", "LA", "CMYK"):
        return Image.frombytes(mode, (w, h), rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8).tobytes())
    if mode == "I":
        return Image.fromarray(rng.integers(-2 ** 31, 2 ** 31 - 1, (h, w), dtype=np.int32))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 2 ** 16, (h, w), dtype=np.uint16))
    arr = (rng.standard_normal((h, w)) * 10.0 ** rng.integers(-3, 6)).astype(np.float32)
    if special:
        arr.flat[rng.integers(0, arr.size)] = rng.choice([np.nan, np.inf, -np.inf])
    return Image.fromarray(arr)


def _check(cli, model, path):
    """Explain ``path``; assert exit 0 with readable outputs or exit 2 with one line and nothing written."""
    work = os.path.dirname(path)
    out = os.path.join(work, "out")
    rc, _, err = cli("explain", path, "--model", model, "--tokens", "0", "--out", out, "--quiet")
    assert rc in (0, 2), err
    assert not any("Traceback" in line for line in err)
    if rc == 0:
        assert err == []
        names = sorted(os.listdir(out))
        assert len(names) == 6 and names[0].startswith("00_") and "index.html" in names
        for n in names:
            if n.endswith(".png"):
                Image.open(os.path.join(out, n)).load()
        meta = json.load(open(os.path.join(out, "meta.json")))
        assert meta["tokens"] and len(meta["image_size"]) == 2
        from safetensors.torch import load_file

        assert tuple(load_file(os.path.join(out, "maps.safetensors"))["maps"].shape) == (1, 8, 8)
    else:
        assert len(err) == 1 and err[0].startswith("dcam explain: error: IMAGE: "), err
        assert not os.path.exists(out)
    assert [p for p in os.listdir(work) if p.startswith(".")] == []
    return rc


class _Workdir:
    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="dcam-prop-")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


@settings(max_examples=12, **SETTINGS)
@given(data=st.binary(min_size=0, max_size=600), ext=st.sampled_from(EXTENSIONS),
       magic=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"RIFF"]))
def test_random_bytes(cli, tiny_model_dir, data, ext, magic):
    with _Workdir() as work:
        path = os.path.join(work, "input" + ext)
        with open(path, "wb") as f:
            f.write(magic + data)
        assert _check(cli, tiny_model_dir, path) == 2


@settings(max_examples=16, **SETTINGS)
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "TIFF", "WEBP"]), size=st.tuples(st.integers(1, 48),
                                                                                  st.integers(1, 48)),
       cut=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_truncated_image_files(cli, tiny_model_dir, fmt, size, cut, seed):
    buf = io.BytesIO()
    _random_image("RGB", size[0], size[1], seed, False).save(buf, fmt)
    data = buf.getvalue()
    with _Workdir() as work:
        path = os.path.join(work, "input" + SUFFIX[fmt])
        with open(path, "wb") as f:
            f.write(data[: int(cut * len(data))])
        _check(cli, tiny_model_dir, path)


@settings(max_examples=20, **SETTINGS)
@given(mode=st.sampled_from(sorted(FORMATS)), w=st.sampled_from([1, 2, 3, 17, 64]),
       h=st.sampled_from([1, 2, 5, 31, 64]), seed=st.integers(0, 2 ** 16), special=st.booleans(),
       which=st.integers(0, 3))
def test_any_mode_and_size(cli, tiny_model_dir, mode, w, h, seed, special, which):
    fmt = FORMATS[mode][which % len(FORMATS[mode])]
    with _Workdir() as work:
        path = os.path.join(work, "input" + SUFFIX[fmt])
        _random_image(mode, w, h, seed, special).save(path, fmt)
        rc = _check(cli, tiny_model_dir, path)
        if not (mode == "F" and special):  # a NaN/Inf float image is the one refused kind here
            assert rc == 0
