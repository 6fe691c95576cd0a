"""The family table: detection of every family, docs/FAMILIES.md current,
``dcam families``, and loading errors that say what was found and what is
missing."""
import pathlib

import pytest

from dcam.cli import main
from dcam.models import load_model
from dcam.probe.adapters import FAMILIES, detect_family, markdown_table
from dcam.testing.standins import STANDIN_FAMILY

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_stand_in_is_detected_as_its_family(models):
    for name, fam in STANDIN_FAMILY.items():
        assert detect_family(models(name)[0]).name == fam, name
    # every family of the table but the bundled toy has a stand-in
    assert {f.name for f in FAMILIES} - {"shapes"} == set(STANDIN_FAMILY.values())


def test_docs_table_is_the_generated_one():
    doc = (ROOT / "docs" / "FAMILIES.md").read_text()
    assert markdown_table() in doc


def test_families_command_lists_every_family(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    for f in FAMILIES:
        assert f"{f.name}: {f.models}" in out and f.rule in out
    # which families trace trajectories: the docs send users here for it (only --markdown showed it)
    assert out.count("    trajectory: ") == len(FAMILIES)
    assert main(["families", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == markdown_table()
    assert main(["families", "--load"]) == 0
    assert "load_pretrained_model" in capsys.readouterr().out


def _folder(tmp_path, **config):
    import json

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return str(d)


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llava_llada"}, r"is a llava_llada checkpoint \(LLaDA-V or LaViDa\); loading it needs the "
                                    r"authors' llava package"),
    ({"model_type": "llava_dream"}, r"llava_dream checkpoint .* needs the authors' llava package"),
    ({"model_type": "mmada"}, r"is an MMaDA checkpoint; loading it needs the MMaDA repository"),
    ({"model_type": "llada", "architectures": ["LLaDAForMultiModalGeneration"]},
     r"is a Lumina-DiMOO checkpoint; loading it needs the Lumina-DiMOO repository"),
    ({"model_type": "dream-vl"}, r"dream-vl checkpoint whose modeling code ships with it; pass --trust-remote-code"),
])
def test_unloadable_family_folders_say_what_is_missing(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        load_model(_folder(tmp_path, **config))


def test_dtype_is_checked():
    with pytest.raises(ValueError, match="dtype: 'int8' is not one of float32, bfloat16, float16"):
        load_model(None, dtype="int8")


def test_cli_names_the_option(tmp_path, capsys):
    img = tmp_path / "i.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    assert main(["explain", str(img), "--model", _folder(tmp_path, model_type="dream-vl"), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dcam explain: error: --model: ") and "--trust-remote-code" in err[0]


#: the views each stand-in's images have, by hand from each family's layout (anyres: the
#: stitched grid and the base view; VQ models: the cropped square as "image")
VIEWS = {"lavida": {"highres", "base"}, "lavida-dream": {"highres", "base"}, "llada-v": {"highres", "base"},
         "mmada": {"image"}, "lumina-dimoo": {"image"}, "dream-vl": set(), "diffusion-gemma": set(),
         "llava": set(), "llava-next": {"highres", "base"}, "llava-onevision": {"highres", "base"},
         "qwen-vl": set(), "qwen2.5-vl": set(), "qwen3-vl": set(), "idefics3": {"highres", "base"},
         "smolvlm": {"highres", "base"}, "gemma3": {"base"}, "gemma4": set()}
#: views a family declares beyond its stand-in's: Gemma 3's highres appears with pan-and-scan crops, which the
#: stand-in's processor does not cut (its images have their one view, base: tests/families/test_gemma3_pan_and_scan.py)
DECLARED = {**VIEWS, "gemma3": {"highres", "base"}}


@pytest.mark.parametrize("name", sorted(STANDIN_FAMILY))
def test_declared_image_views_are_the_views_images_get(name, models, landscape, wide):
    """An Explainer refuses, when it is made, a view= outside the adapter's
    image_views: so every view an image can get must be declared there."""
    from dcam import Explainer
    from dcam.errors import InputError
    from dcam.explain import declared_image_views
    from dcam.probe import auto_adapter

    model, proc = models(name)
    a = auto_adapter(model, proc)
    got = set()
    for img in (landscape, wide):
        # ("default": the one view of a model without named ones, there to carry its crop box; always accepted)
        got |= set(a.prepare(img, None).views) - {"default"}
    assert got == VIEWS[name] and set(declared_image_views(a)) == DECLARED[name]
    for view in ("all", *DECLARED[name]):
        assert Explainer(adapter=a, view=view).view == view
    assert Explainer(adapter=a, view="default").view is None  # the model's default view, as no view
    with pytest.raises(InputError, match=r"^view: this model's images have no view 'tiles' \(views: default, "):
        Explainer(adapter=a, view="tiles")


def test_a_family_forced_on_a_model_it_does_not_fit_is_refused_naming_family(models):
    """family= forces an adapter where detection fails; forced on a model of another
    family, or on one without the family's blocks, it used to end in an AttributeError
    inside the probe."""
    import torch.nn as nn
    from transformers import PretrainedConfig

    from dcam.errors import InputError
    from dcam.probe import auto_adapter

    model, proc = models("llava")
    with pytest.raises(InputError, match=r"^family: LlavaForConditionalGeneration \(config.model_type 'llava'\) is a "
                                         r"llava model, not mmada \(leave family out to detect it\)$"):
        auto_adapter(model, proc, family="mmada")
    # a sibling row of the same adapter is refused too: forcing it changed nothing (the adapter
    # reads the layout from the config) and said nothing
    for name, forced in (("llava-next", "llava-onevision"), ("lavida", "llada-v")):
        model, proc = models(name)
        with pytest.raises(InputError, match=rf"^family: .* is a {name} model, not {forced} \(leave family out"):
            auto_adapter(model, proc, family=forced)
        assert auto_adapter(model, proc, family=name).family == name

    class Plain(nn.Module):  # no config at all: an AttributeError in lavida's, shapes' and diffusion-gemma's adapters
        pass
    for name in ("lavida", "llada-v", "lavida-dream", "shapes", "diffusion-gemma", "mmada"):
        with pytest.raises(InputError, match=rf"^family: Plain \(config.model_type None\) lacks the transformer "
                                             rf"blocks of the {name} family"):
            auto_adapter(Plain(), None, family=name)

    class Custom(nn.Module):  # detected as no family: family= is how such a model is explained
        def __init__(self):
            super().__init__()
            self.config = PretrainedConfig(image_token_id=5)
            self.config.model_type = "custom-vlm"
            self.proj = nn.Linear(2, 2)

    with pytest.raises(InputError, match=r"^family: Custom \(config.model_type 'custom-vlm'\) lacks the transformer "
                                         r"blocks of the llava family \(model.model.language_model.layers\)$"):
        auto_adapter(Custom(), proc, family="llava")


def test_a_transformers_vlm_without_its_processor_is_named(models):
    # processor=None was accepted and explain() failed with an AttributeError
    import pytest

    from dcam import Explainer
    from dcam.errors import InputError

    model, _ = models("llava")
    with pytest.raises(InputError, match=r"^processor: this llava model needs its transformers processor \(with a "
                                         r"tokenizer\), got NoneType$"):
        Explainer(model, None)


def test_an_autoregressive_response_past_the_models_positions_is_refused_before_generating(models):
    # response_length=10**6 was handed to generate() and ran until killed
    import numpy as np
    import pytest

    from dcam import Explainer
    from dcam.errors import InputError

    model, proc = models("llava")
    most = int(model.config.get_text_config().max_position_embeddings)
    image = np.full((30, 30, 3), 120, dtype=np.uint8)
    with pytest.raises(InputError, match=rf"^response_length: 1000000 tokens after a prompt of \d+ pass this model's "
                                         rf"{most} positions \(max_position_embeddings\); at most \d+ fit$"):
        Explainer(model, proc).explain(image, response_length=10**6)


def test_the_positions_bound_a_given_response_and_a_prompt_alone(models):
    # a given response ran past max_position_embeddings silently, and a prompt that alone passed them was
    # told to "ask for at most -179" tokens
    import numpy as np
    import pytest

    from dcam import Explainer
    from dcam.errors import InputError

    model, proc = models("llava")
    cfg = model.config.get_text_config()
    exp = Explainer(model, proc)
    image = np.full((30, 30, 3), 120, dtype=np.uint8)
    Lp = exp.adapter.prepare(image).response_start  # prompt and image, counted here
    words = exp.adapter.encode_response("a red circle")
    saved = cfg.max_position_embeddings
    try:
        cfg.max_position_embeddings = Lp + len(words) - 1  # one position short of the given response
        with pytest.raises(InputError, match=rf"^response: {len(words)} tokens after a prompt of {Lp} pass this "
                                             rf"model's {Lp + len(words) - 1} positions \(max_position_embeddings\); "
                                             rf"at most {len(words) - 1} fit$"):
            exp.explain(image, response="a red circle")
        cfg.max_position_embeddings = Lp  # the prompt alone fills them
        for call in (lambda: exp.explain(image, response="a red circle"), lambda: exp.explain(image)):
            with pytest.raises(InputError, match=rf"^image: with the prompt it takes {Lp} positions, and this "
                                                 rf"model has {Lp} \(max_position_embeddings\): none left"):
                call()
        cfg.max_position_embeddings = Lp + len(words)  # exactly enough
        assert exp.explain(image, response="a red circle").response_ids == list(words)
    finally:
        cfg.max_position_embeddings = saved


def test_m_rope_models_count_the_response_not_the_prompts_tokens(models):
    # Qwen-VL gives an image's tokens grid positions (M-RoPE): a prompt of 69 tokens may use 16 positions,
    # and counting its tokens refused sequences the model takes
    import numpy as np
    import pytest

    from dcam import Explainer
    from dcam.errors import InputError

    model, proc = models("qwen-vl")
    cfg = model.config.get_text_config()
    exp = Explainer(model, proc)
    image = np.full((30, 30, 3), 120, dtype=np.uint8)
    Lp = exp.adapter.prepare(image).response_start
    saved = cfg.max_position_embeddings
    try:
        cfg.max_position_embeddings = 4  # fewer than the prompt's tokens, more than the response's
        assert Lp > 4
        assert exp.explain(image, response="a red circle").response == "a red circle"
        with pytest.raises(InputError, match=r"^response_length: 5 tokens pass this model's 4 positions "
                                             r"\(max_position_embeddings\)$"):
            exp.explain(image, response_length=5)
    finally:
        cfg.max_position_embeddings = saved
