"""A package a model folder's loading imports is not installed: accelerate installed with
``pip install --no-deps`` lacks psutil, which it imports (inside ``get_max_memory``) when transformers
places a model with ``device_map="auto"`` (dcam asks for that on a machine without CUDA, for the
``llava`` families). ``dcam explain --model DIR`` ended in a raw ``ModuleNotFoundError: No module
named 'psutil'`` from deep inside transformers (reproduced with accelerate 1.15.0 and transformers
5.24). Now: one line naming the package and the command that installs it, as the packages dcam
itself asks for (``pip install accelerate``) are named: an InputError, exit code 2.

psutil is kept from importing by a None in ``sys.modules`` (whether or not it is installed here);
``accelerate`` and the authors' ``llava`` builder are stand-ins on sys.path that keep what matters:
the builder calls accelerate's ``get_max_memory``, which imports psutil as 1.15.0's does."""
import json
import sys

import pytest
import torch
import transformers.modeling_utils  # noqa: F401  (before the stand-in accelerate, which has no version, is on
import dcam.zoo  # noqa: F401                   the path: transformers' import-time checks never see it)

from dcam.errors import InputError
from dcam.models import load_model

BUILDER = '''
def load_pretrained_model(model_path, model_base, model_name, device_map="auto", **kwargs):
    {body}
'''

GET_MAX_MEMORY = '''
def get_max_memory(max_memory=None):
    import psutil  # as accelerate 1.15.0's accelerate/utils/modeling.py, line 761

    return {"cpu": psutil.virtual_memory().available}
'''


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """``folder(builder_body, accelerate_init="")`` -> a LLaDA-V folder loaded by a stand-in builder."""
    names = ("llava", "llava.model", "llava.model.builder", "accelerate", "accelerate.utils",
             "accelerate.utils.modeling")

    def make(body: str, accelerate_init: str = "") -> str:
        case = tmp_path / f"case{len(list(tmp_path.iterdir()))}"  # (a folder per call: no stale bytecode)
        pkgs = case / "pkgs"
        (pkgs / "llava" / "model").mkdir(parents=True)
        (pkgs / "accelerate" / "utils").mkdir(parents=True)
        for init in ("llava", "llava/model", "accelerate/utils"):
            (pkgs / init / "__init__.py").write_text("")
        (pkgs / "accelerate" / "__init__.py").write_text(accelerate_init)
        (pkgs / "accelerate" / "utils" / "modeling.py").write_text(GET_MAX_MEMORY)
        (pkgs / "llava" / "model" / "builder.py").write_text(BUILDER.format(body=body))
        monkeypatch.syspath_prepend(str(pkgs))
        for name in names:
            monkeypatch.delitem(sys.modules, name, raising=False)
        # psutil not importable, as where it is not installed: importlib.util.find_spec (transformers'
        # is_psutil_available, dcam's check) finds nothing and "import psutil" is a ModuleNotFoundError
        monkeypatch.setitem(sys.modules, "psutil", None)
        ckpt = case / "ckpt"
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps({"model_type": "llava_llada"}))
        return str(ckpt)
    yield make
    for name in names:  # imported during the test: gone with the folder
        sys.modules.pop(name, None)


def test_a_package_accelerate_imports_while_loading_is_named_with_its_pip_command(folder):
    ckpt = folder("from accelerate.utils.modeling import get_max_memory\n    get_max_memory()")
    with pytest.raises(InputError) as info:
        load_model(ckpt, device="cpu")
    assert str(info.value) == (f"model: loading {ckpt!r} needs the Python package 'psutil', which is not "
                               "installed (accelerate imports it): pip install psutil")


@pytest.mark.parametrize("module, package", [("cv2", "opencv-python"), ("sklearn", "scikit-learn"),
                                             ("yaml", "pyyaml"), ("open_clip", "open_clip_torch"),
                                             ("dcam_no_such_module_x", "dcam_no_such_module_x")])
def test_the_pip_command_names_the_package_that_provides_the_module(folder, monkeypatch, module, package):
    # "pip install cv2" finds nothing on PyPI: OpenCV's module is installed by opencv-python (and so on)
    monkeypatch.setitem(sys.modules, module, None)  # (not importable, whether or not it is installed here)
    ckpt = folder(f"import {module}")
    with pytest.raises(InputError) as info:
        load_model(ckpt, device="cpu")
    assert str(info.value).endswith(f"needs the Python package {module!r}, which is not installed (llava imports "
                                    f"it): pip install {package}")


def test_the_cli_says_it_in_one_line_with_exit_code_2(folder, tmp_path, capsys):
    from PIL import Image

    from dcam.cli import main

    ckpt = folder("from accelerate.utils.modeling import get_max_memory\n    get_max_memory()")
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "red.png")
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "red.png"), "--model", ckpt, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"dcam explain: error: --model: loading {ckpt!r} needs the Python package 'psutil', which is "
                   "not installed (accelerate imports it): pip install psutil"]
    assert not out.exists()  # nothing half-written


@pytest.mark.skipif(torch.cuda.is_available(), reason="dcam imports accelerate itself only without CUDA")
def test_an_accelerate_that_imports_psutil_at_once_names_psutil_not_accelerate(folder):
    # (older accelerates import psutil when imported: "pip install accelerate" was the advice, and it was installed)
    ckpt = folder("pass", accelerate_init="import psutil\n")
    with pytest.raises(InputError) as info:
        load_model(ckpt, device="cpu")
    assert str(info.value) == (f"model: loading {ckpt!r} needs the Python package 'psutil', which is not "
                               "installed (accelerate imports it): pip install psutil")


def test_a_missing_module_of_dcam_or_of_an_installed_package_keeps_its_traceback(folder):
    # not the environment's: a bug (dcam's) or a broken install, shown as it is
    for missing in ("dcam.no_such_module", "llava.no_such_module"):
        ckpt = folder(f"import {missing}")
        with pytest.raises(ModuleNotFoundError, match=f"No module named '{missing}'"):
            load_model(ckpt, device="cpu")
        for name in ("llava", "llava.model", "llava.model.builder", "accelerate", "accelerate.utils"):
            sys.modules.pop(name, None)
