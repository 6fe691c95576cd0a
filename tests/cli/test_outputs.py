"""Outputs of the `dcam` command: checked before any model loads, written whole
or not at all (a failed write, Ctrl-C), never a mix of two runs, consistent
permissions, PNGs of sane size that open with Pillow's default limits, and
--quiet silencing every progress bar."""
import json
import os
import resource
import shutil
import signal
import stat
import warnings

import pytest
from PIL import Image, ImageDraw

from dcam.cli import build_parser
from dcam.testing.support import file_tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESPONSE = "a red circle and a blue square"


def _leftovers(parent):
    return [p for p in os.listdir(parent) if ".partial-" in p or ".old-" in p]


@pytest.fixture
def truncated_model(broken_model):
    """A model folder whose weights fail to load: an error naming --model would
    mean the model was loaded before the output was checked."""
    def truncate(f):
        path = os.path.join(f, "model.safetensors")
        open(path, "r+b").truncate(100)
    return broken_model("trunc", truncate)


# ------------------------------------------------------------------ checked before any model loads

def test_out_checked_before_the_model_loads(cli, error_line, truncated_model, shapes_png, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("earlier run")
    rc, _, err = cli("explain", shapes_png, "--model", truncated_model, "--out", full)
    assert rc == 2
    assert error_line(err) == (f"dcam explain: error: --out: {str(full)!r} is not empty; choose a new folder or "
                               "pass --overwrite (which replaces it whole)")
    assert file_tree(full) == {"keep.txt": b"earlier run"}
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    rc, _, err = cli("explain", shapes_png, "--model", truncated_model, "--out", a_file)
    assert rc == 2 and error_line(err) == f"dcam explain: error: --out: {str(a_file)!r} exists and is not a folder"
    rc, _, err = cli("demo", "--model", truncated_model, "--out", full)
    assert rc == 2 and error_line(err, "demo").startswith("dcam demo: error: --out: ")
    rc, _, err = cli("eval", "--model", truncated_model, "--n", "30", "--out", a_file)
    assert rc == 2 and error_line(err, "eval") == f"dcam eval: error: --out: {str(a_file)!r} exists and is not a folder"
    rc, _, err = cli("grounding", "--model", truncated_model, "--json", tmp_path)
    assert rc == 2
    assert error_line(err, "grounding") == f"dcam grounding: error: --json: {str(tmp_path)!r} is a folder, not a file"
    rc, _, err = cli("grounding", "--model", truncated_model, "--json", tmp_path / "nowhere" / "g.json")
    assert rc == 2 and error_line(err, "grounding").startswith("dcam grounding: error: --json: the folder ")
    # the control: with a usable --out the same model fails on --model
    rc, _, err = cli("explain", shapes_png, "--model", truncated_model, "--out", tmp_path / "new")
    assert rc == 2 and error_line(err).startswith("dcam explain: error: --model: ")


# ------------------------------------------------------------------ whole or not at all

def test_reused_out_is_refused_and_overwrite_replaces_it_whole(cli, error_line, tiny_model_dir, shapes_png, tmp_path):
    out = tmp_path / "out"
    base = ("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--out", out, "--quiet")
    rc, _, err = cli(*base)
    assert rc == 0, err
    first = file_tree(out)
    assert len([p for p in first if p[:2].isdigit()]) == 7
    rc, _, err = cli(*base, "--tokens", "blue")
    assert rc == 2 and "--out" in error_line(err) and "--overwrite" in error_line(err)
    assert file_tree(out) == first
    rc, _, err = cli(*base, "--tokens", "blue", "--overwrite")
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["05_blue.png", "contact_sheet.png", "image.png", "index.html",
                                       "maps.safetensors", "meta.json"]
    assert json.load(open(out / "meta.json"))["tokens"] == ["blue"]
    assert not _leftovers(tmp_path)


def test_a_symlinked_out_is_written_through(cli, error_line, tiny_model_dir, shapes_png, tmp_path):
    # the link was replaced by a real folder holding the output, the folder it pointed to left empty
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to("real")
    base = ("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--out", tmp_path / "link",
            "--quiet")
    rc, _, err = cli(*base)
    assert rc == 0, err
    assert os.readlink(tmp_path / "link") == "real" and "meta.json" in os.listdir(real)
    rc, _, err = cli(*base, "--tokens", "blue")
    assert rc == 2 and error_line(err).startswith(f"dcam explain: error: --out: {str(tmp_path / 'link')!r} is not "
                                                  "empty")
    rc, _, err = cli(*base, "--tokens", "blue", "--overwrite")
    assert rc == 0, err
    assert os.readlink(tmp_path / "link") == "real" and sorted(os.listdir(real)) == [
        "05_blue.png", "contact_sheet.png", "image.png", "index.html", "maps.safetensors", "meta.json"]
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


@pytest.fixture
def file_size_limit():
    """``limit(n)``: files this process writes fail past ``n`` bytes (a real
    EFBIG from the kernel, as on a full disk); undone after the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed

    def limit(n):
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


def test_failed_write_leaves_nothing(cli, error_line, tiny_model_dir, shapes_png, tmp_path, file_size_limit):
    old = tmp_path / "old"
    old.mkdir()
    (old / "earlier.txt").write_text("earlier run")
    args = ("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--quiet")
    # the overlays (~15 kB) fit, the contact sheet does not: a write fails midway
    file_size_limit(40_000)
    rc, _, err = cli(*args, "--out", tmp_path / "new")
    rc2, _, err2 = cli(*args, "--out", old, "--overwrite")
    file_size_limit(resource.RLIM_INFINITY)
    assert rc == 2 and rc2 == 2
    for lines, target in ((err, tmp_path / "new"), (err2, old)):
        assert error_line(lines) == (f"dcam explain: error: --out: writing {str(target)!r} failed (OSError: "
                                     "[Errno 27] File too large); nothing was written")
    assert not (tmp_path / "new").exists()
    assert file_tree(old) == {"earlier.txt": b"earlier run"}
    assert not _leftovers(tmp_path)


def test_failed_write_of_eval_names_out(cli, error_line, tiny_model_dir, tmp_path, file_size_limit):
    # the CLI handed evaluate() a temporary folder of its own as out_dir: the message named out_dir and
    # that hidden folder ('.../.e.partial-xxxx'), not --out
    target = tmp_path / "e"
    file_size_limit(30_000)
    rc, _, err = cli("eval", "--model", tiny_model_dir, "--n", "2", "--methods", "tam", "--examples", "1",
                     "--out", target, "--quiet")
    file_size_limit(resource.RLIM_INFINITY)
    assert rc == 2 and error_line(err, "eval") == (f"dcam eval: error: --out: writing {str(target)!r} failed "
                                                   "(OSError: [Errno 27] File too large); nothing was written")
    assert not target.exists() and not _leftovers(tmp_path)
    rc, out, err = cli("eval", "--model", tiny_model_dir, "--n", "2", "--methods", "tam", "--examples", "1",
                       "--out", target, "--quiet")
    assert rc == 0, err
    assert open(target / "main_table.md").read() in out  # the table printed is the one written into --out
    assert json.load(open(target / "report.json"))["records"] == 2


def test_ctrl_c_while_writing_in_process(cli, tiny_model_dir, shapes_png, tmp_path, monkeypatch):
    # a real SIGINT delivered while the third PNG is being written
    saves = []
    real_save = Image.Image.save

    def save_then_interrupt(self, *a, **k):
        real_save(self, *a, **k)
        saves.append(a[0] if a else k.get("fp"))
        if len(saves) == 3:
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's: raises KeyboardInterrupt
    try:
        rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE,
                         "--out", tmp_path / "out", "--quiet")
    finally:
        signal.signal(signal.SIGINT, handler)
    assert rc == 130 and len(saves) == 3
    assert err == ["dcam explain: interrupted; nothing was written"]
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


CTRL_C_HOOK = """
import os, signal
from PIL import Image
# Ctrl-C as in a terminal: a child of a shell's background job (a CI script run with &) starts
# with SIGINT ignored, and Python then installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)
_save, _n = Image.Image.save, []
def _save_then_sigint(self, *a, **k):
    _save(self, *a, **k)
    _n.append(1)
    if len(_n) == 3:
        os.kill(os.getpid(), signal.SIGINT)
Image.Image.save = _save_then_sigint
"""


def test_ctrl_c_while_writing_a_real_process(dcam_child, tiny_model_dir, shapes_png, tmp_path):
    """A child process sent SIGINT while writing (--overwrite over an earlier
    run): exit 130, one line, the earlier folder untouched. Run without --quiet,
    so its stderr also shows the progress lines --quiet removes (next test)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("earlier run")
    r = dcam_child("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--out", out,
                   "--overwrite", prelude=CTRL_C_HOOK)
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert [line for line in lines if line.startswith("dcam ")] == ["dcam explain: interrupted; nothing was written"]
    assert "Loading weights" in r.stderr and "[dcam] loading the model" in r.stderr
    assert file_tree(out) == {"earlier.txt": b"earlier run"} and not _leftovers(tmp_path)
    assert r.stdout == ""


def test_quiet_silences_every_progress_bar(dcam_child, tiny_model_dir, shapes_png, tmp_path):
    r = dcam_child("explain", shapes_png, shapes_png, "--model", tiny_model_dir, "--response", RESPONSE,
                   "--tokens", "red", "--out", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no "Loading weights" bar, no explain bar, no [dcam] lines
    assert "explained 2 of 2 images" in r.stdout


# ------------------------------------------------------------------ permissions, .gitignore

def test_permissions_are_consistent(cli, tiny_model_dir, shapes_png, tmp_path):
    old = os.umask(0o022)
    try:
        rc, _, err = cli("explain", shapes_png, shapes_png, "--model", tiny_model_dir, "--response", RESPONSE,
                         "--tokens", "red", "--out", tmp_path / "out", "--quiet")
    finally:
        os.umask(old)
    assert rc == 0, err
    modes = {}
    for root, dirs, files in os.walk(tmp_path / "out"):
        for name in dirs + files:
            p = os.path.join(root, name)
            modes[os.path.relpath(p, tmp_path)] = stat.S_IMODE(os.stat(p).st_mode)
    modes["out"] = stat.S_IMODE(os.stat(tmp_path / "out").st_mode)
    assert "out/shapes/maps.safetensors" in modes and "out/shapes_2/meta.json" in modes
    want = {p: (0o755 if os.path.isdir(tmp_path / p) else 0o644) for p in modes}
    assert modes == want


def test_default_output_folders_are_git_ignored():
    lines = {line.strip() for line in open(os.path.join(REPO, ".gitignore"))}
    for name in ("dcam_demo/", "dcam_explain/", "eval_out/"):
        assert name in lines
    parser_defaults = {}
    for command in ("demo", "explain", "eval"):
        args = ["x.png"] if command == "explain" else []
        parser_defaults[command] = build_parser().parse_args([command, *args]).out
    assert parser_defaults == {"demo": "dcam_demo", "explain": "dcam_explain", "eval": "eval_out"}


# ------------------------------------------------------------------ image sizes

def _open_strict(path):
    """Open a PNG with Pillow's default size limits, a DecompressionBombWarning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(path)
        im.load()
    assert Image.MAX_IMAGE_PIXELS == 89_478_485 or Image.MAX_IMAGE_PIXELS is None
    return im


def _pngs(folder):
    return {f: _open_strict(os.path.join(folder, f)).size for f in sorted(os.listdir(folder)) if f.endswith(".png")}


def _photo(size, path, **save):
    im = Image.new("RGB", size, (30, 60, 90))
    d = ImageDraw.Draw(im)
    w, h = size
    d.ellipse((w // 6, h // 6, w // 2, h // 2), fill=(255, 0, 0))
    d.rectangle((w // 2, h // 2, 5 * w // 6, 5 * h // 6), fill=(0, 0, 255))
    im.save(path, **save)
    return str(path)


def test_big_images_give_small_outputs(cli, tiny_model_dir, tmp_path):
    big = _photo((6000, 6000), tmp_path / "big.png", compress_level=1)
    jpeg = _photo((4000, 3000), tmp_path / "photo.jpg", quality=85)
    # 12 words + the image: 13 tiles of 1024 px would make a 4112 px sheet; it is tiled down to 4096
    rc, _, err = cli("explain", big, "--model", tiny_model_dir, "--out", tmp_path / "big", "--quiet")
    assert rc == 0, err
    sizes = _pngs(tmp_path / "big")
    sheet = sizes.pop("contact_sheet.png")
    assert len(sizes) == 13 and set(sizes.values()) == {(1024, 1024)}
    assert max(sheet) <= 4096 and min(sheet) >= 1024
    meta = json.load(open(tmp_path / "big" / "meta.json"))
    assert meta["image_size"] == [6000, 6000] and meta["rendered_size"] == [1024, 1024]
    rc, _, err = cli("explain", jpeg, "--model", tiny_model_dir, "--out", tmp_path / "jpg", "--tokens", "0,1",
                     "--max-side", "500", "--quiet")
    assert rc == 0, err
    sizes = _pngs(tmp_path / "jpg")
    sheet = sizes.pop("contact_sheet.png")
    assert set(sizes.values()) == {(500, 375)} and max(sheet) <= 4096
    total = sum(os.path.getsize(tmp_path / "jpg" / f) for f in os.listdir(tmp_path / "jpg"))
    assert total < 3_000_000  # the trial wrote 172 MB for this image


@pytest.mark.parametrize("size,overlay", [((1, 1), (256, 256)), ((2, 200), (10, 1000)), ((200, 2), (1000, 10)),
                                          ((64, 64), (256, 256))])
def test_tiny_and_extreme_aspect_images(cli, tiny_model_dir, tmp_path, size, overlay):
    path = tmp_path / "in.png"
    Image.new("RGB", size, (200, 30, 30)).save(path)
    rc, _, err = cli("explain", path, "--model", tiny_model_dir, "--tokens", "0", "--out", tmp_path / "o", "--quiet")
    assert rc == 0, err
    sizes = _pngs(tmp_path / "o")
    sheet = sizes.pop("contact_sheet.png")
    assert set(sizes.values()) == {overlay}
    assert max(sheet) <= 4096 and min(sheet) >= 64


def test_outputs_never_go_over_the_data_set_or_the_model_read(cli, error_line, tiny_model_dir, tmp_path, monkeypatch):
    # dcam eval --overwrite replaced --out whole when it was the data set or the model folder (both deleted, exit
    # 0), and dcam grounding --json model/config.json replaced the model's config; dcam explain refused both
    import dcam.zoo

    model, data = tmp_path / "model", tmp_path / "data"
    shutil.copytree(tiny_model_dir, model)
    data.mkdir()
    (data / "anno.json").write_text("[]")
    listing = {d: sorted(os.listdir(d)) for d in (model, data)}
    config = (model / "config.json").read_text()
    for args, line in (
            (("eval", "--dataset", data, "--model", model, "--out", data, "--overwrite"),
             f"dcam eval: error: --out: {str(data)!r} holds the data set {str(data)!r}, which replacing it would "
             "delete; choose another output folder"),
            (("eval", "--dataset", data, "--model", model, "--out", tmp_path, "--overwrite"),
             f"dcam eval: error: --out: {str(tmp_path)!r} holds the data set {str(data)!r}, which replacing it "
             "would delete; choose another output folder"),
            (("eval", "--model", model, "--out", model, "--overwrite"),
             f"dcam eval: error: --out: {str(model)!r} holds the model {str(model)!r}, which replacing it would "
             "delete; choose another output folder"),
            (("grounding", "--model", model, "--json", model / "config.json"),
             f"dcam grounding: error: --json: {str(model / 'config.json')!r} lies in the model {str(model)!r}, "
             "which dcam does not write into; choose another file")):
        rc, _, err = cli(*args)
        assert (rc, error_line(err, args[0])) == (2, line)
    assert {d: sorted(os.listdir(d)) for d in (model, data)} == listing
    assert (model / "config.json").read_text() == config
    # the bundled model, read when --model is not given (a copy stands in for it here)
    monkeypatch.setattr(dcam.zoo, "WEIGHTS_DIR", str(model))
    rc, _, err = cli("demo", "--out", model, "--overwrite")
    assert rc == 2 and error_line(err, "demo").startswith(f"dcam demo: error: --out: {str(model)!r} holds the model ")
    assert sorted(os.listdir(model)) == listing[model]
