"""`dcam explain a.png b.jpg dir/`: each image into its own subfolder of --out,
one progress bar, a summary line; a bad image is reported and skipped, exit 2
at the end; every kind of image file (transparency, EXIF rotation, 16-bit,
float, animated) explained with its conversion stated in meta.json."""
import io
import json
import os
import shutil

import numpy as np
from PIL import Image

WHOLE = ["00_", "contact_sheet.png", "image.png", "index.html", "maps.safetensors", "meta.json"]


def _whole(folder):
    """The files of one explained image with --tokens 0, all readable."""
    names = sorted(os.listdir(folder))
    assert len(names) == 6 and names[0].startswith("00_") and names[1:] == WHOLE[1:], names
    for n in names:
        if n.endswith(".png"):
            Image.open(os.path.join(folder, n)).load()
    return json.load(open(os.path.join(folder, "meta.json")))


def _make_inputs(folder, shapes_png):
    os.makedirs(folder)
    Image.open(shapes_png).save(os.path.join(folder, "a.png"))
    Image.open(shapes_png).convert("RGB").save(os.path.join(folder, "b.jpg"))
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(os.path.join(folder, "clear.png"))  # fully transparent
    arr = np.zeros((120, 160, 3), np.uint8)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(os.path.join(folder, "phone.png"), exif=exif)
    Image.fromarray((np.arange(400, dtype=np.uint16).reshape(20, 20) * 100 + 5000)).save(
        os.path.join(folder, "gray16.png"))
    Image.fromarray(np.linspace(-1, 3, 400, dtype=np.float32).reshape(20, 20)).save(os.path.join(folder, "f.tif"))
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(os.path.join(folder, "anim.gif"), save_all=True, append_images=frames[1:])
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG", compress_level=0)
    with open(os.path.join(folder, "cut.png"), "wb") as f:  # a truncated PNG among good files
        f.write(buf.getvalue()[:2000])
    with open(os.path.join(folder, "notes.txt"), "w") as f:  # not an image extension: not an input
        f.write("ignored")


def test_several_inputs_one_bad(cli, tiny_model_dir, shapes_png, tmp_path):
    folder = str(tmp_path / "imgs")
    _make_inputs(folder, shapes_png)
    missing = str(tmp_path / "missing.png")
    out = tmp_path / "out"
    rc, stdout, err = cli("explain", folder, shapes_png, missing, "--model", tiny_model_dir, "--tokens", "0",
                          "--background", "#102030", "--out", out)
    assert rc == 2
    assert stdout.strip().splitlines()[-1] == f"explained 8 of 10 images (8 words) into {str(out)!r}; 2 failed"
    text = "\n".join(err)
    assert "Traceback" not in text and text.count("explain: 100%") >= 1 and "10/10" in text
    errors = [line for line in err if line.startswith("dcam explain: error:")]
    cut = os.path.join(folder, "cut.png")
    assert len(errors) == 2
    assert errors[0].startswith(f"dcam explain: error: {cut!r}: cannot read {cut!r} (")
    assert errors[1] == f"dcam explain: error: {missing!r}: no such file {missing!r}"
    assert sorted(os.listdir(out)) == ["a", "anim", "b", "clear", "f", "gray16", "images.json", "phone", "shapes"]
    with open(out / "images.json") as f:
        listing = json.load(f)
    in_folder = sorted(n for n in os.listdir(folder) if n != "notes.txt")
    assert [d["image"] for d in listing] == [os.path.join(folder, n) for n in in_folder] + [shapes_png, missing]
    assert [d.get("folder") for d in listing] == [None if n == "cut.png" else os.path.splitext(n)[0]
                                                  for n in in_folder] + ["shapes", None]
    assert [f"dcam explain: error: {d['image']!r}: {d['error']}" for d in listing if "error" in d] == errors
    metas = {name: _whole(out / name) for name in os.listdir(out) if name != "images.json"}
    assert metas["clear"]["notes"] == ["transparency composited on rgb(16, 32, 48)"]
    clear = np.asarray(Image.open(out / "clear" / "image.png"))
    assert clear.shape == (260, 260, 3) and np.unique(clear.reshape(-1, 3), axis=0).tolist() == [[16, 32, 48]]
    assert metas["phone"]["image_size"] == [120, 160] and metas["phone"]["notes"] == ["EXIF orientation 6 applied"]
    assert metas["gray16"]["notes"] == ["I;16-mode image scaled by its range [5000, 44900] to 0..255"]
    gray = np.asarray(Image.open(out / "gray16" / "image.png"))
    assert gray.min() < 10 and gray.max() > 245  # not all white
    assert metas["f"]["notes"] == ["F-mode image scaled by its range [-1, 3] to 0..255"]
    assert metas["anim"]["notes"] == ["animated image: its first frame of 2 is explained"]
    assert metas["a"]["notes"] == [] and metas["shapes"]["image_size"] == [48, 48]


def test_all_inputs_bad_writes_nothing(cli, error_line, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    rc, stdout, err = cli("explain", bad, tmp_path / "missing.jpg", "--model", tiny_model_dir, "--out", out,
                          "--quiet")
    assert rc == 2 and stdout == ""
    assert err[-1] == "dcam explain: error: none of the 2 images could be explained; nothing was written"
    assert len(err) == 3 and not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_a_folder_takes_every_extension_pillow_reads(cli, tiny_model_dir, shapes_png, tmp_path):
    """.jfif, .pbm, .tga files in a folder were skipped without a word (not in images.json)."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    im = Image.open(shapes_png).convert("RGB")
    im.save(folder / "a.jfif", "JPEG")
    im.convert("1").save(folder / "b.pbm")
    im.save(folder / "c.tga")
    rc, _, err = cli("explain", folder, "--model", tiny_model_dir, "--out", tmp_path / "o", "--quiet")
    assert rc == 0, err
    listing = json.load(open(tmp_path / "o" / "images.json"))
    assert sorted(os.path.basename(x["image"]) for x in listing) == ["a.jfif", "b.pbm", "c.tga"]


def test_folder_without_images_and_out_holding_inputs(cli, error_line, tiny_model_dir, shapes_png, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    rc, _, err = cli("explain", empty, "--model", tiny_model_dir, "--out", tmp_path / "o")
    assert rc == 2 and error_line(err).startswith(f"dcam explain: error: IMAGE: the folder {str(empty)!r} holds no "
                                                  "image file (.png, .apng, .jpg")
    holder = tmp_path / "holder"
    holder.mkdir()
    Image.open(shapes_png).save(holder / "x.png")
    rc, _, err = cli("explain", holder / "x.png", "--model", tiny_model_dir, "--out", holder, "--overwrite")
    assert rc == 2
    assert error_line(err) == (f"dcam explain: error: --out: {str(holder)!r} holds the input image "
                               f"{str(holder / 'x.png')!r}, which replacing it would delete; choose another "
                               "output folder")
    assert os.listdir(holder) == ["x.png"]


def test_subfolder_names_never_collide(cli, tiny_model_dir, shapes_png, tmp_path):
    # "a.png a.jpg a_2.png" numbered the second a as a_2, the third's own stem: the whole run was
    # explained, then thrown away with a FileExistsError blamed on --out; "images.json.png" hit the listing
    from dcam.cli.explain import subfolder_names

    assert subfolder_names(["in/a.png", "in/a.jpg", "in/a_2.png"]) == ["a", "a_3", "a_2"]
    assert subfolder_names(["a_2.png", "a.png", "a.jpg"]) == ["a_2", "a", "a_3"]
    assert subfolder_names(["x/a.png", "y/a.png", "images.json.png"]) == ["a", "a_2", "images.json_2"]
    folder = tmp_path / "in"
    folder.mkdir()
    im = Image.open(shapes_png).convert("RGB")
    for name in ("a.png", "a.jpg", "a_2.png", "images.json.png"):
        im.save(folder / name)
    out = tmp_path / "out"
    rc, _, err = cli("explain", *(folder / n for n in ("a.png", "a.jpg", "a_2.png", "images.json.png")),
                     "--model", tiny_model_dir, "--tokens", "0", "--out", out, "--quiet")
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["a", "a_2", "a_3", "images.json", "images.json_2"]
    listing = {x["folder"]: os.path.basename(x["image"]) for x in json.load(open(out / "images.json"))}
    assert listing == {"a": "a.png", "a_3": "a.jpg", "a_2": "a_2.png", "images.json_2": "images.json.png"}


def test_several_images_use_the_prompt_as_one_does(cli, tiny_model_dir, shapes_png, tmp_path):
    # the batched call left --prompt out: the images were explained on the default prompt (exit 0),
    # unless another image failed and sent them one at a time
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.open(shapes_png).convert("RGB").save(folder / name)
    prompt = "what is in this image"
    rc, _, err = cli("explain", folder / "a.png", folder / "b.png", "--model", tiny_model_dir, "--prompt", prompt,
                     "--tokens", "0", "--out", tmp_path / "two", "--quiet")
    assert rc == 0, err
    rc, _, err = cli("explain", folder / "a.png", "--model", tiny_model_dir, "--prompt", prompt,
                     "--tokens", "0", "--out", tmp_path / "one", "--quiet")
    assert rc == 0, err
    one = _whole(tmp_path / "one")
    for name in ("a", "b"):
        meta = _whole(tmp_path / "two" / name)
        assert meta["prompt"] == prompt and meta["response"] == one["response"]


def test_a_failed_image_whose_name_holds_a_newline_is_one_line(cli, tiny_model_dir, shapes_png, tmp_path):
    # the path was printed raw: "dcam explain: error: .../bad" and "line.png: cannot read ..." on two lines;
    # likewise the closing line's --out
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(shapes_png, folder / "ok.png")
    bad = str(folder / "bad\nline.png")
    with open(bad, "w") as f:
        f.write("x")
    out = str(tmp_path / "out\nput")
    rc, stdout, err = cli("explain", folder, "--model", tiny_model_dir, "--out", out, "--quiet")
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"dcam explain: error: {bad!r}: cannot read {bad!r} (")
    last = stdout.splitlines()[-1]
    assert "\\nline.png" in err[0] and last.startswith("explained 1 of 2 images (")
    assert last.endswith(f" words) into {out!r}; 1 failed") and sorted(os.listdir(out)) == ["images.json", "ok"]


def test_a_folder_of_one_image_gets_the_layout_of_several(cli, tiny_model_dir, shapes_png, tmp_path):
    # the help: "Several images (or folders of images): each into its own subfolder"; a folder holding one image
    # was written flat into --out, so a script's `dcam explain DIR` got one layout or the other by the count
    folder = tmp_path / "one"
    folder.mkdir()
    Image.open(shapes_png).save(folder / "s5.png")
    rc, _, err = cli("explain", folder, "--model", tiny_model_dir, "--tokens", "0", "--out", tmp_path / "o",
                     "--quiet")
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "o")) == ["images.json", "s5"]
    _whole(tmp_path / "o" / "s5")
    listing = json.load(open(tmp_path / "o" / "images.json"))
    assert [os.path.basename(x["image"]) for x in listing] == ["s5.png"]
