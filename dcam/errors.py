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


def one_line(text: str) -> str:
    """``text`` on one line: the lines of a multi-line cause joined with "; "
    (nothing is cut)."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts)


__all__ = ["InputError", "one_line"]
