"""bench/bench_batch.py --lengths end to end: its item-rule and one-batch ways replace
explain_batch's partition with rules of explain_batch's own call (index, lengths, counts, slack)."""
import importlib.util
import os
import re


def _bench_batch():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("bench_batch", os.path.join(root, "bench", "bench_batch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_batch_lengths_runs_every_way_and_their_maps_agree(monkeypatch, capsys):
    # the two replaced rules took three arguments, explain_batch passes four (batch_slack): a TypeError
    monkeypatch.setenv("DCAM_BENCH_THREADS", "1")
    mod = _bench_batch()
    monkeypatch.setattr(mod, "ROUNDS", 1)
    mod.main(["--n", "2", "--lengths"])
    out = capsys.readouterr().out
    diffs = dict(re.findall(r"^  (\S.*?\S)\s+[\d.]+ s .*max map difference (\S+)$", out, re.M))
    assert set(diffs) == {"length-aware batches", "item rule (before)", "one padded batch",
                          "one explain() per image"}, out
    # a padded forward moves the maps by rounding only (docs/FAMILIES.md: at most 8.2e-4 in float32 on the stand-ins)
    assert all(float(d) < 1e-2 for d in diffs.values()), diffs
