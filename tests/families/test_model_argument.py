"""What ``model=`` must be, and the image tokens a given response may not hold.

* The base model of a transformers VLM (what ``AutoModel`` loads: no LM head) ended in a bare
  AttributeError inside the adapter (``'LlavaModel' object has no attribute 'model'``); it is refused
  in one line naming ``model`` and the class to load instead.
* A path, a ``(model, processor)`` pair, a processor (the arguments swapped), a module or a text-only
  model, or None, were refused without naming ``model`` ("str (config.model_type None) has no image
  token id ..."), and without a hint at the slip.
* A given response holding a token written around the image's features (Gemma 3's
  ``<start_of_image>``, Qwen's ``<|vision_start|>``, Idefics3's ``<fake_token_around_image>``...) was
  taken, the token explained as a word with a map; the image placeholder itself was already refused.
"""
from pathlib import Path

import pytest
import torch

from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.testing.support import one_line_refusal

#: stand-in name -> (transformers' base class, the class with the LM head that loads the checkpoint)
BASE_AND_HEAD = {
    "llava": ("LlavaModel", "LlavaForConditionalGeneration"),
    "llava-next": ("LlavaNextModel", "LlavaNextForConditionalGeneration"),
    "llava-onevision": ("LlavaOnevisionModel", "LlavaOnevisionForConditionalGeneration"),
    "qwen-vl": ("Qwen2VLModel", "Qwen2VLForConditionalGeneration"),
    "qwen2.5-vl": ("Qwen2_5_VLModel", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3-vl": ("Qwen3VLModel", "Qwen3VLForConditionalGeneration"),
    "idefics3": ("Idefics3Model", "Idefics3ForConditionalGeneration"),
    "smolvlm": ("SmolVLMModel", "SmolVLMForConditionalGeneration"),
    "gemma3": ("Gemma3Model", "Gemma3ForConditionalGeneration"),
    "gemma4": ("Gemma4Model", "Gemma4ForConditionalGeneration"),
    "diffusion-gemma": ("DiffusionGemmaModel", "DiffusionGemmaForBlockDiffusion"),
}

#: the end of every refusal of a path
PATH_HINT = "not a model; pass the loaded model; dcam.models.load_model(DIR) loads a folder (it returns the model " \
    "and its processor)"
#: the end of the refusal of a model with no image token
NOT_MULTIMODAL = "has no image token id (config.image_token_id) and matches no dMLLM family; it is not a " \
    "multimodal model this explainer can probe (see `dcam families`)"
#: the reason a given response's image mark is refused for
IMAGE_MARK = "is part of the image placeholder: it marks where the image features go"
#: what a given text's refusal of a token the model may write adds
GIVE_IDS = "; a response the model wrote is given as its token ids (response_ids of its explanation or meta.json)"


@pytest.mark.parametrize("name", sorted(BASE_AND_HEAD))
def test_the_base_model_of_a_transformers_vlm_is_refused_naming_the_class_to_load(models, name):
    model, processor = models(name)
    base, head = BASE_AND_HEAD[name]
    assert type(model.model).__name__ == base and type(model).__name__ == head  # (what the table says)
    article = "an" if base[0] in "AEIOU" else "a"
    line = (f"model: {article} {base} has no LM head to score the response with (the base model, what AutoModel "
            f"loads); load the checkpoint with {head} or AutoModelForImageTextToText")
    assert one_line_refusal(lambda: Explainer(model.model, processor)) == line
    # a family forced on it says the same (it was "lacks the transformer blocks of the ... family")
    family = {"qwen2.5-vl": "qwen-vl", "qwen3-vl": "qwen-vl", "smolvlm": "idefics3"}.get(name, name)
    assert one_line_refusal(lambda: Explainer(model.model, processor, family=family)) == line


def test_what_is_not_a_model_is_refused_naming_model_with_a_hint(models):
    model, processor = models("llava")
    text_only = model.model.language_model  # a LlamaModel: no image token
    cases = [
        ((None, processor), "model: no model given; pass the loaded model and its processor"),
        (("model.safetensors", processor), f"model: got the path 'model.safetensors', {PATH_HINT}"),
        ((Path("ckpt") / "llava", processor), f"model: got the path 'ckpt/llava', {PATH_HINT}"),
        (((model, processor), processor),
         "model: got a tuple (LlavaForConditionalGeneration, LlavaProcessor); pass model and processor as two "
         "arguments, Explainer(model, processor)"),
        (([model, processor, processor], processor),
         "model: got a list (LlavaForConditionalGeneration, LlavaProcessor, LlavaProcessor), not a model; pass the "
         "loaded model"),
        ((processor, model),
         "model: got a LlavaProcessor (a processor) and processor= a LlavaForConditionalGeneration (a model); the "
         "arguments look swapped: pass the model first, Explainer(model, processor)"),
        ((processor.image_processor, model),
         f"model: got {'an' if type(processor.image_processor).__name__[0] in 'AEIOU' else 'a'} "
         f"{type(processor.image_processor).__name__} (an image processor) and processor= a "
         "LlavaForConditionalGeneration (a model); the arguments look swapped: pass the model first, "
         "Explainer(model, processor)"),
        ((processor, processor),
         "model: got a LlavaProcessor, a processor, not a model; pass the loaded model first and its processor "
         "second, Explainer(model, processor)"),
        ((torch.nn.Linear(2, 2), processor), f"model: Linear (config.model_type None) {NOT_MULTIMODAL}"),
        ((text_only, processor), f"model: LlamaModel (config.model_type 'llama') {NOT_MULTIMODAL}"),
    ]
    for args, line in cases:
        assert one_line_refusal(lambda: Explainer(*args)) == line
    assert one_line_refusal(lambda: Explainer()) == "model: no model given; pass the loaded model and its processor"


def test_the_cli_names_the_option_once_for_a_model_argument_error(models):
    # the CLI strips the argument's name and puts the option's in its place: one clean line
    from dcam.cli.common import option_error

    model, processor = models("llava")
    with pytest.raises(InputError) as info:
        Explainer(model.model, processor)
    assert str(option_error("--model", info.value)) == (
        "--model: a LlavaModel has no LM head to score the response with (the base model, what AutoModel loads); "
        "load the checkpoint with LlavaForConditionalGeneration or AutoModelForImageTextToText")


#: stand-in -> the tokens written around the image that a response given as text may not hold (DiffusionGemma's,
#: refused as ids too, are refused by one line that offers no ids: tests/families/test_special_tokens.py)
IMAGE_MARKS = {
    "gemma3": ["<start_of_image>", "<end_of_image>"],
    "qwen-vl": ["<|vision_start|>", "<|vision_end|>"],
    "idefics3": ["<fake_token_around_image>", "<global-img>", "<row_1_col_2>"],
    "smolvlm": ["<fake_token_around_image>", "<global-img>", "<row_2_col_1>"],
    "gemma4": ["<start_of_image>", "<end_of_image>"],
    "dream-vl": ["<|vision_start|>", "<|vision_end|>"],
    "mmada": ["<|soi|>", "<|eoi|>"],
}


@pytest.mark.parametrize("name", sorted(IMAGE_MARKS))
def test_a_given_text_holding_an_image_mark_is_refused_as_the_placeholder_is(models, landscape, name):
    model, processor = models(name)
    exp = Explainer(model, processor)
    tok = exp.adapter.tokenizer
    for mark in IMAGE_MARKS[name]:
        mark_id = tok.convert_tokens_to_ids(mark)
        assert tok.convert_ids_to_tokens(mark_id) == mark  # one token of its own (the stand-in's vocabulary)
        line = f"response: holds {mark!r} (id {mark_id}), which {IMAGE_MARK}{GIVE_IDS}"
        assert one_line_refusal(lambda: exp.explain(landscape, response=f"a red {mark} circle", steps=2)) == line
        red = exp.adapter.encode_response("red")
        # given as ids, the model's own (a generated response's, given back): left out of the words with a note
        e = exp.explain(landscape, response=[*red, mark_id, *red], steps=2)
        assert (e.tokens, e.notes) == (["red", "red"], [f"targets: 1 special token of the response ({mark!r}) is "
                                                        "not a word: left out (targets='tokens' explains it)"])
    assert exp.explain(landscape, response="a red circle", steps=2).tokens == ["a", "red", "circle"]


def test_lumina_dimoo_leaves_its_image_marks_given_as_ids_out_of_the_words(models, landscape):
    # its stand-in's tokenizer spells none of them (text cannot hold them) nor calls them special: given as ids
    # (boi 126349, eoi 126350, row newline 126084), the model's own, they were words with maps of their own
    # (scored as words in a run); they are image marks (its adapter's image_mark_ids), left out as MMaDA's are
    exp = Explainer(*models("lumina-dimoo"))
    red = exp.adapter.encode_response("red")
    assert exp.adapter.image_mark_ids() == {126349, 126350, 126084}
    for mark_id in (126349, 126350, 126084):
        e = exp.explain(landscape, response=[*red, mark_id, *red], steps=2)
        assert (e.tokens, e.notes) == (["red", "red"], [f"targets: 1 special token of the response ('<id {mark_id}>') "
                                                        "is not a word: left out (targets='tokens' explains it)"])
