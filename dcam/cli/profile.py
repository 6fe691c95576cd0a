"""``--profile FILE``: a torch.profiler trace of a command's explanations, with dcam's stages
(:mod:`dcam.profiling`) named in it, and a line saying how long each stage took."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Dict, Iterator, Optional

from ..errors import InputError
from . import common


def add_profile_option(p) -> None:
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="write a torch.profiler trace of the explanations to FILE (Chrome trace JSON: open it in "
                        "ui.perfetto.dev or chrome://tracing; the stages are named dcam.prepare, dcam.generate, "
                        "dcam.forward, dcam.backward, dcam.reduce, dcam.maps) and print each stage's time "
                        "(default: no profile)")


@contextlib.contextmanager
def _without_stderr() -> Iterator[None]:
    """The profiler's own start/stop lines (written by its C++ side on file descriptor 2) kept
    off the terminal: --quiet is quiet, and stderr holds dcam's lines only."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def stage_seconds(prof) -> Dict[str, float]:
    """Seconds spent in each of dcam's stages of a finished profile (host time), in pipeline order."""
    from ..profiling import STAGES

    took = {a.key: a.cpu_time_total / 1e6 for a in prof.key_averages() if a.key in STAGES}
    return {s: took[s] for s in STAGES if s in took}


@contextlib.contextmanager
def profiled(path: Optional[str], quiet: bool) -> Iterator[None]:
    """Profile the block into ``path`` (a checked :func:`dcam.output.check_output_file` path; None:
    no profile). The trace is written whole (a temporary file, then renamed) once the block ends
    without an error; a failed command leaves no trace file."""
    if path is None:
        yield
        return
    import torch  # (not at import: `dcam --help` loads no torch)

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=activities)
    with _without_stderr():
        prof.__enter__()
    try:
        yield
    finally:
        with _without_stderr():
            prof.__exit__(None, None, None)
    _write_trace(prof, path)
    took = ", ".join(f"{k[len('dcam.'):]} {v:.2f} s" for k, v in stage_seconds(prof).items())
    common.log(f"profile: {took or 'no dcam stage ran'}; trace written to {path}", quiet)


def _write_trace(prof, path: str) -> None:
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dcam-", suffix=".json", dir=os.path.dirname(path))
        os.close(fd)
        prof.export_chrome_trace(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"--profile: cannot write {path!r} ({exc.strerror or exc})") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["add_profile_option", "profiled", "stage_seconds"]
