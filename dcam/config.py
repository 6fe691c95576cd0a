"""Every knob of Diffusion-CAM in one frozen dataclass.

The defaults are those of the math contract (docs/ALGORITHM.md). `op_args()`
flattens a config into the plain ints/floats/lists the registered
`torch.library` ops take, so the C++ and Triton kernels never see Python
objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence, Tuple, Union

#: SICD mode names and the integer code the kernels receive.
SICD_MODES = {"off": 0, "reference": 1, "context": 2}

#: DACG strategy codes reported in the statistics (-1: gating skipped).
DACG_STRATEGIES = {-1: "none", 0: "high_var", 1: "high_mean", 2: "low_mean", 3: "default"}


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class CamConfig:
    """Configuration of the refinement pipeline (and of pooling's `grad_relu`).

    akd_kernel: ``"adaptive"`` (kernel size from steps, map spread and image
        height) or an odd int >= 1 (fixed size; still capped by the map size).
    akd, dacg, cba: ablation switches; a switched-off module is skipped.
    sicd: ``"reference"`` (repeat-ratio interference), ``"context"`` (other
        tokens' maps weighted by ``context_weights``) or ``"off"``.
    grad_relu: keep only positive gradients before averaging them (default).
    dacg_*: the gating thresholds, the percentiles of the four strategies
        (high_var, high_mean, low_mean, default) and the blur's sigma.
    cba_*: weights of the four background-threshold terms and the floor of
        the soft attenuation.
    """

    akd_kernel: Union[str, int] = "adaptive"
    akd: bool = True
    dacg: bool = True
    cba: bool = True
    sicd: str = "reference"
    grad_relu: bool = True
    dacg_std: float = 0.22
    dacg_mean_high: float = 0.35
    dacg_mean_low: float = 0.25
    dacg_percentiles: Tuple[float, float, float, float] = (90.0, 75.0, 80.0, 85.0)
    dacg_sigma: float = 0.3
    cba_weights: Tuple[float, float, float, float] = (0.15, 0.15, 0.2, 0.015)
    cba_floor: float = 0.5

    def __post_init__(self):
        k = self.akd_kernel
        if isinstance(k, str):
            if k != "adaptive":
                raise ValueError(f"CamConfig.akd_kernel must be 'adaptive' or an odd int >= 1, got {k!r}")
        elif isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"CamConfig.akd_kernel must be 'adaptive' or an odd int >= 1, got {k!r}")
        for name in ("akd", "dacg", "cba", "grad_relu"):
            if not _is_bool(getattr(self, name)):
                raise ValueError(f"CamConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.sicd not in SICD_MODES:
            raise ValueError(f"CamConfig.sicd must be one of {sorted(SICD_MODES)}, got {self.sicd!r}")
        for name in ("dacg_std", "dacg_mean_high", "dacg_mean_low", "cba_floor"):
            v = getattr(self, name)
            if not _is_real(v) or v < 0:
                raise ValueError(f"CamConfig.{name} must be a finite number >= 0, got {v!r}")
        if not _is_real(self.dacg_sigma) or self.dacg_sigma <= 0:
            raise ValueError(f"CamConfig.dacg_sigma must be a finite number > 0, got {self.dacg_sigma!r}")
        p = tuple(self.dacg_percentiles)
        if len(p) != 4 or not all(_is_real(q) and 0 <= q <= 100 for q in p):
            raise ValueError(
                f"CamConfig.dacg_percentiles must be 4 numbers in [0, 100], got {self.dacg_percentiles!r}")
        w = tuple(self.cba_weights)
        if len(w) != 4 or not all(_is_real(q) for q in w):
            raise ValueError(f"CamConfig.cba_weights must be 4 finite numbers, got {self.cba_weights!r}")
        # normalise sequences to float tuples so configs hash and compare by value
        object.__setattr__(self, "dacg_percentiles", tuple(float(q) for q in p))
        object.__setattr__(self, "cba_weights", tuple(float(q) for q in w))

    def replace(self, **changes) -> "CamConfig":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"CamConfig has no field(s) {sorted(unknown)}")
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw.update(changes)
        return CamConfig(**kw)

    def apply(self, settings: Sequence[str]) -> "CamConfig":
        """A copy with fields set from ``"name=value"`` strings (the CLI's
        ``--cam``): booleans ``true/false`` (also ``1/0``, ``yes/no``), numbers,
        ``akd_kernel=adaptive`` or an odd int, ``sicd=context``, and the
        4-number fields as comma lists (``dacg_percentiles=90,75,80,85``)."""
        names = [f.name for f in fields(self)]
        changes = {}
        for item in settings:
            name, sep, text = str(item).partition("=")
            name, text = name.strip(), text.strip()
            if not sep or not name:
                raise ValueError(f"CamConfig setting must look like name=value, got {item!r}")
            if name not in names:
                raise ValueError(f"CamConfig has no field {name!r} (fields: {', '.join(names)})")
            changes[name] = _parse_field(name, text, getattr(self, name))
        return self.replace(**changes)

    def op_args(self) -> dict:
        """The refine op's scalar arguments.

        akd_kernel: 0 for adaptive, else the fixed size.
        sicd: 0 off, 1 reference, 2 context.
        dacg_params: [std, mean_high, mean_low, p_high_var, p_high_mean, p_low_mean, p_default, sigma]
        cba_params: [w_median_nz, w_p60_all, w_mean_nz, w_max, floor]
        """
        return dict(
            akd_kernel=0 if self.akd_kernel == "adaptive" else int(self.akd_kernel),
            akd=self.akd,
            dacg=self.dacg,
            cba=self.cba,
            sicd=SICD_MODES[self.sicd],
            dacg_params=[float(self.dacg_std), float(self.dacg_mean_high), float(self.dacg_mean_low),
                         *[float(q) for q in self.dacg_percentiles], float(self.dacg_sigma)],
            cba_params=[*[float(q) for q in self.cba_weights], float(self.cba_floor)],
        )


def _parse_field(name: str, text: str, current):
    """``text`` as a value of the CamConfig field ``name`` (typed like ``current``)."""
    try:
        if isinstance(current, bool):
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError("not a boolean")
        if name == "akd_kernel":
            return text if text == "adaptive" else int(text)
        if isinstance(current, tuple):
            return tuple(float(v) for v in text.split(","))
        if isinstance(current, float):
            return float(text)
        return text
    except ValueError as exc:
        raise ValueError(f"CamConfig.{name}: cannot read {text!r} ({exc})") from None
