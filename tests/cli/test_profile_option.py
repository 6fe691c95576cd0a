"""``dcam explain --profile FILE``: a torch.profiler trace with dcam's stages named, a line of each
stage's seconds, nothing on stderr with --quiet, and bad paths refused before anything runs."""
import collections
import json
import os
import stat

from dcam.profiling import STAGES

RESPONSE = "a blue triangle and a green circle"  # 7 words of the toy's tokenizer


def test_cli_profile_writes_a_trace_and_says_each_stage(cli, tmp_path, tiny_model_dir, shapes_png):
    trace, out = tmp_path / "t.json", tmp_path / "o"
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--chunk-size", 2,
                     "--out", out, "--profile", trace)
    assert rc == 0
    names = collections.Counter(ev.get("name") for ev in json.load(open(trace))["traceEvents"])
    assert names["dcam.forward"] == 1 and names["dcam.backward"] == 4 and names["dcam.maps"] == 1
    said = [line for line in err if line.startswith("[dcam] profile: ")]
    assert len(said) == 1 and f"trace written to {trace}" in said[0]
    # every stage that ran, in pipeline order, with its seconds
    ran = [s[len("dcam."):] for s in STAGES if names[s]]
    assert [part.split()[0] for part in said[0][len("[dcam] profile: "):].split(";")[0].split(", ")] == ran


def test_cli_profile_says_the_explanation_and_the_trace_writing_apart(cli, tmp_path, tiny_model_dir, shapes_png,
                                                                     monkeypatch):
    # "explained in" counted the trace's export and parse (seconds for the bundled toy's ~28k events): 4.5 s
    # said for an explanation of 0.6 s. The command's own steps are timed here as they run (the real
    # functions, wrapped): the explanation starts after the explainer is made and ends before the trace's
    # export begins, so "explained in" is at most that interval, and at least the stages inside it; the
    # export said is at most the export's call (the figures are rounded: 0.05 s, stages 0.005 s each)
    import re
    import time

    from dcam.cli import common, profile

    marks = {}
    made, stop = common.explainer_for, profile.TraceWriter.stop

    def explainer_for(*args, **kwargs):
        try:
            return made(*args, **kwargs)
        finally:
            marks["explainer made"] = time.perf_counter()

    def timed_stop(self, *args, **kwargs):
        marks.setdefault("export began", time.perf_counter())
        stop(self, *args, **kwargs)
        marks.setdefault("export ended", time.perf_counter())

    monkeypatch.setattr(common, "explainer_for", explainer_for)
    monkeypatch.setattr(profile.TraceWriter, "stop", timed_stop)
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--out", tmp_path / "o",
                     "--profile", tmp_path / "t.json")
    assert rc == 0
    explained = [m for line in err for m in [re.fullmatch(r"\[dcam\] explained in (\d+\.\d) s, the trace exported in "
                                                          r"(\d+\.\d) s; writing (.*)", line)] if m]
    said = [line for line in err if line.startswith("[dcam] profile: ")]
    assert len(explained) == 1 and len(said) == 1, err
    stages = [float(re.fullmatch(r"\w+ (\d+\.\d\d) s", part).group(1))
              for part in said[0][len("[dcam] profile: "):].split(";")[0].split(", ")]
    assert explained[0].group(3) == str(tmp_path / "o")
    explaining, exporting = float(explained[0].group(1)), float(explained[0].group(2))
    assert explaining <= marks["export began"] - marks["explainer made"] + 0.05, (explaining, marks)
    assert explaining >= sum(stages) - 0.05 - 0.005 * len(stages)
    assert exporting <= marks["export ended"] - marks["export began"] + 0.05, (exporting, marks)


def test_cli_profile_is_quiet_with_quiet(dcam_child, tmp_path, tiny_model_dir, shapes_png):
    # torch's profiler writes start/stop lines of its own on stderr; --quiet leaves stderr empty
    p = dcam_child("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--quiet",
                   "--out", tmp_path / "o", "--profile", tmp_path / "t.json")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert json.load(open(tmp_path / "t.json"))["traceEvents"]


def test_cli_profile_bad_paths_are_refused_before_anything_runs(cli, error_line, tmp_path, tiny_model_dir,
                                                                 shapes_png):
    (tmp_path / "old.json").write_text("{}")
    cases = [(tmp_path / "old.json", "exists; choose a new file or pass --overwrite"),
             (tmp_path / "no" / "t.json", "does not exist"),
             (tmp_path / "o" / "t.json", "lies in --out"),
             (tmp_path, "is a folder, not a file")]
    for path, why in cases:
        rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE,
                         "--out", tmp_path / "o", "--profile", path)
        line = error_line(err)
        assert rc == 2 and line.startswith("dcam explain: error: --profile: ") and why in line, line
        assert not (tmp_path / "o").exists()
    assert (tmp_path / "old.json").read_text() == "{}"


def test_cli_profile_refuses_what_is_not_a_regular_file(cli, error_line, tmp_path, tiny_model_dir, shapes_png):
    # --overwrite is for --out: with it, a device or pipe given as --profile was replaced by a regular file
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--overwrite",
                     "--out", tmp_path / "o", "--profile", fifo)
    assert rc == 2 and "--profile: " in error_line(err) and "is not a regular file" in error_line(err)
    assert fifo.is_fifo() and not (tmp_path / "o").exists()


def test_cli_profile_inside_out_through_a_link_is_refused(cli, error_line, tmp_path, tiny_model_dir, shapes_png):
    (tmp_path / "o").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "o")
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--overwrite",
                     "--out", tmp_path / "o", "--profile", tmp_path / "link" / "t.json")
    assert rc == 2 and "lies in --out" in error_line(err)
    assert list((tmp_path / "o").iterdir()) == []


def test_cli_a_failed_trace_export_leaves_out_unwritten(cli, error_line, tmp_path, tiny_model_dir, shapes_png,
                                                        monkeypatch):
    # the trace is exported before --out is written: a failed export (disk full) leaves no half behind
    import torch

    def full(self, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch.profiler.profile, "export_chrome_trace", full)
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE,
                     "--out", tmp_path / "o", "--profile", tmp_path / "t.json")
    assert rc == 2 and "--profile: cannot write" in error_line(err) and "No space left" in error_line(err)
    assert not (tmp_path / "o").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_a_failed_trace_rename_says_out_was_written(cli, error_line, tmp_path, tiny_model_dir, shapes_png,
                                                        failing_rename):
    # the last step, after --out is in place: its error says what was written (it said only "cannot write")
    trace = tmp_path / "t.json"
    failing_rename(trace)
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE,
                     "--out", tmp_path / "o", "--profile", trace)
    line = error_line(err)
    assert rc == 2 and "--profile: cannot write" in line and "were written to --out" in line, line
    assert (tmp_path / "o" / "meta.json").exists() and not trace.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temporary trace left


# ------------------------------------------------------------------ dcam run --profile

def _manifest(folder, image, n):
    """n records of the same image and response (ids r0, r1, ...)."""
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "image": str(image), "response": RESPONSE}) + "\n"
                            for i in range(n)))
    return path


def _count_forwards(monkeypatch):
    """The forwards each batch of a run makes, counted apart from the trace: calls of the probe's forward
    (the function the dcam.forward range wraps), split at each batch's explain_records call (not at
    the calls it makes for the records of a refused batch). Returns the list of counts, filled by the run."""
    import dcam.probe.gradients as gradients
    import dcam.runs.runner as runner

    counts, depth = [], [0]
    forward, explain_records = gradients._forward, runner.explain_records

    def counted_forward(*a, **k):
        counts[-1] += 1
        return forward(*a, **k)

    def each_batch(*a, **k):
        if depth[0] == 0:
            counts.append(0)
        depth[0] += 1
        try:
            return explain_records(*a, **k)
        finally:
            depth[0] -= 1
    monkeypatch.setattr(gradients, "_forward", counted_forward)
    monkeypatch.setattr(runner, "explain_records", each_batch)
    return counts


def _trace_names(path):
    return collections.Counter(ev.get("name") for ev in json.load(open(path))["traceEvents"])


def test_cli_run_profile_records_the_batches_from_the_second(cli, tmp_path, tiny_model_dir, shapes_png, monkeypatch):
    # 7 records in batches of 3: [3, 3, 1], each batch's examples in forwards of at most --chunk-size 2: 2, 2, 1
    manifest = _manifest(tmp_path, shapes_png, 7)
    for k, window, scope in ((None, [1, 2], "batches 2-3 of 3"), (1, [1], "batch 2 of 3"),
                             (5, [1, 2], "batches 2-3 of 3")):
        forwards = _count_forwards(monkeypatch)
        trace, out = tmp_path / f"t{k}.json", tmp_path / f"run{k}"
        rc, stdout, err = cli("run", manifest, "--model", tiny_model_dir, "--out", out, "--batch-size", 3,
                              "--chunk-size", 2, "--profile", trace, *(["--profile-batches", k] if k else []))
        assert rc == 0 and "7 of 7 records explained" in stdout
        assert forwards == [2, 2, 1]  # as worked out above
        names = _trace_names(trace)
        # the first batch (the warm-up) is not in it: 2 + 1 forwards, not 2 + 2
        assert names["dcam.forward"] == sum(forwards[b] for b in window)
        assert names["dcam.backward"] > 0 and names["dcam.maps"] > 0
        said = [line for line in err if line.startswith("[dcam] profile: ")]
        assert len(said) == 1 and said[0].endswith(f"; {scope}; trace written to {trace}"), said
        ran = [s[len("dcam."):] for s in STAGES if names[s]]
        assert [part.split()[0] for part in said[0][len("[dcam] profile: "):].split(";")[0].split(", ")] == ran
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file


def test_cli_run_profile_of_a_resume_records_its_own_batches(cli, tmp_path, tiny_model_dir, shapes_png, monkeypatch):
    manifest = _manifest(tmp_path, shapes_png, 7)
    first = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(first[:3]))
    out = tmp_path / "run"
    assert cli("run", manifest, "--model", tiny_model_dir, "--out", out, "--batch-size", 3, "--quiet")[0] == 0
    manifest.write_text("".join(first))  # 4 records more: the resume's batches are [r3 r4 r5] and [r6]
    forwards = _count_forwards(monkeypatch)
    rc, _, err = cli("run", manifest, "--model", tiny_model_dir, "--out", out, "--batch-size", 3, "--chunk-size", 2,
                     "--profile", tmp_path / "t.json")
    assert rc == 0 and forwards == [2, 1]
    assert _trace_names(tmp_path / "t.json")["dcam.forward"] == 1  # its second batch: r6 alone
    assert [line for line in err if line.startswith("[dcam] profile: ")][0].endswith(
        f"; batch 2 of 2; trace written to {tmp_path / 't.json'}")
    # nothing left: one line, no trace, not an error
    rc, stdout, err = cli("run", manifest, "--model", tiny_model_dir, "--out", out, "--profile", tmp_path / "t2.json")
    assert rc == 0 and "nothing was left to explain" in stdout
    assert [line for line in err if line.startswith("[dcam] profile")] == [
        f"[dcam] profile: this process had no batch left to explain; no trace written to {tmp_path / 't2.json'}"]
    assert not (tmp_path / "t2.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_run_profile_batches_must_be_a_positive_int_with_profile(cli, error_line, tmp_path, tiny_model_dir,
                                                                     shapes_png):
    manifest = _manifest(tmp_path, shapes_png, 1)
    for value, why in (("0", "expected an int >= 1, got 0"), ("-1", "expected an int >= 1, got -1"),
                       ("x", "expected an int >= 1, got 'x'")):
        rc, _, err = cli("run", manifest, "--model", tiny_model_dir, "--out", tmp_path / "o", "--profile",
                         tmp_path / "t.json", "--profile-batches", value)
        line = error_line(err, "run")
        assert rc == 2 and "--profile-batches" in line and why in line, line
    rc, _, err = cli("run", manifest, "--model", tiny_model_dir, "--out", tmp_path / "o", "--profile-batches", "2")
    line = error_line(err, "run")
    assert rc == 2 and line.startswith("dcam run: error: --profile-batches: ") and "--profile FILE" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]


def test_cli_run_profile_bad_paths_are_refused_before_anything_runs(cli, error_line, tmp_path, tiny_model_dir,
                                                                    shapes_png):
    manifest = _manifest(tmp_path, shapes_png, 1)
    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "o")  # (dangling: --out is made by the run)
    cases = [(tmp_path / "old.json", [], "exists; choose a new file or pass --overwrite"),
             (tmp_path / "o" / "t.json", [], "lies in --out"),
             (tmp_path / "o" / "t.json", ["--overwrite"], "lies in --out"),
             (tmp_path / "link" / "t.json", [], "lies in --out"),
             (tmp_path / "no" / "t.json", [], "does not exist"),
             (manifest, ["--overwrite"], "lies in the manifest"),
             (tmp_path, [], "is a folder, not a file")]
    for path, more, why in cases:
        rc, _, err = cli("run", manifest, "--model", tiny_model_dir, "--out", tmp_path / "o", "--profile", path,
                         *more)
        line = error_line(err, "run")
        assert rc == 2 and line.startswith("dcam run: error: --profile: ") and why in line, line
        assert not (tmp_path / "o").exists()  # no run folder either
    assert (tmp_path / "old.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "manifest.jsonl", "old.json"]


def test_cli_run_profile_overwrite_replaces_an_old_trace(cli, tmp_path, tiny_model_dir, shapes_png):
    # --overwrite covers the trace, as in dcam explain (and starts the run over)
    manifest = _manifest(tmp_path, shapes_png, 1)
    (tmp_path / "t.json").write_text("{}")
    rc, _, err = cli("run", manifest, "--model", tiny_model_dir, "--out", tmp_path / "o", "--overwrite",
                     "--profile", tmp_path / "t.json")
    assert rc == 0
    assert _trace_names(tmp_path / "t.json")["dcam.forward"] == 1  # a single batch: that one is recorded
    assert any(line.endswith(f"; batch 1 of 1; trace written to {tmp_path / 't.json'}") for line in err)


def test_cli_run_that_fails_after_its_profiled_batches_leaves_no_trace(cli, error_line, tmp_path, tiny_model_dir,
                                                                       shapes_png, monkeypatch):
    # the batches were recorded, then run.json's write failed (disk full): the run is not done, no trace is there
    import dcam.runs.runner as runner

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runner, "finish", full)
    manifest = _manifest(tmp_path, shapes_png, 3)
    rc, _, err = cli("run", manifest, "--model", tiny_model_dir, "--out", tmp_path / "o", "--batch-size", 1,
                     "--profile", tmp_path / "t.json")
    assert rc == 2 and "No space left" in error_line(err, "run")
    assert not [line for line in err if line.startswith("[dcam] profile")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl", "o"]  # no trace, no temporary file


def test_rank_path_puts_the_rank_before_the_extension():
    from dcam.cli.profile import rank_path

    assert rank_path("trace.json", 0) == "trace.json"
    assert rank_path("trace.json", 1) == "trace.rank1.json"
    assert rank_path("out/v1.2/trace.json", 12) == "out/v1.2/trace.rank12.json"
    assert rank_path("trace", 3) == "trace.rank3"


def test_rank_path_puts_the_rank_before_both_extensions_of_a_compressed_trace():
    from dcam.cli.profile import rank_path

    assert rank_path("trace.json.gz", 0) == "trace.json.gz"
    assert rank_path("trace.json.gz", 1) == "trace.rank1.json.gz"  # (not trace.json.rank1.gz)
    assert rank_path("out/v1.2/t.gz", 2) == "out/v1.2/t.rank2.gz"


# ------------------------------------------------------------------ --profile FILE.gz

def _gzip_trace_names(path):
    """The events' names of a gzip-compressed Chrome trace (a plain JSON named .gz fails here: gzip's magic
    bytes first)."""
    import gzip

    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b", "not gzip"
    with gzip.open(path, "rt") as f:
        return collections.Counter(ev.get("name") for ev in json.load(f)["traceEvents"])


def test_cli_profile_gz_writes_a_compressed_trace(cli, tmp_path, tiny_model_dir, shapes_png):
    trace, out = tmp_path / "t.json.gz", tmp_path / "o"
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE, "--chunk-size", 2,
                     "--out", out, "--profile", trace)
    assert rc == 0
    names = _gzip_trace_names(trace)
    assert names["dcam.forward"] == 1 and names["dcam.backward"] == 4 and names["dcam.maps"] == 1  # as uncompressed
    said = [line for line in err if line.startswith("[dcam] profile: ")]
    assert len(said) == 1 and said[0].endswith(f"trace written to {trace}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "t.json.gz"]  # no temporary file
    # a file's usual mode, as an uncompressed trace has (not the 0600 of the temporary file it was gzipped into)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(trace).st_mode) == 0o666 & ~mask


def test_cli_run_profile_gz_writes_a_compressed_trace(cli, tmp_path, tiny_model_dir, shapes_png, monkeypatch):
    manifest = _manifest(tmp_path, shapes_png, 3)
    forwards = _count_forwards(monkeypatch)
    trace = tmp_path / "t.json.gz"
    rc, _, err = cli("run", manifest, "--model", tiny_model_dir, "--out", tmp_path / "run", "--batch-size", 1,
                     "--profile", trace, "--profile-batches", 1)
    assert rc == 0 and forwards == [1, 1, 1]
    assert _gzip_trace_names(trace)["dcam.forward"] == 1  # batch 2 of 3
    assert any(line.endswith(f"; batch 2 of 3; trace written to {trace}") for line in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl", "run", "t.json.gz"]


def test_cli_profile_inside_out_named_through_link_dotdot_is_refused(cli, error_line, tmp_path, tiny_model_dir,
                                                                    shapes_png):
    # --out 'link/../o' is the folder ./o (the outputs take '..' as text), not the one beside the link's target:
    # a trace in ./o lies in it (it was compared with elsewhere/o and let through, then written inside --out)
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere" / "deep")
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE,
                     "--out", f"{tmp_path}/link/../o", "--profile", tmp_path / "o" / "t.json")
    assert rc == 2 and "lies in --out" in error_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "link"]
