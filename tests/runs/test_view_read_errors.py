"""A file of a run folder that `dcam view` cannot read (its index, errors file or an index part) is named as a
file it cannot read, on one line: it was reported as "writing the page ... failed"."""
import os
import shutil

import pytest

from dcam.cli import main
from dcam.testing.support import file_tree


@pytest.mark.parametrize("name", ["index.jsonl", "errors.jsonl", os.path.join("index", "0-r00000-p1.jsonl")])
def test_a_file_of_the_run_that_is_a_directory_is_named_as_unreadable(name, reference_run, tmp_path, capsys):
    # a directory in place of the file: its open() raises IsADirectoryError (an OSError), whoever runs the test
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    assert main(["view", out, "--quiet"]) == 0  # a page of the run as it was, which must be left as it is
    page = file_tree(out)
    path = os.path.join(out, name)
    if os.path.exists(path):
        os.unlink(path)
    os.mkdir(path)
    capsys.readouterr()
    rc = main(["view", out, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    # it was "DIR: writing the page into '<out>' failed (IsADirectoryError: [Errno 21] Is a directory: '<path>')"
    assert (rc, err) == (2, [f"dcam view: error: DIR: cannot read {path!r} (IsADirectoryError: Is a directory); "
                             "the page was not written"])
    page.pop(name, None)
    assert file_tree(out) == page and os.path.isdir(path)  # the old page whole, nothing half-written, nothing left
    assert sorted(os.listdir(out)) == sorted(set(os.listdir(reference_run)) | {"view", "index.html"})
