"""Every knob of Diffusion-CAM in one frozen dataclass.

The defaults are those of the math contract (docs/ALGORITHM.md). `op_args()`
flattens a config into the plain ints/floats/lists the registered
`torch.library` ops take, so the C++ and Triton kernels never see Python
objects.
"""
from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Set as AbstractSet
from dataclasses import asdict, dataclass, fields
from typing import Dict, Sequence, Tuple, Union

from . import constants as C
from ..errors import InputError

#: SICD mode names and the integer code the kernels receive.
SICD_MODES = {"off": 0, "reference": 1, "context": 2}

#: DACG strategy codes reported in the statistics (-1: gating skipped).
DACG_STRATEGIES = {-1: "none", 0: "high_var", 1: "high_mean", 2: "low_mean", 3: "default"}


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _is_real(v) -> bool:
    """A finite real number that float32 holds (numpy scalars included: np.float32 was
    refused while np.float64, a float subclass, passed; 1e300 reached the kernels as Inf)."""
    return (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            and abs(float(v)) <= FLOAT32_MAX)  # (numpy registers its floats and ints as numbers.Real; np.bool_ not)


def _as_tuple(v):
    """A sequence's items; None for what is not a sequence of values (a dict gave its keys)."""
    if isinstance(v, (str, bytes, Mapping, AbstractSet)):
        return None
    try:
        return tuple(v)
    except TypeError:
        return None


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32 (no numpy import here: `dcam --help` stays light)
#: The smallest blur sigma: the Gaussian's exponent divides by 2*sigma^2, which must stay a
#: normal float32 (at 1e-45 it is 0, and the centre weight 0/0 made every gated map NaN)
DACG_SIGMA_MIN = 1e-18

#: Allowed range of each scalar field: the thresholds compare against maps in
#: [0, 1], the floor scales values down to at most themselves.
FIELD_RANGES: Dict[str, Tuple[float, float]] = {
    "dacg_std": (0.0, 1.0), "dacg_mean_high": (0.0, 1.0), "dacg_mean_low": (0.0, 1.0),
    "dacg_sigma": (DACG_SIGMA_MIN, math.inf), "cba_floor": (0.0, 1.0)}
RANGE_TEXT = {"dacg_std": "[0, 1]", "dacg_mean_high": "[0, 1]", "dacg_mean_low": "[0, 1]",
              "dacg_sigma": f"[{DACG_SIGMA_MIN:g}, 3.4e38]", "cba_floor": "[0, 1]"}

#: One line per field for help texts (``--cam``): the type and the range.
FIELD_HELP = {
    "akd_kernel": "'adaptive' or an odd int >= 1",
    "akd": "bool", "dacg": "bool", "cba": "bool", "grad_relu": "bool",
    "sicd": "one of off, reference, context",
    "dacg_std": "number in [0, 1]", "dacg_mean_high": "number in [0, 1]",
    "dacg_mean_low": "number in [0, 1], <= dacg_mean_high",
    "dacg_percentiles": "4 numbers in [0, 100] (high_var,high_mean,low_mean,default)",
    "dacg_sigma": f"number >= {DACG_SIGMA_MIN:g}", "cba_weights": "4 numbers >= 0", "cba_floor": "number in [0, 1]",
}


#: the largest fixed AKD kernel size: the C API's and the Triton kernels' int32
AKD_KERNEL_MAX = 2 ** 31 - 1


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
    dacg_std: float = C.DACG_STD
    dacg_mean_high: float = C.DACG_MEAN_HIGH
    dacg_mean_low: float = C.DACG_MEAN_LOW
    dacg_percentiles: Tuple[float, float, float, float] = C.DACG_PERCENTILES
    dacg_sigma: float = C.DACG_SIGMA
    cba_weights: Tuple[float, float, float, float] = C.CBA_WEIGHTS
    cba_floor: float = C.CBA_FLOOR

    def __post_init__(self):
        k = self.akd_kernel
        if isinstance(k, str):
            if k != "adaptive":
                raise InputError(f"CamConfig.akd_kernel must be 'adaptive' or an odd int >= 1, got {k!r}")
        elif isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 or k % 2 == 0:
            raise InputError(f"CamConfig.akd_kernel must be 'adaptive' or an odd int >= 1, got {k!r}")
        elif k > AKD_KERNEL_MAX:  # the kernels take an int32 (a map caps it at 2 * min(h, w) - 1 anyway)
            raise InputError(f"CamConfig.akd_kernel must be at most {AKD_KERNEL_MAX} (2**31 - 1), got {k!r}")
        else:
            object.__setattr__(self, "akd_kernel", int(k))
        for name in ("akd", "dacg", "cba", "grad_relu"):
            if not _is_bool(getattr(self, name)):
                raise InputError(f"CamConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.sicd, str) or self.sicd not in SICD_MODES:  # (a list: "unhashable type")
            raise InputError(f"CamConfig.sicd must be one of {sorted(SICD_MODES)}, got {self.sicd!r}")
        for name, (lo, hi) in FIELD_RANGES.items():
            v = getattr(self, name)
            if not _is_real(v) or v < lo or v > hi:
                raise InputError(f"CamConfig.{name} must be a finite number in {RANGE_TEXT[name]}, got {v!r}")
            object.__setattr__(self, name, float(v))  # plain floats: configs hash, compare and save as JSON
        if self.dacg_mean_low > self.dacg_mean_high:
            raise InputError(f"CamConfig.dacg_mean_low ({self.dacg_mean_low!r}) must not exceed dacg_mean_high "
                             f"({self.dacg_mean_high!r}): the low-mean test comes after the high-mean one")
        p = _as_tuple(self.dacg_percentiles)
        if p is None or len(p) != 4 or not all(_is_real(q) and 0 <= q <= 100 for q in p):
            raise InputError(
                f"CamConfig.dacg_percentiles must be 4 numbers in [0, 100], got {self.dacg_percentiles!r}")
        w = _as_tuple(self.cba_weights)
        # the CBA threshold is their weighted sum of statistics in [0, 1]: four weights near 3.4e38 made it inf
        if w is None or len(w) != 4 or not all(_is_real(q) and q >= 0 for q in w) or not sum(w) <= 3.4e38:
            raise InputError(f"CamConfig.cba_weights must be 4 finite numbers >= 0 summing to at most 3.4e38 "
                             f"(float32), got {self.cba_weights!r}")
        # normalise sequences to float tuples so configs hash and compare by value
        object.__setattr__(self, "dacg_percentiles", tuple(float(q) for q in p))
        object.__setattr__(self, "cba_weights", tuple(float(q) for q in w))

    def replace(self, **changes) -> "CamConfig":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise InputError(f"CamConfig has no field(s) {sorted(unknown)}")
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
                raise InputError(f"CamConfig setting must look like name=value, got {item!r}")
            if name not in names:
                raise InputError(f"CamConfig has no field {name!r} (fields: {', '.join(names)})")
            changes[name] = _parse_field(name, text, getattr(self, name))
        return self.replace(**changes)

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def changes(self) -> dict:
        """The fields that differ from ``CamConfig()``'s, JSON-ready."""
        return config_changes(self.as_dict())

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

    @classmethod
    def from_op_args(cls, args: Mapping, grad_relu: bool = True) -> "CamConfig":
        """The config whose `op_args()` are ``args`` (``grad_relu``, which the refine op does not
        take, given apart): ``CamConfig.from_op_args(c.op_args(), c.grad_relu) == c``. The checked
        ops of a compiled graph (:mod:`dcam.ops.api`) carry a config this way, in their schema."""
        dacg, cba = list(args["dacg_params"]), list(args["cba_params"])
        if len(dacg) != 8 or len(cba) != 5:
            raise InputError(f"op args: dacg_params must hold 8 numbers and cba_params 5, got {len(dacg)} and "
                             f"{len(cba)}")
        modes = {code: name for name, code in SICD_MODES.items()}
        if args["sicd"] not in modes:
            raise InputError(f"op args: sicd must be one of {sorted(modes)}, got {args['sicd']!r}")
        return cls(akd_kernel="adaptive" if args["akd_kernel"] == 0 else args["akd_kernel"], akd=args["akd"],
                   dacg=args["dacg"], cba=args["cba"], sicd=modes[args["sicd"]], grad_relu=grad_relu,
                   dacg_std=dacg[0], dacg_mean_high=dacg[1], dacg_mean_low=dacg[2], dacg_percentiles=dacg[3:7],
                   dacg_sigma=dacg[7], cba_weights=cba[:4], cba_floor=cba[4])


def describe_changes(changes: Mapping) -> str:
    """``"CamConfig() with grad_relu=False, sicd=context"`` for the fields that differ from
    ``CamConfig()`` (:meth:`CamConfig.changes`), ``"CamConfig() as it is"`` for none: how
    ``dcam grounding`` and ``dcam eval``'s tables name the config they ran."""
    return "CamConfig() with " + ", ".join(f"{k}={v}" for k, v in changes.items()) if changes \
        else "CamConfig() as it is"


def config_changes(config: Mapping) -> dict:
    """The entries of ``config`` (a :meth:`CamConfig.as_dict`, as report.json holds it) that differ
    from ``CamConfig()``'s."""
    base = CamConfig().as_dict()
    return {k: v for k, v in config.items() if k not in base or base[k] != v}


def _checked_init(init):
    """CamConfig's generated ``__init__``, with a keyword it has no field for (a typo:
    ``CamConfig(akd_kernal=5)``) too many positional values, or a field given twice refused as input errors
    naming them; the dataclass's TypeError named ``__init__`` instead."""
    names = [f.name for f in fields(CamConfig)]

    @functools.wraps(init)
    def __init__(*args, **kwargs):  # (self positional only: CamConfig(self=1) is an unknown field too)
        self, args = args[0], args[1:]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InputError(f"CamConfig has no field(s) {unknown} (fields: {', '.join(names)})")
        if len(args) > len(names):
            raise InputError(f"CamConfig takes at most {len(names)} values ({', '.join(names)}), got {len(args)}")
        twice = sorted(set(names[:len(args)]) & set(kwargs))
        if twice:
            raise InputError(f"CamConfig got {twice} both as positional values and as keywords")
        init(self, *args, **kwargs)
    return __init__


CamConfig.__init__ = _checked_init(CamConfig.__init__)


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
        raise InputError(f"CamConfig.{name}: cannot read {text!r} ({exc})") from None
