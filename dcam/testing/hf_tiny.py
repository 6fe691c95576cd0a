"""transformers' own VLM classes with tiny random configs, and processors that
run offline (word-level tokenizers; processors without the video part, which
needs torchvision). Each builder returns ``(model, processor)`` in eval mode.

Image sizes are small: 32-pixel tiles of 8-pixel patches (LLaVA family,
Idefics3), 4-pixel patches merged 2x2 (Qwen-VL), 4-pixel patches pooled 2x2
(Gemma 4, DiffusionGemma).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, Tuple

import torch

from .vocab import WORDS, word_tokenizer

#: Pinpoints of the tiny anyres models, as (height, width) (transformers' order).
PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32], [96, 96]]
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2)
# special ids sit after the words
_BASE = len(WORDS) + 1


def _specials(names) -> Dict[str, int]:
    return {n: _BASE + i for i, n in enumerate(names)}


def _no_video(cls):
    """``cls`` (a transformers processor) accepting ``video_processor=None``."""
    class Processor(cls):
        def check_argument_for_proper_class(self, name, arg):
            return None if name == "video_processor" and arg is None else \
                super().check_argument_for_proper_class(name, arg)
    Processor.__name__ = cls.__name__
    return Processor


def _llava_tokenizer(extra=()):
    sp = _specials(["<pad>", "<s>", "</s>", "<image>", "<video>", *extra])
    tok = word_tokenizer(sp, named=dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>"),
                         extra_special={"image_token": "<image>", "video_token": "<video>"})
    return tok, sp


def _text_ids(sp, eos: str = "</s>", bos: str = "<s>") -> dict:
    """The text config's special ids from the stand-in vocabulary: left out, transformers'
    defaults (bos 1, eos 2) are ids of ordinary words here ("the" is 2), which every
    response would then end at."""
    ids = dict(pad_token_id=sp["<pad>"], eos_token_id=sp[eos])
    if bos in sp:
        ids["bos_token_id"] = sp[bos]
    return ids


def _vision(model_type: str, image_size: int = 32) -> dict:
    return dict(model_type=model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, image_size=image_size, patch_size=8)


def tiny_llava(seed: int = 0) -> Tuple:
    import transformers as T

    tok, sp = _llava_tokenizer()
    ip = T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = T.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                            num_additional_image_tokens=1)
    cfg = T.LlavaConfig(vision_config=_vision("clip_vision_model"),
                        text_config=dict(TEXT, model_type="llama", vocab_size=max(sp.values()) + 1, **_text_ids(sp)),
                        image_token_id=sp["<image>"], vision_feature_layer=-1,
                        vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    return T.LlavaForConditionalGeneration(cfg).eval(), proc


def tiny_llava_next(seed: int = 0) -> Tuple:
    import transformers as T

    tok, sp = _llava_tokenizer()
    ip = T.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                      image_grid_pinpoints=PINPOINTS)
    proc = T.LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1)
    cfg = T.LlavaNextConfig(vision_config=_vision("clip_vision_model"),
                            text_config=dict(TEXT, model_type="llama", vocab_size=max(sp.values()) + 1, **_text_ids(sp)),
                            image_token_id=sp["<image>"], image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
                            vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    return T.LlavaNextForConditionalGeneration(cfg).eval(), proc


def tiny_llava_onevision(seed: int = 0, aspect: str = "anyres_max_9", tile: int = 32) -> Tuple:
    """``tile``: the tower's input side (8-pixel patches; 36 reads 32 of its pixels, as SigLIP's
    384 with 14-pixel patches reads 378); the pinpoints scale with it."""
    import transformers as T

    tok, sp = _llava_tokenizer()
    pinpoints = [[h * tile // 32, w * tile // 32] for h, w in PINPOINTS]
    ip = T.LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints)
    proc = _no_video(T.LlavaOnevisionProcessor)(image_processor=ip, tokenizer=tok, video_processor=None,
                                                num_image_tokens=(tile // 8) ** 2, vision_feature_select_strategy="full",
                                                vision_aspect_ratio=aspect)
    cfg = T.LlavaOnevisionConfig(vision_config=_vision("siglip_vision_model", tile),
                                 text_config=dict(TEXT, model_type="qwen2", vocab_size=max(sp.values()) + 1, **_text_ids(sp)),
                                 image_token_id=sp["<image>"], video_token_id=sp["<video>"],
                                 image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
                                 vision_feature_select_strategy="full", vision_aspect_ratio=aspect)
    torch.manual_seed(seed)
    return T.LlavaOnevisionForConditionalGeneration(cfg).eval(), proc


def tiny_qwen_vl(kind: str = "qwen2_vl", seed: int = 0) -> Tuple:
    """``kind``: ``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``."""
    import transformers as T

    sp = _specials(["<pad>", "</s>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])
    tok = word_tokenizer(sp, named=dict(pad_token="<pad>", eos_token="</s>"),
                         extra_special={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                        "vision_start_token": "<|vision_start|>",
                                        "vision_end_token": "<|vision_end|>"})
    ip = T.Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16,
                                    max_pixels=64 * 64)
    proc = _no_video(T.Qwen2VLProcessor)(image_processor=ip, tokenizer=tok, video_processor=None)
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3]}
    if kind == "qwen3_vl":
        rope["mrope_interleaved"] = True
    vc = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
              temporal_patch_size=2, in_chans=3, in_channels=3, out_hidden_size=32, intermediate_size=64)
    if kind == "qwen3_vl":
        vc.update(deepstack_visual_indexes=[], num_position_embeddings=64)
    C, M = {"qwen2_vl": (T.Qwen2VLConfig, T.Qwen2VLForConditionalGeneration),
            "qwen2_5_vl": (T.Qwen2_5_VLConfig, T.Qwen2_5_VLForConditionalGeneration),
            "qwen3_vl": (T.Qwen3VLConfig, T.Qwen3VLForConditionalGeneration)}[kind]
    cfg = C(text_config=dict(TEXT, vocab_size=max(sp.values()) + 1, rope_scaling=rope, pad_token_id=sp["<pad>"],
                             eos_token_id=sp["</s>"]), vision_config=vc,
            image_token_id=sp["<|image_pad|>"], video_token_id=sp["<|video_pad|>"],
            vision_start_token_id=sp["<|vision_start|>"], vision_end_token_id=sp["<|vision_end|>"])
    torch.manual_seed(seed)
    return M(cfg).eval(), proc


def tiny_idefics3(kind: str = "idefics3", seed: int = 0, tile: int = 32) -> Tuple:
    """``kind``: ``idefics3`` or ``smolvlm`` (the model; both use the Idefics3
    processor: SmolVLM's needs the num2words package). ``tile``: the tower's input side
    (8-pixel patches; 36 reads 32 of its pixels, as SmolVLM-2.2B's 384 with 14-pixel
    patches reads 378)."""
    import transformers as T

    tiles = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    sp = _specials(["<pad>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<global-img>",
                    "<end_of_utterance>", *tiles])
    tok = word_tokenizer(sp, named=dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>"),
                         extra_special={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                        "global_image_token": "<global-img>",
                                        "end_of_utterance_token": "<end_of_utterance>"})
    ip = T.Idefics3ImageProcessorPil(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile},
                                     do_image_splitting=True)
    proc = T.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)
    C, M = (T.Idefics3Config, T.Idefics3ForConditionalGeneration) if kind == "idefics3" else \
        (T.SmolVLMConfig, T.SmolVLMForConditionalGeneration)
    cfg = C(text_config=dict(TEXT, model_type="llama", vocab_size=max(sp.values()) + 1, **_text_ids(sp)),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=tile, patch_size=8), scale_factor=2, image_token_id=sp["<image>"])
    torch.manual_seed(seed)
    return M(cfg).eval(), proc


def _gemma_tokenizer():
    sp = _specials(["<pad>", "<eos>", "<bos>", "<image_soft_token>", "<start_of_image>", "<end_of_image>"])
    tok = word_tokenizer(sp, named=dict(pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"),
                         extra_special={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                        "eoi_token": "<end_of_image>"})
    return tok, sp


def tiny_gemma3(seed: int = 0) -> Tuple:
    import transformers as T

    tok, sp = _gemma_tokenizer()
    proc = T.Gemma3Processor(image_processor=T.Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                             tokenizer=tok, image_seq_length=16)
    cfg = T.Gemma3Config(text_config=dict(vocab_size=max(sp.values()) + 1, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                                          head_dim=16, sliding_window=64, **_text_ids(sp, "<eos>", "<bos>")),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=4),
                         mm_tokens_per_image=16, image_token_index=sp["<image_soft_token>"],
                         boi_token_index=sp["<start_of_image>"], eoi_token_index=sp["<end_of_image>"])
    torch.manual_seed(seed)
    model = T.Gemma3ForConditionalGeneration(cfg).eval()
    # transformers initialises the projector's matrix to zeros: every image then gives the same features, and
    # no test could tell a misplaced span or grid from a right one
    with torch.no_grad():
        w = model.model.multi_modal_projector.mm_input_projection_weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)) * w.shape[0] ** -0.5)
    return model, proc


def _gemma4_parts():
    tok, sp = _gemma_tokenizer()
    tc = dict(vocab_size=max(sp.values()) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
              num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=64,
              layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
              pad_token_id=sp["<pad>"], eos_token_id=sp["<eos>"], bos_token_id=sp["<bos>"])
    vc = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=2,
              position_embedding_size=64)
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    ip = Gemma4ImageProcessorPil(patch_size=4, pooling_kernel_size=2, max_soft_tokens=70)
    ids = dict(image_token_id=sp["<image_soft_token>"], boi_token_id=sp["<start_of_image>"],
               eoi_token_id=sp["<end_of_image>"])
    return tc, vc, ids, SimpleNamespace(image_processor=ip, tokenizer=tok)


def tiny_gemma4(seed: int = 0) -> Tuple:
    import transformers as T

    tc, vc, ids, proc = _gemma4_parts()
    cfg = T.Gemma4Config(text_config=tc, vision_config=vc, audio_config=None, **ids)
    torch.manual_seed(seed)
    return T.Gemma4ForConditionalGeneration(cfg).eval(), proc


def tiny_diffusion_gemma(seed: int = 0, sliding_window: int = 64) -> Tuple:
    """``sliding_window``: the encoder's sliding-window layers keep ``sliding_window - 1`` prompt keys for
    the decoder; the default 64 is shorter than the stand-in's prompts (61-75 tokens with an image)."""
    import transformers as T

    tc, vc, ids, proc = _gemma4_parts()
    tc.update(num_experts=2, top_k_experts=1, moe_intermediate_size=32, sliding_window=sliding_window)
    cfg = T.DiffusionGemmaConfig(text_config=tc, vision_config=vc, canvas_length=8, **ids)
    torch.manual_seed(seed)
    return T.DiffusionGemmaForBlockDiffusion(cfg).eval(), proc


__all__ = ["tiny_llava", "tiny_llava_next", "tiny_llava_onevision", "tiny_qwen_vl", "tiny_idefics3", "tiny_gemma3",
           "tiny_gemma4", "tiny_diffusion_gemma", "PINPOINTS"]
