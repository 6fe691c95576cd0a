"""``--profile FILE``: a torch.profiler trace of a command's explanations, with dcam's stages
(:mod:`dcam.profiling`) named in it, and a line saying how long each stage took.

The trace is exported to a temporary file when the explanations end (:meth:`TraceWriter.stop`)
and renamed into place only once the command's own output is written (:meth:`TraceWriter.commit`):
a failure or Ctrl-C before that leaves neither a trace nor a temporary file, and a failed export
leaves --out as it was."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Dict, Iterator, Optional

from ..errors import InputError
from . import common


#: what --profile's help says of a trace's size and of a ".gz" name (measured on the bundled toy model:
#: README's profiling paragraph)
TRACE_SIZE_HELP = ("a FILE ending in .gz (trace.json.gz) is written gzip-compressed, about 15 times smaller "
                   "(ui.perfetto.dev opens it as it is); uncompressed, a trace holds 1.5-3 MB per explanation of a "
                   "given response by the bundled toy model, about 7 MB when the model writes the response (its "
                   "generation is traced too), more for larger models")


def add_profile_option(p, recorded: str = "the explanations") -> None:
    """``--profile FILE`` (``recorded``: what the trace holds, as the help says it)."""
    p.add_argument("--profile", default=None, metavar="FILE",
                   help=f"write a torch.profiler trace of {recorded} to FILE (Chrome trace JSON: open it in "
                        "ui.perfetto.dev or chrome://tracing; each stage of dcam.profiling.STAGES is a named range: "
                        "dcam.generate, dcam.forward, dcam.backward, dcam.maps, ...) and print each stage's own "
                        f"time on stderr, unless --quiet; {TRACE_SIZE_HELP} (default: no profile)")


def add_window_option(p, flag: str, units: str, warm_up: str, single: str, size: str) -> None:
    """The option saying how many ``units`` (images, records) of a long command ``--profile`` records, from
    the second (``warm_up``: what the first one does once; ``single``: the options that ask for one item;
    ``size``: what one adds to the trace); :class:`BatchWindow` records them."""
    p.add_argument(flag, type=common.positive_int, default=None, metavar="K",
                   help=f"{units} that --profile records, from the second: the first is a warm-up ({warm_up}), "
                        f"whose first-call costs would dominate a profile of it; with {single} that one is recorded. "
                        f"{size} (default: 2)")


def window_size(value: Optional[int], flag: str, units: str, profile: Optional[str]) -> int:
    """The ``flag`` window's size (:func:`add_window_option`): refused without --profile (it was taken and
    ignored), else the value given or 2."""
    if value is not None and profile is None:
        raise InputError(f"{flag}: says how many {units} --profile records; give --profile FILE too, or leave "
                         f"{flag} out")
    return value or 2


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


def stage_seconds(events) -> Dict[str, float]:
    """Seconds of each of dcam's stages among a finished profile's ``events``, in pipeline order:
    each stage's own time, without the time of the stages inside it (a trajectory's probes hold
    forwards and backwards), so that the figures add up to the time the stages cover."""
    from ..profiling import STAGES

    spans = sorted(((e.time_range.start, e.time_range.end, e.name) for e in events if e.name in STAGES),
                   key=lambda s: (s[0], -s[1]))
    own: Dict[str, float] = {}
    open_spans: list = []  # the enclosing spans of the one at hand (the ranges of one thread nest)
    for start, end, name in spans:
        while open_spans and open_spans[-1][1] <= start:
            open_spans.pop()
        if open_spans:  # its time is not its parent's own
            parent = open_spans[-1][2]
            own[parent] = own.get(parent, 0.0) - (end - start)
        own[name] = own.get(name, 0.0) + (end - start)
        open_spans.append((start, end, name))
    return {s: own[s] / 1e6 for s in STAGES if s in own}


class TraceWriter:
    """A context manager: profiles from its entry (``deferred``: from :meth:`start`) to :meth:`stop`,
    then puts the trace at ``path`` with :meth:`commit` (``path`` None: does nothing); an error or
    Ctrl-C inside drops whatever was recorded or exported."""

    def __init__(self, path: Optional[str], quiet: bool, deferred: bool = False):
        self.path, self.quiet, self.deferred = path, quiet, deferred
        self.prof = self.tmp = self.took = None
        self.recording = False
        self.writing_seconds = 0.0  # stop()'s export and parse of the trace (seconds, a long trace's take several)

    def __enter__(self) -> "TraceWriter":
        if not self.deferred:
            self.start()
        return self

    def start(self) -> None:
        """Begin the recording (at the entry, or here when ``deferred``: ``dcam run`` records some batches
        of its share, not the run's start); once only."""
        if self.path is None or self.prof is not None:
            return
        import torch  # (not at import: `dcam --help` loads no torch)

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        # (shapes off, the profiler's default, said here: recording every operator's input shapes slows each
        # call and swells the trace, and a stage's time is what is asked)
        self.prof = torch.profiler.profile(activities=activities, record_shapes=False)
        with _without_stderr():
            self.prof.__enter__()
        self.recording = True

    @property
    def started(self) -> bool:
        return self.prof is not None

    def end_recording(self) -> None:
        """Switch the profiler off, keeping what it recorded for :meth:`stop` to export (``dcam run``: the
        export waits for the end of the run, so no temporary file lies beside ``path`` meanwhile)."""
        if self.recording:
            self.recording = False
            with _without_stderr():
                self.prof.__exit__(None, None, None)

    def stop(self, done: str = "") -> None:
        """End the recording and export it to a temporary file beside ``path``, whose name ends as
        ``path``'s does in ".gz" when it does (torch compresses a trace by the name it writes to).
        ``done``: what the command has written already, said by the error of a failed export."""
        from ..output import _umask

        if self.prof is None or self.tmp is not None:
            return
        began = time.perf_counter()
        self.end_recording()
        try:
            suffix = ".json.gz" if self.path.endswith(".gz") else ".json"
            fd, self.tmp = tempfile.mkstemp(prefix=".dcam-", suffix=suffix, dir=os.path.dirname(self.path))
            os.close(fd)
            self.prof.export_chrome_trace(self.tmp)
            # a file's usual mode: torch gzips into the file mkstemp made (0600: a trace.json.gz others could
            # not read, where its trace.json was 0644), and writes a plain trace as a new one
            os.chmod(self.tmp, 0o666 & ~_umask())
        except OSError as exc:
            raise InputError(f"--profile: cannot write {self.path!r} ({exc.strerror or exc})"
                             f"{'; ' + done + ', the trace was not' if done else ''}") from None
        # read now, before the output is written: parsing a long trace's events takes seconds, and a Ctrl-C
        # in them after the rename said "nothing was written" with both files in place
        self.took = stage_seconds(self.prof.events())
        self.writing_seconds = time.perf_counter() - began

    def commit(self, written: str, scope: str = "", done: str = "") -> None:
        """Rename the exported trace into place and say each stage's time (``written``: the
        command's --out, already in place, named by the error of a failed export or rename, or
        ``done``: what the command wrote, in words; ``scope``: what was recorded, said before the
        trace's name)."""
        if self.prof is None:
            return
        done = done or f"the explanations were written to --out {written!r}"
        self.stop(done)
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise InputError(f"--profile: cannot write {self.path!r} ({exc.strerror or exc}); {done}, the trace "
                             "was not") from None
        self.tmp = None
        took = ", ".join(f"{k[len('dcam.'):]} {v:.2f} s" for k, v in self.took.items())
        common.log(f"profile: {took or 'no dcam stage ran'}; {scope + '; ' if scope else ''}trace written to "
                   f"{self.path}", self.quiet)

    def commit_window(self, window: "BatchWindow", done: str) -> None:
        """:meth:`commit` of a trace of ``window``'s items (``done``: what the command wrote, in words), or a
        line saying there was none: a command of a single item past its first (a data set that ran short)."""
        if self.path is None:
            return
        if self.started:
            self.commit("", window.scope, done)
        else:
            common.log(f"profile: no {window.unit[0]} past the first (a warm-up) was run; no trace written to "
                       f"{self.path}", self.quiet)

    def __exit__(self, kind, exc, tb) -> None:
        self.end_recording()  # (an error before stop(): the profiler is switched off all the same)
        if self.tmp is not None and os.path.exists(self.tmp):
            os.unlink(self.tmp)
        self.tmp = None


def check_trace_path(path: Optional[str], out: str, out_is: str, inputs, overwrite: bool) -> Optional[str]:
    """``--profile``'s file as :func:`dcam.output.check_output_file` takes it (``inputs``: what the command
    reads), and never inside ``out`` (``out_is``: why not), also through a link to a folder in it."""
    from ..output import check_output_file

    # the folders the files go to: '..' taken as text, as the outputs take it (the kernel's 'link/../out' is
    # beside the link's target), then links followed (a link to a folder inside --out got past an abspath comparison)
    real_out = os.path.realpath(os.path.abspath(out))
    if path and os.path.commonpath([os.path.realpath(os.path.abspath(path)), real_out]) == real_out:
        raise InputError(f"--profile: {path!r} lies in --out {out!r}, {out_is}; choose a file outside it")
    return check_output_file(path, "--profile", inputs, overwrite)


def rank_path(path: str, rank: int) -> str:
    """The trace file of ``rank`` of a torchrun job (each rank profiles its own process): ``path`` for
    rank 0, else ``.rank<rank>`` before its extension (trace.json, trace.rank1.json), before both of a
    compressed one's (trace.json.gz, trace.rank1.json.gz: not trace.json.rank1.gz)."""
    if rank == 0:
        return path
    gz = ".gz" if path.endswith(".gz") else ""
    stem, ext = os.path.splitext(path[:len(path) - len(gz)])
    return f"{stem}.rank{rank}{ext}{gz}"


class BatchWindow:
    """Which items of a long command ``--profile`` records: ``count`` of them from the second (the
    first is a warm-up: kernel compilation, the allocator's growth and the one-time checks would
    dominate a profile of it), the only one of a command of one. Called as item ``i`` of ``n``
    begins (again for the same ``i`` when an item is replaced: its recording goes on), and with
    ``i == n`` when all have ended (``n``: the items there were, when fewer than announced).
    ``unit``: the items' name, singular and plural (``dcam run``: its batches). ``export``: export
    the trace (:meth:`TraceWriter.stop`) as the window closes, not at the commit: ``dcam eval``'s
    output is written by the library at its end, so a failed export (disk full) or a Ctrl-C in
    one (seconds for a long trace) after it would find --out written, said "nothing was written",
    or left it without the trace the command was asked for."""

    def __init__(self, trace: TraceWriter, count: int, unit=("batch", "batches"), export: bool = False):
        self.trace, self.count, self.unit, self.export = trace, count, unit, export
        self.began = self.ended = self.total = None

    def __call__(self, i: int, n: int) -> None:
        first = 1 if n > 1 else 0
        end = min(n, first + self.count)
        if i == first and i < end and self.began is None:
            self.trace.start()
            self.began, self.total = first, n
        elif i == end and self.began is not None and self.ended is None:
            self.ended, self.total = end, n
            if self.export:
                self.trace.stop()
            else:
                self.trace.end_recording()

    @property
    def scope(self) -> str:
        """The items recorded, in words ("batches 2-3 of 7"); "" when none was."""
        if self.began is None:
            return ""
        last = self.ended if self.ended is not None else self.began + 1
        if last <= self.began:  # (the data ran out while the window's first item was replaced)
            return f"the {self.unit[0]} after the first, not completed"
        if last == self.began + 1:
            return f"{self.unit[0]} {self.began + 1} of {self.total}"
        return f"{self.unit[1]} {self.began + 1}-{last} of {self.total}"


__all__ = ["BatchWindow", "TRACE_SIZE_HELP", "TraceWriter", "add_profile_option", "add_window_option",
           "check_trace_path", "rank_path", "stage_seconds", "window_size"]
