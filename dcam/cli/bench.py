"""``dcam bench``: time pooling, refinement and the fused pipeline per backend,
in one table (ratios against the PyTorch reference and the bandwidth of a
plain copy measured in the same process)."""
from __future__ import annotations

from . import common


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time the operators' backends (one table)", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller cases (seconds instead of a minute)")
    p.add_argument("--backends", default=None, help="comma-separated subset of the available backends "
                                                     "(default: every backend available here); the torch "
                                                     "reference is always timed too, as the baseline of the ratios")
    p.add_argument("--device", default=None, help="torch device of the inputs (default: cuda if available, else cpu)")
    p.set_defaults(run=run, command="bench")


def run(args) -> int:
    import torch

    from ..errors import InputError
    from ..models import check_device
    from ..ops.backends import available_backends
    from ..ops.bench import format_table, run as run_bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = check_device(device)
    except InputError as exc:
        raise common.option_error("--device", exc) from None
    # "cpp, torch" as every other comma list of the CLI reads it (" torch" was not available here)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends is not None else None
    if backends == []:  # --backends "" ran every backend
        raise InputError(f"--backends: none given (available: {', '.join(available_backends())})")
    if backends:
        unknown = sorted(set(backends) - set(available_backends()))
        if unknown:
            raise InputError(f"--backends: not available here: {', '.join(unknown)} "
                             f"(available: {', '.join(available_backends())})")
    print(format_table(run_bench(backends, quick=args.quick, device=str(dev))))
    return 0
