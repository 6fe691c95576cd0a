"""``--adapter MODULE:CLASS``: a user's adapter class on the command line, forced on the model as a family of
that name; a class that loads its own model (``ModelAdapter.load_model``) also reads ``--model DIR``."""
from __future__ import annotations

import os
import sys
from typing import Callable, Dict, Optional

from ..errors import InputError


#: ``--adapter`` values -> their adapter classes, forced as families of these names (:func:`use_adapter_option`)
ADAPTER_OPTIONS: Dict[str, type] = {}


def use_adapter_option(args) -> None:
    """``--adapter MODULE:CLASS``: the class imported and forced on the model as a family named
    ``MODULE:CLASS`` is (``args.family`` set to it), so that every command with ``--family`` takes it."""
    spec = getattr(args, "adapter", None)
    if spec is None:
        return
    if getattr(args, "family", None) is not None:
        raise InputError("--adapter: give --adapter or --family, not both (--adapter names the adapter itself)")
    cls = adapter_class(spec)
    from ..probe.adapters import REGISTERED

    if REGISTERED.get(spec, cls) is not cls:
        raise InputError(f"--adapter: {spec!r} is already the name of another registered adapter")
    REGISTERED[spec] = ADAPTER_OPTIONS[spec] = cls
    args.family = spec


def adapter_class(spec: str) -> type:
    """The ModelAdapter subclass ``MODULE:CLASS`` names; bad values are InputErrors naming --adapter.
    An exception the module raises while it is imported is its own: it propagates, with its traceback."""
    import importlib

    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise InputError(f"--adapter: expected MODULE:CLASS (e.g. my_adapter:MyAdapter), got {spec!r}")
    if module.startswith("."):  # (importlib wants the package it is relative to: a raw TypeError)
        raise InputError(f"--adapter: {module!r} is a relative module name; give the module's full name "
                         f"(e.g. my_adapter:MyAdapter for ./my_adapter.py), got {spec!r}")
    # the current folder is searched as `python -m` does (the `dcam` script does not), but last: put first, it
    # stayed there for the whole process, and a file in it named like a module dcam imports later (a stray
    # safetensors.py) ran instead of that module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # a module the user's module imports is missing: their module's error
        raise InputError(f"--adapter: no module named {exc.name!r} (looked in the current folder and sys.path)") \
            from None
    if not hasattr(mod, name):
        raise InputError(f"--adapter: module {module!r} has no attribute {name!r}")
    from ..probe.adapters import ModelAdapter

    cls = getattr(mod, name)
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        raise InputError(f"--adapter: {spec} is not a dcam.probe.ModelAdapter subclass (it is "
                         f"{'the class ' + cls.__name__ if isinstance(cls, type) else 'a ' + type(cls).__name__})")
    if cls is ModelAdapter:  # the protocol itself: it knows no model (its missing members blamed --model)
        raise InputError(f"--adapter: {spec} is the protocol every adapter implements, not an adapter; "
                         "name your subclass of it")
    return cls


def family_option(family: Optional[str]) -> str:
    """The option that named ``family``: --adapter for a family made of its value, else --family."""
    return "--adapter" if family in ADAPTER_OPTIONS else "--family"


def loaded_by_adapter(args) -> Optional[Callable]:
    """For an --adapter class with its own ``load_model``: a call giving (model, processor) of ``--model DIR`` on
    ``--device`` in ``--dtype``, in eval mode (None for any other model: dcam loads it). Its InputErrors name
    ``model``; the class's other errors are its own and keep their tracebacks."""
    from ..probe.adapters import ModelAdapter

    cls = ADAPTER_OPTIONS.get(getattr(args, "family", None))
    if cls is None or cls.load_model.__func__ is ModelAdapter.load_model.__func__:
        return None

    def load():
        from torch import nn

        from ..models import check_device, parse_dtype

        if getattr(args, "model", None) is None:  # (the bundled toy was loaded, and the adapter failed on it)
            raise InputError(f"model: {args.family} loads its model from a folder (its load_model()); "
                             "give --model DIR")
        if not os.path.isdir(args.model):  # (the adapter's own open() of a file in it was a traceback)
            raise InputError(f"model: {args.model!r} is not a folder")
        crops = getattr(args, "pan_and_scan", None)
        if crops is not None:  # (taken and ignored)
            raise InputError(f"pan_and_scan: Gemma 3's crops; {args.family} loads a model of its own")
        dev, dtype = check_device(getattr(args, "device", None)), parse_dtype(getattr(args, "dtype", None))
        loaded = cls.load_model(args.model)
        if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], nn.Module)):
            raise RuntimeError(f"{cls.__name__}.load_model() must return (model, processor), the model a "
                               f"torch.nn.Module; got {type(loaded).__name__}")
        model, processor = loaded
        return (model.to(dev) if dtype is None else model.to(dev, dtype)).eval(), processor
    return load
