"""FolderLock.take racing another start into the same new folder: the other start, which created the folder, gives
it up (refused or Ctrl-C: release(leave_as_found) deletes its lock file and the folder) between this take's makedirs
and its open of the lock file. The folder is free: this take creates it again and holds it (it was refused "cannot
write into ... (FileNotFoundError)"). The interleaving is forced by running the other start's release right after
this take's (real) makedirs."""
import os

import pytest

from dcam.errors import InputError
from dcam.runs import folder
from dcam.runs.folder import FolderLock


def _makedirs_then(monkeypatch, after):
    real = os.makedirs
    calls = []

    def makedirs(path, *args, **kwargs):
        real(path, *args, **kwargs)
        calls.append(path)
        after()

    monkeypatch.setattr(folder.os, "makedirs", makedirs)
    return calls


def test_a_take_whose_new_folder_the_other_start_gave_up_meanwhile_holds_it(tmp_path, monkeypatch):
    out = str(tmp_path / "new" / "run")
    first = FolderLock.take(out)  # created new/ and new/run/
    assert first.made == [out, str(tmp_path / "new")]
    gave_up = []

    def first_gives_up():
        if not gave_up:
            first.release(leave_as_found=True)
            gave_up.append(not os.path.lexists(tmp_path / "new"))

    calls = _makedirs_then(monkeypatch, first_gives_up)
    second = FolderLock.take(out)
    monkeypatch.undo()
    # the folders removed after its first makedirs, made again (os.makedirs makes the parent by calling itself)
    assert gave_up == [True] and calls == [out, str(tmp_path / "new"), out]
    # the second holds the folder it created itself: a third start is refused, and its release leaves nothing
    assert (second.new, second.made) == (True, [out, str(tmp_path / "new")])
    assert sorted(os.listdir(out)) == [".lock"]
    with pytest.raises(InputError, match="another dcam run is writing into"):
        FolderLock.take(out)
    second.release(leave_as_found=True)
    assert os.listdir(tmp_path) == []


def test_a_folder_removed_under_every_take_is_refused_after_a_few(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    calls = _makedirs_then(monkeypatch, lambda: os.rmdir(out))
    with pytest.raises(InputError) as info:
        FolderLock.take(out)
    monkeypatch.undo()
    assert str(info.value) == f"--out: cannot write into {out!r} (FileNotFoundError: No such file or directory)"
    assert calls == [out] * folder.TAKE_ATTEMPTS and folder.TAKE_ATTEMPTS > 1
    assert os.listdir(tmp_path) == []
