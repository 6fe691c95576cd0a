"""``load_model`` of a Lumina-DiMOO or MMaDA folder runs code shipped in the folder only with
``trust_remote_code`` (``--trust-remote-code``), as every other loader does: the Lumina-DiMOO loader read the
tokenizer with ``trust_remote_code=True`` whatever the user asked, so a folder whose tokenizer_config.json
names a module of its own (``auto_map``) ran that module, and the MMaDA loader passed True to the model's
``from_pretrained`` (which loads a folder's ``custom_generate/`` code with it).

The authors' packages (``model`` of Lumina-DiMOO, ``models`` of MMaDA, and ``diffusers``) are not installed
here: the packages below hand back dcam's tiny stand-ins of those families, as tests/families/test_llava_loader.py
does for ``llava``. The tokenizer is transformers' own ``AutoTokenizer`` reading a real folder."""
import json
import sys

import pytest

from dcam.models import load_model

DIMOO_PACKAGE = '''
calls = []


class LLaDAForMultiModalGeneration:
    @classmethod
    def from_pretrained(cls, path, **kwargs):
        calls.append(kwargs)
        from dcam.testing.vq_dmllm import tiny_dimoo

        return tiny_dimoo(seed=0)[0]
'''

DIFFUSERS = '''
class VQModel:
    @classmethod
    def from_pretrained(cls, path, **kwargs):
        from dcam.testing.vq_dmllm import tiny_dimoo

        return tiny_dimoo(seed=0)[1].vqvae
'''

MMADA_PACKAGE = '''
calls = []


class MMadaModelLM:
    @classmethod
    def from_pretrained(cls, path, **kwargs):
        calls.append(kwargs)
        from dcam.testing.vq_dmllm import tiny_mmada

        return tiny_mmada(seed=0)[0]


class MAGVITv2:
    @classmethod
    def from_pretrained(cls, path, **kwargs):
        from dcam.testing.vq_dmllm import tiny_mmada

        return tiny_mmada(seed=0)[1].vq_model
'''

#: The folder's own tokenizer module: importing it leaves a mark, in the folder, that its code ran (transformers
#: imports a copy of it from its modules cache: the folder is named in the code).
TOKENIZER_CODE = '''
from transformers import PreTrainedTokenizerFast

open({mark!r}, "w").close()


class FolderTokenizer(PreTrainedTokenizerFast):
    pass
'''


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """``model``, ``models`` and ``diffusers`` on sys.path (see the module docstring)."""
    root = tmp_path / "pkgs"
    for name, code in (("model", DIMOO_PACKAGE), ("models", MMADA_PACKAGE), ("diffusers", DIFFUSERS)):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(code)
    monkeypatch.syspath_prepend(str(root))
    names = ("model", "models", "diffusers")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in names:  # gone with the folder: a later test must not find these
        sys.modules.pop(name, None)


def _folder(tmp_path, family):
    """A checkpoint folder of ``family`` whose tokenizer_config.json names the folder's own tokenizer class."""
    from dcam.testing.vq_dmllm import tiny_dimoo, tiny_mmada

    ckpt = tmp_path / family
    ckpt.mkdir()
    if family == "lumina-dimoo":
        config, sub, processor = {"architectures": ["LLaDAForMultiModalGeneration"]}, "vqvae", tiny_dimoo(0)[1]
    else:
        config, sub, processor = {"model_type": "mmada"}, "magvitv2", tiny_mmada(0)[1]
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / sub).mkdir()
    processor.tokenizer.save_pretrained(str(ckpt))
    tok_config = json.loads((ckpt / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_folder.FolderTokenizer"]}
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (ckpt / "tokenization_folder.py").write_text(TOKENIZER_CODE.format(mark=str(ckpt / "code-ran")))
    return ckpt


@pytest.mark.parametrize("family, package", [("lumina-dimoo", "model"), ("mmada", "models")])
def test_the_folders_code_runs_only_with_trust_remote_code(packages, tmp_path, family, package):
    ckpt = _folder(tmp_path, family)
    # not asked for: the tokenizer is transformers' own class of the folder's tokenizer.json, the folder's module
    # never imported (Lumina-DiMOO's loader imported tokenization_folder.py and used its class)
    model, processor = load_model(str(ckpt), device="cpu")
    assert not (ckpt / "code-ran").exists()
    assert type(processor.tokenizer).__name__ != "FolderTokenizer"
    # (MMaDA's model was given True; Lumina-DiMOO's is given none)
    assert [c.get("trust_remote_code", False) for c in sys.modules[package].calls] == [False]
    # asked for: the folder's tokenizer is the one loaded
    model, processor = load_model(str(ckpt), device="cpu", trust_remote_code=True)
    assert (ckpt / "code-ran").exists()
    assert type(processor.tokenizer).__name__ == "FolderTokenizer"
    assert [c.get("trust_remote_code", False) for c in sys.modules[package].calls] == [False, family == "mmada"]
