"""The one exception type for bad input.

Every check of a caller's argument (a tensor of the wrong shape, a config
value out of range, an image that cannot be read, a word that is not in the
response, a model folder that cannot be loaded) raises :class:`InputError`
with one line that names the argument. The CLI prints exactly that type as
one line and exits with code 2; any other exception is a bug in dcam and
keeps its traceback (exit code 1).
"""
from __future__ import annotations


class InputError(ValueError):
    """A caller's input is wrong; the message names the argument and says why.

    A subclass of ValueError, so code written against earlier versions that
    caught ValueError keeps working."""


class DcamWarning(Warning):
    """A warning of dcam's own (not of a library it drives): the ``dcam`` command prints it as one line,
    ``dcam: warning: ...``. Its subclasses are also UserWarning or RuntimeWarning, so filters of those hold."""


class DcamUserWarning(DcamWarning, UserWarning):
    """A dcam warning about the caller's input or data (a record skipped, letters no font draws)."""


class DcamRuntimeWarning(DcamWarning, RuntimeWarning):
    """A dcam warning about how the work runs (a slower path taken, an adapter's check that failed)."""


class NonFiniteError(InputError):
    """NaN/Inf values where dcam needs finite ones: ``name`` and ``count`` say which tensor
    and how many, so a caller that knows where the tensor came from (the explainer: the
    model's own states, gradients or scores) can say so without reading the message."""

    def __init__(self, name: str, count: int, hint: str = ""):
        super().__init__(f"{name} contains {count} NaN/Inf value(s){hint}")
        self.name, self.count = name, int(count)


def model_overflow(model, exc: NonFiniteError) -> InputError:
    """A tensor's NaN/Inf values (``exc``) that, inside an explanation, are the model's own:
    its states, gradients or scores came out NaN/Inf (a model run in float16 overflows)."""
    from .probe.rows import weights_dtype

    dtype = str(weights_dtype(model)).replace("torch.", "")
    hint = "; float16 overflows where this model's values grow: load it in bfloat16 or float32 (--dtype)" \
        if dtype == "float16" else ""
    return InputError(f"model: its {exc.name} came out NaN/Inf ({exc.count} value(s), run in {dtype}){hint}")


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (with "..." where it was cut), as a message quotes what it
    got: a damaged file's value can be a whole line."""
    text = repr(value)
    return text[:limit] + ("..." if len(text) > limit else "")


def one_line(text: str) -> str:
    """``text`` on one line: the lines of a multi-line cause joined with "; "
    (just a space after a line that already ends in punctuation); nothing is cut."""
    out = ""
    for part in (p.strip() for p in str(text).splitlines()):
        if part:
            out = part if not out else out + (" " if out[-1] in ":;,." else "; ") + part
    return out


def positive_int(name: str, value, allow_none: bool = True):
    """``value`` as an int >= 1 (None passes when ``allow_none``), else an InputError naming ``name``."""
    import numbers

    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InputError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def warn_at_caller(text: str, category: type = DcamRuntimeWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside dcam and torch: the user's line
    (a fixed stacklevel named a frame of dcam's own, or a kernel lambda the dispatcher called)."""
    import os
    import sys
    import warnings

    import torch

    skip = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
            os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)
    frame, level = sys._getframe(), 1  # level 1: this function
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(text, category, stacklevel=level)


__all__ = ["InputError", "NonFiniteError", "DcamWarning", "DcamUserWarning", "DcamRuntimeWarning", "one_line",
           "positive_int", "warn_at_caller"]
