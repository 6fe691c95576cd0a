"""``dcam run --view``: ``default`` is the run without ``--view`` (it recorded view "default" in
run.json, so a resume without ``--view`` was refused: "differs in: view"); ``all`` with
``--trajectory`` is the one view of a single-view model (it was refused before the model loaded,
"pick a view" with none other to pick) and refused, naming the views, for a model with several."""
import json
import os

from PIL import Image

from dcam.cli import main


def test_view_default_is_the_run_without_a_view(tmp_path, capsys):
    Image.new("RGB", (8, 8), (200, 40, 40)).save(tmp_path / "one.png")
    Image.new("RGB", (8, 8), (40, 40, 200)).save(tmp_path / "two.png")
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": "a", "image": "one.png", "response": "red"}) + "\n")
    out = str(tmp_path / "out")
    assert main(["run", str(p), "--out", out, "--view", "default", "--quiet"]) == 0
    with open(tmp_path / "out" / "run.json") as f:
        assert json.load(f)["identity"]["view"] is None
    # one more record: the same run resumed without --view, the first record kept
    p.write_text(p.read_text() + json.dumps({"id": "b", "image": "two.png", "response": "blue"}) + "\n")
    assert main(["run", str(p), "--out", out, "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("2 of 2 records explained") and "0 failed" in last and "this session 1 records" in last


def test_trajectory_of_all_views_is_the_one_view_of_a_single_view_model(tmp_path, capsys):
    from dcam.runs import load_run

    Image.new("RGB", (8, 8), (200, 40, 40)).save(tmp_path / "one.png")
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": "a", "image": "one.png"}) + "\n")
    common = ["--trajectory", "--steps", "2", "--quiet"]
    assert main(["run", str(p), "--out", str(tmp_path / "all"), "--view", "all", *common]) == 0
    assert main(["run", str(p), "--out", str(tmp_path / "none"), *common]) == 0
    capsys.readouterr()
    (every,), (none,) = list(load_run(str(tmp_path / "all"))), list(load_run(str(tmp_path / "none")))
    assert every.view is None and every.view_maps == {} and every.tokens == none.tokens
    assert every.maps.tolist() == none.maps.tolist() and every.trajectory.tolist() == none.trajectory.tolist()


def test_trajectory_of_all_views_is_refused_for_a_model_of_several_before_any_record(tmp_path, capsys,
                                                                                     monkeypatch):
    import dcam.cli.run as run_cli
    from dcam import Explainer
    from dcam.testing import tiny_lavida_dream

    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": "a", "image": "one.png"}) + "\n")
    model, proc = tiny_lavida_dream(seed=0)
    monkeypatch.setattr(run_cli, "_explainer", lambda args, dist: Explainer(model, proc, view=args.view))
    rc = main(["run", str(p), "--out", str(tmp_path / "out"), "--view", "all", "--trajectory", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["dcam run: error: --view: a trajectory maps one image view at a time "
                               "(view='all' is not supported); pick one of highres, base"]
    assert not os.path.exists(tmp_path / "out")


def test_the_api_refuses_a_trajectory_of_all_views_as_dcam_run_does(tmp_path):
    # run_dataset(Explainer(view="all"), ..., RunOptions(trajectory=True)) sent every record to errors.jsonl,
    # where dcam run refused up front; the rule is the model's declared views, so a LaViDa without anyres
    # (whose images have the base view alone) is refused too, told to pick a view
    import pytest

    from dcam import Explainer, InputError
    from dcam.runs import RunOptions, run_dataset
    from dcam.runs.sources import ManifestSource
    from dcam.testing import tiny_lavida_dream

    Image.new("RGB", (90, 40), (200, 40, 40)).save(tmp_path / "wide.png")
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": "w", "image": "wide.png"}) + "\n")
    for kw in ({}, {"image_aspect_ratio": "pad"}):
        exp = Explainer(*tiny_lavida_dream(seed=0, **kw), view="all")
        with pytest.raises(InputError, match=r"^view: a trajectory maps one image view at a time \(view='all' is "
                                             r"not supported\); pick one of highres, base$"):
            run_dataset(exp, ManifestSource(str(p)), str(tmp_path / "out"),
                        RunOptions(progress=False, trajectory=True, steps=2))
        assert not os.path.exists(tmp_path / "out")
    # a view picked runs the record
    exp = Explainer(*tiny_lavida_dream(seed=0), view="base")
    info = run_dataset(exp, ManifestSource(str(p)), str(tmp_path / "out"),
                       RunOptions(progress=False, trajectory=True, steps=2, response_length=4))
    assert info["counts"]["done"] == 1 and info["counts"]["errors"] == 0
