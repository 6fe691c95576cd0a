"""A manifest that `dcam run` cannot read any more during the run (gone, or replaced, after it was opened) is
named as a file it cannot read, on one line naming MANIFEST: it was reported as a failed write of --out."""
import os
import shutil

from dcam.cli import main

RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def test_a_manifest_replaced_during_the_run_is_named_as_unreadable(run_manifest, tmp_path, monkeypatch, capsys):
    # the manifest replaced by a directory once dcam run has opened it (and checked every line): the first record's
    # read of its line raised IsADirectoryError, reported as "--out: writing '<out>' failed (IsADirectoryError: ...)"
    from dcam.cli import run as run_cli

    folder = str(tmp_path / "manifest")
    shutil.copytree(os.path.dirname(run_manifest["path"]), folder)  # its images and masks beside it
    manifest = os.path.join(folder, os.path.basename(run_manifest["path"]))
    opened = run_cli._open_source

    def open_then_replace(args):
        source = opened(args)
        os.unlink(manifest)
        os.mkdir(manifest)
        return source

    monkeypatch.setattr(run_cli, "_open_source", open_then_replace)
    out = str(tmp_path / "run")
    capsys.readouterr()
    rc = main(["run", manifest, "--out", out, *RUN_ARGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert (rc, err) == (2, [f"dcam run: error: MANIFEST: cannot read {manifest!r} (IsADirectoryError: Is a "
                             f"directory) during the run; what was written into {out!r} is kept: make it readable "
                             "and rerun the same command to resume"])
    assert not os.path.exists(os.path.join(out, "index.jsonl"))  # nothing taken for done: no record was read
    assert not any(os.listdir(os.path.join(out, d)) for d in ("index", "errors") if os.path.isdir(os.path.join(out, d)))
    os.rmdir(manifest)  # readable again: the same command resumes and explains every good record
    shutil.copy(run_manifest["path"], manifest)
    monkeypatch.setattr(run_cli, "_open_source", opened)
    assert main(["run", manifest, "--out", out, *RUN_ARGS]) == 0
    with open(os.path.join(out, "index.jsonl")) as f:
        assert sum(1 for line in f if line.strip()) == len(run_manifest["good"])  # the 8 good ones
