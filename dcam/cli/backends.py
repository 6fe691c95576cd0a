"""``dcam backends``: the operator backends usable here, and why the others are not."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("backends", help="list the operator backends usable here", description=__doc__)
    p.set_defaults(run=run, command="backends")


def run(args) -> int:
    from ..ops.backends import available_backends, cpp_backend, triton_backend

    print("available:", ", ".join(available_backends()))
    if not cpp_backend.is_available():
        print("cpp: unavailable:", cpp_backend.unavailable_reason())
    import torch

    if not triton_backend.installed():
        print("triton: not installed")
    elif not (torch.cuda.is_available() or triton_backend.interpreting()):
        print("triton: unavailable: installed, but it needs a CUDA device (or TRITON_INTERPRET=1, its slow CPU "
              "interpreter, for tests)")
    elif not triton_backend.is_available():
        print("triton: unavailable:", triton_backend.unavailable_reason())
    return 0
