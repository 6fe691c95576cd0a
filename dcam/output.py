"""Output folders written whole or not at all.

:func:`check_output_folder` runs before any model is loaded: the target must
be creatable (its parent a folder we can write to) and, unless
``overwrite``, not an existing non-empty folder (never a mix of two runs).

:class:`AtomicFolder` collects a run's files in a temporary folder beside the
target (same file system, so the final rename is atomic) and renames it into
place only when everything was written. A failure or Ctrl-C removes the
temporary folder and leaves the old target untouched (or no target at all).
With ``overwrite`` the old folder is replaced whole (moved aside, the new one
renamed in, the old one deleted).

Every file gets the same permissions: ``0o666`` (``0o777`` for folders)
minus the process umask, as a plain ``open()`` would give.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from typing import List, Optional

from .errors import InputError, one_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_inputs_inside(target: str, inputs, option: str = "--out") -> None:
    """An output folder replaced whole must not hold what the job reads: ``inputs`` are
    ``(what, path)`` pairs ("the input image", "the model", "the manifest", ...), refused
    (InputError naming ``option``) when ``path`` is ``target`` or lies inside it."""
    target = os.path.abspath(target)
    for what, p in inputs:
        if p and os.path.exists(p) and _inside(p, target):
            raise InputError(f"{option}: {target!r} holds {what} {p!r}, which replacing it would delete; "
                             "choose another output folder")


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies in it, as written or with symbolic links resolved
    (``--out link`` to the images' folder emptied it: the absolute paths did not share a prefix)."""
    def within(p, f):
        return os.path.commonpath([p, f]) == f
    return within(os.path.abspath(path), os.path.abspath(folder)) or \
        within(os.path.realpath(path), os.path.realpath(folder))


def refuse_current_folder(target: str, option: str = "--out") -> None:
    """A folder replaced whole must not hold the current folder (``--out . --overwrite``)."""
    cwd = os.getcwd()
    if _inside(cwd, target):
        raise InputError(f"{option}: {target!r} holds the current folder ({os.path.abspath(cwd)!r}); replacing it "
                         "whole would delete the folder you are working in; choose another folder")


def folder_path(path, option: str) -> str:
    """``path`` (a str, bytes or an os.PathLike) as a str path; anything else is an InputError naming
    ``option`` (a bytes path met str prefixes in os.path.join: a TypeError)."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise InputError(f"{option}: expected a path, got {type(path).__name__}") from None


def check_output_folder(path: str, overwrite: bool = False, option: str = "--out") -> str:
    """The absolute target folder, after checking it can be written (InputError naming ``option``)."""
    path = folder_path(path, option)
    if not path:
        raise InputError(f"{option}: an empty path")
    # (overwrite="no" is truthy: it replaced the folder whole)
    if not isinstance(overwrite, bool):
        raise InputError(f"overwrite must be True or False, got {overwrite!r}")
    target = os.path.abspath(path)
    # a symbolic link is written through: every check is of the folder it points to (the link is kept)
    real = os.path.realpath(target)
    if os.path.exists(real) and not os.path.isdir(real):
        raise InputError(f"{option}: {path!r} exists and is not a folder")
    if os.path.isdir(real) and os.listdir(real) and not overwrite:
        how = "pass --overwrite" if option.startswith("--") else "pass overwrite=True"
        raise InputError(f"{option}: {path!r} is not empty; choose a new folder or {how} (which replaces it whole)")
    # even empty, the current folder is replaced by the new one (the shell is left in a deleted folder)
    refuse_current_folder(target, option)
    parent = os.path.dirname(real)
    probe = parent
    while not os.path.exists(probe):  # the nearest existing ancestor must be a writable folder
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"{option}: cannot create {path!r}: {probe!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{option}: cannot create {path!r}: {probe!r} is not writable")
    try:  # a folder that passes the checks and still refuses new entries (/proc), found before the work, not after
        os.rmdir(tempfile.mkdtemp(prefix=".dcam-check-", dir=probe))
    except OSError as exc:
        raise InputError(f"{option}: cannot create {path!r}: {probe!r} refuses new folders "
                         f"({exc.strerror or exc})") from None
    return target


def check_existing_folder(folder, hint: str = "") -> str:
    """``folder`` (a str, bytes or an os.PathLike, as :func:`folder_path` takes) as a str path when it is an
    existing folder, else an InputError naming ``folder``: the writers into a given folder check it before
    their first file (a missing one was open()'s or safetensors' own error, naming no argument; None and
    bytes were TypeErrors)."""
    folder = folder_path(folder, "folder")
    if not os.path.isdir(folder):
        raise InputError(f"folder: {folder!r} is not an existing folder{hint}")
    return folder


def refuse_names_in_the_way(folder: str, writer: str, files=(), folders=()) -> None:
    """Before ``writer`` writes ``files`` and ``folders`` into ``folder``: nothing there is in
    their way (a folder where a file goes, or a file where a folder goes), else an InputError
    naming ``folder`` (it was IsADirectoryError or FileExistsError half-way through); nor a symbolic link, which
    the writer would write through (a link put at ``00_red.png`` or ``meta.json`` in a folder others can write to,
    /tmp say, had the file it pointed to overwritten)."""
    for name, folder_wanted in [(f, False) for f in files] + [(d, True) for d in folders]:
        p = os.path.join(folder, name)
        if os.path.islink(p):
            raise InputError(f"folder: {p!r} is a symbolic link (to {os.readlink(p)!r}), where {writer} writes its "
                             f"{'folder' if folder_wanted else 'file'} {name}; dcam writes into the folder, never "
                             "through a link (remove it, or save into a new folder)")
        if os.path.lexists(p) and os.path.isdir(p) != folder_wanted:
            raise InputError(f"folder: {p!r} is {'a folder' if os.path.isdir(p) else 'a file'}, where {writer} "
                             f"writes its {'folder' if folder_wanted else 'file'} {name}")


def check_output_file(path: Optional[str], option: str, inputs=(), overwrite: bool = False) -> Optional[str]:
    """A file the run will write at the end (``--json``): its folder must exist and be writable,
    it must not be, or lie in, what the job reads (``inputs``: ``(what, path)`` pairs, as
    :func:`refuse_inputs_inside` takes; ``--json model/config.json`` replaced the model's config),
    and an existing file is replaced only with ``overwrite`` (``--json photo.png`` replaced the photo)."""
    if path is None:
        return None
    if not path:  # abspath("") is the current folder: "'' is a folder"
        raise InputError(f"{option}: an empty path")
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise InputError(f"{option}: {path!r} is a folder, not a file")
    for what, p in inputs:
        if p and os.path.exists(p) and _inside(target, p):
            raise InputError(f"{option}: {path!r} lies in {what} {p!r}, which dcam does not write into; choose "
                             "another file")
    if os.path.exists(target) and not os.path.isfile(target):  # (--overwrite replaced /dev/null with a file)
        raise InputError(f"{option}: {path!r} is not a regular file (a device, a pipe or a socket); choose a file")
    if os.path.lexists(target) and not overwrite:
        raise InputError(f"{option}: {path!r} exists; choose a new file or pass --overwrite (which replaces it)")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise InputError(f"{option}: the folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option}: the folder {parent!r} is not writable")
    return target


def write_text_atomic(path: str, text: str, option: Optional[str] = None) -> None:
    """Write a whole text file: temporary name in the same folder, then rename. ``option``:
    the CLI option of ``path``, named by the InputError a failed write raises (a folder
    that passes every check and still refuses files, as /proc does)."""
    write_bytes_atomic(path, text.encode("utf-8"), option)  # not the locale's: pages hold the user's text


def write_bytes_atomic(path: str, data: bytes, option: Optional[str] = None) -> None:
    """Write a whole file of ``data`` as :func:`write_text_atomic` writes text."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dcam-", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if option is not None and isinstance(exc, OSError):
            raise InputError(f"{option}: cannot write {path!r} ({exc.strerror or exc})") from None
        raise


def missing_folders(path: str) -> List[str]:
    """The folders of ``path`` (itself included) that do not exist yet, outermost first:
    what a write that makes them must remove again when it fails."""
    made: List[str] = []
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        made.insert(0, p)
        p = os.path.dirname(p)
    return made


def remove_empty_folders(made: List[str]) -> None:
    """Remove the folders of :func:`missing_folders`, innermost first, each only while it is
    empty: never what someone else put there meanwhile."""
    for d in reversed(made):
        try:
            os.rmdir(d)
        except OSError:
            break


def file_digest(path: str) -> str:
    """SHA-256 of a file: a saved explanation keeps its tensors' digest in meta.json, so that
    reading it back finds a tensor file from another save put beside it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def moved_paths(paths, old: str, new: str):
    """``paths`` (a path, or lists and dicts of them, as the writers return them) with the folder
    ``old`` they were written into replaced by ``new``, where :class:`AtomicFolder` moved them;
    anything else (a value that is no path under ``old``) as it is."""
    if isinstance(paths, dict):
        return {k: moved_paths(v, old, new) for k, v in paths.items()}
    if isinstance(paths, (list, tuple)):
        return [moved_paths(v, old, new) for v in paths]
    if isinstance(paths, str) and (paths == old or paths.startswith(old + os.sep)):
        return os.path.join(new, os.path.relpath(paths, old))
    return paths


class AtomicFolder:
    """``with AtomicFolder(target, overwrite) as tmp:`` write into ``tmp``; on
    success ``target`` holds exactly those files; on any exception (Ctrl-C
    included) nothing changes. A write that fails with an OSError (disk full,
    no permission, file too large) comes out as an InputError naming
    ``option`` (the CLI's ``--out``, the API's ``out_dir``). A ``target`` that
    is a symbolic link is written through: the folder it points to is
    replaced, the link kept (it was replaced by a real folder, the folder it
    pointed to left as it was)."""

    def __init__(self, target: str, overwrite: bool = False, option: str = "out_dir"):
        target = folder_path(target, option)
        if not target:  # abspath("") is the current folder, which overwrite=True replaced whole
            raise InputError(f"{option}: an empty path")
        self.target = os.path.abspath(target)  # as given (messages name it)
        self.real = os.path.realpath(self.target)  # where the files go: a link's folder
        self.overwrite = overwrite
        self.option = option
        self.tmp: Optional[str] = None

    def _failed(self, exc: BaseException) -> InputError:
        return InputError(f"{self.option}: writing {self.target!r} failed ({type(exc).__name__}: {one_line(exc)}); "
                          "nothing was written")

    def __enter__(self) -> str:
        # before anything is written: a file in the target's place is never replaced (the API's
        # Explanation.save once moved an existing image aside for its folder), nor a non-empty
        # folder without overwrite
        check_output_folder(self.target, self.overwrite, self.option)
        parent = os.path.dirname(self.real)
        # the folders made for the target's parent, outermost first: removed again when the write
        # fails (a refused save left a/b/ behind of a/b/out)
        self.made = missing_folders(parent)
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.real)}.partial-", dir=parent)
            os.chmod(self.tmp, 0o777 & ~_umask())
        except OSError as exc:
            self._remove_made()
            raise self._failed(exc) from None
        return self.tmp

    def _remove_made(self) -> None:
        remove_empty_folders(self.made)

    def _fix_permissions(self) -> None:
        fmode, dmode = 0o666 & ~_umask(), 0o777 & ~_umask()
        for root, dirs, files in os.walk(self.tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), dmode)
            for f in files:
                os.chmod(os.path.join(root, f), fmode)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._remove_made()
            if issubclass(exc_type, OSError):
                raise self._failed(exc) from None
            return False
        try:
            self._fix_permissions()
            self._swap_in()
        except BaseException as err:  # Ctrl-C or a failed rename: the temporary folder goes, the target stays
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._remove_made()
            if isinstance(err, OSError):
                raise self._failed(err) from None
            raise
        return False

    def _swap_in(self) -> None:
        """Rename the temporary folder into place (the old target moved aside
        first and deleted last, put back if the rename is interrupted)."""
        old, real = None, self.real
        if os.path.exists(real):
            if not os.path.isdir(real):
                raise InputError(f"{self.option}: {self.target!r} was made a file by someone else while this run "
                                 "wrote; nothing was written")
            if os.listdir(real) and not self.overwrite:
                raise InputError(f"{self.option}: {self.target!r} was filled by someone else while this run "
                                 "wrote; nothing was written")
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(real)}.old-", dir=os.path.dirname(real))
            os.rmdir(old)
            os.replace(real, old)
        try:
            os.replace(self.tmp, real)
        except BaseException:
            if old is not None and not os.path.exists(real):
                os.replace(old, real)
            raise
        if old is not None:
            with _sigint_deferred() as interrupted:  # the new output is in place: the old one goes whole
                shutil.rmtree(old, ignore_errors=True)
            if interrupted:
                raise InterruptedAfterWriting(self.target)


class InterruptedAfterWriting(KeyboardInterrupt):
    """Ctrl-C while the replaced folder was deleted: the new output is whole and in place (a
    plain KeyboardInterrupt there said "nothing was written" and left the old folder hidden)."""

    def __init__(self, target: str):
        super().__init__(target)
        self.target = target


@contextlib.contextmanager
def _sigint_deferred():
    """Ctrl-C (SIGINT) held back until the block ends, when this is the main thread; yields a
    list that holds True when one came."""
    got: list = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    previous = signal.signal(signal.SIGINT, lambda *_: got.append(True))
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


__all__ = ["AtomicFolder", "InterruptedAfterWriting", "check_existing_folder", "check_output_folder", "check_output_file", "write_text_atomic"]
