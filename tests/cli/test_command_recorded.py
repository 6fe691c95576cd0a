"""A command's saved result says how to run it again: the command line, the folder it ran in, the
model's file digests, the seed. meta.json held none of them, dcam eval's report.json neither (not
even the seed of its random faithfulness baseline), and run.json said only the last session's
versions, though a resume may run another dcam. Digests here are computed by the test."""
import hashlib
import json
import os
import shutil

from dcam.provenance import code_revision


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_explain_records_its_command_and_the_models_files(cli, shapes_png, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli("explain", shapes_png, "--model", tiny_model_dir, "--out", "out", "--quiet")
    assert rc == 0, err
    record = json.loads((tmp_path / "out" / "meta.json").read_text())["provenance"]
    assert record["command"] == {"argv": ["dcam", "explain", shapes_png, "--model", tiny_model_dir, "--out", "out",
                                          "--quiet"], "cwd": str(tmp_path)}
    files = record["model"]["files"]["files"]
    assert files["config.json"]["sha256"] == sha256(os.path.join(tiny_model_dir, "config.json"))
    assert files["model.safetensors"]["sha256"] == sha256(os.path.join(tiny_model_dir, "model.safetensors"))
    # several images: each subfolder's meta.json records the same command
    rc, _, err = cli("explain", shapes_png, shapes_png, "--model", tiny_model_dir, "--out", "many", "--quiet")
    assert rc == 0, err
    sub = json.loads((tmp_path / "many" / "shapes" / "meta.json").read_text())["provenance"]
    assert sub["command"]["argv"][:4] == ["dcam", "explain", shapes_png, shapes_png]
    assert sub["versions"]["dcam_revision"] == code_revision()


def test_eval_report_records_its_seed_settings_and_command(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--n", "2", "--methods", "tam", "--examples", "0", "--seed", "7", "--faithfulness", "--faith-n",
            "1", "--faith-steps", "2", "--out", "ev", "--quiet"]
    rc, _, err = cli(*argv)
    assert rc == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert {k: report["settings"][k] for k in ("n", "seed", "faith_n", "faith_steps", "faithfulness")} == \
        {"n": 2, "seed": 7, "faith_n": 1, "faith_steps": 2, "faithfulness": True}
    assert report["provenance"]["command"]["argv"] == ["dcam", *argv]
    assert report["provenance"]["versions"]["dcam_revision"] == code_revision()


def test_run_json_records_each_sessions_code_and_command(cli, shapes_png, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image": shapes_png, "response": "a red circle"}) + "\n")
    argv = ["run", "m.jsonl", "--out", "r", "--threads", "1", "--quiet"]
    rc, _, err = cli(*argv)
    assert rc == 0, err
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["versions"]["dcam_revision"] == code_revision()
    assert info["machine"]["torch_threads"] == 1
    assert info["machine"]["kernels"] == "cpp"  # dcam._C is built in this checkout; options.backend is gloo's/nccl's
    assert info["command"] == {"argv": ["dcam", *argv], "cwd": str(tmp_path)}
    assert [h["command"]["argv"] for h in info["history"]] == [["dcam", *argv]]
    # a resume (here of a copy, as another dcam would resume it) adds its session; the first one stays
    shutil.copytree(tmp_path / "r", tmp_path / "r2")
    info = json.loads((tmp_path / "r2" / "run.json").read_text())
    info["history"][0]["versions"]["dcam_revision"] = "0" * 40
    (tmp_path / "r2" / "run.json").write_text(json.dumps(info))
    rc, _, err = cli("run", "m.jsonl", "--out", "r2", "--threads", "1", "--quiet")
    assert rc == 0, err
    info = json.loads((tmp_path / "r2" / "run.json").read_text())
    assert [h["versions"]["dcam_revision"] for h in info["history"]] == ["0" * 40, code_revision()]
    assert info["history"][1]["command"]["argv"][3:5] == ["--out", "r2"]
