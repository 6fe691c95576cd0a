"""--adapter MODULE:CLASS: the command line's route to a user's adapter. docs/FAMILIES.md's
example is run as written by the real CLI in a subprocess; bad values exit 2 naming --adapter,
an error of the user's module keeps its traceback."""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: the `dcam` console script's way in: its own folder is sys.path[0], the current folder is not on it
SCRIPT = "import sys\nfrom dcam.cli import main\nsys.exit(main())\n"


def _dcam(args, cwd, tmp_path):
    script = tmp_path / "bin" / "dcam_script.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_documented_example_runs(tmp_path):
    from PIL import Image

    doc = (ROOT / "docs" / "FAMILIES.md").read_text()
    module = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if b.startswith("# my_adapter.py")]
    command = [b for b in re.findall(r"```bash\n(.*?)```", doc, re.S) if "--adapter my_adapter:ToyAdapter" in b]
    assert len(module) == 1 and len(command) == 1
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_adapter.py").write_text(module[0])
    Image.new("RGB", (64, 64), (220, 30, 30)).save(work / "image.png")
    args = shlex.split(command[0].strip())
    assert args[0] == "dcam"
    r = _dcam(args[1:] + ["--out", "out", "--quiet"], work, tmp_path)
    assert r.returncode == 0, r.stderr
    # the adapter's default block (1), not the bundled weights' (0): ToyAdapter explained it
    assert json.loads((work / "out" / "meta.json").read_text())["layer"] == 1


def test_an_error_of_the_users_module_shows_its_traceback(tmp_path):
    (tmp_path / "needs_missing.py").write_text("import a_module_nobody_installed\n")
    r = _dcam(["explain", "x.png", "--adapter", "needs_missing:A"], tmp_path, tmp_path)
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "ModuleNotFoundError: No module named 'a_module_nobody_installed'"


def test_bad_values_exit_2_naming_adapter(in_folder, capsys):
    from dcam.cli import main

    (in_folder / "opt_mod_a.py").write_text("def not_a_class():\n    pass\n\nclass Plain:\n    pass\n")
    (in_folder / "opt_mod_b.py").write_text("raise ValueError('a bug of mine')\n")
    cases = {"no-colon": "expected MODULE:CLASS (e.g. my_adapter:MyAdapter), got 'no-colon'",
             "opt_mod_zz:A": "no module named 'opt_mod_zz' (looked in the current folder and sys.path)",
             "opt_pkg_zz.sub:A": "no module named 'opt_pkg_zz' (looked in the current folder and sys.path)",
             "opt_mod_a:Missing": "module 'opt_mod_a' has no attribute 'Missing'",
             "opt_mod_a:not_a_class": "opt_mod_a:not_a_class is not a dcam.probe.ModelAdapter subclass (it is a "
                                      "function)",
             "opt_mod_a:Plain": "opt_mod_a:Plain is not a dcam.probe.ModelAdapter subclass (it is the class Plain)",
             # a relative module was importlib's raw TypeError (it wants a package to be relative to), exit 1
             "..foo:X": "'..foo' is a relative module name; give the module's full name (e.g. my_adapter:MyAdapter "
                        "for ./my_adapter.py), got '..foo:X'",
             ".:X": "'.' is a relative module name; give the module's full name (e.g. my_adapter:MyAdapter "
                    "for ./my_adapter.py), got '.:X'",
             ".opt_mod_a:Plain": "'.opt_mod_a' is a relative module name; give the module's full name (e.g. "
                                 "my_adapter:MyAdapter for ./my_adapter.py), got '.opt_mod_a:Plain'",
             # the protocol itself: its missing image token id was blamed on --model
             "dcam.probe.adapters:ModelAdapter": "dcam.probe.adapters:ModelAdapter is the protocol every adapter "
                                                 "implements, not an adapter; name your subclass of it"}
    for value, why in cases.items():
        assert main(["explain", "x.png", "--adapter", value]) == 2
        err = capsys.readouterr().err
        assert err == f"dcam explain: error: --adapter: {why}\n"
    for command in ("explain", "run", "eval"):  # every command with --family
        needed = {"explain": ["x.png"], "run": ["m.json", "--out", "o"], "eval": []}[command]
        assert main([command, *needed, "--adapter", "opt_mod_a:Plain", "--family", "shapes"]) == 2
        assert capsys.readouterr().err == f"dcam {command}: error: --adapter: give --adapter or --family, not " \
                                          "both (--adapter names the adapter itself)\n"
    with pytest.raises(ValueError, match="a bug of mine"):  # the user's own error: not turned into exit 2
        main(["explain", "x.png", "--adapter", "opt_mod_b:A"])


def test_what_an_adapter_cannot_find_in_the_model_is_said_naming_adapter(in_folder, capsys):
    # a subclass that implements nothing has no image token id: explain and run blamed --model, eval named nothing
    from PIL import Image

    from dcam.cli import main

    (in_folder / "opt_mod_bare.py").write_text("from dcam.probe.adapters import ModelAdapter\n\n\n"
                                               "class Bare(ModelAdapter):\n    pass\n")
    Image.new("RGB", (32, 32), (220, 30, 30)).save(in_folder / "image.png")
    (in_folder / "imgs").mkdir()
    Image.new("RGB", (32, 32), (30, 30, 220)).save(in_folder / "imgs" / "a.png")
    # without --model the bundled toy is explained: the line says to give --model (it was the adapter's complaint
    # about the toy alone: "--adapter: ShapesDMLLM has no image token id; it cannot be explained")
    why = "--adapter: opt_mod_bare:Bare cannot explain the bundled toy dMLLM, which dcam loads without --model " \
          "(ShapesDMLLM has no image token id; it cannot be explained); give --model DIR, the model it is for"
    for command, needed in {"explain": ["image.png", "--response", "red circle", "--out", "o_explain"],
                            "run": ["imgs", "--out", "o_run"],
                            "eval": ["--n", "2", "--methods", "diffusion-cam", "--out", "o_eval"]}.items():
        for cam in ([], ["--cam", "sicd=context"]):  # (with --cam the adapter is made first for its config)
            assert main([command, *needed, *cam, "--adapter", "opt_mod_bare:Bare", "--quiet"]) == 2
            assert capsys.readouterr().err == f"dcam {command}: error: {why}\n"
    written = sorted(p.name for p in in_folder.iterdir() if p.name != "__pycache__")
    assert written == ["image.png", "imgs", "opt_mod_bare.py"]  # nothing written
    # the toy's folder named by --model: the model is the user's choice, the adapter's complaint is the line
    from dcam.zoo import WEIGHTS_DIR

    assert main(["explain", "image.png", "--response", "red circle", "--out", "o_explain", "--model", WEIGHTS_DIR,
                 "--adapter", "opt_mod_bare:Bare", "--quiet"]) == 2
    assert capsys.readouterr().err == "dcam explain: error: --adapter: ShapesDMLLM has no image token id; it cannot " \
                                      "be explained\n"
    # the bundled toy's own adapter without --adapter: the same model is explained (the error was the adapter's)
    assert main(["explain", "image.png", "--response", "red circle", "--out", "o_explain", "--quiet"]) == 0


def test_an_adapter_that_loads_its_own_model_reads_the_model_folder(tmp_path):
    # a model of one's own classes had no way onto the command line: --model read only folders dcam knows
    # (`--model: no config.json in 'lab_weights'`), and --adapter alone forced the adapter on the bundled toy
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    doc = (ROOT / "docs" / "FAMILIES.md").read_text()
    example = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "class MyAdapter" in b][0]
    module = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if b.startswith("# lab_adapter.py")]
    command = [b for b in re.findall(r"```bash\n(.*?)```", doc, re.S) if "lab_adapter:LabAdapter" in b]
    assert len(module) == 1 and len(command) == 1
    work = tmp_path / "work"
    (work / "lab_weights").mkdir(parents=True)
    (work / "my_dmllm.py").write_text(example[:example.index("image = Image.new")])
    (work / "lab_adapter.py").write_text(module[0])
    image = Image.new("RGB", (64, 48), (200, 40, 40))
    image.save(work / "image.png")
    space = {}
    exec(compile(example[:example.index("image = Image.new")], "FAMILIES.md", "exec"), space)
    torch.manual_seed(7)
    model = space["MyDMLLM"]().eval()
    torch.save(model.state_dict(), work / "lab_weights" / "weights.pt")
    args = shlex.split(command[0].strip())
    r = _dcam(args[1:] + ["--out", "out", "--quiet"], work, tmp_path)
    assert r.returncode == 0, r.stderr
    # the folder's weights were explained: the maps of that model explained from Python, by its own adapter
    import dcam

    e = dcam.Explainer(adapter=space["MyAdapter"](model)).explain(image, response="10 11 12 2")
    assert torch.equal(load_file(str(work / "out" / "maps.safetensors"))["maps"], e.maps)
    # without --model there is no folder to load from: one line naming --model, nothing written
    r = _dcam([a for a in args[1:] if a not in ("--model", "lab_weights")] + ["--out", "out2", "--quiet"], work,
              tmp_path)
    assert r.returncode == 2 and not (work / "out2").exists()
    assert r.stderr == "dcam explain: error: --model: lab_adapter:LabAdapter loads its model from a folder (its " \
                       "load_model()); give --model DIR\n"
    # a --model that is not a folder: one line before the adapter's load_model() is called (its open() of a file
    # in it was a traceback, exit 1)
    (work / "a_file").write_text("x")
    for given in ("no_such_folder", "a_file"):
        at = args.index("--model") + 1
        r = _dcam(args[1:at] + [given] + args[at + 1:] + ["--out", "out3", "--quiet"], work, tmp_path)
        assert (r.returncode, r.stderr) == (2, f"dcam explain: error: --model: {given!r} is not a folder\n")
        assert not (work / "out3").exists()


def test_a_stray_module_in_the_current_folder_does_not_replace_one_dcam_imports(tmp_path):
    # --adapter put the current folder first on sys.path for the whole process: a safetensors.py there ran when
    # dcam wrote the maps (exit 3), where without --adapter it was never looked at
    doc = (ROOT / "docs" / "FAMILIES.md").read_text()
    module = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if b.startswith("# my_adapter.py")][0]
    command = [b for b in re.findall(r"```bash\n(.*?)```", doc, re.S) if "--adapter my_adapter:ToyAdapter" in b][0]
    from PIL import Image

    work = tmp_path / "work"
    work.mkdir()
    (work / "my_adapter.py").write_text(module)
    (work / "safetensors.py").write_text("raise SystemExit('the stray safetensors.py ran')\n")
    Image.new("RGB", (64, 64), (220, 30, 30)).save(work / "image.png")
    r = _dcam(shlex.split(command.strip())[1:] + ["--out", "out", "--quiet"], work, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    from safetensors.torch import load_file

    assert load_file(str(work / "out" / "maps.safetensors"))["maps"].ndim == 3  # written by the real package
