"""The ``dcam`` command: one module per subcommand, shared parts in :mod:`.common`.

    dcam demo | explain | eval | grounding | bench | backends | run | view | families

No CLI module is imported as a library: what they drive lives in the pipeline
packages (``dcam.models``, ``dcam.explain``, ``dcam.eval``, ``dcam.ops.bench``).
Building the parser imports nothing heavy, so ``dcam --help`` answers at once.
"""
from __future__ import annotations

import importlib
import sys
import warnings

from . import common

#: Subcommand modules, in help order.
SUBCOMMANDS = ("demo", "explain", "eval", "grounding", "bench", "backends", "run", "view", "families")


def build_parser() -> common.Parser:
    from .. import __version__

    parser = common.Parser(prog="dcam", description="Diffusion-CAM: where in the image a diffusion multimodal LLM "
                                                     "looked when it wrote each word.")
    parser.add_argument("--version", action="version", version=f"dcam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=common.Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"dcam.cli.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit code (see :mod:`.common`)."""
    try:
        parser = build_parser()  # (imports numpy for the help texts: Ctrl-C there was a traceback)
        args = parser.parse_args(argv)
        # what a saved result records as its command (dcam.provenance.command): the arguments as given
        args.command_line = ["dcam", *(sys.argv[1:] if argv is None else argv)]
    except SystemExit as exc:  # --help, --version (0) or a usage error (2), already printed
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("dcam: interrupted; nothing was written", file=sys.stderr)
        return 130
    if not getattr(args, "run", None):  # a usage error: one line on stderr (the whole help went to stdout)
        print(f"dcam: error: a command is required ({', '.join(SUBCOMMANDS)}); dcam --help says what each does",
              file=sys.stderr)
        return 2
    from ..images import LARGE_IMAGE_WARNING

    with warnings.catch_warnings():  # (the command's own thread: no other thread swaps the warning state)
        # Pillow's warning of an image past ~89 megapixels: explain, demo and run state it as a note on the image,
        # and it reached stderr under --quiet too
        warnings.filterwarnings("ignore", message=LARGE_IMAGE_WARNING)
        warnings.showwarning = dcam_warnings_as_lines(warnings.showwarning)
        return common.run_command(args.command, args.run, args)


def dcam_warnings_as_lines(show):
    """``warnings.showwarning`` for a command: a warning of dcam's own (:class:`dcam.errors.DcamWarning`) is one
    line on stderr, ``dcam: warning: ...`` (Python's format put a file, a line number and a second line of source
    under it, the `dcam` script's ``sys.exit(main())``); any other library's warning is shown by ``show``."""
    from ..errors import DcamWarning, one_line

    def shown(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, DcamWarning):
            return show(message, category, filename, lineno, file, line)
        try:
            print(f"dcam: warning: {one_line(str(message))}", file=file if file is not None else sys.stderr)
        except OSError:  # (stderr closed: as Python's own showwarning, the warning is lost)
            pass
    return shown


if __name__ == "__main__":
    sys.exit(main())
