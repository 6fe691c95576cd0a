"""``--pan-and-scan`` / ``--no-pan-and-scan`` for a model whose processor cannot crop is refused before the
weights are read, where the folder's files tell the processor's class (the toy's zoo folders, a transformers
checkpoint): the folders here hold a model.safetensors that is not a safetensors file, so a refusal that came
after loading the weights would be the weights' error instead. The processor classes expected are what
transformers' own ``AutoProcessor.from_pretrained`` builds from the (intact) folder."""
import json
import os
import shutil

import pytest

from dcam.errors import InputError

RESPONSE = "a red circle"
LLAVA_LINE = ("--pan-and-scan: this llava model's processor (LlavaProcessor) has no pan-and-scan (Gemma 3's crops); "
              "leave it out")


def _corrupt_weights(folder):
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(b"not a safetensors file")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from dcam.testing.hf_tiny import tiny_llava

    model, proc = tiny_llava()
    folder = tmp_path_factory.mktemp("llava")
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def corrupt_llava(llava_dir, tmp_path):
    folder = str(tmp_path / "corrupt_llava")
    shutil.copytree(llava_dir, folder)
    _corrupt_weights(folder)
    return folder


def test_the_folder_names_the_processor_transformers_builds(llava_dir, tmp_path):
    import transformers

    from dcam.models import read_config
    from dcam.probe.adapters.pan_and_scan import transformers_processor_class

    built = type(transformers.AutoProcessor.from_pretrained(llava_dir, local_files_only=True))
    assert built is transformers.LlavaProcessor
    assert transformers_processor_class(llava_dir, read_config(llava_dir)) is built
    # code shipped with the folder decides its processor: left to the loading
    shipped = tmp_path / "shipped"
    shutil.copytree(llava_dir, shipped)
    path = shipped / "processor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "auto_map": {"AutoProcessor": "p.MyProcessor"}}))
    assert transformers_processor_class(str(shipped), read_config(str(shipped))) is None


def test_the_corrupt_weights_fail_to_load_without_the_option(corrupt_llava):
    from dcam.models import load_model

    with pytest.raises(InputError, match=r"^model: cannot load the weights in "):
        load_model(corrupt_llava)


@pytest.mark.parametrize("on", [True, False])
def test_load_model_refuses_the_option_before_the_weights(corrupt_llava, on):
    from dcam.models import load_model

    with pytest.raises(InputError) as err:
        load_model(corrupt_llava, pan_and_scan=on)
    assert str(err.value) == "pan_and_scan: " + LLAVA_LINE.split(": ", 1)[1]


@pytest.mark.parametrize("command", ["explain", "run"])
def test_the_cli_refuses_it_before_the_weights(cli, error_line, tmp_path, shapes_png, corrupt_llava, command):
    out = tmp_path / "out"
    if command == "explain":
        argv = ["explain", shapes_png, "--response", RESPONSE]
    else:
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(json.dumps({"id": "a", "image": shapes_png}) + "\n")
        argv = ["run", manifest]
    rc, stdout, err = cli(*argv, "--model", corrupt_llava, "--out", out, "--pan-and-scan", "--quiet")
    assert rc == 2 and stdout == "" and len(err) == 1
    assert error_line(err, command) == f"dcam {command}: error: {LLAVA_LINE}"
    assert not os.path.lexists(out)


def test_a_zoo_folder_is_refused_before_its_weights(cli, error_line, tmp_path, shapes_png, tiny_model_dir):
    folder = str(tmp_path / "zoo")
    shutil.copytree(tiny_model_dir, folder)
    _corrupt_weights(folder)
    rc, _, err = cli("explain", shapes_png, "--model", folder, "--response", "red circle", "--out", tmp_path / "out",
                     "--no-pan-and-scan", "--quiet")
    assert rc == 2 and len(err) == 1
    assert error_line(err) == ("dcam explain: error: --no-pan-and-scan: this dcam_shapes_dmllm model's processor "
                               "(ShapesProcessor) has no pan-and-scan (Gemma 3's crops); leave it out")
    assert not os.path.lexists(tmp_path / "out")


def test_a_gemma3_folder_is_not_refused_early(tmp_path):
    """Gemma 3's processor can crop: the option goes on to the loading, which meets the corrupt weights."""
    from dcam.models import load_model
    from dcam.testing.hf_tiny import tiny_gemma3

    model, proc = tiny_gemma3()
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    _corrupt_weights(str(tmp_path))
    with pytest.raises(InputError, match=r"^model: cannot load the weights in "):
        load_model(str(tmp_path), pan_and_scan=True)


def test_a_processor_whose_backend_is_missing_is_left_to_the_loading(tmp_path):
    """mistral3's PixtralProcessor needs torchvision, not installed here: transformers gives a dummy class whose
    attributes raise ImportError. The early check cannot tell, so the option changes nothing: the loader's one
    line, as without it (it was an ImportError traceback from the early check)."""
    from transformers.models.auto.processing_auto import processor_class_from_name

    from dcam.models import load_model, read_config
    from dcam.probe.adapters.pan_and_scan import transformers_processor_class

    if not getattr(type(processor_class_from_name("PixtralProcessor")), "is_dummy", False):
        pytest.skip("torchvision is installed: PixtralProcessor is the real class here")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral3", "image_token_index": 10}))
    assert transformers_processor_class(str(tmp_path), read_config(str(tmp_path))) is None
    lines = []
    for on in (None, True, False):
        with pytest.raises(InputError, match=r"^model: cannot load the weights in ") as err:
            load_model(str(tmp_path), pan_and_scan=on)
        lines.append(str(err.value))
    assert lines[0] == lines[1] == lines[2]


@pytest.mark.parametrize("config, line", [
    ({"model_type": "llava_llada"}, "this llava_llada model's processor (SimpleNamespace)"),
    ({"model_type": "mmada"}, "this mmada model's processor (MMaDAProcessor)"),
    ({"architectures": ["LLaDAForMultiModalGeneration"]}, "this lumina-dimoo model's processor (DiMOOProcessor)"),
])
def test_a_family_folder_is_refused_before_its_loader_runs(cli, error_line, tmp_path, shapes_png, config, line):
    """The families' loaders build processors that never crop (LLaDA-V / LaViDa: the llava package's tokenizer
    and image processor; MMaDA, Lumina-DiMOO: dcam's): refused before the loader looks for its package (none
    is installed here: without the option, that is the line) or reads the weights. It was refused only after
    the weights had loaded."""
    from dcam.models import load_model

    folder = tmp_path / "family"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="^model: .* loading it needs "):
        load_model(str(folder))
    with pytest.raises(InputError) as err:
        load_model(str(folder), pan_and_scan=True)
    assert str(err.value) == f"pan_and_scan: {line} has no pan-and-scan (Gemma 3's crops); leave it out"
    rc, stdout, err = cli("explain", shapes_png, "--model", folder, "--response", RESPONSE, "--out", tmp_path / "out",
                          "--no-pan-and-scan", "--quiet")
    assert rc == 2 and stdout == "" and len(err) == 1
    assert error_line(err) == f"dcam explain: error: --no-pan-and-scan: {line} has no pan-and-scan (Gemma 3's " \
                              "crops); leave it out"
    assert not os.path.lexists(tmp_path / "out")
