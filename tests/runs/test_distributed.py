"""`torchrun --nproc_per_node=2 -m dcam run`: real torchrun, two CPU ranks on gloo.

Same records, same maps (bit for bit) as the one-process run; killed with
SIGKILL mid-way and rerun: every record exactly once, no corrupt shard."""
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time

import torch
from safetensors import safe_open

import dcam
from dcam.testing.support import single_process_env

GOOD = ["s0", "s1", "s2", "s3", "gen4", "s5", "dict6", "s7"]
RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _command(manifest, out):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [torchrun, "--standalone", "--nproc_per_node=2", "-m", "dcam", "run", manifest, "--out", out, *RUN_ARGS]


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_shards(out):
    """Every shard opens and holds exactly the keys the index points to; no temporary file is left."""
    index = _lines(os.path.join(out, "index.jsonl"))
    want = {}
    for e in index:
        want.setdefault(e["shard"], set()).add(e["key"])
    files = {os.path.join("shards", n) for n in os.listdir(os.path.join(out, "shards"))}
    assert files == set(want), "orphan or missing shard"
    for shard, keys in want.items():
        with safe_open(os.path.join(out, shard), framework="pt") as f:
            assert set(f.keys()) == keys
            for k in keys:
                assert f.get_tensor(k).dtype == torch.float32
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_two_ranks_give_the_one_process_results(run_manifest, reference_run, tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.run(_command(run_manifest["path"], out), env=single_process_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 of 13 records explained" in proc.stdout and "on 2 process(es)" in proc.stdout
    ref = {r.id: r for r in dcam.load_run(reference_run)}
    got = list(dcam.load_run(out))
    assert [r.id for r in got] == [r for r in run_manifest["order"] if r in GOOD]
    for r in got:
        a = ref[r.id]
        assert torch.equal(r.maps, a.maps), r.id
        for k in ("tokens", "response", "response_ids", "stats", "scores", "steps", "metrics", "word_numbers"):
            assert r.entry.get(k) == a.entry.get(k), (r.id, k)
    errors = [(e["id"], e["reason"]) for e in _lines(os.path.join(out, "errors.jsonl"))]
    # in the manifest's order, as the index (it followed the ranks' parts)
    assert errors == [(e["id"], e["reason"]) for e in _lines(os.path.join(reference_run, "errors.jsonl"))]
    assert json.load(open(os.path.join(out, "metrics.json"))) == json.load(open(os.path.join(reference_run,
                                                                                              "metrics.json")))
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["options"]["world_size"] == 2 and info["options"]["backend"] == "gloo"
    assert info["session"]["processes"] == 2 and info["session"]["records"] == 8
    assert {n.split("-")[1] for n in os.listdir(os.path.join(out, "shards"))} == {"r00000", "r00001"}
    _check_shards(out)


def _process_tree(pid):
    """``pid`` and every process below it (from /proc's children lists)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
    return out


def _running(pid):
    """Whether ``pid`` is alive (a zombie waiting for its parent counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_mid_way_then_rerun_gives_every_record_exactly_once(run_manifest, reference_run, tmp_path):
    out = str(tmp_path / "run")
    cmd = _command(run_manifest["path"], out)
    proc = subprocess.Popen(cmd, env=single_process_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    parts = os.path.join(out, "index")
    deadline = time.time() + 240
    committed = 0
    try:
        while time.time() < deadline and proc.poll() is None:  # kill at the first committed shard
            if os.path.isdir(parts):
                committed = sum(open(os.path.join(parts, p), "rb").read().count(b"\n") for p in os.listdir(parts))
                if committed:
                    break
            time.sleep(0.01)
    finally:
        # torchrun and both ranks at once: torchrun starts each rank in a session of its own, so
        # killpg of torchrun's group left the ranks running (they finished the run, and the
        # "rerun" found nothing left): every process of the tree, found before any dies
        family = _process_tree(proc.pid)
        for pid in family:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert len(family) >= 3, family  # torchrun and its two ranks
    deadline = time.time() + 30
    while time.time() < deadline and any(_running(pid) for pid in family):
        time.sleep(0.05)
    assert not any(_running(pid) for pid in family)
    assert proc.returncode == -signal.SIGKILL and 0 < committed < len(GOOD), "the kill did not land mid-way"
    assert json.load(open(os.path.join(out, "run.json")))["status"] == "running"
    partial = {r.id for r in dcam.load_run(out)}
    assert 0 < len(partial) < len(GOOD)

    rerun = subprocess.run(cmd, env=single_process_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids = [r.id for r in dcam.load_run(out)]
    assert sorted(ids) == sorted(GOOD) and len(ids) == len(set(ids))
    assert len(_lines(os.path.join(out, "index.jsonl"))) == len(GOOD)
    ref = {r.id: r.maps for r in dcam.load_run(reference_run)}
    for r in dcam.load_run(out):  # records redone in other batches than before round differently, ~1e-5
        torch.testing.assert_close(r.maps, ref[r.id], rtol=0, atol=1e-4)
        if r.id in partial:
            assert torch.equal(r.maps, ref[r.id])  # committed before the kill: untouched
    _check_shards(out)
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["status"] == "complete" and info["counts"]["done"] == len(GOOD) and info["counts"]["errors"] == 5
    assert sorted(e["id"] for e in _lines(os.path.join(out, "errors.jsonl"))) == sorted(
        e["id"] for e in _lines(os.path.join(reference_run, "errors.jsonl")))


RANK_SCRIPT = """
import json, os, sys, warnings
from dcam.runs.distributed import setup
dist = setup(None)
late = "transformers" not in sys.modules  # the model stack is imported after the group exists, as in `dcam run`
from dcam.models import load_model
load_model()
if sys.argv[2] == "capture":  # a user's function defined after joining, holding the group as a default
    import torch.distributed as td
    def gather_scores(t, group=td.group.WORLD):
        return t
dist.sum([1.0]); dist.barrier()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dist.close()
threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
with open(os.path.join(sys.argv[1], "rank%s.json" % os.environ["RANK"]), "w") as f:
    json.dump({"rank": int(os.environ["RANK"]), "late": late, "threads": threads,
               "warnings": [str(w.message) for w in caught]}, f)
"""


def _run_ranks(tmp_path, mode):
    if not os.path.isdir("/proc/self/task"):
        import pytest
        pytest.skip("thread names are read from /proc")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script), str(tmp_path), mode],
                          env=single_process_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]


def test_closing_frees_the_process_group_even_when_the_model_loads_after_joining(tmp_path):
    """A module imported after init_process_group that captures the default group
    (torch.distributed.nn, via transformers) kept it alive past destroy_process_group:
    gloo's threads outlived main and one rank in ~10 died with SIGABRT at exit."""
    for r in _run_ranks(tmp_path, "plain"):
        assert r["late"], "transformers was imported before the group: the test would prove nothing"
        assert not [t for t in r["threads"] if "gloo" in t], r
        assert r["warnings"] == [], r


def test_closing_names_a_function_that_still_holds_the_process_group(tmp_path):
    """What dcam cannot prevent (a user's own function defined after joining, with
    the group as a default argument) it names when the run closes: the group and
    its gloo threads then outlive the run, which may abort the rank at exit."""
    for r in _run_ranks(tmp_path, "capture"):
        assert [t for t in r["threads"] if "gloo" in t], "the group was freed: the test would prove nothing"
        assert len(r["warnings"]) == 1 and "__main__.gather_scores" in r["warnings"][0], r


def test_default_argument_holders_finds_positional_and_keyword_only_defaults():
    from dcam.runs.distributed import default_argument_holders

    held, other = object(), object()

    def positional(x, g=held):
        return g

    def keyword_only(*, g=held):
        return g

    def unrelated(x, g=other):
        return g

    gc.collect()  # untracks containers of untracked objects (object(), like pybind11's ProcessGroup)
    prefix = f"{__name__}.test_default_argument_holders_finds_positional_and_keyword_only_defaults.<locals>."
    assert default_argument_holders(held) == [prefix + "keyword_only", prefix + "positional"]
    assert default_argument_holders(other) == [prefix + "unrelated"]
    assert default_argument_holders(None) == []


def test_a_world_size_set_by_hand_without_torchrun_is_refused(monkeypatch):
    # WORLD_SIZE=2 without MASTER_ADDR/MASTER_PORT ended in the process group's ValueError traceback
    from dcam.errors import InputError
    from dcam.runs.distributed import setup

    for k in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    try:
        setup("cpu")
    except InputError as exc:
        assert str(exc) == ("WORLD_SIZE=2 in the environment but MASTER_ADDR and MASTER_PORT not set: launch several "
                            "processes with torchrun (or unset WORLD_SIZE)")
    else:
        raise AssertionError("not refused")
    monkeypatch.setenv("RANK", "5")
    try:
        setup("cpu")
    except InputError as exc:
        assert str(exc) == "RANK=5 in the environment is not below WORLD_SIZE=2 (launch with torchrun)"
    else:
        raise AssertionError("not refused")


def test_sigterm_to_every_rank_says_so_once(run_manifest, tmp_path):
    """torchrun stopping its ranks (one failed; or a scheduler's cancel of the job) sends each SIGTERM: the run says
    it stopped once, on rank 0, as an input error is said once; every rank still exits 143, torchrun's report
    says so. (Each rank printed the line: two here, eight on a machine of 8 GPUs.) The model's config.json is a
    FIFO, so both ranks are inside the model load, their SIGTERM handlers installed, when the signal comes."""
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "config.json")
    out = str(tmp_path / "new" / "run")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2", "-m", "dcam", "run", run_manifest["path"],
                             "--out", out, "--model", str(model), "--threads", "1"], env=single_process_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert first.endswith("; loading the model\n"), first
        ranks = [p for p in _process_tree(proc.pid) if p != proc.pid]
        assert len(ranks) == 2, ranks
        deadline = time.time() + 60  # both blocked opening the FIFO (where /proc shows it; else the line suffices)
        while time.time() < deadline and not all(_waits_on_a_fifo(p) in (True, None) for p in ranks):
            time.sleep(0.05)
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            for pid in _process_tree(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.wait()
    assert rest.count("dcam run: stopped (SIGTERM)") == 1
    assert "dcam run: stopped (SIGTERM); nothing was written" in rest.splitlines()
    # torchrun's report lists each rank that failed on its own; a rank that the agent stopped itself after the first
    # failure (the two SIGTERMs a moment apart, a busy box) is not listed, so the report holds one or two exit codes:
    # 143 each, never another
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", rest)
    assert codes and set(codes) == {"143"} and proc.returncode == 1, (codes, proc.returncode)
    assert not os.path.lexists(tmp_path / "new")


def _waits_on_a_fifo(pid):
    """Whether ``pid`` sleeps opening a FIFO (/proc's wchan: ``wait_for_partner``); None where wchan tells nothing."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            where = f.read().strip()
    except OSError:
        return None
    return None if where in ("", "0") else where == "wait_for_partner"
