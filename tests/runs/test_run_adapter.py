"""`dcam run --adapter MODULE:CLASS`: the user's adapter is part of the run's fingerprint, so a resume with
another adapter class is refused like another changed option (it was taken as the same run: the two adapters,
both of the shapes family, mixed their records in one folder); the same adapter resumes, and a folder of dcam's
own adapters keeps the identity it had before (no adapter key), so folders written earlier still resume."""
import hashlib
import json

import pytest

from dcam.cli import main

RUN_ARGS = ["--threads", "1", "--quiet"]
ADAPTER = ("from dcam.probe.adapters import ShapesAdapter\n\n\nclass {name}(ShapesAdapter):\n"
           "    def default_layer(self):\n        return 1\n")


@pytest.fixture
def work(in_folder):
    """The current folder with two adapter modules and a folder of one image; sys.path and the
    registries restored after the test (tests/conftest.py in_folder)."""
    from dcam.zoo.data import generate_sample

    (in_folder / "run_adapter_a.py").write_text(ADAPTER.format(name="FirstAdapter"))
    (in_folder / "run_adapter_b.py").write_text(ADAPTER.format(name="SecondAdapter"))
    (in_folder / "imgs").mkdir()
    generate_sample((0, 2, 1), image_size=32, n_objects=2).image.save(in_folder / "imgs" / "a.png")
    return in_folder


def _add_image(work, name):
    from dcam.zoo.data import generate_sample

    generate_sample((1, 0, 2), image_size=32, n_objects=2).image.save(work / "imgs" / name)


def _records(folder):
    return sorted(json.loads(line)["id"] for line in (folder / "index.jsonl").read_text().splitlines() if line)


def test_a_resume_with_another_adapter_is_refused_and_with_the_same_one_resumes(work, capsys):
    out = work / "run"
    assert main(["run", "imgs", "--out", "run", "--adapter", "run_adapter_a:FirstAdapter", *RUN_ARGS]) == 0
    identity = json.loads((out / "run.json").read_text())["identity"]
    assert identity["adapter"] == "run_adapter_a:FirstAdapter" and identity["family"] == "shapes"
    _add_image(work, "b.png")
    capsys.readouterr()
    assert main(["run", "imgs", "--out", "run", "--adapter", "run_adapter_b:SecondAdapter", *RUN_ARGS]) == 2
    assert capsys.readouterr().err == (f"dcam run: error: --out: {str(out)!r} holds a run of another model/method/"
                                       "config (differs in: adapter); pass --overwrite to start over, or choose a "
                                       "new folder\n")
    # dcam's own adapter is another one too, on the same block
    assert main(["run", "imgs", "--out", "run", "--layer", "1", *RUN_ARGS]) == 2
    assert "(differs in: adapter);" in capsys.readouterr().err
    assert _records(out) == ["a.png"]  # nothing of the other adapters was added
    assert main(["run", "imgs", "--out", "run", "--adapter", "run_adapter_a:FirstAdapter", *RUN_ARGS]) == 0
    assert _records(out) == ["a.png", "b.png"]


def test_a_folder_of_dcams_own_adapter_has_the_identity_it_had_and_resumes(work, capsys):
    out = work / "run"
    assert main(["run", "imgs", "--out", "run", *RUN_ARGS]) == 0
    info = json.loads((out / "run.json").read_text())
    # the keys a run folder had before the adapter joined the fingerprint: its fingerprint is unchanged
    assert sorted(info["identity"]) == ["config", "dtype", "family", "granularity", "layer", "method", "model",
                                        "model_class", "probe", "source", "steps", "target_score", "view"]
    digest = hashlib.sha256(json.dumps(info["identity"], sort_keys=True, default=str).encode()).hexdigest()
    assert info["fingerprint"] == digest
    _add_image(work, "b.png")
    assert main(["run", "imgs", "--out", "run", *RUN_ARGS]) == 0
    assert _records(out) == ["a.png", "b.png"]


def test_a_folder_started_with_an_adapter_before_it_was_recorded_is_refused(work, capsys):
    # which adapter made its records cannot be known: resuming it with one could mix two adapters' maps
    out = work / "run"
    assert main(["run", "imgs", "--out", "run", "--adapter", "run_adapter_a:FirstAdapter", *RUN_ARGS]) == 0
    info = json.loads((out / "run.json").read_text())
    del info["identity"]["adapter"]  # as such a folder's run.json was written
    info["fingerprint"] = hashlib.sha256(json.dumps(info["identity"], sort_keys=True).encode()).hexdigest()
    (out / "run.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert main(["run", "imgs", "--out", "run", "--adapter", "run_adapter_a:FirstAdapter", *RUN_ARGS]) == 2
    assert "(differs in: adapter); pass --overwrite to start over" in capsys.readouterr().err
