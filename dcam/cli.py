"""The `dcam` command: demo, explain, eval, bench, backends.

Each subcommand lives next to the code it drives (`cli_explain`, `cli_eval`,
`benchmark`) and registers itself with `add_subparsers`; a handler returns
the exit code. Bad input (a wrong argument value, an unreadable file, an
unknown word) is reported on one line on stderr with exit code 2; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# modules that register subcommands, in help order
_SUBCOMMAND_MODULES = ("dcam.cli_explain", "dcam.cli_eval", "dcam.benchmark")


class CliError(Exception):
    """A user-facing error: printed on one line, exit code 2."""


def _backends(args) -> int:
    import dcam
    from dcam.backends import cpp_backend, triton_backend

    print("available:", ", ".join(dcam.available_backends()))
    if not cpp_backend.is_available():
        print("cpp: unavailable:", cpp_backend.unavailable_reason())
    if not triton_backend.installed():
        print("triton: not installed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import dcam

    parser = argparse.ArgumentParser(
        prog="dcam",
        description="Diffusion-CAM: where in the image a diffusion multimodal LLM looked for each word.")
    parser.add_argument("--version", action="version", version=f"dcam {dcam.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subparsers(sub)
    p = sub.add_parser("backends", help="list the engine backends usable here")
    p.set_defaults(run=_backends)
    return parser


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (CliError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError)):
        return True
    # subcommand modules may define their own CliError class
    return any(cls.__name__ == "CliError" for cls in type(exc).__mro__)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
        if not _is_user_error(exc):
            raise
        print(f"dcam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
