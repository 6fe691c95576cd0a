"""The model families dcam explains, each with its detection rule and adapter.

:data:`FAMILIES` is the one table behind automatic detection
(:func:`detect_family`), ``family=`` (``Explainer(..., family="lavida")``),
``dcam families`` and ``docs/FAMILIES.md``. Detection reads the config's
``model_type`` and the module layout, in table order (the first match wins).
A ``torch.compile(model)`` wrapper is looked through first (:func:`compiled_original`), so every
rule sees the model that was compiled; the adapter still gets (and explains) the compiled one.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from torch import nn

from .dmllm import llama_stack, olmo_transformer


@dataclass(frozen=True)
class Family:
    """One row of the family table (every text field is shown by ``dcam families``)."""

    name: str
    models: str  # what users run
    rule: str  # detection rule, in words
    detect: Callable[[nn.Module], bool]
    adapter: str  # "module:Class" under dcam.probe.adapters
    blocks: str
    default_layer: str
    probes: str
    grid: str
    mask: str
    sampler: str
    load: str  # how a real checkpoint is loaded

    def adapter_class(self):
        import importlib

        mod, cls = self.adapter.split(":")
        return getattr(importlib.import_module(f"{__package__}.{mod}"), cls)


def _model_type(model) -> Optional[str]:
    return getattr(getattr(model, "config", None), "model_type", None)


def _type_is(*names: str) -> Callable[[nn.Module], bool]:
    return lambda m: _model_type(m) in names


def _class_is(*names: str) -> Callable[[nn.Module], bool]:
    return lambda m: type(m).__name__ in names


def _is_shapes(model) -> bool:
    from ...zoo import ShapesDMLLM

    return isinstance(model, ShapesDMLLM)


def _llava_like(model) -> bool:
    inner = getattr(model, "model", None)
    return hasattr(model, "lm_head") and hasattr(getattr(inner, "language_model", None), "layers")


RELATIVE = "round(n x 10/32), never the last (LaViDa: 10 of 32)"
ALL_PROBES = "full, masked, remask"
LLADA_MASK = "126336"

FAMILIES: List[Family] = [
    Family("shapes", "dcam's bundled toy dMLLM (dcam.zoo)", "a dcam.zoo.ShapesDMLLM", _is_shapes,
           "shapes:ShapesAdapter", "model.language_model.layers", "config.default_probe_layer", ALL_PROBES,
           "fixed 16x16", "config.mask_token_id", "generate_diffusion (greedy low-confidence)",
           "dcam.zoo.load_default(), or --model for a folder saved by dcam.zoo"),
    Family("lavida", "LaViDa, LLaDA backbone (jacklishufan/lavida-llada-v1.0-instruct)",
           "model_type llava_llada with model.model.transformer.blocks",
           lambda m: _model_type(m) == "llava_llada" and olmo_transformer(m) is not None,
           "llava_dmllm:LlavaDMLLMAdapter", "model.model.transformer.blocks", RELATIVE, ALL_PROBES,
           "anyres: base + tiles (2x2 pooled), unpad, newline", LLADA_MASK,
           "model.generate(prefix_lm=True, verbose=True, schedule='shift'): prompt cached, low-confidence blocks",
           "llava.model.builder.load_pretrained_model(path, None, 'llava_llada', vision_kwargs=...) from the LaViDa "
           "repo"),
    Family("lavida-dream", "LaViDa, Dream backbone (jacklishufan/lavida-dream-v1.0-instruct)",
           "model_type llava_dream", _type_is("llava_dream"), "llava_dmllm:LlavaDMLLMAdapter",
           "model.model.layers", RELATIVE, ALL_PROBES, "anyres: base + tiles (2x2 pooled), unpad, newline",
           "151666; logits shifted one position", "model.generate(output_history=True)",
           "llava.model.builder.load_pretrained_model(path, None, 'llava_dream', ...) from the LaViDa repo"),
    Family("llada-v", "LLaDA-V (GSAI-ML/LLaDA-V)", "model_type llava_llada with model.model.layers",
           lambda m: _model_type(m) == "llava_llada" and llama_stack(m) is not None,
           "llava_dmllm:LlavaDMLLMAdapter", "model.model.layers", RELATIVE, ALL_PROBES,
           "anyres_max_4: base + tiles, unpad, newline", LLADA_MASK,
           "model.generate(steps, gen_length, block_length): semi-AR low-confidence, full recompute",
           "llava.model.builder.load_pretrained_model(path, None, 'llava_llada') from LLaDA-V/train"),
    Family("mmada", "MMaDA (Gen-Verse/MMaDA-8B-*)", "model_type mmada or class MMadaModelLM",
           lambda m: _model_type(m) == "mmada" or type(m).__name__ == "MMadaModelLM", "vq:MMaDAAdapter",
           "model.model.transformer.blocks", RELATIVE, ALL_PROBES,
           "MAGVIT-v2 codes, square (32x32 at 512 px), between the soi and eoi tokens (126084, 126085)", LLADA_MASK,
           "model.mmu_generate(steps, block_length): semi-AR low-confidence in blocks of L // 4, as released (4 blocks "
           "where 4 divides L, else a note says which ran), no cache",
           "models.MMadaModelLM.from_pretrained(path, trust_remote_code=True) + models.MAGVITv2"
           ".from_pretrained('showlab/magvitv2'); processor dcam.probe.adapters.MMaDAProcessor"),
    Family("lumina-dimoo", "Lumina-DiMOO (Alpha-VLLM/Lumina-DiMOO)", "class LLaDAForMultiModalGeneration",
           _class_is("LLaDAForMultiModalGeneration"), "vq:DiMOOAdapter", "model.model.transformer.blocks",
           RELATIVE, ALL_PROBES, "VQ codes (16 px each), a newline token after every row", LLADA_MASK,
           "dcam's low-confidence remasking in 4 blocks, one where 4 does not divide the length (a note says so; the "
           "published one is a script function)",
           "model.LLaDAForMultiModalGeneration.from_pretrained(path) + diffusers.VQModel(subfolder='vqvae'); "
           "processor dcam.probe.adapters.DiMOOProcessor"),
    Family("dream-vl", "Dream-VL (Dream-org/Dream-VL-7B)", "model_type dream-vl", _type_is("dream-vl"),
           "dream_vl:DreamVLAdapter", "model.model.layers", RELATIVE, ALL_PROBES,
           "Qwen2-VL merged grid from image_grid_thw", "151666; logits shifted one position",
           "model.diffusion_generate(output_history=True)",
           "transformers.AutoModel / AutoProcessor.from_pretrained(path, trust_remote_code=True)"),
    Family("diffusion-gemma", "DiffusionGemma (transformers)", "model_type diffusion_gemma",
           lambda m: _model_type(m) == "diffusion_gemma" or type(m).__name__ == "DiffusionGemmaForBlockDiffusion",
           "diffusion_gemma:DiffusionGemmaAdapter", "model.model.encoder.language_model.layers", RELATIVE, "full",
           "Gemma-4 soft tokens, grid from patch positions (encoder prompt)", "none: uniform noise canvas",
           "model.generate (block diffusion over a canvas)", "transformers.DiffusionGemmaForBlockDiffusion"),
    Family("llava-next", "LLaVA-NeXT (transformers)", "model_type llava_next", _type_is("llava_next"),
           "llava:LlavaNextAdapter", "model.model.language_model.layers", RELATIVE, "full",
           "anyres: base + tiles, unpad, newline", "none (causal; logits one position earlier)", "model.generate",
           "transformers.AutoModelForImageTextToText"),
    Family("llava-onevision", "LLaVA-OneVision (transformers)", "model_type llava_onevision",
           _type_is("llava_onevision"), "llava:LlavaNextAdapter", "model.model.language_model.layers", RELATIVE,
           "full", "anyres_max_9: base + tiles, unpad, shrink, newline", "none (causal)", "model.generate",
           "transformers.AutoModelForImageTextToText"),
    Family("qwen-vl", "Qwen2-VL, Qwen2.5-VL, Qwen3-VL (transformers)", "model_type qwen2_vl / qwen2_5_vl / qwen3_vl",
           _type_is("qwen2_vl", "qwen2_5_vl", "qwen3_vl"), "hf_vlm:QwenVLAdapter",
           "model.model.language_model.layers", RELATIVE, "full", "dynamic: merged grid from image_grid_thw",
           "none (causal)", "model.generate", "transformers.AutoModelForImageTextToText"),
    Family("idefics3", "Idefics3, SmolVLM (transformers)", "model_type idefics3 / smolvlm",
           _type_is("idefics3", "smolvlm"), "hf_vlm:Idefics3Adapter", "model.model.text_model.layers", RELATIVE,
           "full", "pixel-shuffled tiles + global view, read from <row_r_col_c> tokens", "none (causal)",
           "model.generate", "transformers.AutoModelForImageTextToText"),
    Family("gemma3", "Gemma 3 (transformers)", "model_type gemma3", _type_is("gemma3"), "hf_vlm:Gemma3Adapter",
           "model.model.language_model.layers", RELATIVE, "full",
           "fixed: mm_tokens_per_image (16x16); with pan-and-scan also one grid per crop (views highres, base)",
           "none (causal)", "model.generate", "transformers.AutoModelForImageTextToText"),
    Family("gemma4", "Gemma 4 (transformers)", "model_type gemma4", _type_is("gemma4"), "hf_vlm:Gemma4Adapter",
           "model.model.language_model.layers", RELATIVE, "full", "Gemma-4 soft tokens, grid from patch positions",
           "none (causal)", "model.generate",
           "transformers.AutoModelForImageTextToText; processor: (image_processor, tokenizer)"),
    Family("llava", "LLaVA and look-alikes (transformers)",
           "model_type llava, or .lm_head with .model.language_model.layers",
           lambda m: _model_type(m) == "llava" or _llava_like(m), "llava:LlavaAdapter",
           "model.model.language_model.layers", RELATIVE, "full", "fixed: image_size / patch_size",
           "none (causal)", "model.generate", "transformers.AutoModelForImageTextToText"),
]

BY_NAME: Dict[str, Family] = {f.name: f for f in FAMILIES}


def compiled_original(model):
    """The module ``torch.compile(model)`` wrapped; ``model`` itself if it is no such wrapper. The
    wrapper hands attributes through to the original (``.config``, ``.model``), but not its class: rules by class (the bundled toy's ``isinstance``, Lumina-DiMOO's
    class name) refused the compiled model as unknown while rules by ``model_type`` accepted it."""
    # a model can be the wrapper only where torch.compile ran, which imported its module: importing it here
    # (2.7 s on this machine) would add that to every process that never compiles
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return model._orig_mod if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule) else model


def detect_family(model) -> Optional[Family]:
    """The first family of :data:`FAMILIES` whose rule matches ``model`` (None if none); a compiled
    model is detected as the model it compiled (:func:`compiled_original`)."""
    model = compiled_original(model)
    for fam in FAMILIES:
        try:
            if fam.detect(model):
                return fam
        except (AttributeError, ImportError):  # a rule that reads what this model lacks does not match
            continue
    return None


#: Which families' samplers expose their steps (``dcam explain --trajectory``; the adapter's records_trajectory).
TRAJECTORIES = {
    "shapes": "yes", "lavida": "yes (verbose history)", "lavida-dream": "yes (output_history)",
    "lumina-dimoo": "yes (dcam's sampler)", "dream-vl": "yes (output_history)",
    "llada-v": "no: its generate returns the answer only", "mmada": "no: mmu_generate keeps no per-step history",
    "diffusion-gemma": "no: no mask token (uniform noise)",
}


def family_rows() -> List[Dict[str, str]]:
    """The table as rows of text (``dcam families``, docs/FAMILIES.md)."""
    return [dict(family=f.name, models=f.models, detection=f.rule, blocks=f.blocks, default_layer=f.default_layer,
                 probes=f.probes, image_grid=f.grid, mask_id=f.mask, sampler=f.sampler,
                 trajectory=TRAJECTORIES.get(f.name, "no: autoregressive")) for f in FAMILIES]


def registered_row(name: str, cls: type) -> Dict[str, str]:
    """A row of the table for a user's adapter registered under ``name`` (``register_adapter(..., name=...)``):
    what only its class knows (its blocks, default layer, probes) is said to be its adapter's."""
    own = "its adapter's"
    return dict(family=name, models=f"registered adapter {cls.__module__}.{cls.__qualname__}",
                detection=f"register_adapter's predicate; family={name!r} forces it; {adapter_option_for(cls)}",
                blocks=own, default_layer=own, probes=own, image_grid=own, mask_id=own, sampler=own, trajectory=own)


def adapter_option_for(cls: type) -> str:
    """How a ``dcam`` command in a shell reaches a registered adapter: ``--adapter MODULE:CLASS`` (its
    registration is made by the Python process that imports its module, which a ``dcam`` command never does
    unless ``--adapter`` names it, so ``--family NAME`` there is an unknown family)."""
    named = cls.__module__ != "__main__" and "." not in cls.__qualname__  # (a script's or a nested class: no name)
    value = f"{cls.__module__}:{cls.__qualname__}" if named else "MODULE:CLASS, the module that defines it"
    return f"on the command line --adapter {value}"


def markdown_table(rows: Optional[List[Dict[str, str]]] = None) -> str:
    """``rows`` (default: :func:`family_rows`, the table of docs/FAMILIES.md) as a Markdown table."""
    rows = family_rows() if rows is None else rows
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c].replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


__all__ = ["Family", "FAMILIES", "BY_NAME", "compiled_original", "detect_family", "family_rows",
           "registered_row", "adapter_option_for", "markdown_table"]
