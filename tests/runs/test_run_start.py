"""What `dcam run` does before its model is loaded: a folder another run writes into is refused at once (it
loaded the whole model first, minutes for a large checkpoint, only to be refused), and a Ctrl-C while the
model loads says that nothing was written (it said "what was written into DIR is kept" of a DIR that did
not exist). Real `dcam run` processes; the model load is held by a FIFO in place of its config.json, so the
SIGINT lands in it whatever the machine's speed."""
import os
import shutil
import signal
import subprocess
import sys

from dcam.runs.folder import FolderLock
from dcam.testing.support import file_tree, single_process_env

RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2"]


def _busy_line(out):
    return (f"dcam run: error: --out: another dcam run is writing into {os.path.abspath(out)!r} (its lock is held); "
            "wait for it or choose another folder")


def test_a_folder_whose_lock_is_held_is_refused_before_the_model_loads(run_manifest, reference_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    before = file_tree(out)
    lock = FolderLock(out)  # the lock a run holds while it writes (a real flock, from this process)
    try:
        proc = subprocess.run([sys.executable, "-m", "dcam", "run", run_manifest["path"], "--out", out, *RUN_ARGS],
                              env=single_process_env(), capture_output=True, text=True, timeout=300)
    finally:
        lock.release()
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [_busy_line(out)]  # no "[dcam] ... loading the model" before it
    assert file_tree(out) == before


def test_under_torchrun_the_busy_folder_is_refused_once_before_any_rank_loads_the_model(run_manifest, reference_run,
                                                                                        tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    before = file_tree(out)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    lock = FolderLock(out)
    try:
        proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "dcam", "run",
                               run_manifest["path"], "--out", out, *RUN_ARGS], env=single_process_env(), capture_output=True,
                              text=True, timeout=300)
    finally:
        lock.release()
    assert proc.returncode != 0
    assert proc.stderr.count("(its lock is held)") == 1 and _busy_line(out) in proc.stderr.splitlines()
    assert "loading the model" not in proc.stderr
    assert file_tree(out) == before


def _loading(manifest, out, tmp_path, env=None):
    """A real ``dcam run`` of a model whose config.json is a FIFO (its load waits on it), once it said it is loading
    the model; returns (the process, that line). ``env``: its environment (None: :func:`single_process_env`)."""
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "config.json")
    proc = subprocess.Popen([sys.executable, "-m", "dcam", "run", manifest, "--out", out, "--model", str(model),
                             *RUN_ARGS], env=env or single_process_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            # (a child of a background job inherits SIGINT ignored: Python then installs no handler)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stderr.readline()
    if not first.endswith("; loading the model\n"):
        proc.kill()
        proc.wait()
        raise AssertionError(first)
    return proc, first


def _interrupt(proc, first, signum=signal.SIGINT):
    """SIGINT (or ``signum``) to a run of :func:`_loading`; returns (exit code, stderr's lines)."""
    try:
        proc.send_signal(signum)
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, [first.rstrip("\n")] + rest.splitlines()


def _interrupt_the_model_load(manifest, out, tmp_path):
    """``dcam run`` sent SIGINT while its model loads (:func:`_loading`); returns (exit code, stderr's lines)."""
    return _interrupt(*_loading(manifest, out, tmp_path))


def test_ctrl_c_while_the_model_loads_says_nothing_was_written(run_manifest, tmp_path):
    out = str(tmp_path / "run")
    code, lines = _interrupt_the_model_load(run_manifest["path"], out, tmp_path)
    assert code == 130
    assert lines[1:] == ["dcam run: interrupted; nothing was written"]
    assert not os.path.lexists(out)


def test_ctrl_c_while_the_model_loads_leaves_an_earlier_run_as_it_was(run_manifest, reference_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    before = file_tree(out)
    code, lines = _interrupt_the_model_load(run_manifest["path"], out, tmp_path)
    assert code == 130
    assert lines[1:] == [f"dcam run: interrupted; nothing was written ({out} is as it was)"]
    assert file_tree(out) == before


def _second_run(run_manifest, out):
    return subprocess.run([sys.executable, "-m", "dcam", "run", run_manifest["path"], "--out", out, *RUN_ARGS],
                          env=single_process_env(), capture_output=True, text=True, timeout=600)


def _lock_is_free(out):
    FolderLock(out).release()  # (raises the busy InputError while a run holds it)
    return True


def test_a_run_started_while_another_loads_its_model_is_refused_before_loading_its_own(run_manifest, reference_run,
                                                                                       tmp_path):
    # the first run only probed the lock before its model loaded and took it after: a second run started while the
    # first loaded passed the probe too, and wrote into the folder (here its resume rewrote run.json) or was refused
    # only once its own model had loaded
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    before = file_tree(out)
    first = _loading(run_manifest["path"], out, tmp_path)
    try:
        second = _second_run(run_manifest, out)
    finally:
        code, lines = _interrupt(*first)
    assert (second.returncode, second.stderr.splitlines()) == (2, [_busy_line(out)])
    assert (code, lines[1:]) == (130, [f"dcam run: interrupted; nothing was written ({out} is as it was)"])
    assert file_tree(out) == before and _lock_is_free(out)


def test_a_run_into_a_new_folder_holds_it_while_its_model_loads_and_leaves_no_folder_when_interrupted(
        run_manifest, tmp_path):
    out = str(tmp_path / "new" / "run")  # (its parent created too, and removed)
    first = _loading(run_manifest["path"], out, tmp_path)
    try:
        assert sorted(os.listdir(out)) == [".lock"]  # the folder is held
        second = _second_run(run_manifest, out)
    finally:
        code, lines = _interrupt(*first)
    assert (second.returncode, second.stderr.splitlines()) == (2, [_busy_line(out)])
    assert (code, lines[1:]) == (130, ["dcam run: interrupted; nothing was written"])
    assert not os.path.lexists(tmp_path / "new")


def test_a_model_that_fails_to_load_releases_the_lock_and_leaves_the_folder_as_it_was(run_manifest, reference_run,
                                                                                     tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    for out in (str(tmp_path / "run"), str(tmp_path / "new")):
        if out.endswith("run"):
            shutil.copytree(reference_run, out)
        before = file_tree(out) if os.path.exists(out) else None
        proc = subprocess.run([sys.executable, "-m", "dcam", "run", run_manifest["path"], "--out", out, "--model",
                               str(model), *RUN_ARGS], env=single_process_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("dcam run: error: --model: "), \
            proc.stderr
        if before is None:
            assert not os.path.lexists(out)
        else:
            assert file_tree(out) == before and _lock_is_free(out)


def test_sigterm_while_the_model_loads_leaves_no_new_folder(run_manifest, tmp_path):
    # SIGTERM (torchrun stopping the other ranks when one fails, a scheduler's cancel) killed the run before its
    # finally: the folder and its lock file, created before the model loads, stayed behind
    out = str(tmp_path / "new" / "run")
    first = _loading(run_manifest["path"], out, tmp_path)
    assert sorted(os.listdir(out)) == [".lock"]
    code, lines = _interrupt(*first, signum=signal.SIGTERM)
    assert (code, lines[1:]) == (143, ["dcam run: stopped (SIGTERM); nothing was written"])
    assert not os.path.lexists(tmp_path / "new")


def test_a_stray_rank_in_a_one_process_run_still_says_it_stopped(run_manifest, tmp_path):
    # no WORLD_SIZE: one process, the run's rank 0, whatever RANK another launcher left in the environment; the
    # SIGTERM line's rank-0 gate read RANK raw, and the run's only process exited 143 saying nothing
    out = str(tmp_path / "new" / "run")
    first = _loading(run_manifest["path"], out, tmp_path, env=dict(single_process_env(), RANK="3"))
    code, lines = _interrupt(*first, signum=signal.SIGTERM)
    assert (code, lines[1:]) == (143, ["dcam run: stopped (SIGTERM); nothing was written"])
    assert not os.path.lexists(tmp_path / "new")


def test_a_run_through_link_dotdot_holds_the_folder_it_writes(run_manifest, reference_run, tmp_path):
    # --out link/../out (./out a run to resume): the lock was taken on elsewhere/out (the kernel's link/..), a
    # folder it created, while the run wrote ./out; a second run with --out ./out took ./out's lock freely
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    before = file_tree(out)
    (tmp_path / "elsewhere" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / "sub", tmp_path / "link")
    first = _loading(run_manifest["path"], str(tmp_path / "link" / ".." / "run"), tmp_path)
    try:
        assert os.listdir(tmp_path / "elsewhere") == ["sub"]  # no elsewhere/run/.lock
        second = _second_run(run_manifest, out)
    finally:
        code, lines = _interrupt(*first)
    assert (second.returncode, second.stderr.splitlines()) == (2, [_busy_line(out)])
    assert (code, lines[1:]) == (130, [f"dcam run: interrupted; nothing was written "
                                       f"({tmp_path / 'link' / '..' / 'run'} is as it was)"])
    assert file_tree(out) == before and _lock_is_free(out)
    assert os.listdir(tmp_path / "elsewhere") == ["sub"]
