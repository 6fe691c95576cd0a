"""Model adapters: how the explainer talks to a given model (protocol in :mod:`.base`).

``auto_adapter(model, processor, family=None, **kwargs)`` picks the adapter:
first the adapters registered with :func:`register_adapter` (bring your own
dMLLM), then the family table :data:`FAMILIES` (:mod:`.families`, also shown
by ``dcam families``): the bundled toy, LaViDa (LLaDA and Dream backbones),
LLaDA-V, MMaDA, Lumina-DiMOO, Dream-VL, DiffusionGemma and transformers' VLMs
(LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2/2.5/3-VL, Idefics3/SmolVLM, Gemma
3/4). ``family="name"`` forces a row of the table, or an adapter registered
under that name (``register_adapter(..., name="name")``). A model nothing matches
raises InputError saying what was found; what is no model (None, a path, a
``(model, processor)`` pair, a processor) and a transformers VLM's base model
without its LM head are refused before, naming ``model`` (:mod:`.model_arg`).

Adapters take ``newline_column=True`` (and optionally ``newline_token_id``)
for grids that append an image-newline token to every row.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from ...errors import InputError
from .base import PROBES, Generation, ImageView, ModelAdapter, Prepared, config_get, load_image, \
    locate_image_positions, relative_depth_layer
from .diffusion_gemma import DiffusionGemmaAdapter
from .dream_vl import DreamVLAdapter
from .families import BY_NAME, FAMILIES, Family, compiled_original, detect_family, family_rows, markdown_table
from .hf_vlm import Gemma3Adapter, Gemma4Adapter, Idefics3Adapter, QwenVLAdapter
from .llava import HFVisionLanguageAdapter, LlavaAdapter, LlavaNextAdapter
from .llava_dmllm import LlavaDMLLMAdapter
from .model_arg import found as _found, refuse_headless, refuse_non_model
from .shapes import ShapesAdapter
from .vq import DiMOOAdapter, DiMOOProcessor, MMaDAAdapter, MMaDAProcessor

#: (predicate(model), adapter class) registered by users, tried before the family table.
ADAPTERS: List[Tuple[Callable, type]] = []

#: name -> adapter class registered by users with ``name=``: ``family=name`` (``--family``) forces it.
REGISTERED: Dict[str, type] = {}

#: name -> the ADAPTERS entry registered under it (replaced when the same class is registered again)
_NAMED_ENTRIES: Dict[str, Tuple[Callable, type]] = {}


def register_adapter(predicate: Callable, cls: type, first: bool = True, name: Optional[str] = None) -> None:
    """Make ``auto_adapter`` use ``cls`` for models where ``predicate(model)``
    is true (before the built-in families; ``first``: before the adapters
    registered earlier). A ``torch.compile(model)`` is looked through as the family table looks
    through it: ``predicate`` is called with the model that was compiled, and ``cls`` gets the compiled one. ``name``: also the name ``family=`` and ``--family`` force ``cls`` by
    (listed by ``dcam families``); not a bundled family's or another registered adapter's (in any case). The
    same class under the same exact name again (a notebook cell run twice) replaces its registration."""
    # (a class or predicate of another kind was taken and failed at the first model as a raw TypeError)
    if not callable(predicate):
        raise InputError(f"predicate must be a callable predicate(model) -> bool, got {type(predicate).__name__}")
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)) or cls is ModelAdapter:
        got = f"the class {cls.__name__}" if isinstance(cls, type) else f"an instance of {type(cls).__name__}"
        raise InputError(f"cls must be a dcam.probe.ModelAdapter subclass (the class itself), got {got}")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"name must be a non-empty string, got {name!r}")
        if name != name.strip():  # (family=" toy " found nothing: the name kept its spaces)
            raise InputError(f"name: {name!r} has whitespace around it; register it as {name.strip()!r}")
        if name in BY_NAME:
            raise InputError(f"name: {name!r} is a bundled family's name; register the adapter under another")
        bundled = next((f for f in BY_NAME if f.casefold() == name.casefold()), None)
        if bundled is not None:  # (it was taken: family= matches exactly, so a slip of case forced the other one)
            raise InputError(f"name: {name!r} is the bundled family {bundled!r} in other case (family= and --family "
                             f"match names exactly: {bundled!r} would force the bundled adapter, {name!r} this one); "
                             "register the adapter under another")
        if REGISTERED.get(name, cls) is not cls:
            raise InputError(f"name: {name!r} is already the name of the registered adapter "
                             f"{REGISTERED[name].__module__}.{REGISTERED[name].__qualname__}")
        taken = next((r for r in REGISTERED if r != name and r.casefold() == name.casefold()), None)
        if taken is not None:  # (both were taken, as a bundled family's name in other case was)
            raise InputError(f"name: {name!r} is the registered adapter {taken!r} "
                             f"({REGISTERED[taken].__module__}.{REGISTERED[taken].__qualname__}) in other case "
                             "(family= and --family match names exactly, so the case of a letter would choose "
                             f"between them); register the adapter as {taken!r} or under another name")
        if name in _NAMED_ENTRIES:  # the same class again: its earlier entry goes, not kept as a duplicate
            ADAPTERS[:] = [entry for entry in ADAPTERS if entry is not _NAMED_ENTRIES[name]]
        REGISTERED[name] = cls
    entry = (predicate, cls)
    if name is not None:
        _NAMED_ENTRIES[name] = entry
    if first:
        ADAPTERS.insert(0, entry)
    else:
        ADAPTERS.append(entry)


def _forced_adapter(fam: Family, model, processor, **kwargs) -> ModelAdapter:
    """``fam``'s adapter for a model the user says is of that family. A family forced on a
    model of another family, or on one without the family's transformer blocks, is the
    user's input, refused naming the family (it used to end in an AttributeError deep in
    the probe)."""
    detected = detect_family(model)
    # a sibling row of the same adapter is refused too: the adapter reads the layout from the
    # model's config, so forcing llada-v on a LaViDa model changed nothing and said nothing
    if detected is not None and detected.name != fam.name:
        raise InputError(f"family: {_found(model)} is a {detected.name} model, not {fam.name} "
                         f"(leave family out to detect it)")
    refuse_headless(model)  # (said as the model's, before the family's blocks are looked for in it)
    try:  # (a model without the family's config, e.g. a plain nn.Module, failed in the adapter's constructor)
        adapter = _made(fam.adapter_class(), model, processor, kwargs)
        adapter.blocks()
    except AttributeError:
        raise InputError(f"family: {_found(model)} lacks the transformer blocks of the {fam.name} family "
                         f"({fam.blocks})") from None
    return adapter


def _made(cls, model, processor, kwargs) -> ModelAdapter:
    """``cls(model, processor, **kwargs)``, a keyword the adapter does not take named as the
    caller's (a typo such as chunksize= was a TypeError naming the adapter's __init__). An
    ``__init__`` that passes ``**kwargs`` on is followed to the classes it passes them to (Dream-VL's
    to the Qwen-VL adapter's: block_length= was a TypeError there)."""
    takes = _options(cls)
    if takes is not None:
        unknown = sorted(set(kwargs) - takes)
        if unknown:
            raise InputError(f"{unknown[0]}: not an option of the explainer or of the {cls.name} model's adapter "
                             f"(the adapter's: {', '.join(sorted(takes)) or 'none'})")
    return cls(model, processor, **kwargs)


def _options(cls) -> Optional[set]:
    """The keywords ``cls(model, processor, ...)`` takes, up dcam's own classes while each ``__init__``
    passes ``**kwargs`` on; None (no list) where a class of someone else's takes ``**kwargs``, which
    it may keep for itself (a registered adapter's own options)."""
    import inspect

    names: set = set()
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        params = inspect.signature(klass.__dict__["__init__"]).parameters
        names |= {n for n, p in params.items() if n not in ("self", "model", "processor")
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
        if klass is object or klass is ModelAdapter or not klass.__module__.startswith("dcam."):
            return None
    return None


def auto_adapter(model, processor=None, family: Optional[str] = None, **kwargs) -> ModelAdapter:
    """The adapter for ``model`` (see the module docstring)."""
    if isinstance(model, ModelAdapter):
        return model
    refuse_non_model(model, processor)  # (a path or a processor reached the predicates and the family rules)
    if family is not None:
        if str(family) in REGISTERED:  # a user's adapter registered under this name: forced as a family is
            return _made(REGISTERED[str(family)], model, processor, kwargs)
        fam = BY_NAME.get(str(family))
        if fam is None:
            raise InputError(f"family: unknown family {family!r} (known: {', '.join([*BY_NAME, *REGISTERED])})")
        return _forced_adapter(fam, model, processor, **kwargs)
    # a predicate sees the model that was compiled, as the family rules do (isinstance(m, MyDMLLM) was False for
    # torch.compile's wrapper); the adapter is still given, and explains, the compiled one
    original = compiled_original(model)
    for pred, cls in ADAPTERS:
        if pred(original):
            return _made(cls, model, processor, kwargs)
    fam = detect_family(model)
    if fam is not None:
        refuse_headless(model)  # a base model (what AutoModel loads) has the family's config but not its LM head
        return _made(fam.adapter_class(), model, processor, kwargs)
    if config_get(getattr(model, "config", None), "image_token_id", "image_token_index") is None:
        raise InputError(f"model: {_found(model)} has no image token id (config.image_token_id) and matches no "
                         "dMLLM family; it is not a multimodal model this explainer can probe (see `dcam families`)")
    raise InputError(f"model: no adapter for {_found(model)}; pass family=... (see `dcam families`) or write a "
                     "dcam.probe.ModelAdapter subclass and register it with dcam.probe.register_adapter")


__all__ = ["ModelAdapter", "Prepared", "ImageView", "Generation", "PROBES", "auto_adapter", "register_adapter",
           "ADAPTERS", "REGISTERED", "FAMILIES", "Family", "BY_NAME", "detect_family", "family_rows",
           "markdown_table",
           "ShapesAdapter", "LlavaAdapter", "LlavaNextAdapter", "HFVisionLanguageAdapter", "QwenVLAdapter",
           "Idefics3Adapter", "Gemma3Adapter", "Gemma4Adapter", "DiffusionGemmaAdapter", "DreamVLAdapter",
           "LlavaDMLLMAdapter", "MMaDAAdapter", "DiMOOAdapter", "MMaDAProcessor", "DiMOOProcessor",
           "locate_image_positions", "load_image", "relative_depth_layer"]
