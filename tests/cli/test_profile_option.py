"""``dcam explain --profile FILE``: a torch.profiler trace with dcam's stages named, a line of each
stage's seconds, nothing on stderr with --quiet, and bad paths refused before anything runs."""
import collections
import json

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
                                                        monkeypatch):
    # the last step, after --out is in place: its error says what was written (it said only "cannot write")
    import os

    trace, real = tmp_path / "t.json", os.replace

    def replace(src, dst):
        if os.fspath(dst) == str(trace):
            raise OSError(5, "Input/output error")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--response", RESPONSE,
                     "--out", tmp_path / "o", "--profile", trace)
    line = error_line(err)
    assert rc == 2 and "--profile: cannot write" in line and "were written to --out" in line, line
    assert (tmp_path / "o" / "meta.json").exists() and not trace.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temporary trace left
