"""A run folder someone else handed over, resumed (``dcam run MANIFEST --out RUN``): its ``shards/`` (or
``index/``, ``errors/``, ``overlays/``, the lock file) a symbolic link to a folder outside the run. A resume
deletes every file of ``shards/`` no index line names, as debris of a killed process: through a link it
deleted the files of the folder the link pointed to (a user's thesis beside the run's shard) and wrote
new shards there. Now such a folder is refused in one line, before anything is written or deleted. And
the files a run folder gets anew are written under a name nobody can guess, never through a link put at
the name they had (``index.html.tmp-<pid>``)."""
import json
import os
import shutil

import pytest

from dcam.cli import main

RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _manifest(run_manifest, path, ids):
    """One line per id (the manifest's image of that name; "gone": an image that is not there, a failed record)."""
    path.write_text("".join(json.dumps({"id": rid, "image": os.path.join(run_manifest["folder"], "img", f"{rid}.png"),
                                        "response": "a red circle"}) + "\n" for rid in ids))
    return str(path)


def _tree(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


@pytest.mark.parametrize("name", ["shards", "index", "errors"])
def test_a_resume_of_a_run_whose_folder_is_a_link_elsewhere_is_refused_and_changes_nothing(
        run_manifest, tmp_path, capsys, name):
    run = str(tmp_path / "run")
    assert main(["run", _manifest(run_manifest, tmp_path / "one.jsonl", ["s0"]), "--out", run, *RUN_ARGS]) == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("four years of work\n")
    if name == "shards":  # the run's own shard beside the user's files: the index still reads
        for f in os.listdir(os.path.join(run, "shards")):
            shutil.copy(os.path.join(run, "shards", f), victim)
    if os.path.isdir(os.path.join(run, name)):
        shutil.rmtree(os.path.join(run, name))
    os.symlink(str(victim), os.path.join(run, name))
    before, run_before = _tree(victim), sorted(os.listdir(run))
    capsys.readouterr()
    # more records, one failing: a resume that would delete the "debris" of shards/, then write a shard, index
    # and error lines
    rc = main(["run", _manifest(run_manifest, tmp_path / "three.jsonl", ["s0", "s1", "gone"]), "--out", run,
               *RUN_ARGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"dcam run: error: --out: {os.path.join(run, name)!r} is a symbolic link")
    assert _tree(victim) == before  # (the old code deleted thesis.tex and wrote a new shard here)
    assert sorted(os.listdir(run)) == run_before
    # --overwrite starts over: the link goes (never what it points to), the run is written inside
    assert main(["run", str(tmp_path / "three.jsonl"), "--out", run, "--overwrite", *RUN_ARGS]) == 0
    assert _tree(victim) == before
    assert not os.path.islink(os.path.join(run, "shards")) and os.path.isdir(os.path.join(run, "shards"))


def test_a_lock_file_that_is_a_link_is_refused_and_nothing_is_made_where_it_points(run_manifest, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["run", _manifest(run_manifest, tmp_path / "one.jsonl", ["s0"]), "--out", run, *RUN_ARGS]) == 0
    os.unlink(os.path.join(run, ".lock"))  # (a finished run leaves its lock file)
    os.symlink(str(tmp_path / "made-elsewhere"), os.path.join(run, ".lock"))
    capsys.readouterr()
    lock = os.path.join(run, ".lock")
    for extra in ([], ["--overwrite"]):  # (the lock is taken before --overwrite removes anything: it cannot help)
        assert main(["run", str(tmp_path / "one.jsonl"), "--out", run, *extra, *RUN_ARGS]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        # it said "cannot write into '...' (OSError: Too many levels of symbolic links)": not which file, nor what to do
        assert err == [f"dcam run: error: --out: {lock!r} is a symbolic link (to {str(tmp_path / 'made-elsewhere')!r});"
                       " dcam locks a run folder with a .lock file of its own, never through a link (--overwrite "
                       "cannot remove it: the lock is taken first): remove the link, or choose a new folder"], err
        assert not os.path.lexists(tmp_path / "made-elsewhere")  # (the old code created an empty file there)
        assert os.path.islink(lock) and os.path.isfile(os.path.join(run, "run.json"))  # the folder as it was


def test_dcam_view_never_writes_through_a_link_put_at_its_temporary_name(reference_run, tmp_path, capsys):
    # the page was written to index.html.tmp-<pid> (opened with O_TRUNC, following a link), then renamed: a run
    # folder holding links at those names for every pid had the file they pointed to overwritten with the page,
    # and index.html became the link
    run = str(tmp_path / "run")
    shutil.copytree(reference_run, run)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    planted = os.path.join(run, f"index.html.tmp-{os.getpid()}")  # (this process runs the command)
    os.symlink(str(victim), planted)
    capsys.readouterr()
    assert main(["view", run, "--quiet"]) == 0, capsys.readouterr().err
    assert victim.read_text() == "precious\n"
    page = os.path.join(run, "index.html")
    assert not os.path.islink(page) and open(page).read().startswith("<!DOCTYPE html>")
    assert os.readlink(planted) == str(victim)  # left as found (a resume deletes such debris, the link alone)
    assert [n for n in os.listdir(run) if ".tmp-" in n] == [os.path.basename(planted)]
