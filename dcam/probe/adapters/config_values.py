"""Reading ids and settings off a model's config: what every family's adapter reads the same way."""
from __future__ import annotations

from torch import Tensor


def _ids_set(v) -> set:
    """The ids of ``v``: None, an int, or a list, tuple, set or tensor of them."""
    if v is None:
        return set()
    if isinstance(v, (list, tuple, set, Tensor)):
        return {int(x) for x in (v.flatten().tolist() if isinstance(v, Tensor) else v) if x is not None}
    return {int(v)}


def config_get(config, *names, default=None):
    """The first attribute of ``config`` (or of its text sub-config) among ``names`` that is set."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for n in names:
            v = getattr(cfg, n, None)
            if v is not None:
                return v
    return default
