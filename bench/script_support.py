"""What the bench scripts share: their options' checks and how they run a child process.

Not a bench itself (pytest's ``python_files = bench_*.py`` leaves it out). The scripts
import it with this folder on ``sys.path``, as ``python bench/<script>.py`` has it.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from typing import Iterable, List


def require_at_least(ap: argparse.ArgumentParser, args: argparse.Namespace, names: Iterable[str],
                     minimum: int = 1) -> None:
    """``ap.error`` (exit 2, one line naming the option) for the first of the options `names`
    (attribute names; a list value: every item) below `minimum`; None (not given) passes."""
    for name in names:
        value = getattr(args, name)
        if isinstance(value, list) and any(v < minimum for v in value):
            ap.error(f"--{name.replace('_', '-')} must each be >= {minimum}, got {','.join(map(str, value))}")
        if not isinstance(value, list) and value is not None and value < minimum:
            ap.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def require_model_sizes(ap: argparse.ArgumentParser, args: argparse.Namespace, image_rows: bool = True) -> None:
    """``ap.error`` unless ``--hidden`` suits bench_real_size's model (a multiple of 128: heads of
    128) and, with `image_rows`, ``--image-tokens`` fills rows of 48 (the grid those benches give
    the image: 48 rows of image_tokens / 48)."""
    if args.hidden < 128 or args.hidden % 128:
        ap.error(f"--hidden must be a multiple of 128 (heads of 128), got {args.hidden}")
    if image_rows and (args.image_tokens < 48 or args.image_tokens % 48):
        ap.error(f"--image-tokens must be a multiple of 48 (rows of 48), got {args.image_tokens}")


def require_seconds(ap: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> None:
    """``ap.error`` unless the option `name` is a finite number of seconds > 0 (inf overflowed
    the timeouts it is handed to; NaN and negative values compare as no time at all)."""
    value = getattr(args, name)
    if not (math.isfinite(value) and value > 0):
        ap.error(f"--{name.replace('_', '-')} must be a finite number of seconds > 0, got {value:g}")


def env_threads(ap: argparse.ArgumentParser, variable: str = "DCAM_BENCH_THREADS", default: int = 1) -> int:
    """The thread count the environment `variable` sets (`default` when unset), checked as the
    options are: 0 or a word was a torch RuntimeError or a ValueError traceback."""
    raw = os.environ.get(variable, str(default))
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        ap.error(f"{variable} must be a count >= 1, got {raw!r}")
    return threads


def run_child(cmd: List[str]) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` with its stdout captured and its stderr going to this process's
    as it comes (its warnings and messages neither held back nor swallowed). When the child
    fails, a line naming it follows and this process exits with the child's status (1 for a
    signal): the child's own message, not a CalledProcessError traceback of this process (with
    check=True and the stderr captured, that traceback was all one saw)."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        print(f"child process failed with status {done.returncode}: {' '.join(cmd)}", file=sys.stderr)
        raise SystemExit(done.returncode if done.returncode > 0 else 1)
    return done
