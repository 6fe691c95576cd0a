"""dcam.output: output folders checked up front and written whole or not at all."""
import os
import stat

import pytest

from dcam.errors import InputError
from dcam.output import AtomicFolder, check_output_file, check_output_folder, write_text_atomic


def _tree(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = open(p).read()
    return out


def _write(folder, files):
    for name, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)) or folder, exist_ok=True)
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def _leftovers(parent):
    return sorted(p for p in os.listdir(parent) if p.startswith("."))


def test_success_gives_exactly_the_new_files(tmp_path):
    target = tmp_path / "out"
    with AtomicFolder(str(target)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)  # beside the target: the rename is atomic
        assert not target.exists()  # nothing visible while writing
        _write(tmp, {"a.txt": "1", "sub/b.txt": "2"})
    assert _tree(target) == {"a.txt": "1", os.path.join("sub", "b.txt"): "2"}
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_whole(tmp_path):
    target = tmp_path / "out"
    _write(str(target), {"old1.txt": "x", "old2.txt": "y"})
    with AtomicFolder(str(target), overwrite=True) as tmp:
        _write(tmp, {"new.txt": "z"})
    assert _tree(target) == {"new.txt": "z"} and _leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), InputError("alpha must be ...")])
def test_a_failed_write_leaves_no_parent_folder_it_made(tmp_path, error):
    # a refused save into a/b/out left a/ and a/b/ behind
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep").write_text("x")
    with pytest.raises(type(error)):
        with AtomicFolder(str(tmp_path / "a" / "b" / "c" / "out")):
            raise error
    assert sorted(os.listdir(tmp_path / "a")) == ["keep"]
    with pytest.raises(type(error)):
        with AtomicFolder(str(tmp_path / "x" / "y" / "out")):
            raise error
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_overwrite_of_a_symlinked_folder_writes_through_the_link(tmp_path):
    # the link itself was moved aside and replaced by a real folder: the folder it pointed to kept
    # its old files and the link was gone; now the link stays and its folder is replaced, nothing hidden left
    real = tmp_path / "real"
    _write(str(real), {"old.txt": "x"})
    (tmp_path / "link").symlink_to("real")
    with AtomicFolder(str(tmp_path / "link"), overwrite=True) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)  # beside the folder pointed to: the rename is atomic
        _write(tmp, {"new.txt": "z"})
    assert os.readlink(tmp_path / "link") == "real" and _tree(real) == {"new.txt": "z"}
    assert _leftovers(tmp_path) == []


def test_a_symlinked_folder_is_checked_and_written_where_it_points(tmp_path, monkeypatch):
    # an empty folder behind a link: written into (the link was replaced by a real folder, the folder left empty)
    (tmp_path / "d" / "real").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "d" / "real")
    with AtomicFolder(str(tmp_path / "link")) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "d")
        _write(tmp, {"a.txt": "1"})
    assert os.path.islink(tmp_path / "link") and _tree(tmp_path / "d" / "real") == {"a.txt": "1"}
    assert sorted(os.listdir(tmp_path)) == ["d", "link"] and sorted(os.listdir(tmp_path / "d")) == ["real"]
    # a link to a folder not yet there: that folder is made (the link kept)
    (tmp_path / "dangling").symlink_to(tmp_path / "d" / "new")
    with AtomicFolder(str(tmp_path / "dangling")) as tmp:
        _write(tmp, {"b.txt": "2"})
    assert os.path.islink(tmp_path / "dangling") and _tree(tmp_path / "d" / "new") == {"b.txt": "2"}
    # the guards see the folder pointed to: non-empty without overwrite, and the current folder
    with pytest.raises(InputError, match=r"^--out: '.*link' is not empty"):
        check_output_folder(str(tmp_path / "link"))
    monkeypatch.chdir(tmp_path / "d" / "real")
    with pytest.raises(InputError, match=r"^--out: '.*link' holds the current folder"):
        check_output_folder(str(tmp_path / "link"), overwrite=True)
    assert _tree(tmp_path / "d" / "real") == {"a.txt": "1"}


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_or_ctrl_c_leaves_the_old_folder(tmp_path, error):
    target = tmp_path / "out"
    _write(str(target), {"old.txt": "keep"})
    with pytest.raises(type(error)):
        with AtomicFolder(str(target), overwrite=True) as tmp:
            _write(tmp, {"half.txt": "partial"})
            raise error
    assert _tree(target) == {"old.txt": "keep"} and _leftovers(tmp_path) == []
    with pytest.raises(type(error)):
        with AtomicFolder(str(tmp_path / "fresh")) as tmp:
            _write(tmp, {"half.txt": "partial"})
            raise error
    assert not (tmp_path / "fresh").exists() and _leftovers(tmp_path) == []


def test_os_error_while_writing_names_the_option(tmp_path):
    with pytest.raises(InputError) as info:
        with AtomicFolder(str(tmp_path / "out"), option="--out") as tmp:
            open(os.path.join(tmp, "no_such_dir", "f.txt"), "w")
    msg = str(info.value)
    assert msg.startswith(f"--out: writing {str(tmp_path / 'out')!r} failed (FileNotFoundError: ")
    assert msg.endswith("; nothing was written")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_never_a_mix_with_a_folder_filled_meanwhile(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(InputError, match="was filled by someone else while this run wrote; nothing was written"):
        with AtomicFolder(str(target), option="--out") as tmp:
            _write(tmp, {"mine.txt": "1"})
            _write(str(target), {"theirs.txt": "2"})
    assert _tree(target) == {"theirs.txt": "2"} and _leftovers(tmp_path) == []


def test_a_file_or_a_full_folder_in_the_targets_place_is_refused_before_writing(tmp_path):
    # Explanation.save onto an existing image used to move the image aside (a hidden
    # .NAME.old-* file) and put its folder there; a full folder was refused only after
    # writing, as "filled by someone else while this run wrote"
    image = tmp_path / "photo.png"
    image.write_bytes(b"not to be lost")
    with pytest.raises(InputError, match=r"^out_dir: '.*photo.png' exists and is not a folder$"):
        with AtomicFolder(str(image)) as tmp:
            raise AssertionError("entered")
    assert image.read_bytes() == b"not to be lost"
    full = tmp_path / "full"
    _write(str(full), {"old.txt": "keep"})
    with pytest.raises(InputError, match=r"^out_dir: '.*full' is not empty; choose a new folder or pass "
                                         r"overwrite=True \(which replaces it whole\)$"):
        with AtomicFolder(str(full)) as tmp:
            raise AssertionError("entered")
    assert _tree(full) == {"old.txt": "keep"} and _leftovers(tmp_path) == []


def test_a_file_made_in_the_targets_place_meanwhile_is_kept(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(InputError, match="was made a file by someone else while this run wrote; nothing was written"):
        with AtomicFolder(str(target), option="--out") as tmp:
            _write(tmp, {"mine.txt": "1"})
            target.write_text("theirs")
    assert target.read_text() == "theirs" and _leftovers(tmp_path) == []


def test_permissions_follow_the_umask(tmp_path):
    for mask, fmode, dmode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700)):
        old = os.umask(mask)
        try:
            target = tmp_path / f"out{mask:o}"
            with AtomicFolder(str(target)) as tmp:
                _write(tmp, {"a.txt": "1", "sub/b.txt": "2"})
                os.chmod(os.path.join(tmp, "a.txt"), 0o600)  # as safetensors writes its files
        finally:
            os.umask(old)
        modes = {p: stat.S_IMODE(os.stat(target / p).st_mode) for p in ("a.txt", "sub/b.txt", "sub", ".")}
        assert modes == {"a.txt": fmode, "sub/b.txt": fmode, "sub": dmode, ".": dmode}


def test_check_output_folder(tmp_path):
    assert check_output_folder(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_folder(str(empty)) == str(empty)
    _write(str(tmp_path / "full"), {"x": "1"})
    with pytest.raises(InputError, match="^--out: .*full' is not empty; choose a new folder or pass --overwrite"):
        check_output_folder(str(tmp_path / "full"))
    assert check_output_folder(str(tmp_path / "full"), overwrite=True) == str(tmp_path / "full")
    with pytest.raises(InputError, match="^--out: .* exists and is not a folder$"):
        check_output_folder(str(tmp_path / "full" / "x"))
    with pytest.raises(InputError, match="^--out: cannot create .*: .*x' is not a folder$"):
        check_output_folder(str(tmp_path / "full" / "x" / "sub"))
    with pytest.raises(InputError, match="^--dir: an empty path$"):
        check_output_folder("", option="--dir")


def test_check_output_file_and_atomic_text(tmp_path):
    assert check_output_file(None, "--json") is None
    with pytest.raises(InputError, match="^--json: .* is a folder, not a file$"):
        check_output_file(str(tmp_path), "--json")
    with pytest.raises(InputError, match="^--json: an empty path$"):  # was "'' is a folder, not a file"
        check_output_file("", "--json")
    with pytest.raises(InputError, match="^--json: the folder .*nowhere' does not exist$"):
        check_output_file(str(tmp_path / "nowhere" / "r.json"), "--json")
    path = check_output_file(str(tmp_path / "r.json"), "--json")
    old = os.umask(0o022)
    try:
        write_text_atomic(path, "{}")
    finally:
        os.umask(old)
    assert open(path).read() == "{}" and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["r.json"]


def test_the_current_folder_is_refused_even_empty(tmp_path, monkeypatch):
    # --out . in an empty current folder was taken: the new folder was renamed over it, the shell was left
    # in a deleted folder and the files seemed to vanish
    empty = tmp_path / "here"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for given in (".", str(empty)):
        with pytest.raises(InputError, match=r"^--out: .*here' holds the current folder"):
            check_output_folder(given)


def test_ctrl_c_while_the_old_folder_is_deleted_finishes_it_and_says_the_output_is_whole(tmp_path, monkeypatch,
                                                                                            capsys):
    # the interrupt reached the deletion of the replaced folder after the new one was in place: the CLI said
    # "nothing was written" and the old folder stayed hidden beside the new one (.out.old-*)
    import signal
    import shutil

    import dcam.output as output

    target = tmp_path / "out"
    _write(str(target), {"old.txt": "keep", "sub/more.txt": "y"})
    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path, *a, **k):
        if ".out.old-" in str(path):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C half-way through the deletion
        return real_rmtree(path, *a, **k)
    monkeypatch.setattr(output.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(output.InterruptedAfterWriting) as info:
        with AtomicFolder(str(target), overwrite=True) as tmp:
            _write(tmp, {"new.txt": "z"})
    assert info.value.target == str(target)
    assert _tree(target) == {"new.txt": "z"} and _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    from dcam.cli.common import run_command

    def handler(args):
        raise info.value
    assert run_command("explain", handler, None) == 130
    assert capsys.readouterr().err == f"dcam explain: interrupted; {target} was written whole (the folder it replaced " \
                                      "is gone)\n"
