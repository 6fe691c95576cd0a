"""run.json's ``history`` and ``command`` after a resume that is not the usual one: a folder written before dcam
kept a history (its run.json said only the last session's ``versions``, which a resume replaced, so nothing said any
longer which dcam explained its records), and a run begun by ``dcam run`` resumed from Python (no command: the
first session's argv stayed in run.json as "the last session's")."""
import json

from dcam.provenance import code_revision
from dcam.runs import RunOptions, open_source, run_dataset
from dcam.runs.folder import model_identity

RUN = ["--threads", "1", "--quiet"]


def _manifest(path, image, ids):
    path.write_text("".join(json.dumps({"id": i, "image": image, "response": "a red circle"}) + "\n" for i in ids))
    return str(path)


def test_a_folder_from_before_the_history_keeps_its_last_sessions_versions(cli, shapes_png, tmp_path):
    run = tmp_path / "r"
    rc, _, err = cli("run", _manifest(tmp_path / "m.jsonl", shapes_png, ["a"]), "--out", str(run), *RUN)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    for key in ("history", "machine", "command"):  # what session 31's dcam wrote: no history, no machine, no command
        del info[key]
    old_versions = dict(info["versions"], dcam="0.0.31")
    del old_versions["dcam_revision"]
    info.update(versions=old_versions, started="2026-01-01T00:00:00+0000")
    (run / "run.json").write_text(json.dumps(info))
    rc, _, err = cli("run", _manifest(tmp_path / "m.jsonl", shapes_png, ["a", "b"]), "--out", str(run), *RUN)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    # the first entry is what run.json said before this session replaced it (the old code wrote none: this one's)
    assert info["history"][0] == {"started": "2026-01-01T00:00:00+0000", "versions": old_versions}
    assert len(info["history"]) == 2 and info["history"][1]["versions"]["dcam_revision"] == code_revision()
    assert info["versions"]["dcam_revision"] == code_revision()


def test_a_resume_from_python_says_it_ran_no_command(cli, shapes_png, tmp_path):
    import dcam
    import dcam.zoo

    run = tmp_path / "r"
    rc, _, err = cli("run", _manifest(tmp_path / "m.jsonl", shapes_png, ["a"]), "--out", str(run), *RUN)
    assert rc == 0, err
    assert json.loads((run / "run.json").read_text())["command"]["argv"][:2] == ["dcam", "run"]
    model, processor = dcam.zoo.load_default()
    run_dataset(dcam.Explainer(model, processor), open_source(_manifest(tmp_path / "m.jsonl", shapes_png, ["a", "b"])),
                str(run), RunOptions(progress=False), model=model_identity(None))
    info = json.loads((run / "run.json").read_text())
    assert info["counts"]["done"] == 2  # (the second record was explained by this session)
    # the last session's command is none (the old code kept the dcam run argv here); the first one's is in history
    assert info["command"] is None and info["history"][1]["command"] is None
    assert info["history"][0]["command"]["argv"][:2] == ["dcam", "run"]

