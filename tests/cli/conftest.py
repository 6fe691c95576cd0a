"""Fixtures of the CLI tests: a tiny random zoo model saved to disk, a shapes
image, broken copies of the model folder, and helpers that run ``dcam`` in
this process (``main([...])``) or in a child process (``python -m dcam``)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: What ``--quiet`` sets for the whole process (dcam.cli.common.silence_progress).
QUIET_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")


@pytest.fixture(autouse=True)
def undo_quiet():
    """A ``--quiet`` run in this process silences progress bars process-wide
    (as it should in a CLI run); undo it after each test so later tests and
    child processes see the defaults."""
    from transformers.utils import logging as hf_logging

    env = {k: os.environ.get(k) for k in QUIET_ENV}
    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    yield
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    hf_logging.set_verbosity(level)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random toy dMLLM (dcam.testing.tiny_toy) saved with save_pretrained."""
    from dcam.testing import tiny_toy

    model, proc = tiny_toy()
    d = tmp_path_factory.mktemp("tinyzoo")
    model.save_pretrained(str(d))
    proc.save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="session")
def shapes_png(tmp_path_factory):
    """A 48x48 grounded-shapes PNG (two objects)."""
    from dcam.zoo.data import generate_sample

    p = tmp_path_factory.mktemp("img") / "shapes.png"
    generate_sample((0, 2, 1), image_size=48, n_objects=2).image.save(p)
    return str(p)


@pytest.fixture
def broken_model(tiny_model_dir, tmp_path):
    """``broken_model(name, edit)``: a copy of the tiny model folder after
    ``edit(folder)`` (a function that breaks one of its files)."""
    def make(name, edit):
        d = tmp_path / name
        shutil.copytree(tiny_model_dir, d)
        edit(str(d))
        return str(d)
    return make


@pytest.fixture
def edit_config():
    """``edit_config(folder, section, key, value)``: set one field of config.json
    (``section`` None for the top level, else e.g. "text_config")."""
    def edit(folder, section, key, value):
        path = os.path.join(folder, "config.json")
        cfg = json.load(open(path))
        (cfg[section] if section else cfg)[key] = value
        json.dump(cfg, open(path, "w"))
    return edit


@pytest.fixture
def cli(capsys):
    """``cli(*argv)`` -> ``(exit code, stdout, stderr lines)`` of ``dcam.cli.main``
    run in this process."""
    from dcam.cli import main

    def run(*argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        got = capsys.readouterr()
        return rc, got.out, [line for line in got.err.splitlines() if line.strip()]
    return run


@pytest.fixture
def dcam_child():
    """``dcam_child(*argv, env=None, prelude="")`` -> CompletedProcess of
    ``python -c "<prelude>; sys.exit(main(argv))"`` in a child process (the
    repository on its path; ``prelude`` runs first, e.g. to install a hook)."""
    def run(*argv, env=None, prelude="", timeout=120, cwd=None):
        code = (f"import sys\n{prelude}\nfrom dcam.cli import main\n"
                f"sys.exit(main({[str(a) for a in argv]!r}))\n")
        full_env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        OMP_NUM_THREADS="1")
        for k in QUIET_ENV:
            full_env.pop(k, None)
        full_env.update(env or {})
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=cwd)
    return run


@pytest.fixture
def error_line():
    """``error_line(stderr_lines, command)``: the one ``dcam <command>: error:``
    line, asserting it is the only error line and that no traceback was printed."""
    def check(lines, command="explain"):
        text = "\n".join(lines)
        assert "Traceback" not in text, text
        errors = [line for line in lines if line.startswith(f"dcam {command}: error:")]
        assert len(errors) == 1, text
        return errors[0]
    return check


@pytest.fixture
def failing_rename(monkeypatch):
    """``failing_rename(path)``: every ``os.replace`` onto ``path`` fails with an I/O error (the trace's last
    step, after the command's output is in place); other renames run."""
    real = os.replace

    def install(path):
        def replace(src, dst):
            if os.fspath(dst) == str(path):
                raise OSError(5, "Input/output error")
            return real(src, dst)
        monkeypatch.setattr(os, "replace", replace)
    return install
