"""Every family through the CLI as a user runs it: a stand-in saved as a
folder, ``dcam eval`` on a tiny COCO-style data set, and ``dcam explain``
(with ``--family`` and ``--dtype``) on a few."""
import json

import pytest

from dcam.cli import main
from dcam.testing.standins import STANDINS, load_standin, save_standin


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {name: save_standin(name, str(root / name)) for name in STANDINS}


def test_saved_stand_in_reloads_identically(folders, models):
    import torch

    model, proc = load_standin(folders["mmada"])
    ref, ref_proc = models("mmada")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    for v, v2 in zip(proc.vq_model.state_dict().values(), ref_proc.vq_model.state_dict().values()):
        assert torch.equal(v, v2)


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_dcam_eval_runs_on_coco(name, folders, coco_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--dataset", str(coco_dir), "--split", "val", "--model", folders[name], "--n", "1",
               "--methods", "diffusion-cam", "--examples", "0", "--out", str(out), "--quiet"])
    assert rc == 0
    row = json.loads((out / "main_table.json").read_text())["rows"]["diffusion-cam"]
    # the built caption "a dog and a person in the picture": "dog" and "person" are scored against their masks
    assert row["n_obj"] == 2 and row["n_invalid"] == 0
    assert 0 <= row["obj_iou"] <= 1 and 0 <= row["concentration"] <= 1 and row["contrast"] >= 0
    assert "| Diffusion-CAM |" in capsys.readouterr().out


#: the 72 x 48 COCO image's grid: LaViDa fits (56, 56) = 2 x 2 tiles of 2 x 2 pooled tokens, a 4 x 4 map
#: cropped to int(48 * 4 / 72) = 2 rows; Dream-VL and Qwen3-VL keep 48 x 72 (multiples of 8): 6 x 9 merged
@pytest.mark.parametrize("name, family, grid", [("lavida", "lavida", [2, 4]), ("dream-vl", "dream-vl", [6, 9]),
                                                ("qwen3-vl", "qwen-vl", [6, 9])])
def test_dcam_explain_with_family_and_dtype(name, family, grid, folders, coco_dir, tmp_path, capsys):
    img = coco_dir / "images" / "0.png"
    out = tmp_path / "x"
    rc = main(["explain", str(img), "--model", folders[name], "--family", family, "--dtype", "float32",
               "--response", "a dog and a person", "--out", str(out), "--quiet"])
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokens"] == ["a", "dog", "and", "a", "person"] and meta["grid"] == grid
    assert "explained 5 words" in capsys.readouterr().out


def test_eval_and_run_take_family(folders, coco_dir, tmp_path, capsys):
    """--family reaches the explainer of `dcam eval` and `dcam run` (run.json records it); a wrong one
    is one line naming --family, exit 2, nothing written."""
    common = ["--model", folders["lavida"], "--quiet"]
    rc = main(["eval", "--dataset", str(coco_dir), "--split", "val", "--n", "1", "--methods", "diffusion-cam",
               "--examples", "0", "--out", str(tmp_path / "eval"), "--family", "lavida", *common])
    assert rc == 0
    rc = main(["run", str(coco_dir / "images"), "--out", str(tmp_path / "run"), "--family", "lavida", *common])
    assert rc == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["identity"]["family"] == "lavida"
    capsys.readouterr()
    for cmd in (["eval", "--dataset", str(coco_dir), "--split", "val", "--out", str(tmp_path / "e2")],
                ["run", str(coco_dir / "images"), "--out", str(tmp_path / "r2")]):
        assert main([*cmd, "--family", "nope", *common]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"dcam {cmd[0]}: error: --family: unknown family 'nope'") and "\n" not in err
    assert not (tmp_path / "e2").exists() and not (tmp_path / "r2").exists()


def test_a_probe_the_model_cannot_run_names_the_option(folders, coco_dir, tmp_path, capsys):
    # the message began "probe='masked' ...", which the option mapping did not recognise
    rc = main(["explain", str(coco_dir / "images" / "0.png"), "--model", folders["qwen3-vl"], "--probe", "masked",
               "--response", "a dog", "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and not (tmp_path / "x").exists()
    assert err.startswith("dcam explain: error: --probe: 'masked' ")
    # dcam eval named the API argument ("probe='masked' ..."), and a LLaVA-OneVision model was "the llava-next model"
    rc = main(["eval", "--dataset", str(coco_dir), "--split", "val", "--model", folders["llava-onevision"], "--n", "1",
               "--probe", "masked", "--out", str(tmp_path / "e"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and not (tmp_path / "e").exists()
    assert err == ("dcam eval: error: --probe: 'masked' is not supported by the llava-onevision model "
                   "(supported: full)")


def test_save_standin_refuses_an_unknown_name_as_an_input_error(tmp_path):
    from dcam.errors import InputError

    with pytest.raises(InputError, match=r"^name: unknown stand-in 'llama' \(known: "):  # (a ValueError)
        save_standin("llama", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_dcam_explain_response_length_sets_the_generated_length(folders, coco_dir, tmp_path, capsys):
    """--response-length N: a diffusion model denoises a canvas of N slots (LaViDa: every slot is a
    response token, eos included), a causal one answers at most N tokens; with --response there is
    nothing to generate: one line naming the option, exit 2, nothing written."""
    img = str(coco_dir / "images" / "0.png")
    for name, n in (("lavida", 6), ("llava-next", 3)):
        out = tmp_path / name
        assert main(["explain", img, "--model", folders[name], "--response-length", str(n), "--out", str(out),
                     "--quiet"]) == 0
        ids = json.loads((out / "meta.json").read_text())["response_ids"]
        assert (len(ids) == n) if name == "lavida" else (1 <= len(ids) <= n)
    capsys.readouterr()
    out = tmp_path / "both"
    assert main(["explain", img, "--model", folders["lavida"], "--response-length", "6", "--response", "a dog",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--response-length:" in err[0] and not out.exists()
