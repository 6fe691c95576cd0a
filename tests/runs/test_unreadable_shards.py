"""A resume of a folder whose shards were damaged from outside (deleted by a partial copy, cut short, rewritten
without a record's tensor) explains again the records whose maps cannot be read, says so in one stderr line, and
leaves every record with one index line and the maps of an undamaged run, bit for bit. It said "nothing was
left to explain", called the run complete, and load_run/dcam view failed on those maps."""
import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import dcam
from dcam.cli import main

GOOD = ["s0", "s1", "s2", "s3", "gen4", "s5", "dict6", "s7"]
RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _by_shard(out):
    """shard -> the ids of its index lines, in the index's order."""
    shards = {}
    for e in _lines(os.path.join(out, "index.jsonl")):
        shards.setdefault(e["shard"], []).append(e["id"])
    return shards


def _damage(out):
    """The four shards of the reference run (two records each, one batch of the run each but the third's, which
    holds the good records of two batches with a bad record each): the first deleted, the second cut short,
    the fourth rewritten with another tensor in place of its records'. Returns (the ids that lost their
    maps, the untouched shard and its bytes)."""
    shards = _by_shard(out)
    assert [len(ids) for ids in shards.values()] == [2, 2, 2, 2]
    gone, cut, kept, rewritten = shards
    os.unlink(os.path.join(out, gone))
    data = open(os.path.join(out, cut), "rb").read()
    open(os.path.join(out, cut), "wb").write(data[:1000])
    save_file({"r999999": torch.zeros(1, 2, 2)}, os.path.join(out, rewritten))
    lost = shards[gone] + shards[cut] + shards[rewritten]
    return lost, kept, open(os.path.join(out, kept), "rb").read()


def _check_repaired(out, reference_run, order, kept, kept_bytes):
    index = _lines(os.path.join(out, "index.jsonl"))
    assert [e["id"] for e in index] == [rid for rid in order if rid in GOOD]  # each once, in the manifest's order
    assert not os.listdir(os.path.join(out, "index"))  # (parts merged)
    assert open(os.path.join(out, kept), "rb").read() == kept_bytes  # a good shard is kept, not redone
    referenced = {e["shard"] for e in index}
    assert {os.path.join("shards", n) for n in os.listdir(os.path.join(out, "shards"))} == referenced
    for shard in referenced:  # every shard whole, holding exactly the keys its lines name
        with safe_open(os.path.join(out, shard), framework="pt") as f:
            assert set(f.keys()) == {e["key"] for e in index if e["shard"] == shard}
    ref = {r.id: r for r in dcam.load_run(reference_run)}
    for r in dcam.load_run(out):  # redone in the batches they were first explained in: the same maps, bit for bit
        assert torch.equal(r.maps, ref[r.id].maps), r.id
        for k in ("tokens", "response", "stats", "scores", "metrics"):
            assert r.entry.get(k) == ref[r.id].entry.get(k), (r.id, k)
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["status"] == "complete" and info["counts"]["done"] == 8 and info["counts"]["errors"] == 5
    assert open(os.path.join(out, "metrics.json")).read() == open(os.path.join(reference_run, "metrics.json")).read()
    errors = [(e["id"], e["where"], e["reason"]) for e in _lines(os.path.join(out, "errors.jsonl"))]
    assert errors == [(e["id"], e["where"], e["reason"]) for e in _lines(os.path.join(reference_run, "errors.jsonl"))]


def test_a_resume_explains_again_the_records_whose_shard_is_missing_cut_or_lacks_their_tensors(
        reference_run, run_manifest, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    lost, kept, kept_bytes = _damage(out)
    capsys.readouterr()
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 0
    captured = capsys.readouterr()
    notice = [line for line in captured.err.splitlines() if line.strip()]
    assert notice == [f"dcam: 6 records of the index of {out!r} cannot be read and are explained again (their shard "
                      "missing: 2, cut short or damaged: 2, lacking the record's tensors: 2); 3 shards missing or "
                      f"damaged, the first {sorted(set(_by_shard(reference_run)) - {kept})[0]}"]
    assert "6 records in" in captured.out  # this session explained the six again, not "nothing was left"
    _check_repaired(out, reference_run, run_manifest["order"], kept, kept_bytes)
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 0  # repaired: a rerun has nothing to do
    captured = capsys.readouterr()
    assert captured.err == "" and "this session explained none (5 failed)" in captured.out


def test_a_leftover_index_part_already_merged_loses_the_lines_too(reference_run, run_manifest, tmp_path, capsys):
    """A process killed between writing index.jsonl and deleting its merged parts leaves the parts: the lines of a
    damaged shard are dropped from them as well (else a part no longer named by index.jsonl came back with them,
    and the record had two lines)."""
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    index = _lines(os.path.join(out, "index.jsonl"))
    part = index[0]["part"]
    os.makedirs(os.path.join(out, "index"), exist_ok=True)
    with open(os.path.join(out, "index", f"{part}.jsonl"), "w") as f:
        f.write("".join(json.dumps(e) + "\n" for e in index))
    for shard in _by_shard(out):  # every shard gone: no line of the part stays in index.jsonl
        os.unlink(os.path.join(out, shard))
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 0
    assert "8 records of the index" in capsys.readouterr().err
    ids = [e["id"] for e in _lines(os.path.join(out, "index.jsonl"))]
    assert ids == [rid for rid in run_manifest["order"] if rid in GOOD]
    ref = {r.id: r.maps for r in dcam.load_run(reference_run)}
    for r in dcam.load_run(out):
        assert torch.equal(r.maps, ref[r.id]), r.id


def test_two_ranks_resume_the_same_records_again(reference_run, run_manifest, tmp_path):
    """Under torchrun rank 0 checks the shards and drops the lines before any rank reads the index (the barrier of
    the folder's preparation): both ranks see the same records not done, and each is explained once."""
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    lost, kept, kept_bytes = _damage(out)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "dcam", "run", run_manifest["path"],
                           "--out", out, *RUN_ARGS], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("cannot be read and are explained again") == 1  # rank 0's line, once
    assert "6 records in" in proc.stdout
    _check_repaired(out, reference_run, run_manifest["order"], kept, kept_bytes)


def test_a_shard_that_cannot_be_opened_refuses_the_resume_naming_it_and_changes_nothing(reference_run, run_manifest,
                                                                                        tmp_path, capsys):
    """A shard that is there but cannot be read for a reason outside it (here a folder in its place; no permission,
    an I/O error alike) is not damage to redo: made readable, its maps are there. The resume is refused naming it,
    as for an index part it cannot read, and no line is dropped."""
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    shard = next(iter(_by_shard(out)))
    path = os.path.join(out, shard)
    os.unlink(path)
    os.mkdir(path)
    before = open(os.path.join(out, "index.jsonl")).read()
    capsys.readouterr()
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 2
    assert capsys.readouterr().err.splitlines() == [  # (safetensors' words: mmap of a folder)
        f"dcam run: error: --out: cannot read {path!r} (OSError: No such device (os error 19)); what was written is "
        "kept: make it readable and rerun the same command to resume, or pass --overwrite to start over"]
    assert open(os.path.join(out, "index.jsonl")).read() == before
    assert os.path.isdir(path)
