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


def _interrupt_the_model_load(manifest, out, tmp_path):
    """``dcam run`` of a model whose config.json is a FIFO (its load waits on it), sent SIGINT once it said it is
    loading the model; returns (exit code, stderr's lines)."""
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "config.json")
    proc = subprocess.Popen([sys.executable, "-m", "dcam", "run", manifest, "--out", out, "--model", str(model),
                             *RUN_ARGS], env=single_process_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            # (a child of a background job inherits SIGINT ignored: Python then installs no handler)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()
        assert first.endswith("; loading the model\n"), first
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, [first.rstrip("\n")] + rest.splitlines()


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
