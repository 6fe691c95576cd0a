"""A file of a run folder that `dcam run` cannot read (an unreadable index or errors file) is named as a
file it cannot read, on one line naming --out: it was reported as a failed write of the folder."""
import os
import shutil

import pytest

from dcam.cli import main

RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _resumed(run_manifest, out, capsys):
    capsys.readouterr()
    rc = main(["run", run_manifest["path"], "--out", out, *RUN_ARGS])
    return rc, capsys.readouterr().err.strip().splitlines()


def _message(path, why):
    return [f"dcam run: error: --out: cannot read {path!r} ({why}); what was written is kept: make it readable and "
            "rerun the same command to resume, or pass --overwrite to start over"]


@pytest.mark.parametrize("name", ["index.jsonl", "errors.jsonl"])  # read at the start, and at the end (merging)
def test_a_file_of_the_folder_that_is_a_directory_is_named_as_unreadable(name, run_manifest, reference_run, tmp_path,
                                                                          capsys):
    # a directory in place of the file: its open() raises IsADirectoryError (an OSError), whoever runs the test
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    os.unlink(os.path.join(out, name))
    os.mkdir(os.path.join(out, name))
    rc, err = _resumed(run_manifest, out, capsys)
    # it was "--out: writing '<out>' failed (IsADirectoryError: [Errno 21] Is a directory: '<out>/<name>'); ..."
    assert (rc, err) == (2, _message(os.path.join(out, name), "IsADirectoryError: Is a directory"))
    assert os.path.isdir(os.path.join(out, name))  # left as it was found


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_index_without_read_permission_is_named_as_unreadable(run_manifest, reference_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    index = os.path.join(out, "index.jsonl")
    os.chmod(index, 0)
    try:
        rc, err = _resumed(run_manifest, out, capsys)
    finally:
        os.chmod(index, 0o644)
    assert (rc, err) == (2, _message(index, "PermissionError: Permission denied"))
    rc, err = _resumed(run_manifest, out, capsys)  # readable again: the run resumes, with nothing left to do
    assert (rc, err) == (0, [])


def test_an_unreadable_index_is_named_when_overlays_are_added_on_a_resume(run_manifest, reference_run, tmp_path,
                                                                          capsys):
    # --overlays added on a folder run without them reads the index (records done?) before the folder is prepared:
    # a directory in place of the index was an IsADirectoryError traceback there
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    index = os.path.join(out, "index.jsonl")
    os.unlink(index)
    os.mkdir(index)
    capsys.readouterr()
    rc = main(["run", run_manifest["path"], "--out", out, *RUN_ARGS, "--overlays"])
    err = capsys.readouterr().err.strip().splitlines()
    assert (rc, err) == (2, _message(index, "IsADirectoryError: Is a directory"))
    assert os.path.isdir(index) and not os.path.exists(os.path.join(out, "overlays"))  # left as it was found
