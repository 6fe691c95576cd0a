"""The `dcam` command: demo, explain, eval, grounding, bench, backends.

Each subcommand lives next to the code it drives (`cli_explain`, `cli_eval`,
`benchmark`) and registers itself with `add_subparsers`; a handler returns
the exit code. Bad input (a wrong argument value, an unreadable file, an
unknown word: `CliError`, `ValueError`, `OSError`) is reported on one line on
stderr with exit code 2; anything else is a bug and keeps its traceback.
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
    importlib.import_module("dcam.cli_explain").add_grounding_subparser(sub)
    p = sub.add_parser("backends", help="list the engine backends usable here")
    p.set_defaults(run=_backends)
    return parser


#: exceptions reported to the user as one line (exit code 2); anything else is a bug
USER_ERRORS = (CliError, ValueError, OSError)


def report_user_error(command: str, exc: BaseException) -> int:
    """Print `exc` as one line on stderr and return the exit code 2."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    print(f"dcam {command}: error: {msg}", file=sys.stderr)
    return 2


def call_handler(command: str, handler, args) -> int:
    """Run a subcommand handler; user errors become one line and exit code 2."""
    try:
        return int(handler(args) or 0)
    except USER_ERRORS as exc:
        return report_user_error(command, exc)


def run_parser(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse `argv` with `parser` (subcommands set `run`) and run the handler."""
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return call_handler(args.command, args.run, args)


def main(argv=None) -> int:
    return run_parser(build_parser(), argv)


if __name__ == "__main__":
    # run the imported module's main, so that its CliError is the one subcommands raise
    from dcam.cli import main as _main

    sys.exit(_main())
