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
        if any(v is not None and v < minimum for v in (value if isinstance(value, list) else [value])):
            ap.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


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


def run_child(cmd: List[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` with its output captured. When the child fails, its stderr is
    written to this process's, with a line naming the child, and this process exits with
    the child's status (1 for a signal): the child's own message, not a CalledProcessError
    traceback of this process that hid it."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode:
        sys.stderr.write(done.stderr)
        print(f"child process failed with status {done.returncode}: {' '.join(cmd)}", file=sys.stderr)
        raise SystemExit(done.returncode if done.returncode > 0 else 1)
    return done
