"""``explain_batch``'s per-image arguments, and what becomes of an example that is bad input.

``errors="raise"`` (the default): the first bad example raises one InputError naming it
("example 7 of the batch (images[7]): ..."), and the batch returns nothing.
``errors="return"``: that InputError takes the example's place in the returned list and the
others are explained as a batch without it. A batch's own arguments (lists of other lengths,
``targets`` with ``targets_per_image``) and a memory budget too small (BudgetError) still raise,
and so does anything that is no InputError (a bug shows its traceback)."""
from __future__ import annotations

from typing import Dict, Optional

from .errors import InputError

#: the values of explain_batch's ``errors=``
ERRORS = ("raise", "return")


def check_errors(errors) -> Optional[Dict[int, InputError]]:
    """The examples' errors, kept by index (an empty dict) for ``errors="return"``; None for "raise"."""
    if not isinstance(errors, str) or errors not in ERRORS:
        raise InputError(f"errors must be one of {', '.join(map(repr, ERRORS))}, got {errors!r}")
    return {} if errors == "return" else None


def _prefix(i: int) -> str:
    return f"example {i} of the batch (images[{i}]): "


def example_text(error: InputError, i: int) -> str:
    """The message of example i's ``error`` as :meth:`~dcam.Explainer.explain` of that example alone says it
    (without the batch's "example i of the batch (images[i]): "): what ``dcam run`` and ``dcam explain``
    record for a failed record or image, as when they redid a refused batch one example at a time."""
    text = str(error)
    return text[len(_prefix(i)):] if text.startswith(_prefix(i)) else text


def example_error(exc: InputError, i: int, n: int, failed: Optional[Dict[int, InputError]]) -> InputError:
    """``exc``, raised inside example i of n, said as that example's in a batch of several ("image: ... holds
    NaN" alone left the caller guessing which of 32): raised, or with ``failed`` (``errors="return"``) kept
    there under ``i`` and returned. A BudgetError is raised as it is: the memory budget is the caller's
    option, not the example's fault (``dcam run`` stops on it)."""
    from .probe.memory import BudgetError

    if isinstance(exc, BudgetError) or (failed is None and n == 1):
        raise exc
    error = exc if n == 1 else InputError(f"{_prefix(i)}{exc}")
    if failed is None:
        raise error from None
    failed[i] = error
    return error


def for_example(build, i: int, n: int, failed: Optional[Dict[int, InputError]], *args, **kwargs):
    """``build(*args, **kwargs)`` for example i of n, its input error said as the example's
    (:func:`example_error`); with ``failed``, None where it was kept there."""
    try:
        return build(*args, **kwargs)
    except InputError as exc:
        example_error(exc, i, n, failed)
        return None


def entries(name: str, seq) -> list:
    """One of explain_batch's per-image arguments as a list: a list or a tuple. A text
    would be read one character per image, and a lone image or array as its rows."""
    if not isinstance(seq, (list, tuple)):
        raise InputError(f"{name} must be a list with one entry per image, got {type(seq).__name__}"
                         + ("; explain() takes one image" if name == "images" else ""))
    return list(seq)


__all__ = ["ERRORS", "check_errors", "entries", "example_error", "example_text", "for_example"]
