"""The `dcam` command: outputs and exit codes (tiny random zoo model saved to disk)."""
import json
import os

import pytest
from PIL import Image

from dcam.cli import build_parser, main


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture
def image_path(shapes_png):
    return shapes_png


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return [l for l in err if l.startswith("dcam ")]


def test_parser_knows_every_subcommand_and_its_options():
    parser = build_parser()
    args = parser.parse_args(["explain", "x.png", "--tokens", "red,circle", "--probe", "masked", "--layer", "1"])
    assert args.command == "explain" and args.images == ["x.png"] and args.probe == "masked" and args.layer == 1
    args = parser.parse_args(["demo", "--out", "d", "--seed", "3"])
    assert args.command == "demo" and args.seed == 3 and args.out == "d"
    for name in ("eval", "grounding", "bench", "backends"):
        assert parser.parse_args([name]).command == name


def test_explain_writes_outputs(model_dir, image_path, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", image_path, "--model", model_dir, "--response", "a red circle and a blue square",
               "--tokens", "red,square", "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "response: a red circle and a blue square" in stdout and str(out) in stdout
    meta = json.load(open(out / "meta.json"))
    assert meta["tokens"] == ["red", "square"]
    # file names keep each word's number in the response ("a red circle and a blue square")
    assert sorted(os.listdir(out)) == ["01_red.png", "06_square.png", "contact_sheet.png", "image.png",
                                       "index.html", "maps.safetensors", "meta.json"]
    assert Image.open(out / "01_red.png").size == (288, 288)


def test_demo_with_given_model(model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", model_dir, "--out", str(out), "--seed", "2", "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "response:" in stdout and "reference caption:" in stdout and "contact_sheet.png" in stdout
    assert (out / "contact_sheet.png").exists() and (out / "meta.json").exists()


def test_demo_bundled(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seed", "0", "--quiet"]) == 0
    meta = json.load(open(tmp_path / "meta.json"))
    assert meta["tokens"] and meta["steps_source"] == "generation"


def test_bad_image_exit_2(model_dir, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    assert main(["explain", str(missing), "--model", model_dir]) == 2
    lines = _err_line(capsys)
    assert len(lines) == 1 and "no such file" in lines[0] and "missing.png" in lines[0]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["explain", str(bad), "--model", model_dir, "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in _err_line(capsys)[0]
    assert not (tmp_path / "o").exists()  # nothing written


def test_unknown_word_exit_2(model_dir, image_path, tmp_path, capsys):
    rc = main(["explain", image_path, "--model", model_dir, "--response", "a red circle", "--tokens", "purple",
               "--out", str(tmp_path / "o")])
    assert rc == 2
    lines = _err_line(capsys)
    assert len(lines) == 1 and "'purple'" in lines[0]


def test_model_without_image_token_exit_2(image_path, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(str(d))
    assert main(["explain", image_path, "--model", str(d)]) == 2
    lines = _err_line(capsys)
    assert len(lines) == 1 and "no image token" in lines[0]
    assert main(["explain", image_path, "--model", str(tmp_path / "nowhere")]) == 2
    line = _err_line(capsys)[0]
    assert "--model" in line and "is not a folder" in line


def test_bad_options_exit_2(model_dir, image_path, capsys):
    assert main(["explain", image_path, "--model", model_dir, "--layer", "2"]) == 2  # the last block
    assert "last block" in _err_line(capsys)[0]
    assert main(["demo", "--model", model_dir, "--seed", "-1"]) == 2


def test_grounding_report_runs(model_dir, tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["grounding", "--model", model_dir, "--n", "2", "--layers", "0,1", "--probes", "full,remask",
                 "--quiet", "--variants", "--json", str(out)]) == 0
    assert "grounding rate" in capsys.readouterr().out
    rep = json.load(open(out))
    assert rep["n_images"] == 2 and set(rep["rates"]) == {"full", "remask"}
    assert all(0 <= v <= 1 for r in rep["rates"].values() for v in r.values())
    assert 0 < rep["chance"] < 1
    assert set(rep["variant_rates"]) == {"raw", "grad-norm", "layercam"}
    assert main(["grounding", "--model", model_dir, "--probes", "half"]) == 2
    # the JSON file now exists: replaced only with --overwrite (any file was replaced without a word)
    capsys.readouterr()
    out.write_text("mine")
    assert main(["grounding", "--model", model_dir, "--n", "1", "--layers", "0", "--probes", "masked", "--quiet",
                 "--json", str(out)]) == 2
    assert _err_line(capsys) == [f"dcam grounding: error: --json: {str(out)!r} exists; choose a new file or pass "
                                 "--overwrite (which replaces it)"]
    assert out.read_text() == "mine"
    assert main(["grounding", "--model", model_dir, "--n", "1", "--layers", "0", "--probes", "masked", "--quiet",
                 "--json", str(out), "--overwrite"]) == 0
    assert json.load(open(out))["n_images"] == 1


def test_grounding_of_a_method_without_gradients(model_dir, tmp_path, capsys):
    # --method tam could never run: every block was given as a layer, and tam hooks none
    import dcam
    from dcam.eval.grounding import grounding_samples, object_word_success
    from dcam.models import load_model

    out = tmp_path / "g.json"
    assert main(["grounding", "--model", model_dir, "--n", "2", "--method", "tam", "--quiet", "--json", str(out)]) == 0
    assert "grounding rate (tam) on 2 " in capsys.readouterr().out
    rep = json.load(open(out))
    model, processor = load_model(model_dir)
    exp = dcam.Explainer(model, processor, method="tam")
    hits = words = 0
    for s in grounding_samples(2, image_size=int(model.config.image_size)):
        idx = [i for i, lab in enumerate(s.word_labels) if lab > 0]
        e = exp.explain(s.image, response=s.caption, targets=idx, probe="full")
        hits += sum(object_word_success(e.maps, idx, s.word_labels, s.mask))
        words += len(idx)
    assert rep["n_words"] == words and rep["rates"]["full"] == {"null": hits / words}
    assert rep["target_score"] is None
    for args, line in ((["--method", "tam", "--layers", "0"], "dcam grounding: error: --layers: the tam method hooks "
                        "no layer (it reads the model's final states); leave layers out"),
                       (["--method", "tam", "--target-score", "logit"], "dcam grounding: error: --target-score: the "
                        "tam method differentiates no score; leave target_score out"),
                       (["--method", "grad-cam", "--cam", "akd=false"], "dcam grounding: error: --cam: the grad-cam "
                        "method refines nothing (only diffusion-cam applies a CamConfig); leave config out")):
        assert main(["grounding", "--model", model_dir, "--n", "1", "--quiet", *args]) == 2
        assert _err_line(capsys) == [line]


def test_cam_settings_reach_the_maps(model_dir, tmp_path, capsys):
    # --cam sets CamConfig fields on top of the model's default; the grounding
    # report names the fields that differ from CamConfig()
    out = tmp_path / "g.json"
    assert main(["grounding", "--model", model_dir, "--n", "1", "--layers", "0", "--probes", "masked", "--quiet",
                 "--cam", "grad_relu=false", "--cam", "sicd=off", "--split", "val", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "config: CamConfig() with sicd=off, grad_relu=False" in text and "1 val-split images" in text
    rep = json.load(open(out))
    assert rep["config_changes"] == {"sicd": "off", "grad_relu": False} and rep["split"] == "val"
    d = tmp_path / "demo"
    assert main(["demo", "--model", model_dir, "--out", str(d), "--quiet", "--cam", "akd=false"]) == 0
    assert json.load(open(d / "meta.json"))["config"]["akd"] is False
    # a method that applies no config, or differentiates no score, records none (tam recorded both)
    for method, target_score in (("tam", None), ("grad-cam", "logit")):
        assert main(["demo", "--model", model_dir, "--out", str(tmp_path / method), "--quiet", "--method", method]) == 0
        meta = json.load(open(tmp_path / method / "meta.json"))
        assert meta["config"] is None and meta["target_score"] == target_score and meta["method"] == method
    capsys.readouterr()
    assert main(["demo", "--model", model_dir, "--out", str(tmp_path / "d2"), "--cam", "akd=perhaps"]) == 2
    assert _err_line(capsys) == ["dcam demo: error: --cam: CamConfig.akd: cannot read 'perhaps' (not a boolean)"]


def test_grounding_report_says_the_default_config_is_used_as_it_is():
    # "config: CamConfig() with none" read as if no config had been applied
    from dcam.eval.grounding import format_grounding

    rep = dict(rates={"masked": {0: 0.5}}, method="diffusion-cam", n_images=2, n_words=4, chance=0.25,
               config_changes={}, class_detector=0.9, default_layer=0)
    assert format_grounding(rep).splitlines()[1] == "config: CamConfig() as it is"
    rep["config_changes"] = {"akd": False}
    assert format_grounding(rep).splitlines()[1] == "config: CamConfig() with akd=False"


def test_bench_runs_on_the_device_as_given_with_its_index(monkeypatch):
    # --device cuda:1 passed "cuda" on: the bench ran, and synchronised, on GPU 0
    from dcam.cli import main
    from dcam.ops import bench

    seen = []
    monkeypatch.setattr(bench, "run", lambda backends, quick, device: seen.append(device) or {})
    monkeypatch.setattr(bench, "format_table", lambda result: "")
    assert main(["bench", "--device", "cpu:0", "--quick"]) == 0
    assert seen == ["cpu:0"]
