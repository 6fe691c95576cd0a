"""`torchrun --nproc_per_node=2 -m dcam run --profile FILE`: each rank writes its own trace (FILE for
rank 0, FILE with .rank1 before its extension for rank 1) of its own batches, and says so."""
import collections
import json
import os
import subprocess
import sys
from dcam.testing.support import single_process_env


def test_two_ranks_write_a_trace_each(run_manifest, tmp_path):
    # 13 records in blocks of 2: blocks 0..6, block k to rank k mod 2, so rank 0 has 4 batches and rank 1 has 3;
    # each records its batches 2-3 (the first is its warm-up)
    out, trace = tmp_path / "run", tmp_path / "trace.json"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "dcam", "run", run_manifest["path"],
                           "--out", str(out), "--threads", "1", "--batch-size", "2", "--shard-size", "2",
                           "--profile", str(trace)], env=single_process_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 of 13 records explained" in proc.stdout
    said = [line for line in proc.stderr.splitlines() if line.startswith("[dcam] profile: ")]
    rank1 = tmp_path / "trace.rank1.json"
    assert len(said) == 2, proc.stderr[-3000:]
    # (in either order: the ranks print at once)
    assert sorted(line.split("; ")[-2:] for line in said) == [["batches 2-3 of 3", f"trace written to {rank1}"],
                                                              ["batches 2-3 of 4", f"trace written to {trace}"]]
    for path in (trace, rank1):
        events = json.load(open(path))["traceEvents"]
        names = collections.Counter(ev.get("name") for ev in events)
        assert names["dcam.forward"] >= 1 and names["dcam.backward"] >= 1, names
        assert len({ev["pid"] for ev in events if ev.get("name") == "dcam.forward"}) == 1  # one process's trace
    forward_pids = [{ev["pid"] for ev in json.load(open(p))["traceEvents"] if ev.get("name") == "dcam.forward"}
                    for p in (trace, rank1)]
    assert forward_pids[0] != forward_pids[1]  # two processes, one trace each
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "trace.json", "trace.rank1.json"]  # no temporary


def test_a_rank_whose_trace_exists_stops_every_rank_before_anything_is_written(run_manifest, tmp_path):
    # each rank checks its own file up front; rank 1's refusal is said once, by rank 0, naming rank 1
    (tmp_path / "trace.rank1.json").write_text("{}")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "dcam", "run", run_manifest["path"],
                           "--out", str(tmp_path / "run"), "--threads", "1", "--quiet",
                           "--profile", str(tmp_path / "trace.json")], env=single_process_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dcam run: error:")]
    assert errors == [f"dcam run: error: rank 1: --profile: {str(tmp_path / 'trace.rank1.json')!r} exists; choose a "
                      "new file or pass --overwrite (which replaces it, and starts the run in --out over)"], \
        proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.rank1.json"]
    assert (tmp_path / "trace.rank1.json").read_text() == "{}"
