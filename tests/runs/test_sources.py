"""What a run reads: manifest lines (every mistake refused with one line naming
it), folders of images, TAM data folders; the CLI's one-line errors."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from dcam.cli import main
from dcam.errors import InputError
from dcam.runs.sources import FolderSource, ManifestSource, open_source, parse_targets


def _manifest(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return str(p)


def _png(path, size=(16, 16), value=100, mode="RGB"):
    Image.fromarray(np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, np.uint8),
                    mode).save(path)


def test_manifest_records_resolve_paths_targets_and_labels(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "m.png", mode="L", value=1)
    absolute = tmp_path / "b.png"
    _png(absolute, size=(8, 4))
    p = _manifest(tmp_path, [
        {"id": 7, "image": "imgs/a.png", "response": "a red circle", "targets": "red, circle",
         "mask": "imgs/m.png", "labels": [0, 1, [1]], "meta": {"k": 1}},
        "",
        {"id": "b", "image": str(absolute), "prompt": "describe", "targets": ["red", 2]},
    ])
    src = ManifestSource(p)
    assert src.ids == ["7", "b"] and len(src) == 2 and src.where(1) == "line 3"
    a = src.load(0)
    assert a.id == "7" and a.image_path == str(tmp_path / "imgs" / "a.png") and a.image.size == (16, 16)
    assert a.targets == ["red", "circle"] and a.word_labels == [(), (1,), (1,)] and a.meta == {"k": 1}
    assert a.mask.shape == (16, 16) and a.mask.dtype == np.int64 and int(a.mask.max()) == 1
    b = src.load(1)
    assert b.image_path == str(absolute) and b.prompt == "describe" and b.targets == ["red", 2] and b.mask is None
    assert parse_targets(None) == "all" and parse_targets("all") == "all" and parse_targets("0 -1") == [0, -1]
    assert parse_targets("red circle, 2") == ["red circle", 2]  # commas separate; a spaced text is a phrase


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not JSON"),
    ("[1, 2]", "line 2: expected a JSON object, got a JSON list"),
    ({"id": "x", "image": "a.png", "respone": "typo"}, "line 2: unknown key 'respone'"),
    ({"image": "a.png"}, "line 2: no 'id'"),
    ({"id": "", "image": "a.png"}, "line 2: 'id' must be a non-empty text or an int"),
    ({"id": "x"}, "line 2: no 'image'"),
    ({"id": "first", "image": "a.png"}, "line 2: id 'first' is already on line 1"),
    ({"id": "x", "image": "a.png", "response": "a red circle", "mask": "m.png", "labels": [0, 1]},
     "line 2: 'labels' has 2 entries but the response has 3 words"),
    ({"id": "x", "image": "a.png", "labels": {"red": 1}}, "line 2: 'mask' and 'labels' go together"),
    ({"id": "x", "image": "a.png", "mask": "m.png", "labels": [0, 1]}, "line 2: 'labels' as a list"),
    ({"id": "x", "image": "a.png", "mask": "m.png", "labels": {"red": -1}}, "labels['red'] must be a label"),
    ({"id": "x", "image": "a.png", "targets": []}, "line 2: 'targets' must be"),
    ({"id": "x", "image": "a.png", "targets": " , "},
     "line 2: 'targets': ' , ' names no word, phrase or word number"),  # was read as "all"
    ({"id": "x", "image": "a.png", "response": 3}, "line 2: 'response' must be text"),
])
def test_bad_manifest_lines_are_refused_naming_the_line(tmp_path, line, message):
    p = _manifest(tmp_path, [{"id": "first", "image": "a.png"}, line])
    with pytest.raises(InputError) as info:
        ManifestSource(p)
    text = str(info.value)
    assert text.startswith(f"MANIFEST: {p} ") and message in text and "\n" not in text


def test_empty_manifest_and_missing_paths(tmp_path):
    with pytest.raises(InputError, match="holds no record"):
        ManifestSource(_manifest(tmp_path, ["", "  "]))
    with pytest.raises(InputError, match="MANIFEST: no such file or folder"):
        open_source(str(tmp_path / "nothing.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image file"):
        open_source(str(tmp_path / "empty"))
    # a device or a pipe was listed as a folder (NotADirectoryError traceback)
    os.mkfifo(tmp_path / "pipe")
    for spec in ("/dev/null", str(tmp_path / "pipe")):
        with pytest.raises(InputError, match=f"^MANIFEST: '{spec}' is neither a file nor a folder$"):
            open_source(spec)


def test_folder_of_images(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (_png(tmp_path / name) if name != "notes.txt" else (tmp_path / name).write_text("x"))
    src = open_source(str(tmp_path))
    assert isinstance(src, FolderSource) and src.ids == ["a.jpg", "b.png"]
    r = src.load(1)
    assert r.response is None and r.targets == "all" and r.image_path == str(tmp_path / "b.png")


def test_tam_data_folder(tmp_path):
    _png(tmp_path / "img.png", size=(8, 8))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    (tmp_path / "anno.json").write_text(json.dumps([{"id": "e1", "image": "img.png", "caption": "a red circle",
                                                      "mask": "mask.png", "categories": {"circle": 1}}]))
    src = open_source(str(tmp_path))
    assert src.kind == "tam" and src.ids == ["e1"]
    r = src.load(0)
    assert r.response == "a red circle" and r.words == ["a", "red", "circle"]
    assert r.word_labels == [(), (), (1,)] and r.image_path == str(tmp_path / "img.png")
    assert r.mask.sum() == 9


def _coco_two_splits(root):
    """val2017 and train2017 annotations of one COCO folder: the same image ids (1, 2)."""
    for split, colour in (("val2017", 200), ("train2017", 30)):
        os.makedirs(root / split, exist_ok=True)
        os.makedirs(root / "annotations", exist_ok=True)
        images, anns = [], []
        for k in (1, 2):
            _png(root / split / f"{split[0]}{k}.png", size=(32, 32), value=colour)
            images.append({"id": k, "file_name": f"{split[0]}{k}.png", "height": 32, "width": 32})
            anns.append({"id": 10 + k, "image_id": k, "category_id": 1, "iscrowd": 0,
                         "segmentation": [[2, 2, 20, 2, 20, 20, 2, 20]]})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "square"}]}))
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(
            {"annotations": [{"id": 100 + k, "image_id": k, "caption": "a red square"} for k in (1, 2)]}))


def test_coco_run_records_absolute_images_and_refuses_another_split(tmp_path, capsys, monkeypatch):
    """A COCO run resumed with --split train2017 into a val2017 run was accepted: the ids are
    the image ids of either split, so every record counted as done and run.json said complete
    over the other split's maps. And its index held image paths relative to the folder the
    run started in, so dcam view from elsewhere lost every image."""
    root = tmp_path / "coco"
    _coco_two_splits(root)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = ["--out", str(out), "--quiet", "--threads", "1"]
    assert main(["run", "coco", "--split", "val2017", *args]) == 0
    index = [json.loads(line) for line in open(out / "index.jsonl")]
    assert [e["image"] for e in index] == [str(root / "val2017" / "v1.png"), str(root / "val2017" / "v2.png")]
    capsys.readouterr()
    assert main(["run", "coco", "--split", "train2017", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs in: source.files.captions, source.files.images, source.files.instances" in err[0]
    assert main(["run", "coco", "--split", "val2017", *args]) == 0  # the same split resumes
    info = json.load(open(out / "run.json"))
    assert info["source"]["files"]["instances"] == os.path.join("annotations", "instances_val2017.json")


def test_cli_refuses_a_bad_manifest_with_one_line(tmp_path, capsys):
    p = _manifest(tmp_path, [{"id": "a", "image": "x.png"}, {"id": "a", "image": "y.png"}])
    rc = main(["run", p, "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"dcam run: error: MANIFEST: {p} line 2: id 'a' is already on line 1"]
    assert not os.path.exists(tmp_path / "out")


def test_cli_refuses_an_image_in_place_of_the_manifest(tmp_path, capsys):
    from PIL import Image

    img = str(tmp_path / "one.png")
    Image.new("RGB", (8, 8)).save(img)
    rc = main(["run", img, "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"dcam run: error: MANIFEST: {img!r} is an image; give a JSONL manifest or a folder "
                               "of images (`dcam explain` takes single images)"]
    assert not os.path.exists(tmp_path / "out")


def test_cli_refuses_a_view_the_model_lacks_before_any_record(tmp_path, capsys):
    # the toy model's images have one view: before, every record failed into errors.jsonl
    # and the run exited 0
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    p = _manifest(tmp_path, [{"id": "a", "image": "one.png"}])
    rc = main(["run", p, "--out", str(tmp_path / "out"), "--view", "base", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["dcam run: error: --view: this model's images have no view 'base' "
                               "(views: default, all)"]
    assert not os.path.exists(tmp_path / "out")
    # (a trajectory of every view: tests/runs/test_run_views.py)


def test_cli_memory_budget_is_a_size(tmp_path, capsys):
    from dcam.cli import build_parser

    args = build_parser().parse_args(["run", "m.jsonl", "--out", "o", "--memory-budget", "8GB"])
    assert args.memory_budget == 8 * 1000 ** 3
    assert build_parser().parse_args(["run", "m", "--out", "o", "--memory-budget", "512MiB"]).memory_budget == 512 << 20
    rc = main(["run", "m.jsonl", "--out", "o", "--memory-budget", "8XB"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--memory-budget" in err[0] and "8XB" in err[0]


def test_a_ctrl_c_after_the_index_lines_does_not_commit_them_twice(tmp_path, monkeypatch):
    # KeyboardInterrupt right after a commit's index write: close() (in the runner's finally)
    # committed the same records again, each then twice in the index (the run refused to resume)
    import json

    import torch

    from dcam.runs.writer import RecordWriter

    w = RecordWriter(str(tmp_path), "part0", shard_size=10)
    for i in range(3):
        w.add({"id": f"r{i}"}, torch.full((1, 2, 2), float(i)))
    real = w.index.write

    def write_then_interrupt(objs):
        real(objs)
        raise KeyboardInterrupt

    monkeypatch.setattr(w.index, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        w.commit()
    monkeypatch.setattr(w.index, "write", real)
    w.add({"id": "r3"}, torch.zeros(1, 2, 2))
    w.close()
    lines = [json.loads(x) for x in (tmp_path / "index" / "part0.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["r0", "r1", "r2", "r3"]
    assert len({x["shard"] for x in lines}) == 2  # the second commit took a new shard name


def test_another_manifest_or_prompt_is_another_run(tmp_path):
    # a second manifest's records were mixed into the first one's index (metrics over both), and a
    # resume with another --prompt mixed two prompts' responses
    import json

    from dcam.explain import Explainer
    from dcam.runs.runner import RunOptions, run_dataset
    from dcam.testing import tiny_toy
    from dcam.zoo.data import generate_sample

    exp = Explainer(*tiny_toy(seed=3))
    paths = []
    for name in ("a", "b"):
        s = generate_sample((0, 1, len(name)), image_size=32, n_objects=1)
        s.image.save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"id": name, "image": f"{name}.png",
                                                            "response": s.caption}) + "\n")
        paths.append(str(tmp_path / f"{name}.jsonl"))
    out = str(tmp_path / "run")
    run_dataset(exp, ManifestSource(paths[0]), out)
    with pytest.raises(InputError, match=r"differs in: source\.path"):
        run_dataset(exp, ManifestSource(paths[1]), out)
    with pytest.raises(InputError, match=r"differs in: prompt"):
        run_dataset(exp, ManifestSource(paths[0]), out, RunOptions(prompt="name the objects"))
    run_dataset(exp, ManifestSource(paths[0]), out)  # the same source and options resume


def test_manifest_nan_and_folder_broken_links(tmp_path):
    # NaN/Infinity (not JSON) were taken and became null in the index; a broken link with an image
    # name was skipped without a word
    p = _manifest(tmp_path, [{"id": "first", "image": "a.png"}])
    with open(p, "a") as f:
        f.write('{"id": "x", "image": "a.png", "meta": NaN}\n')
    with pytest.raises(InputError) as info:
        ManifestSource(p)
    assert str(info.value).endswith("line 2: NaN is not JSON (write null or a number)")
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "a.png")
    os.symlink(str(tmp_path / "gone.png"), folder / "b.png")
    src = FolderSource(str(folder))
    assert src.ids == ["a.png", "b.png"]
    with pytest.raises(InputError, match="b.png"):
        src.load(1)


def test_a_run_folder_from_before_the_source_was_fingerprinted_still_resumes(tmp_path):
    # the source and --prompt joined the fingerprint in session 13: a folder written before has
    # neither in its identity, and resumes (its run.json then records them)
    import json

    from dcam.explain import Explainer
    from dcam.runs.folder import LATER_KEYS, fingerprint
    from dcam.runs.runner import run_dataset
    from dcam.testing import tiny_toy
    from dcam.zoo.data import generate_sample

    exp = Explainer(*tiny_toy(seed=3))
    s = generate_sample((0, 1, 2), image_size=32, n_objects=1)
    s.image.save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image": "a.png", "response": s.caption}) + "\n")
    out = tmp_path / "run"
    run_dataset(exp, ManifestSource(str(tmp_path / "m.jsonl")), str(out))
    info = json.loads((out / "run.json").read_text())
    old = {k: v for k, v in info["identity"].items() if k not in LATER_KEYS}
    (out / "run.json").write_text(json.dumps(dict(info, identity=old, fingerprint=fingerprint(old))))
    run_dataset(exp, ManifestSource(str(tmp_path / "m.jsonl")), str(out))
    assert json.loads((out / "run.json").read_text())["identity"]["source"]["kind"] == "manifest"


def test_a_line_edited_while_the_run_reads_the_manifest_is_an_error_record(tmp_path):
    # a record is loaded by re-reading its line at the offset found when the manifest was opened: an edit in
    # between explained the new line under the old line's digest (a resume then refused the folder, or took
    # stale maps once the edit was undone), and an edit that moved the lines read another line's middle
    _png(tmp_path / "a.png")
    lines = [{"id": "a", "image": "a.png", "response": "a red square"},
             {"id": "b", "image": "a.png", "response": "a blue circle"}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    src = ManifestSource(str(path))
    assert src.load(0).response == "a red square"
    path.write_text("".join(json.dumps(e) + "\n" for e in [dict(lines[0], response="a red circle"), lines[1]]))
    with pytest.raises(InputError, match=r"^MANIFEST: line 1 \(id 'a'\) changed while the run read the manifest; "
                                         "rerun to explain it as it is now$"):
        src.load(0)  # same length: the new text
    assert src.load(1).response == "a blue circle"  # untouched
    path.write_text("".join(json.dumps(e) + "\n" for e in [dict(lines[0], response="a much longer red square"),
                                                             lines[1]]))
    with pytest.raises(InputError, match=r"^MANIFEST: line 2 \(id 'b'\) changed while the run read"):
        src.load(1)  # its offset now lands inside line 1


def test_a_data_folder_holding_manifest_jsonl_is_refused_with_the_manifest_named(tmp_path, capsys):
    """`python -m dcam.runs.benchmark manifest DATA` writes DATA/manifest.jsonl beside images/ and masks/: `dcam run
    DATA` said only that the folder holds no image file."""
    from dcam.runs.benchmark import main as benchmark

    data = str(tmp_path / "data")
    benchmark(["manifest", data, "--n", "2"])
    capsys.readouterr()
    assert main(["run", data, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    from dcam.images import IMAGE_EXTENSIONS

    kinds = ", ".join(IMAGE_EXTENSIONS)
    assert capsys.readouterr().err.splitlines() == [
        f"dcam run: error: MANIFEST: the folder {data!r} holds no image file ({kinds}) (it holds manifest.jsonl: "
        f"pass {os.path.join(data, 'manifest.jsonl')})"]
    assert not os.path.exists(tmp_path / "run")
    os.unlink(os.path.join(data, "manifest.jsonl"))  # a folder without one: no hint
    with pytest.raises(InputError) as info:
        open_source(data)
    assert str(info.value) == f"MANIFEST: the folder {data!r} holds no image file ({kinds})"
