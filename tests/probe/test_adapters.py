"""Adapters: image-span location (incl. LaViDa newline columns), the zoo,
LLaVA-style and DiffusionGemma adapters on tiny random models, auto_adapter."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dcam.probe.adapters import (DiffusionGemmaAdapter, LlavaAdapter, ShapesAdapter, auto_adapter,
                           locate_image_positions)
from dcam.probe.gradients import LastLayerError, probe, published_gradients
from dcam.explain import Explainer
from dcam.zoo import ShapesDMLLM, ShapesDMLLMConfig, ShapesProcessor


def _image(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _word_tokenizer(words, **special):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", **special)


# --------------------------------------------------------------------------- span location

def test_locate_plain_grid():
    ids = torch.tensor([1, 7, 9] + [4] * 6 + [3, 3])
    assert locate_image_positions(ids, 4, (2, 3)).tolist() == [3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="needs 4"):
        locate_image_positions(ids, 4, (2, 2))
    with pytest.raises(ValueError, match="no image token"):
        locate_image_positions(ids, 5, (2, 3))


def test_locate_newline_column():
    # 2 x 3 grid + a newline slot per row, all with the image token id (scattered newline embedding)
    ids = torch.tensor([1, 7] + [4] * 8 + [3])
    assert locate_image_positions(ids, 4, (2, 3), newline_column=True).tolist() == [2, 3, 4, 6, 7, 8]
    # or with a dedicated newline token id
    ids = torch.tensor([1, 7, 4, 4, 4, 9, 4, 4, 4, 9, 3])
    assert locate_image_positions(ids, 4, (2, 3), newline_column=True, newline_token_id=9).tolist() == \
        [2, 3, 4, 6, 7, 8]
    with pytest.raises(ValueError, match="newline column"):
        locate_image_positions(torch.tensor([4] * 6), 4, (2, 3), newline_column=True)


def test_locate_newline_id_outside_the_image_block_is_text():
    # the newline id 9 also in the prompt before the image and in the response after it: only the two
    # slots after the rows are the grid's (positions worked by hand: rows at 3..5 and 7..9)
    ids = torch.tensor([1, 9, 7, 4, 4, 4, 9, 4, 4, 4, 9, 3, 9, 5, 9])
    assert locate_image_positions(ids, 4, (2, 3), newline_column=True, newline_token_id=9).tolist() == \
        [3, 4, 5, 7, 8, 9]
    # the all-image-id layout followed by a newline word: that word is text
    ids = torch.tensor([1, 7] + [4] * 8 + [9, 3])
    assert locate_image_positions(ids, 4, (2, 3), newline_column=True, newline_token_id=9).tolist() == \
        [2, 3, 4, 6, 7, 8]
    # a row short is still refused (7 tokens in the block)
    with pytest.raises(ValueError, match="has 7 tokens"):
        locate_image_positions(torch.tensor([1, 4, 4, 4, 9, 4, 4, 9, 3, 9]), 4, (2, 3), newline_column=True,
                               newline_token_id=9)


class NewlineProcessor(ShapesProcessor):
    """A LaViDa-style layout: h rows of (w image tokens + 1 newline slot)."""

    @property
    def num_image_tokens(self):
        h, w = self.grid
        return h * (w + 1)


class NewlineDMLLM(ShapesDMLLM):
    """The zoo model with a learned image-newline embedding appended to every grid row."""

    def __init__(self, config):
        super().__init__(config)
        self.image_newline = nn.Parameter(torch.randn(config.text_config.hidden_size))

    def embed(self, input_ids, pixel_values=None):
        emb = self.language_model.embed_tokens(input_ids)
        is_img = input_ids == self.config.image_token_id
        feats = self.get_image_features(pixel_values).to(emb.dtype)
        B, (h, w) = feats.shape[0], self.config.grid
        rows = torch.cat([feats.view(B, h, w, -1), self.image_newline.expand(B, h, 1, -1)], 2)
        return emb.masked_scatter(is_img[..., None], rows.reshape(B, h * (w + 1), -1))


def _tiny_cfg(**kw):
    from dcam.testing import tiny_toy_kwargs as tiny_zoo_kwargs

    return ShapesDMLLMConfig(**tiny_zoo_kwargs(), **kw)


def test_lavida_newline_column_dropped_before_reshape():
    torch.manual_seed(0)
    model = NewlineDMLLM(_tiny_cfg()).eval()
    proc = NewlineProcessor(image_size=32, patch_size=model.config.patch_size, response_length=12)
    img = _image(32, 32)
    a = auto_adapter(model, proc, newline_column=True)
    assert isinstance(a, ShapesAdapter) and a.newline_column
    prep = a.prepare(img, None, a.encode_response("a red circle and a blue square"))
    s0 = 4  # [BOS] describe the image
    expect = torch.tensor([s0 + r * 9 + c for r in range(8) for c in range(8)])
    assert torch.equal(prep.image_positions, expect)
    # the activations the maps are built from are the hidden states of the non-newline slots
    pos = [prep.response_start + i for i in range(3)]
    r = probe(a, prep, pos, prep.response_ids[:3], 1)
    with torch.no_grad():
        hs = model(input_ids=prep.input_ids, output_hidden_states=True, **prep.model_inputs).hidden_states
    torch.testing.assert_close(r.acts[0], hs[2][0, expect])
    e = Explainer(model, proc, newline_column=True).explain(img, response="a red circle and a blue square")
    assert e.maps.shape == (7, 8, 8) and e.grid == (8, 8)
    # without the option the span does not fit the grid: the caller's option is named (8 rows of 8 + 1 = 72)
    from dcam.errors import InputError

    with pytest.raises(InputError, match=r"^newline_column: the image span has 72 tokens, 8 rows of 8 and a newline "
                                         r"slot each; pass newline_column=True$"):
        auto_adapter(model, proc).prepare(img)


# --------------------------------------------------------------------------- LLaVA-style

LLAVA_WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "describe", "the", "image", ".", "a", "red", "circle",
               "and", "blue", "square"]


@pytest.fixture(scope="module")
def llava():
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _word_tokenizer(LLAVA_WORDS, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                          extra_special_tokens={"image_token": "<image>"})
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(LLAVA_WORDS), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2),
        image_token_id=4, vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg).eval(), proc


def test_llava_adapter_explains(llava):
    model, proc = llava
    a = auto_adapter(model, proc)
    assert isinstance(a, LlavaAdapter) and a.grid == (4, 4) and a.probes == ("full",)
    img = _image()
    prep = a.prepare(img, "describe the image", a.encode_response("a red circle"))
    assert prep.input_ids[0, prep.image_positions].eq(4).all() and prep.image_positions.numel() == 16
    pos = [prep.response_start + i for i in range(3)]
    ids = prep.response_ids
    r = probe(a, prep, pos, ids, 1)
    # causal: the token at p is scored by the logits at p - 1
    with torch.no_grad():
        logits = model(input_ids=prep.input_ids, **prep.model_inputs).logits[0]
    torch.testing.assert_close(r.scores, logits[torch.tensor(pos) - 1, torch.tensor(ids)])
    ref = published_gradients(a, prep, pos, ids, 1)
    torch.testing.assert_close(r.per_target_grads(), ref, atol=1e-7, rtol=1e-5)
    # contrastive with every response token a target: the distractor is the last prompt token,
    # whose logits are read at the row before it (not the row that scores the first target)
    rc = probe(a, prep, pos, ids, 1, target_score="contrastive")
    assert rc.distractor == prep.response_start - 1
    s0 = logits[pos[0] - 1].sum() - logits[prep.response_start - 2].sum()
    torch.testing.assert_close(rc.scores[0], s0)
    assert rc.scores[0].abs() > 0
    e = Explainer(model, proc).explain(img, prompt="describe the image", response="a red circle")
    assert e.tokens == ["a", "red", "circle"] and e.maps.shape == (3, 4, 4) and e.probe == "full"
    with pytest.raises(ValueError, match="mask token|not supported"):
        Explainer(model, proc).explain(img, response="a red circle", probe="masked")


def test_llava_generation_records_steps(llava):
    model, proc = llava
    e = Explainer(model, proc).explain(_image(), response_length=5)
    assert len(e.response_ids) == 5 and e.steps == 5 and e.steps_source == "generation"


# --------------------------------------------------------------------------- DiffusionGemma

DG_WORDS = ["<pad>", "<eos>", "<bos>", "<unk>", "describe", "the", "image", ".", "a", "red", "circle", "and", "blue",
            "square"]


@pytest.fixture(scope="module")
def dgemma():
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    words = DG_WORDS + [f"<x{i}>" for i in range(20 - len(DG_WORDS))] + ["<image>", "<boi>", "<eoi>", "<y>"]
    tok = _word_tokenizer(words, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    tc = dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
              num_key_value_heads=1, head_dim=16, global_head_dim=16, num_experts=2, top_k_experts=1,
              moe_intermediate_size=32, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
              sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vc = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=2,
              position_embedding_size=64)
    cfg = DiffusionGemmaConfig(text_config=tc, vision_config=vc, image_token_id=20, boi_token_id=21, eoi_token_id=22,
                               canvas_length=8)
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(cfg).eval()
    ip = Gemma4ImageProcessorPil(patch_size=4, pooling_kernel_size=2, max_soft_tokens=70)
    return model, SimpleNamespace(image_processor=ip, tokenizer=tok)


def test_diffusion_gemma_adapter(dgemma):
    model, proc = dgemma
    a = auto_adapter(model, proc)
    assert isinstance(a, DiffusionGemmaAdapter) and a.mask_token_id is None and a.probes == ("full",)
    img = _image(40, 56)
    prep = a.prepare(img, None, a.encode_response("a red circle and a blue square"))
    h, w = prep.grid
    assert h * w == prep.image_positions.numel() and w > h  # landscape image, grid from the patch positions
    assert prep.input_ids[0, prep.image_positions].eq(20).all()
    pos = [prep.response_start + i for i in range(4)]
    ids = prep.response_ids[:4]
    for layer in (0, 1):
        r = probe(a, prep, pos, ids, layer)
        ref = published_gradients(a, prep, pos, ids, layer)
        assert ref.abs().max() > 0
        torch.testing.assert_close(r.per_target_grads(), ref, atol=1e-7, rtol=1e-5)
    # the decoder never reads the last encoder block's output
    assert torch.count_nonzero(probe(a, prep, pos, ids, 2, allow_last_layer=True).grads) == 0
    with pytest.raises(LastLayerError):
        Explainer(model, proc, layer=2)
    exp = Explainer(model, proc)
    e = exp.explain(img, response="a red circle and a blue square")
    assert e.maps.shape == (7, h, w) and e.tokens == "a red circle and a blue square".split()
    assert e.layer == 1
    with pytest.raises(ValueError, match="not supported"):
        exp.explain(img, response="a red circle", probe="remask")
    # contrastive needs a non-target canvas slot (no logits at prompt positions)
    with pytest.raises(ValueError, match="not a target"):
        exp.explain(img, response="a red circle", target_score="contrastive")
    e = exp.explain(img, response="a red circle", targets=["red", "circle"], target_score="contrastive")
    assert e.extra["distractor"] == e.response_indices[0] - 1 + prep.response_start


def test_diffusion_gemma_generation_records_steps(dgemma):
    model, proc = dgemma
    e = Explainer(model, proc).explain(_image(40, 56), response_length=8, steps=5)
    assert e.steps_source == "generation" and 1 <= e.steps <= 5
    assert len(e.response_ids) == 8


# --------------------------------------------------------------------------- auto_adapter

def test_auto_adapter_errors():
    from transformers import LlamaConfig, LlamaForCausalLM

    text_only = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="no image token"):
        auto_adapter(text_only, None)
    with pytest.raises(ValueError, match="no image token"):
        Explainer(text_only, None)
    odd = nn.Linear(2, 2)
    odd.config = SimpleNamespace(image_token_id=3)
    with pytest.raises(ValueError, match="no adapter"):
        auto_adapter(odd, None)
    with pytest.raises(ValueError, match="no model"):
        auto_adapter(None, None)


def test_auto_adapter_picks_zoo():
    torch.manual_seed(0)
    model = ShapesDMLLM(_tiny_cfg()).eval()
    a = auto_adapter(model, ShapesProcessor(image_size=32, patch_size=model.config.patch_size, response_length=12))
    assert type(a) is ShapesAdapter and a.default_layer() == 1 and a.mask_token_id == model.config.mask_token_id
    assert auto_adapter(a) is a
