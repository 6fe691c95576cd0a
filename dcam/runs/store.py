"""The files of a run folder and how they are written so that a process
killed at any moment (SIGKILL, pre-emption) leaves nothing half-written that
a reader would take for data.

    DIR/run.json                     model, method, config, versions, counts, throughput, fingerprint
    DIR/shards/<part>-NNNNN.safetensors   maps of many records: tensor <key> [T,h,w] per record (key in
                                     the index), <key>.trajectory [S,T,h,w] where a run stores map trajectories,
                                     <key>.view.<name> [T,h,w] per view with --view all
    DIR/index.jsonl                  one line per explained record (merged from the parts at the end)
    DIR/index/<part>.jsonl           index lines written by one process of one session (until merged)
    DIR/errors.jsonl, DIR/errors/<part>.jsonl   records that failed: id, reason
    DIR/metrics.json, DIR/metrics.md with masks: the paper's metrics over every record
    DIR/overlays/<record>-<hash>/NN_word.png     with --overlays

Write order: a shard is written under a temporary name, fsync'ed and renamed
into place (then its folder fsync'ed) before the index lines that point to
it are appended; each append is one ``write`` of whole lines followed by
fsync. A reader ignores a last line without its newline (a write cut short);
a record is done when its index line is complete, so a record whose shard
was written but whose line was not is simply explained again (the orphan
shard is deleted at the next start). ``<part>`` names one process of one
session (``<time>-r<rank>-p<pid>``), so two processes never write one file
and a restarted process never appends to a file a killed one left.

Merging (:func:`merge_index`, at the end of a run): ``index.jsonl`` is
rewritten whole (temporary name, fsync, rename) with the lines of every part
not yet in it, in the source's current order (each line's ``n`` and ``where`` renewed: lines
inserted into a manifest move the records after them), then the parts are deleted; it is
left as it is when no line would change. Every line names its part,
so a part already merged (a kill between the rename and the deletion) is
recognised and never counted twice.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import tempfile
import time
from array import array
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ..errors import InputError, one_line, shown
from ..fields import Fields

INDEX = "index.jsonl"
INDEX_PARTS = "index"
ERRORS = "errors.jsonl"
ERROR_PARTS = "errors"
SHARDS = "shards"
RUN_JSON = "run.json"
LOCK = ".lock"


def part_name(rank: int) -> str:
    """A name no other process of any session uses; sorts by start time."""
    return f"{time.time_ns():016x}-r{rank:05d}-p{os.getpid()}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_temporary(path: str) -> Tuple[int, str]:
    """(open descriptor, name) of a new file beside ``path`` for the next version of it, named
    ``<name>.tmp-<pid>-<random>`` (:func:`remove_debris` deletes what a killed process left), mode ``0o666``
    minus the umask. Created with O_EXCL under a name nobody can guess: ``<name>.tmp-<pid>`` was opened with
    O_TRUNC, so a symbolic link put there beforehand (in a run folder someone else handed over, whose
    ``dcam view`` wrote ``index.html.tmp-<pid>``) had the file it pointed to overwritten."""
    fd, tmp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.tmp-{os.getpid()}-",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # (mkstemp makes 0600: others could not read a shared run's files)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    return fd, tmp


def write_bytes_atomic(path: str, data: bytes) -> None:
    """``path`` holds ``data`` whole or is untouched: temporary name, fsync, rename, fsync of the folder.
    A failed write (disk full, file too large) removes the temporary file and raises its OSError."""
    fd, tmp = new_temporary(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)  # (it was left behind, a file as large as the disk allowed)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _unlink_quietly(path: str) -> None:
    """Remove a temporary file of a write that failed; the write's own error is the one to report."""
    try:
        os.unlink(path)
    except OSError:
        pass


def rewrite_index(root: str, new_line: Callable[[bytes, str, int], Optional[bytes]]) -> None:
    """Rewrite every index file of ``root`` (``index.jsonl`` and the parts) with ``new_line(raw, path, n)`` for its
    line ``n`` (None: the line is left out). The files are streamed (an index of a million records is not held in
    memory) into temporary copies, and only once every copy is written is each renamed into place: ``new_line``
    raising leaves every file as it was, and a kill between renames leaves each file old or new. A file none of
    whose lines changed is not rewritten. A line cut short (a write a kill interrupted) is not data, as every
    reader takes it: a rewritten file leaves it out."""
    written = []  # (path, its temporary copy)
    try:
        for path in [os.path.join(root, INDEX)] + parts(root, INDEX_PARTS):
            if not os.path.exists(path):
                continue
            fd, tmp = new_temporary(path)
            written.append((path, tmp))
            changed = False
            with os.fdopen(fd, "wb") as out, open(path, "rb") as f:
                for n, raw in enumerate(f, 1):
                    if not raw.endswith(b"\n"):  # (left in place when nothing else changes, as it was)
                        break
                    new = new_line(raw, path, n) if raw.strip() else raw
                    changed = changed or new != raw
                    if new is not None:
                        out.write(new)
                out.flush()
                os.fsync(out.fileno())
            if not changed:
                _unlink_quietly(written.pop()[1])
        for path, tmp in written:
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(path))
    finally:  # (a renamed copy is gone already: nothing to remove)
        for _, tmp in written:
            _unlink_quietly(tmp)


def write_json_atomic(path: str, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str, prefix: str, hint: str = "") -> Optional[dict]:
    """The JSON file at ``path`` (None when absent); unreadable: an InputError
    ``"<prefix>: cannot read <path> (<why>)<hint>"``."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"{prefix}: cannot read {path} ({one_line(str(exc))}){hint}") from None


def read_failed(exc: OSError, path: str) -> OSError:
    """``exc``, raised reading ``path``, marked as a read (its ``read_path``): ``dcam run`` reports it as
    a file it cannot read (:func:`dcam.runs.runner._writing`; an unreadable index was a failed write)."""
    exc.read_path = path
    return exc


def json_line(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()


class LineWriter:
    """Appends whole JSON lines to one file (created on the first write), fsync'ed per call."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None

    def write(self, objs: List[dict]) -> None:
        if not objs:
            return
        if self.fd is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            fsync_dir(os.path.dirname(self.path))
        view = memoryview(b"".join(json_line(o) for o in objs))
        while view:
            view = view[os.write(self.fd, view):]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_lines(path: str) -> Iterator[Tuple[int, dict]]:
    """(line number, object) of every complete line; a last line without its
    newline (a write cut short by a kill) is not data. A complete line that is
    not JSON, or not an object with a text ``id`` (every index and error line has
    one), is InputError naming the file and line."""
    for n, _, obj in _placed_lines(path):
        yield n, obj


def _placed_lines(path: str) -> Iterator[Tuple[int, int, dict]]:
    """(line number, byte offset, object) of every line :func:`read_lines` reads."""
    try:
        with open(path, "rb") as f:
            at = 0
            for n, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    return
                if raw.strip():
                    try:
                        obj = json.loads(raw)
                    except ValueError as exc:
                        raise InputError(f"run: {path} line {n} is corrupt ({one_line(exc)})") from None
                    _check_record_line(obj, path, n)
                    yield n, at, obj
                at += len(raw)
    except OSError as exc:  # (the file's own, not the caller's: a generator's consumer raises nothing into it)
        raise read_failed(exc, path)


def _check_record_line(obj, path: str, n: int) -> None:
    """An index or error line is a JSON object with a text ``id`` (a list line was an AttributeError, a line
    without an id a KeyError, wherever the line was read)."""
    if not isinstance(obj, dict):
        raise InputError(f"run: {path} line {n} is corrupt (a JSON {type(obj).__name__}, not a record's object)")
    if not isinstance(obj.get("id"), str):
        raise InputError(f"run: {path} line {n}: id must be a text, got {shown(obj.get('id'))}")


def listed(folder: str, suffix: str = "") -> List[str]:
    """The paths of the files in ``folder`` whose names end in ``suffix`` (hidden ones aside), sorted; none when it
    does not exist. A folder that cannot be listed (a file in its place, no permission) is a read that failed
    (:func:`read_failed`): glob said it held nothing, and a run went on without the lines it held."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise read_failed(exc, folder)
    return sorted(os.path.join(folder, n) for n in names if n.endswith(suffix) and not n.startswith("."))


def parts(root: str, folder: str) -> List[str]:
    return listed(os.path.join(root, folder), ".jsonl")


def index_lines(root: str) -> Iterator[Tuple[str, int, dict]]:
    """(file, line number, object) of every index line of the run, lazily: ``index.jsonl`` first, then the
    parts it does not already hold."""
    merged: Set[str] = set()
    main = os.path.join(root, INDEX)
    if os.path.exists(main):
        for n, obj in read_lines(main):
            merged.add(obj.get("part", ""))
            yield main, n, obj
    for p in parts(root, INDEX_PARTS):
        if os.path.basename(p)[:-len(".jsonl")] in merged:
            continue
        for n, obj in read_lines(p):
            yield p, n, obj


def iter_index(root: str) -> Iterator[dict]:
    """Every index line of the run, lazily (:func:`index_lines`' objects)."""
    return (obj for _, _, obj in index_lines(root))


def index_shard(obj: dict, where: str) -> str:
    """The line's ``shard``, a file in the folder's ``shards/``, checked with its ``key`` (``where``: the line, for
    the message). A line without them was a KeyError; a shard named elsewhere was read from there, and the one
    the line stood for deleted as debris on a resume."""
    shard = obj.get("shard")
    if not isinstance(shard, str) or os.path.dirname(os.path.normpath(shard)) != SHARDS \
            or not isinstance(obj.get("key"), str):
        raise InputError(f"{where}: shard and key must be a file in {SHARDS}/ and the text of its tensor, got "
                         f"{shown((shard, obj.get('key')), 80)}")
    return os.path.normpath(shard)


def line_words(obj: dict, where: str) -> int:
    """The number of explained words of an index line (``where``: the line, for the message): its ``tokens``, a
    list of texts, as ``load_run`` reads them, else an InputError naming the line and the field. ``len()`` of a
    text counted its letters into ``run.json``'s words, of a number was a TypeError traceback."""
    return len(Fields(obj, where).texts("tokens"))


def scan_index(root: str, visit: Optional[Callable[[dict], None]] = None) -> Tuple[Set[str], Set[str], int]:
    """(ids done, shard files referenced, words) over the whole index; ``visit(line)`` sees every
    index line on the way, once its id, shard, key and tokens are checked (a check that needs them reads
    the index once with this scan, not again)."""
    done: Set[str] = set()
    shards: Set[str] = set()
    words = 0
    for path, n, obj in index_lines(root):
        rid = obj["id"]
        if rid in done:
            raise InputError(f"run: record {rid!r} is twice in the index of {root}")
        done.add(rid)
        where = f"run: {path} line {n}, record {rid!r}"
        shards.add(index_shard(obj, where))
        words += line_words(obj, where)
        if visit is not None:  # (after the checks: a visitor reads the line's shard and key as they are)
            visit(obj)
    return done, shards, words


def merge_index(root: str, ids: Sequence[str], where: Callable[[int], str]) -> None:
    """Fold the index parts into ``index.jsonl`` (see the module docstring), in the source's
    current order: ``ids`` (the source's, in its order) and ``where(i)`` give every line its
    record's current ``n`` and ``where`` (lines inserted into a manifest moved the records after
    them, whose lines kept the numbers they were explained under); the lines of records no longer
    in the source follow, in their earlier order, with ``n`` and ``where`` null. Rewritten only
    when a line is added, moves or changes, so a resume of an unchanged source leaves it as it was.
    Only the places of the lines are held in memory (a pass to find them, a pass to write them)."""
    pending = parts(root, INDEX_PARTS)
    main = os.path.join(root, INDEX)
    files = ([main] if os.path.exists(main) else []) + pending
    first_part = len(files) - len(pending)
    merged: Set[str] = set()  # the parts index.jsonl holds already (read first: a kill before their deletion)
    pos = {rid: i for i, rid in enumerate(ids)}
    line_file, line_at = array("i", [-1]) * len(ids), array("q", [0]) * len(ids)
    gone: Dict[str, Tuple[int, int]] = {}  # id -> (file, offset) of the lines of records no longer in the source
    # a part's line is a change; a part with no complete line (a process killed in its first write) is none
    changed, last = False, -1
    for k, path in enumerate(files):
        if k >= first_part and os.path.basename(path)[:-len(".jsonl")] in merged:
            continue
        for _, at, obj in _placed_lines(path):
            if k < first_part:
                merged.add(obj.get("part", ""))
            changed = changed or k >= first_part
            i = pos.get(obj["id"])
            if (line_file[i] >= 0) if i is not None else obj["id"] in gone:
                raise InputError(f"run: record {obj['id']!r} is twice in the index of {root}")
            if i is None:
                gone[obj["id"]] = (k, at)
                changed = changed or obj.get("n") is not None or obj.get("where") is not None
                last = len(ids)  # (a record of the source after it is out of order)
                continue
            line_file[i], line_at[i] = k, at
            changed = changed or i < last or obj.get("n") != i or obj.get("where") != where(i)
            last = i
    if changed:
        fd, tmp = new_temporary(main)
        handles = []
        try:
            out = os.fdopen(fd, "wb")  # (first: the descriptor is closed with it, whatever fails below)
            for p in files:  # (a part index.jsonl already holds is opened here, not read above)
                try:
                    handles.append(open(p, "rb"))
                except OSError as exc:
                    out.close()
                    raise read_failed(exc, p)
            with out:
                places = ((i, line_file[i], line_at[i]) for i in range(len(ids)) if line_file[i] >= 0)
                for i, k, at in itertools.chain(places, ((None, k, at) for k, at in gone.values())):
                    handles[k].seek(at)
                    obj = json.loads(handles[k].readline())
                    obj["n"], obj["where"] = i, None if i is None else where(i)
                    out.write(json_line(obj))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, main)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        finally:
            for h in handles:
                h.close()
        fsync_dir(root)
    for p in pending:
        os.unlink(p)


def read_errors(root: str, done: Optional[Set[str]] = None,
                damaged: Optional[List[InputError]] = None) -> Dict[str, dict]:
    """The latest error of every record not done (``errors.jsonl``, then the parts in time order). A file with a
    damaged line is an InputError naming it, or with ``damaged`` (a list) is read up to that line, the error
    appended to the list, and the next file read (``dcam view``, whose page goes on without the rest)."""
    out: Dict[str, dict] = {}
    files = ([os.path.join(root, ERRORS)] if os.path.exists(os.path.join(root, ERRORS)) else []) + \
        parts(root, ERROR_PARTS)
    for p in files:
        try:
            for _, obj in read_lines(p):
                out.pop(obj["id"], None)  # re-insert: the latest attempt comes last
                out[obj["id"]] = obj
        except InputError as exc:
            if damaged is None:
                raise
            damaged.append(exc)
    if done:
        out = {k: v for k, v in out.items() if k not in done}
    return out


def drop_damaged_errors(root: str) -> Optional[str]:
    """Delete the error files (``errors.jsonl``, its parts) that hold a complete line that is not a record's error,
    before a resume; returns the line saying so, or None. A resume tries every record not done again, failed
    or not, and rewrites ``errors.jsonl`` whole at its end from the errors of this session: the damaged file's
    records are taken as not failed and tried again, where the damaged file stopped the resume at its end, its
    records explained, with no way out but editing the file. Only call with no writer running."""
    damaged = []
    for path in [os.path.join(root, ERRORS)] + parts(root, ERROR_PARTS):
        if not os.path.exists(path):
            continue
        try:
            for _ in read_lines(path):
                pass
        except InputError as exc:
            damaged.append((path, one_line(exc)))
    for path, _ in damaged:
        os.unlink(path)
    if not damaged:
        return None
    more = f" (and {len(damaged) - 1} more error file{'s' if len(damaged) > 2 else ''})" if len(damaged) > 1 else ""
    why = damaged[0][1][len("run: "):] if damaged[0][1].startswith("run: ") else damaged[0][1]
    return (f"{why}{more}: deleted; the records it held are taken as not failed and tried again (as every record "
            f"not done is), and {ERRORS} is written anew at the run's end")


def merge_errors(root: str, done: Set[str], ids: Optional[Sequence[str]] = None) -> int:
    """Rewrite ``errors.jsonl`` with the latest error of every record not done (of ``ids``, the
    source's records in its order, when given: one taken out of an edited manifest has not failed;
    the errors follow that order, as the index does, whatever the number of processes); returns
    their number."""
    errs = read_errors(root, done)
    if ids is not None:
        errs = {k: errs[k] for k in ids if k in errs}
    write_bytes_atomic(os.path.join(root, ERRORS), b"".join(json_line(e) for e in errs.values()))
    for p in parts(root, ERROR_PARTS):
        os.unlink(p)
    return len(errs)


def remove_debris(root: str, shards_in_use: Set[str]) -> List[str]:
    """Delete temporary files and shards no index line points to (left by a
    killed process); returns what was deleted. Only call with no writer running."""
    gone = []
    for p in listed(os.path.join(root, SHARDS)):
        rel = os.path.relpath(p, root)
        if ".tmp-" in os.path.basename(p) or rel not in shards_in_use:
            os.unlink(p)
            gone.append(rel)
    # (index/ and errors/: a resume killed while it rewrote a part without the lines of unreadable records)
    temporary = [os.path.join(root, folder, "*.tmp-*") for folder in ("", INDEX_PARTS, ERROR_PARTS)]
    for p in [p for pattern in temporary for p in glob.glob(pattern)] + \
            glob.glob(os.path.join(root, "overlays", ".partial-*")):
        if os.path.isdir(p):
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)
        gone.append(os.path.relpath(p, root))
    return gone


__all__ = ["INDEX", "INDEX_PARTS", "ERRORS", "ERROR_PARTS", "SHARDS", "RUN_JSON", "LOCK", "part_name",
           "new_temporary", "write_bytes_atomic", "write_json_atomic", "LineWriter", "read_failed", "read_lines", "listed",
           "index_lines", "iter_index", "index_shard", "line_words", "scan_index", "merge_index", "read_errors",
           "drop_damaged_errors", "merge_errors", "remove_debris", "fsync_dir", "rewrite_index"]
