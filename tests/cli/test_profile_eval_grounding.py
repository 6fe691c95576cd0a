"""``dcam eval --profile FILE`` and ``dcam grounding --profile FILE``: a trace of a window of the command's
records or images (--profile-records, --profile-images: K of them from the second), refused like
dcam explain's on bad paths, put in place only once the command's output is written, and gzip-compressed
under a ".gz" name."""
import collections
import gzip
import json
import os

import pytest

from dcam.profiling import STAGES

GZIP_MAGIC = b"\x1f\x8b"


def _trace_names(path):
    """The events' names of a Chrome trace, read as gzip when the file is gzip (by its first bytes, not
    its name: a plain JSON named .gz is what the old code wrote)."""
    with open(path, "rb") as f:
        packed = f.read(2) == GZIP_MAGIC
    with (gzip.open(path, "rt") if packed else open(path)) as f:
        return collections.Counter(ev.get("name") for ev in json.load(f)["traceEvents"])


def _forwards_per_item(monkeypatch, module, item_function):
    """The probe's forwards (the function the dcam.forward range wraps) counted apart from the trace, one
    count per call of ``module.item_function`` (an evaluated record, a grounding image)."""
    import dcam.probe.gradients as gradients

    counts = []
    forward, item = gradients._forward, getattr(module, item_function)

    def counted_forward(*a, **k):
        counts[-1] += 1
        return forward(*a, **k)

    def each_item(*a, **k):
        counts.append(0)
        return item(*a, **k)
    monkeypatch.setattr(gradients, "_forward", counted_forward)
    monkeypatch.setattr(module, item_function, each_item)
    return counts


def _said(err):
    return [line for line in err if line.startswith("[dcam] profile")]


def _stages_said(line):
    return [part.split()[0] for part in line[len("[dcam] profile: "):].split(";")[0].split(", ")]


# ------------------------------------------------------------------ dcam eval

def _eval(cli, model, out, *more):
    return cli("eval", "--model", model, "--n", "3", "--methods", "diffusion-cam", "--examples", "0",
               "--out", out, *more)


def _check_window(trace, forwards, window, err, scope, tmp_path):
    """The trace holds the forwards of the window's items alone (the first item, the warm-up, is not in it, nor
    any after the window), the stages it names, one line saying so, and no temporary file is left."""
    assert len(forwards) == 3 and all(forwards)
    names = _trace_names(trace)
    assert names["dcam.forward"] == sum(forwards[i] for i in window)
    assert names["dcam.backward"] > 0 and names["dcam.maps"] > 0
    said = _said(err)
    assert len(said) == 1 and said[0].endswith(f"; {scope}; trace written to {trace}"), said
    assert _stages_said(said[0]) == [s[len("dcam."):] for s in STAGES if names[s]]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_eval_profile_records_the_records_from_the_second(cli, tmp_path, tiny_model_dir, monkeypatch):
    import dcam.eval.runner as runner

    for k, name, window, scope in ((None, "t.json", [1, 2], "records 2-3 of 3"),
                                   (1, "t.json.gz", [1], "record 2 of 3")):
        forwards = _forwards_per_item(monkeypatch, runner._Comparison, "add")
        trace, out = tmp_path / name, tmp_path / f"o{k}"
        rc, stdout, err = _eval(cli, tiny_model_dir, out, "--profile", trace,
                                *(["--profile-records", k] if k else []))
        assert rc == 0 and stdout.startswith("## Comparison") and (out / "main_table.md").exists()
        _check_window(trace, forwards, window, err, scope, tmp_path)
    with open(tmp_path / "t.json.gz", "rb") as f:
        assert f.read(2) == GZIP_MAGIC
    with open(tmp_path / "t.json", "rb") as f:
        assert f.read(64).lstrip().startswith(b"{")  # plain JSON when the name does not end in .gz


def test_eval_profile_of_one_record_records_it(cli, tmp_path, tiny_model_dir):
    rc, _, err = cli("eval", "--model", tiny_model_dir, "--n", "1", "--methods", "diffusion-cam", "--examples", "0",
                     "--out", tmp_path / "o", "--profile", tmp_path / "t.json")
    assert rc == 0 and _said(err)[0].endswith(f"; record 1 of 1; trace written to {tmp_path / 't.json'}")
    assert _trace_names(tmp_path / "t.json")["dcam.forward"] >= 1


def test_eval_profile_bad_paths_are_refused_before_anything_runs(cli, error_line, tmp_path, tiny_model_dir):
    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "data").mkdir()
    cases = [(tmp_path / "old.json", [], "--profile: ", "exists; choose a new file or pass --overwrite"),
             (tmp_path / "no" / "t.json", [], "--profile: ", "does not exist"),
             (tmp_path / "o" / "t.json.gz", [], "--profile: ", "lies in --out"),
             (tmp_path / "o" / "t.json", ["--overwrite"], "--profile: ", "lies in --out"),
             (tmp_path, [], "--profile: ", "is a folder, not a file"),
             (tmp_path / "data" / "t.json", ["--dataset", tmp_path / "data"], "--profile: ", "lies in the data set"),
             (None, ["--profile-records", "2"], "--profile-records: ", "give --profile FILE too")]
    for path, more, option, why in cases:
        rc, _, err = _eval(cli, tiny_model_dir, tmp_path / "o", *(["--profile", path] if path else []), *more)
        line = error_line(err, "eval")
        assert rc == 2 and line.startswith(f"dcam eval: error: {option}") and why in line, line
        assert not (tmp_path / "o").exists()
    assert (tmp_path / "old.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "old.json"]
    rc, _, err = _eval(cli, tiny_model_dir, tmp_path / "o", "--profile", tmp_path / "t.json", "--profile-records", "0")
    assert rc == 2 and "--profile-records" in error_line(err, "eval") and "expected an int >= 1" in error_line(err, "eval")


def test_eval_a_failed_trace_export_leaves_out_unwritten(cli, error_line, tmp_path, tiny_model_dir, monkeypatch):
    # the records' trace is exported as its window closes, before the tables are written: a failed export
    # (disk full) stops the command with nothing written
    import torch

    def full(self, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch.profiler.profile, "export_chrome_trace", full)
    rc, _, err = _eval(cli, tiny_model_dir, tmp_path / "o", "--profile", tmp_path / "t.json.gz")
    line = error_line(err, "eval")
    assert rc == 2 and line.startswith("dcam eval: error: --profile: cannot write") and "No space left" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no --out, no trace, no temporary file


@pytest.mark.parametrize("when", ["writing the tables", "renaming the trace"])
def test_eval_interrupted_after_the_window_leaves_no_trace(cli, tmp_path, tiny_model_dir, monkeypatch, when):
    import dcam.eval.runner as runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    if when == "writing the tables":
        monkeypatch.setattr(runner, "_write", interrupted)
    else:  # the tables are in place; the trace's rename is the last step
        real = os.replace
        monkeypatch.setattr(os, "replace", lambda src, dst: interrupted() if str(dst).endswith("t.json.gz")
                            else real(src, dst))
    rc, _, err = _eval(cli, tiny_model_dir, tmp_path / "o", "--profile", tmp_path / "t.json.gz")
    assert rc == 130 and not _said(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if when == "writing the tables" else ["o"])


def test_eval_a_failed_trace_rename_says_the_tables_were_written(cli, error_line, tmp_path, tiny_model_dir,
                                                                 failing_rename):
    trace = tmp_path / "t.json"
    failing_rename(trace)
    rc, _, err = _eval(cli, tiny_model_dir, tmp_path / "o", "--profile", trace)
    line = error_line(err, "eval")
    assert rc == 2 and line == (f"dcam eval: error: --profile: cannot write {str(trace)!r} (Input/output error); the "
                                f"tables were written to --out {str(tmp_path / 'o')!r}, the trace was not")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


# ------------------------------------------------------------------ dcam grounding

def _grounding(cli, model, *more):
    return cli("grounding", "--model", model, "--n", "3", "--probes", "full", "--layers", "0", *more)


def test_grounding_profile_records_the_images_from_the_second(cli, tmp_path, tiny_model_dir, monkeypatch):
    import dcam.eval.grounding as grounding

    for k, name, window, scope in ((None, "t.json.gz", [1, 2], "images 2-3 of 3"),
                                   (1, "t.json", [1], "image 2 of 3")):
        forwards = _forwards_per_item(monkeypatch, grounding, "_add_baselines")  # (called once per image)
        trace, result = tmp_path / name, tmp_path / f"g{k}.json"
        rc, stdout, err = _grounding(cli, tiny_model_dir, "--profile", trace, "--json", result,
                                     *(["--profile-images", k] if k else []))
        assert rc == 0 and "grounding rate" in stdout and json.loads(result.read_text())["n_images"] == 3
        _check_window(trace, forwards, window, err, scope, tmp_path)
    with open(tmp_path / "t.json.gz", "rb") as f:
        assert f.read(2) == GZIP_MAGIC


def test_grounding_profile_bad_paths_are_refused_before_anything_runs(cli, error_line, tmp_path, tiny_model_dir):
    (tmp_path / "old.json").write_text("{}")
    in_model = os.path.join(tiny_model_dir, "t.json")
    cases = [(tmp_path / "old.json", [], "--profile: ", "exists; choose a new file or pass --overwrite"),
             (tmp_path / "no" / "t.json", [], "--profile: ", "does not exist"),
             (tmp_path, [], "--profile: ", "is a folder, not a file"),
             (tmp_path / "r.json", ["--json", tmp_path / "r.json"], "--profile: ", "is the --json file too"),
             (in_model, [], "--profile: ", "lies in the model"),
             (None, ["--profile-images", "1"], "--profile-images: ", "give --profile FILE too")]
    for path, more, option, why in cases:
        rc, _, err = _grounding(cli, tiny_model_dir, *(["--profile", path] if path else []), *more)
        line = error_line(err, "grounding")
        assert rc == 2 and line.startswith(f"dcam grounding: error: {option}") and why in line, line
    assert (tmp_path / "old.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]
    assert not os.path.exists(in_model)


def test_grounding_a_failed_json_write_leaves_no_trace(cli, error_line, tmp_path, tiny_model_dir, monkeypatch):
    # the trace is put in place after the table and --json: a --json that fails leaves no trace nor temporary file
    import dcam.output as output

    def full(path, text, option=None):
        raise output.InputError(f"{option}: cannot write {path!r} (No space left on device)")
    monkeypatch.setattr(output, "write_text_atomic", full)
    rc, _, err = _grounding(cli, tiny_model_dir, "--profile", tmp_path / "t.json.gz", "--json", tmp_path / "g.json")
    assert rc == 2 and error_line(err, "grounding").startswith("dcam grounding: error: --json: cannot write")
    assert not _said(err) and sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the help of every --profile

def test_every_profile_option_says_a_gz_name_compresses_it():
    import argparse

    from dcam.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("explain", "run", "eval", "grounding"):
        action = next(a for a in subs[name]._actions if "--profile" in a.option_strings)
        assert ".gz" in action.help and "gzip-compressed" in action.help and "MB per explanation" in action.help
        assert action.help.endswith("(default: no profile)")


def test_the_window_says_which_items_it_recorded():
    # the calls evaluate() and grounding_report() make: (k, n) as item k begins (again when it is replaced),
    # then (done, done); worked out by hand from "count items from the second"
    from dcam.cli.profile import BatchWindow, TraceWriter

    def scope(calls, count=2):
        window = BatchWindow(TraceWriter(None, quiet=True), count, ("record", "records"))
        for i, n in calls:
            window(i, n)
        return window.scope

    assert scope([(0, 5), (1, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]) == "records 2-3 of 5"  # 1 replaced
    assert scope([(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)], count=1) == "record 2 of 5"
    assert scope([(0, 1), (1, 1)]) == "record 1 of 1"  # a command of one records that one
    assert scope([(0, 3), (1, 3), (2, 3), (3, 3)], count=9) == "records 2-3 of 3"
    assert scope([(0, 200), (1, 200), (2, 200), (2, 2)]) == "record 2 of 2"  # the data ran out after 2
    assert scope([(0, 200), (1, 200), (1, 1)]) == "the record after the first, not completed"
    assert scope([(0, 200), (1, 1)]) == ""  # nothing past the warm-up
