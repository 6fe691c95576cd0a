"""A resume after the source changed (lines inserted into a manifest, an image added to a folder,
a line taken out): index.jsonl follows the source's current order, every line with its record's
current n and where; and run.json's files name only the files the folder holds."""
import json
import os
import shutil

import pytest
import torch

import dcam
from dcam.cli import main
from dcam.runs import store

RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _index(out):
    with open(os.path.join(out, "index.jsonl")) as f:
        return [json.loads(line) for line in f]


def _maps(out):
    return {r.id: r.maps.clone() for r in dcam.load_run(out)}


def _unplaced(entry):
    return {k: v for k, v in entry.items() if k not in ("n", "where")}


def test_lines_inserted_into_the_manifest_take_their_places_and_renumber_the_records_done(run_manifest, tmp_path):
    # a line inserted at the top: index.jsonl read test-00001 (n 0, "line 1"), test-00000 (n 0, "line 1"), ...:
    # the old lines kept the n and where they were explained under and were merged by them
    folder = run_manifest["folder"]

    def line(rid):
        e = run_manifest["good"][rid]
        return json.dumps(dict(e, image=os.path.join(folder, e["image"]), mask=os.path.join(folder, e["mask"])))

    manifest, out = tmp_path / "m.jsonl", str(tmp_path / "run")
    manifest.write_text("".join(line(r) + "\n" for r in ("s0", "s1", "s2")))
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    first = {e["id"]: e for e in _index(out)}
    first_maps = _maps(out)
    # s3 on top, s5 in the middle after a blank line: lines 1 s3, 2 s0, 3 blank, 4 s5, 5 s1, 6 s2
    manifest.write_text(line("s3") + "\n" + line("s0") + "\n\n" + line("s5") + "\n" + line("s1") + "\n" +
                        line("s2") + "\n")
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    index = _index(out)
    assert [(e["id"], e["n"], e["where"]) for e in index] == [
        ("s3", 0, "line 1"), ("s0", 1, "line 2"), ("s5", 2, "line 4"), ("s1", 3, "line 5"), ("s2", 4, "line 6")]
    for e in index:  # the records done before: the same lines and maps, only their places renewed
        if e["id"] in first:
            assert _unplaced(e) == _unplaced(first[e["id"]])
    maps = _maps(out)
    assert list(maps) == ["s3", "s0", "s5", "s1", "s2"]  # load_run (and so dcam view) reads the new order
    for rid, m in first_maps.items():
        torch.testing.assert_close(maps[rid], m, rtol=0, atol=0)
    # a resume of the unchanged manifest leaves index.jsonl as it was (not even rewritten)
    path = os.path.join(out, "index.jsonl")
    before, inode = open(path, "rb").read(), os.stat(path).st_ino
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    assert open(path, "rb").read() == before and os.stat(path).st_ino == inode
    # s0 taken out (and the blank line): it stays, last, with no line of the manifest
    manifest.write_text("".join(line(r) + "\n" for r in ("s3", "s5", "s1", "s2")))
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    assert [(e["id"], e["n"], e["where"]) for e in _index(out)] == [
        ("s3", 0, "line 1"), ("s5", 1, "line 2"), ("s1", 2, "line 3"), ("s2", 3, "line 4"), ("s0", None, None)]
    torch.testing.assert_close(_maps(out)["s0"], first_maps["s0"], rtol=0, atol=0)


def test_an_image_added_to_a_folder_that_sorts_first_takes_its_place(run_manifest, tmp_path):
    src, out = tmp_path / "imgs", str(tmp_path / "run")
    src.mkdir()
    img = os.path.join(run_manifest["folder"], "img")
    shutil.copy(os.path.join(img, "s0.png"), src / "b.png")
    shutil.copy(os.path.join(img, "s1.png"), src / "c.png")
    args = ["--steps", "2", *RUN_ARGS]  # (the model writes each response: few steps keep it quick)
    assert main(["run", str(src), "--out", out, *args]) == 0
    first = {e["id"]: e for e in _index(out)}
    first_maps = _maps(out)
    assert [(e["id"], e["n"], e["where"]) for e in first.values()] == [("b.png", 0, "file b.png"),
                                                                        ("c.png", 1, "file c.png")]
    shutil.copy(os.path.join(img, "s2.png"), src / "a.png")
    assert main(["run", str(src), "--out", out, *args]) == 0
    index = _index(out)
    assert [(e["id"], e["n"], e["where"]) for e in index] == [
        ("a.png", 0, "file a.png"), ("b.png", 1, "file b.png"), ("c.png", 2, "file c.png")]
    for e in index[1:]:
        assert _unplaced(e) == _unplaced(first[e["id"]])
    maps = _maps(out)
    for rid, m in first_maps.items():
        torch.testing.assert_close(maps[rid], m, rtol=0, atol=0)


def _part(root, name, ids):
    os.makedirs(os.path.join(root, "index"), exist_ok=True)
    with open(os.path.join(root, "index", name + ".jsonl"), "wb") as f:
        for rid in ids:
            f.write(store.json_line({"id": rid, "n": 0, "where": "stale", "shard": "shards/s.safetensors",
                                     "key": "r0", "part": name, "tokens": []}))  # (a line's fields scan_index checks)


def test_a_kill_inside_the_merge_leaves_the_index_whole_and_counts_nothing_twice(tmp_path, monkeypatch):
    root = str(tmp_path)
    ids = ["a", "b", "c", "d"]
    where = "line {}".format
    _part(root, "p1", ["b", "d"])
    store.merge_index(root, ["b", "d"], where)
    merged = open(os.path.join(root, "index.jsonl"), "rb").read()
    _part(root, "p2", ["a", "c"])
    # killed before the rename: index.jsonl untouched, the new part still there
    real_replace = os.replace

    def killed(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.merge_index(root, ids, where)
    monkeypatch.setattr(os, "replace", real_replace)
    assert open(os.path.join(root, "index.jsonl"), "rb").read() == merged
    assert sorted(store.scan_index(root)[0]) == ids
    # killed after the rename, before the part is deleted: the part is known to be merged
    monkeypatch.setattr(os, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        store.merge_index(root, ids, where)
    monkeypatch.undo()
    assert os.path.exists(os.path.join(root, "index", "p2.jsonl"))
    assert sorted(store.scan_index(root)[0]) == ids
    store.merge_index(root, ids, where)
    assert not os.listdir(os.path.join(root, "index"))
    assert [(e["id"], e["n"], e["where"]) for e in _index(root)] == [
        ("a", 0, "line 0"), ("b", 1, "line 1"), ("c", 2, "line 2"), ("d", 3, "line 3")]


def test_files_names_only_what_the_folder_holds(run_manifest, reference_run, tmp_path):
    # every record failed: files named index.jsonl and shards/, which the folder did not hold
    manifest, out = tmp_path / "m.jsonl", str(tmp_path / "run")
    manifest.write_text('{"id": "x", "image": "nope.png"}\n{"id": "y", "image": "nope2.png"}\n')
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["counts"]["errors"] == 2
    assert info["files"] == {"index": None, "errors": "errors.jsonl", "shards": None, "metrics": None}
    assert not os.path.exists(os.path.join(out, "index.jsonl")) and not os.path.exists(os.path.join(out, "shards"))
    info = json.load(open(os.path.join(reference_run, "run.json")))
    assert info["files"] == {"index": "index.jsonl", "errors": "errors.jsonl", "shards": "shards/",
                             "metrics": "metrics.json"}
    assert all(os.path.exists(os.path.join(reference_run, f)) for f in info["files"].values())


def test_a_part_with_no_complete_line_changes_nothing(tmp_path):
    """A process killed in its first write leaves a part holding a cut-short line, no record: the
    merge deletes it and leaves index.jsonl as it was (same bytes, same file), as RUNS.md says."""
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "index"))
    ids, where = ["a", "b"], "line {}".format
    with open(os.path.join(root, "index", "p1.jsonl"), "wb") as f:
        for n, rid in enumerate(ids):
            f.write(store.json_line({"id": rid, "n": n, "where": where(n), "shard": "s", "part": "p1"}))
    store.merge_index(root, ids, where)
    main_path = os.path.join(root, "index.jsonl")
    before, inode = open(main_path, "rb").read(), os.stat(main_path).st_ino
    cut = os.path.join(root, "index", "p2.jsonl")
    with open(cut, "wb") as f:
        f.write(b'{"id": "c", "n": 2, "wh')
    store.merge_index(root, ids, where)
    assert open(main_path, "rb").read() == before and os.stat(main_path).st_ino == inode
    assert not os.path.exists(cut)
    assert [json.loads(x)["id"] for x in before.splitlines()] == ["a", "b"]
