"""What a saved result says about the code that made it. run.json recorded dcam "0.1.0" for every
revision and meta.json no version at all: an auditor could not tell which code made a result. The
revision is the git commit of the checkout dcam runs from (+dirty), else the one a build wrote into
the package, else "unknown"; finding it never fails. Each expected commit here is asked of git by
the test itself."""
import json
import os
import subprocess
import sys

import pytest
import torch

from dcam import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(folder, *args) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def expected_revision(folder) -> str:
    dirty = git(folder, "status", "--porcelain", "--untracked-files=no")
    return git(folder, "rev-parse", "HEAD") + ("+dirty" if dirty else "")


@pytest.fixture
def checkout(tmp_path):
    """A git repository holding a package folder dcam/ with one committed file."""
    repo = tmp_path / "repo"
    (repo / "dcam").mkdir(parents=True)
    (repo / "dcam" / "__init__.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    return repo


def test_a_checkout_gives_its_commit_and_says_when_a_tracked_file_changed(checkout):
    commit = git(checkout, "rev-parse", "HEAD")
    assert len(commit) == 40
    assert provenance.checkout_revision(str(checkout / "dcam")) == commit
    (checkout / "notes.txt").write_text("untracked files change no code\n")
    assert provenance.checkout_revision(str(checkout / "dcam")) == commit
    (checkout / "dcam" / "__init__.py").write_text("x = 2\n")
    assert provenance.checkout_revision(str(checkout / "dcam")) == commit + "+dirty"


def test_a_checkout_whose_status_git_cannot_read_is_not_said_to_be_clean(checkout):
    # an edited tracked file and an unreadable index: rev-parse still answers, git status fails (exit 128); it was
    # taken for "no change", the plain commit recorded for code that differs from it
    commit = git(checkout, "rev-parse", "HEAD")
    (checkout / "dcam" / "__init__.py").write_text("x = 2\n")
    (checkout / ".git" / "index").write_bytes(b"not an index")
    assert subprocess.run(["git", "-C", str(checkout), "status", "--porcelain"], capture_output=True).returncode != 0
    assert provenance.checkout_revision(str(checkout / "dcam")) == commit + "+unchecked"


def test_a_package_installed_inside_another_repository_is_not_that_repository(checkout):
    # a virtual environment kept in a project's folder: its site-packages/dcam is not the project's commit
    site = checkout / "venv" / "lib" / "site-packages" / "dcam"
    site.mkdir(parents=True)
    assert provenance.checkout_revision(str(site)) is None


def test_without_git_the_built_revision_or_unknown_and_never_an_error(checkout, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    assert provenance.checkout_revision(str(checkout / "dcam")) is None
    assert provenance.built_revision(str(checkout / "dcam")) is None
    (checkout / "dcam" / provenance.REVISION_FILE).write_text("abc123\n")
    assert provenance.built_revision(str(checkout / "dcam")) == "abc123"
    provenance.code_revision.cache_clear()
    provenance._library_versions.cache_clear()
    try:  # this checkout without git, and no build wrote a revision into it
        assert not os.path.exists(os.path.join(ROOT, "dcam", provenance.REVISION_FILE))
        assert provenance.code_revision() == "unknown"
        assert provenance.versions()["dcam_revision"] == "unknown"
    finally:
        provenance.code_revision.cache_clear()
        provenance._library_versions.cache_clear()


def test_versions_name_this_checkouts_commit():
    found = provenance.versions()
    assert found["dcam_revision"] == expected_revision(ROOT)
    from dcam.runs import runner  # what run.json records: the same record
    assert runner.versions is provenance.versions


def test_a_build_writes_the_commit_into_the_package(tmp_path):
    res = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "dcam" / provenance.REVISION_FILE).read_text().strip() == expected_revision(ROOT)
    assert not os.path.exists(os.path.join(ROOT, "dcam", provenance.REVISION_FILE))  # (the build's copy only)


def _explained(bundled, backend="auto"):
    import dcam
    from dcam.zoo.data import generate_sample

    image = generate_sample((0, 2, 1), image_size=64, n_objects=2).image
    return dcam.Explainer(*bundled, backend=backend).explain(image, response="a red circle")


def test_meta_json_records_the_code_threads_kernels_and_model(bundled, tmp_path):
    import dcam
    from dcam import zoo

    _explained(bundled).save(str(tmp_path / "a"))
    record = json.loads((tmp_path / "a" / "meta.json").read_text())["provenance"]
    assert record["versions"]["dcam_revision"] == expected_revision(ROOT)
    assert record["versions"]["torch"] == torch.__version__
    assert record["machine"]["torch_threads"] == torch.get_num_threads() == 1  # (the suite runs one thread)
    assert (record["backend"], record["kernels"]) == ("auto", "cpp")  # dcam._C is built in this checkout
    assert record["model"]["class"] == "dcam.zoo.modeling.ShapesDMLLM"
    assert os.path.realpath(record["model"]["name_or_path"]) == os.path.realpath(zoo.WEIGHTS_DIR)
    assert "command" not in record  # (a Python call has no command; dcam explain adds its own)
    assert json.loads(json.dumps(_explained(bundled, "torch").meta()["provenance"]))["kernels"] == "torch"
    # a loaded explanation keeps the record it was saved with: a save of it never claims this process's code
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    meta["provenance"]["versions"]["dcam_revision"] = "0" * 40
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    dcam.load_explanation(str(tmp_path / "a")).save(str(tmp_path / "b"))
    again = json.loads((tmp_path / "b" / "meta.json").read_text())["provenance"]
    assert again["versions"]["dcam_revision"] == "0" * 40


def test_a_folder_saved_before_provenance_still_loads(bundled, tmp_path):
    import dcam

    _explained(bundled).save(str(tmp_path / "a"))
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    del meta["provenance"]
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    assert dcam.load_explanation(str(tmp_path / "a")).meta()["provenance"] is None
    meta["provenance"] = "text"
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(dcam.InputError, match="provenance must be an object"):
        dcam.load_explanation(str(tmp_path / "a"))


def test_an_explanation_saved_without_its_record_holds_no_path(bundled, tmp_path):
    # README, Reproducibility: what to do before sharing a folder (the record holds the model's absolute folder)
    import dcam
    from dcam import zoo

    e = _explained(bundled)
    e.extra["provenance"] = None
    e.save(str(tmp_path / "a"))
    text = (tmp_path / "a" / "meta.json").read_text()
    assert json.loads(text)["provenance"] is None
    assert os.path.realpath(zoo.WEIGHTS_DIR) not in text and zoo.WEIGHTS_DIR not in text
    assert dcam.load_explanation(str(tmp_path / "a")).meta()["provenance"] is None
