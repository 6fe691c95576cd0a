"""Starting a run in its folder: what identifies a run (model, method,
config: the fingerprint in ``run.json``), the lock that keeps two runs out of
one folder, and the checks that make a rerun a resume, never a mix.

- a new or empty folder: a new run;
- a folder whose ``run.json`` has the same fingerprint: a resume (records in
  the index are skipped; debris of a killed process is deleted);
- a folder with another fingerprint, or non-empty without ``run.json``:
  refused unless ``overwrite`` (which empties it first).

Performance settings (batch size, shard size, memory budget, device, number
of processes) are not in the fingerprint: a resume may change them. How the
records' metrics are scored (:data:`SCORING`) is, for the sources where the rules
differ; a folder scored by older rules is the same run, its records scored again on
resume (:mod:`.rescore`), not mixed with newer ones.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional

from ..errors import InputError, one_line
from ..output import file_digest
from .store import ERROR_PARTS, INDEX_PARTS, LOCK, RUN_JSON, SHARDS, drop_damaged_errors, listed, read_failed, \
    read_json, remove_debris, scan_index, write_json_atomic
from .unreadable import drop_index_lines

#: Format tag of run.json.
RUN_FORMAT = "dcam-run/1"
#: Weight files up to this size are hashed whole; larger ones by size and their first and last MiB.
FULL_HASH_BYTES = 64 << 20
#: Times :meth:`FolderLock.take` creates its folder again when another start that gave it up removed it meanwhile
#: (each removal needs another start to create the folder and give it up again inside one take: a few suffice).
TAKE_ATTEMPTS = 5
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
#: The rules a record's metrics are scored by: 1, an object word against the data folder's painted label mask (an
#: object lost the pixels it shares with one painted over it); 2 (session 30), each object against its own whole
#: mask; 3 (session 32), a labelled word written without spaces ({"红猫": 1}, a category's name) is one word with
#: one map, not a word per character. Recorded (identity "scoring") by the runs of the sources whose records can
#: hold overlapping objects or name their labels, :data:`SCORED_KINDS` (a run from before it was recorded: 1).
SCORING = 3
SCORED_KINDS = ("coco", "tam", "manifest")


def _file_digest(path: str) -> str:
    size = os.path.getsize(path)
    if size <= FULL_HASH_BYTES:
        return file_digest(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(size - (1 << 20))
        h.update(f.read(1 << 20))
    return h.hexdigest()


def model_identity(model_dir: Optional[str]) -> Dict[str, Any]:
    """What identifies the model's files (not where they are): the config's
    and weights' digests. ``None``: the bundled toy dMLLM."""
    from .. import zoo

    folder = zoo.WEIGHTS_DIR if model_dir is None else model_dir
    files = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if os.path.isfile(p) and (name == "config.json" or name.endswith(_WEIGHT_SUFFIXES)):
            files[name] = {"bytes": os.path.getsize(p), "sha256": _file_digest(p)}
    return {"name": "bundled" if model_dir is None else os.path.basename(os.path.abspath(model_dir)),
            "files": files}


def run_identity(explainer, model: Dict[str, Any], probe: Optional[str], target_score: Optional[str],
                 steps: Optional[int]) -> Dict[str, Any]:
    """Everything that decides a record's maps."""
    dtype = next((str(p.dtype) for p in explainer.model.parameters()), None)
    grads = explainer.method.needs_gradients  # what a method never uses is none (tam had layer 0, a "logit" score
    identity = {"model": model, "model_class": type(explainer.model).__name__, "dtype": dtype,  # and a config)
                "method": explainer.method_name,
                "layer": explainer.layer if grads else None, "probe": probe or explainer.default_probe,
                "target_score": (target_score or explainer.method.default_target_score) if grads else None,
                "steps": steps,
                "config": explainer.config.as_dict() if explainer.method.uses_config else None,
                "granularity": getattr(explainer, "granularity", None),
                "view": getattr(explainer, "view", None), "family": getattr(explainer.adapter, "family", None)}
    adapter = _users_adapter(explainer.adapter)
    if adapter is not None:  # (absent for dcam's own adapters: the folders written before it still resume)
        identity["adapter"] = adapter
    crops = _pan_and_scan(getattr(explainer, "processor", None))
    if crops is not None:  # (absent for a processor without crops: its folders written before it still resume)
        identity["pan_and_scan"] = crops
    return identity


def _pan_and_scan(processor) -> Optional[Dict[str, Any]]:
    """The pan-and-scan settings a processor that can crop (Gemma 3's) runs with, None for another: a resume
    with --pan-and-scan of a run started without (or other crop settings) mixed two layouts in one folder."""
    from ..probe.adapters.pan_and_scan import PAN_AND_SCAN_SETTINGS, has_pan_and_scan

    if not has_pan_and_scan(processor):
        return None
    return {k: processor.images_kwargs.get(k) for k in PAN_AND_SCAN_SETTINGS}


def _users_adapter(adapter) -> Optional[str]:
    """``MODULE:CLASS`` of a user's adapter class (``--adapter``, ``register_adapter``), None for one of
    dcam's: a subclass of a bundled adapter has its family, and a resume with another one was taken as
    the same run, mixing two adapters' maps in one folder."""
    cls = type(adapter)
    return None if cls.__module__.split(".")[0] == "dcam" else f"{cls.__module__}:{cls.__qualname__}"


def fingerprint(identity: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _differences(old: Any, new: Any, prefix: str = "") -> list:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _history(old: Optional[Dict[str, Any]], header: Dict[str, Any], started: str) -> List[Dict[str, Any]]:
    """run.json's ``history``: one entry per session that wrote into the folder (its start, dcam's version and
    revision, the threads, the command), oldest first. A resume may run another dcam than the one that began the
    run (the revision is not in the fingerprint: a fix that changes nothing keeps the folder); ``versions`` says
    the last session's only, and the records explained before it were explained by the code the entries name.
    A folder written before dcam kept a history begins it with what its run.json said of its last session (its
    ``started`` and ``versions``): this session's header replaces those, and they were the only record of the
    code that explained its records."""
    kept = ("versions", "machine", "command")
    before = (old or {}).get("history")
    if isinstance(before, list):
        before = list(before)
    elif old and ("started" in old or "versions" in old):
        before = [{k: old[k] for k in ("started",) + kept if k in old}]
    else:
        before = []
    return before + [{"started": started, **{k: header[k] for k in kept if k in header}}]


def _busy(root: str) -> InputError:
    return InputError(f"--out: another dcam run is writing into {root!r} (its lock is held); wait for it "
                      "or choose another folder")


class FolderLock:
    """An exclusive ``flock`` on ``DIR/.lock`` held by rank 0 for the whole run
    (released by the kernel when the process dies, so a killed run never
    leaves a stale lock). ``dcam run`` takes it (:meth:`take`) before its model
    loads and hands it to the run: a second run into the folder is refused
    before loading its own model (minutes for a large checkpoint), and of two
    runs started together one holds the folder from the start (a probe of the
    lock let both load their models, the second refused only after)."""

    def __init__(self, root: str):
        import fcntl

        path = os.path.join(root, LOCK)
        if os.path.islink(path):  # (O_NOFOLLOW below refuses it too, as "Too many levels of symbolic links")
            raise InputError(f"--out: {path!r} is a symbolic link (to {os.readlink(path)!r}); dcam locks a run folder "
                             f"with a {LOCK} file of its own, never through a link (--overwrite cannot remove it: the "
                             "lock is taken first): remove the link, or choose a new folder")
        while True:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # (a link: ELOOP, refused)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                raise _busy(root) from None
            # a lock file deleted by the run that held it while this one opened it (a refused or interrupted start
            # leaves the folder as it found it): its flock keeps out no run that opens the path now; take the new one
            mine = os.fstat(self.fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                break
            os.close(self.fd)
        self.path = path
        self.new = False  # the lock file was created by this lock (:meth:`take`)
        self.made: List[str] = []  # the folders it created, deepest first
        #: the folder holds the run (:func:`prepare` wrote its run.json): a release leaves what is there
        self.prepared = False

    @classmethod
    def take(cls, root: str) -> "FolderLock":
        """The lock of the run folder ``root``, which is created (with its missing parents) when it does not exist;
        held by another run: InputError. :meth:`release` with ``leave_as_found`` removes what this created."""
        real = os.path.realpath(root)  # (a symbolic link's folder: makedirs of a dangling link failed)
        for attempt in range(TAKE_ATTEMPTS):
            made, probe = [], real
            while not os.path.lexists(probe):
                made.append(probe)
                probe = os.path.dirname(probe)
            try:
                os.makedirs(real, exist_ok=True)
            except OSError as exc:  # a parent that passes every check and still refuses folders (/proc)
                raise InputError(f"--out: cannot create {root!r} ({exc.strerror or exc})") from None
            new = not os.path.lexists(os.path.join(root, LOCK))
            try:
                lock = cls(root)
            except BaseException as exc:
                _remove_empty(made)
                if isinstance(exc, FileNotFoundError) and attempt + 1 < TAKE_ATTEMPTS:
                    # the folder was removed between its makedirs and the lock file's open: another start that
                    # had created it gave it up (release(leave_as_found)); it is free, so create it again
                    continue
                if isinstance(exc, OSError):  # (no permission for the lock file: it was said to be a failed write)
                    raise InputError(f"--out: cannot write into {root!r} ({type(exc).__name__}: "
                                     f"{exc.strerror or one_line(exc)})") from None
                raise
            lock.new, lock.made = new, made
            return lock
        raise AssertionError("unreachable: the last attempt returns or raises")

    def release(self, leave_as_found: bool = False) -> None:
        """Let the lock go; ``leave_as_found``: first delete the lock file and the folders :meth:`take` created
        (while the lock is held: no other run holds a lock on a file deleted under it)."""
        if self.fd is None:
            return
        try:
            if leave_as_found and not self.prepared:
                if self.new:
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                _remove_empty(self.made)
        finally:
            os.close(self.fd)
            self.fd = None


def _remove_empty(folders: List[str]) -> None:
    """Remove ``folders`` (deepest first) while they are empty (another process may have written into one)."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def check_folder(path: str) -> str:
    """The absolute run folder; it must be a folder (or creatable) we can write to."""
    if not path:
        raise InputError("--out: an empty path")
    root = os.path.abspath(path)
    if os.path.exists(root) and not os.path.isdir(root):
        raise InputError(f"--out: {path!r} exists and is not a folder")
    # a symbolic link is written through, as dcam explain/eval/demo do: the checks are of the folder it points
    # to, which prepare() creates (with its missing parents) when the link dangles, as for a missing --out
    real = os.path.realpath(root)
    if os.path.lexists(real) and not os.path.exists(real):
        raise InputError(f"--out: {path!r} is a symbolic link that never reaches a folder (a loop)")
    if os.path.isdir(real) and not os.access(real, os.R_OK | os.X_OK):  # (said "cannot write into" it)
        raise InputError(f"--out: cannot read the folder {path!r} (permission denied); a run resumes from what its "
                         "folder holds: make it readable, or choose another folder")
    probe = real
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--out: cannot write into {probe!r}")
    return root


def read_run_json(root: str) -> Optional[dict]:
    return read_json(os.path.join(root, RUN_JSON), "--out", "; pass --overwrite to start over")


#: identity keys a run folder written before dcam fingerprinted them does not have: the source
#: and --prompt (session 13). Such a folder still resumes (and its run.json is then rewritten
#: with them); what it was started with cannot be checked.
LATER_KEYS = ("source", "prompt")


def _as_stored(identity: Dict[str, Any], stored: Dict[str, Any]) -> Dict[str, Any]:
    """``identity`` as a folder of the stored identity's vintage fingerprinted it (a COCO
    source's split files joined the fingerprint in session 14; an explainer made with
    ``view="default"`` recorded that name until it became None, the model's default view, as
    everywhere else: such a folder resumes under the same command; a folder scored by older
    rules, or before they were recorded (session 31), is the same run, scored again)."""
    if "scoring" in identity and stored.get("scoring") != identity["scoring"]:
        identity = ({k: v for k, v in identity.items() if k != "scoring"} if "scoring" not in stored
                    else dict(identity, scoring=stored["scoring"]))
    if stored.get("view") == "default" and identity.get("view") is None:
        identity = dict(identity, view="default")
    if "pan_and_scan" not in stored:  # a folder written before the settings joined it (session 29)
        identity = {k: v for k, v in identity.items() if k != "pan_and_scan"}
    if "source" not in stored:
        return {k: v for k, v in identity.items() if k not in LATER_KEYS}
    src = identity.get("source")
    if isinstance(src, dict) and "files" in src and "files" not in (stored.get("source") or {}):
        return dict(identity, source={k: v for k, v in src.items() if k != "files"})
    return identity


def stale_scoring(root: str, stored: Dict[str, Any], identity: Dict[str, Any]) -> Optional[int]:
    """The rules the folder's records were scored by (``stored``: its identity) when older than this run's
    (``identity``), so that they must be scored again; None when they are this run's (or the source's records are
    scored alike by every version). Scored by a newer dcam: refused (this one would score the rest otherwise)."""
    if "scoring" not in identity:
        return None
    before = stored.get("scoring", 1)  # (a data folder's run from before the rules were recorded: the first)
    if isinstance(before, bool) or not isinstance(before, int) or before < 1:
        raise InputError(f"--out: {os.path.join(root, RUN_JSON)}: identity.scoring must be a whole number >= 1, got "
                         f"{before!r}; pass --overwrite to start over")
    if before > identity["scoring"]:
        raise InputError(f"--out: the records of the run in {root!r} were scored by a newer dcam's rules (scoring "
                         f"{before}; this one scores by {identity['scoring']}): resume it with that dcam, or pass "
                         "--overwrite to start over")
    return before if before < identity["scoring"] else None


#: The folders of a run that a resume writes into and deletes from (:func:`.store.remove_debris`, the writers)
RUN_FOLDERS = (SHARDS, INDEX_PARTS, ERROR_PARTS, "overlays")


def refuse_linked_folders(root: str) -> None:
    """A run folder to resume holds its own folders, no symbolic links in their place: a resume deletes every file
    of ``shards/`` that no index line names, so a ``shards`` link to another folder (in a run folder someone else
    handed over) deleted that folder's files and wrote shards there (InputError naming ``--out``)."""
    for name in RUN_FOLDERS:
        p = os.path.join(root, name)
        if os.path.islink(p):
            raise InputError(f"--out: {p!r} is a symbolic link (to {os.readlink(p)!r}); a resume writes and deletes "
                             f"files in the run's own {name}/, which dcam never makes a link: resuming would change "
                             "the folder it points to. Pass --overwrite to start over, or choose a new folder")


def prepare(root: str, identity: Dict[str, Any], overwrite: bool, header: Dict[str, Any],
            check_records=None, unreadable=None, notices=None, lock: Optional[FolderLock] = None,
            rescore=None) -> FolderLock:
    """Rank 0, before any rank writes: lock the folder (unless given ``lock``,
    taken already by :meth:`FolderLock.take` and released by its taker), refuse a different
    run (and records the source changed since: ``check_records`` sees every
    index line of the one scan of the index, then its ``check()`` raises;
    :class:`dcam.runs.runner.UnchangedRecords`), empty it for ``overwrite``,
    take out the index lines whose maps cannot be read (``unreadable``, a
    :class:`.unreadable.UnreadableMaps`, sees every line, then its records are
    explained again), delete error files with a damaged line (what it says of
    them is appended to ``notices``),
    score the records of a folder scored by older rules again (``rescore``, called with
    their :data:`SCORING` version and the ids of ``unreadable``'s lines to leave out, returns the
    line to say: :func:`.rescore.rescore_index`; it may refuse, the folder left as it was),
    delete a killed process's debris and write ``run.json`` (status
    ``running``). Returns the held lock."""
    own = lock is None
    if own:
        lock = FolderLock.take(root)
    try:
        try:
            entries = [n for n in os.listdir(root) if n != LOCK]
        except OSError as exc:  # (a folder that cannot be listed was reported as a failed write)
            raise read_failed(exc, root)
        old = stale = None
        if entries and overwrite:
            # run.json first: a kill while emptying leaves "not a run" (refused), never a run missing shards
            for n in sorted(entries, key=lambda n: n != RUN_JSON):
                p = os.path.join(root, n)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        elif entries:
            refuse_linked_folders(root)
            old = read_run_json(root)
            if old is None:
                raise InputError(f"--out: {root!r} is not empty and holds no dcam run (no {RUN_JSON}); choose a new "
                                 "folder or pass --overwrite (which empties it)")
            # another run is named first (what differs), whatever the rules its records were scored by: a
            # newer dcam could not resume it either
            if old.get("fingerprint") != fingerprint(_as_stored(identity, old.get("identity", {}))):
                # (the scoring version is no difference: a folder scored by older rules resumes)
                diff = [d for d in _differences(old.get("identity", {}), identity) if d != "scoring"] or ["fingerprint"]
                raise InputError(f"--out: {root!r} holds a run of another model/method/config (differs in: "
                                 f"{', '.join(diff[:6])}); pass --overwrite to start over, or choose a new folder")
            stale = stale_scoring(root, old.get("identity", {}), identity)
        listed(os.path.join(root, SHARDS))  # (a shards folder that cannot be listed is named before a shard in it)
        visitors = [v for v in (check_records, unreadable) if v is not None]
        _, shards, _ = scan_index(root, visit=lambda obj: [v(obj) for v in visitors])
        if check_records is not None:
            check_records.check()
        # the lines whose maps cannot be read are taken out before any rank reads the index (all see them not
        # done); with a rescoring, in its rewrite, which may still refuse (a source file it cannot read): the
        # folder is then left as it was
        redo = set(unreadable.redo) if unreadable is not None else set()
        if stale is not None:  # before run.json says the new rules: a kill meanwhile leaves it to score them again
            if rescore is None:
                raise AssertionError("a folder scored by older rules is resumed without rescore")
            notice = rescore(stale, redo)
            if notice is not None and notices is not None:
                notices.append(notice)
        elif redo:
            drop_index_lines(root, redo)
        if stale is not None or redo:
            _, shards, _ = scan_index(root)  # (the lines of records to explain again are gone)
        # after every refusal above: a refused resume leaves the folder as it was (it deleted the damaged
        # error files first, and said nothing, its notice printed only by a run that goes on)
        damaged_errors = drop_damaged_errors(root)
        if damaged_errors is not None and notices is not None:
            notices.append(damaged_errors)
        remove_debris(root, shards)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(os.path.join(root, RUN_JSON), dict(
            old or {}, **header, format=RUN_FORMAT, status="running", fingerprint=fingerprint(identity),
            identity=identity, started=started, history=_history(old, header, started)))
        lock.prepared = True
    except BaseException as exc:
        if own:  # a refused folder is left as it was found (a given lock: by its owner, who took it)
            lock.release(leave_as_found=isinstance(exc, InputError))
        raise
    return lock


__all__ = ["model_identity", "run_identity", "fingerprint", "prepare", "check_folder",
           "read_run_json", "stale_scoring", "FolderLock", "RUN_FORMAT", "SCORING", "SCORED_KINDS"]
