"""Writes that fail (a full disk, a file too large: a real RLIMIT_FSIZE in a child process, whose
writes then fail with EFBIG; Python ignores SIGXFSZ) in `dcam run` and `dcam view`: one line naming
the option, exit 2, no temporary file left, and a run resumes once the writes go through."""
import json
import os
import resource
import subprocess
import sys

import pytest

import dcam
from dcam.testing.support import single_process_env

GOOD = ["s0", "s1", "s2", "s3", "gen4", "s5", "dict6", "s7"]
RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]
#: bytes a file may grow to: run.json (about 4 kB) and the index lines fit, a shard of two records (about 14 kB)
#: does not
LIMIT = 8192
EFBIG = "(OSError: [Errno 27] File too large)"


def _limited(limit=LIMIT):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _dcam(args, limit=None):
    return subprocess.run([sys.executable, "-m", "dcam", *args], env=single_process_env(), capture_output=True, text=True,
                          timeout=300, preexec_fn=None if limit is None else _limited(limit))


def _temporary_files(folder):
    return [os.path.join(r, n) for r, ds, fs in os.walk(folder) for n in fs + ds
            if ".tmp-" in n or n.startswith(".partial-") or ".partial-" in n]


def test_write_bytes_atomic_removes_its_temporary_file_when_the_write_fails(tmp_path):
    # the temporary file stayed (as large as the limit allowed) beside the untouched target
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    code = ("import errno, sys; from dcam.runs.store import write_bytes_atomic\n"
            "try:\n    write_bytes_atomic(sys.argv[1], b'y' * 100000)\n"
            "except OSError as exc:\n    print(exc.errno == errno.EFBIG)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=single_process_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=_limited(4096))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "True\n", "")
    assert sorted(os.listdir(tmp_path)) == ["x.bin"] and target.read_bytes() == b"old"


def test_a_run_whose_write_fails_says_so_on_one_line_and_resumes(run_manifest, reference_run, tmp_path):
    out = str(tmp_path / "run")
    proc = _dcam(["run", run_manifest["path"], "--out", out, *RUN_ARGS], limit=LIMIT)
    # it was a 29-line traceback, exit 1, with shards/<part>.safetensors.tmp-<pid> left
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"dcam run: error: --out: writing {out!r} failed {EFBIG}; what was written "
                                        "is kept, rerun the same command to resume"]
    assert _temporary_files(out) == []
    proc = _dcam(["run", run_manifest["path"], "--out", out, *RUN_ARGS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = {r.id: r for r in dcam.load_run(reference_run)}
    got = list(dcam.load_run(out))
    assert [r.id for r in got] == [r for r in run_manifest["order"] if r in GOOD]
    assert all(r.entry["response"] == ref[r.id].entry["response"] for r in got)


def test_overlays_whose_write_fails_leave_no_partial_folder(run_manifest, tmp_path):
    out = str(tmp_path / "run")
    # 6 kB holds run.json (2-4 kB) but not the first overlay PNG (7-8 kB for a 64 px image): the half-written
    # overlays/.partial-* folder stayed until the next start
    proc = _dcam(["run", run_manifest["path"], "--out", out, "--overlays", *RUN_ARGS], limit=6144)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"dcam run: error: --out: writing {out!r} failed {EFBIG}")
    assert _temporary_files(out) == []


def test_two_ranks_one_of_whose_writes_fail_both_end(run_manifest, tmp_path):
    # rank 1 alone under the limit: its error reaches rank 0 (which prints it once, naming rank 1 and --out);
    # every rank ends, nothing temporary is left, and a rerun gives every record exactly once
    out = str(tmp_path / "run")
    script = tmp_path / "rank.sh"
    script.write_text(f'if [ "$RANK" = 1 ]; then ulimit -f {LIMIT // 1024}; fi\nexec {sys.executable} -m dcam "$@"\n')
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "--no-python", "bash", str(script),
           "run", run_manifest["path"], "--out", out, *RUN_ARGS]
    proc = subprocess.run(cmd, env=single_process_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dcam run:")]
    assert errors == [f"dcam run: error: rank 1: --out: writing {out!r} failed {EFBIG}; what was written is kept, "
                      "rerun the same command to resume"], proc.stderr[-3000:]
    # (torchrun reports the failed ranks with a traceback of its own: none comes from dcam's code)
    assert not [line for line in proc.stderr.splitlines() if 'File "' in line and f"{os.sep}dcam{os.sep}" in line]
    assert _temporary_files(out) == []
    proc = subprocess.run(cmd[:4] + [sys.executable, "-m", "dcam"] + cmd[6:], env=single_process_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = [json.loads(line) for line in open(os.path.join(out, "index.jsonl"))]
    assert [e["id"] for e in index] == [r for r in run_manifest["order"] if r in GOOD]


@pytest.mark.parametrize("limit, per_page", [(5 * 1024, "50"), (12 * 1024, "1")])
def test_a_page_whose_write_fails_says_so_on_one_line(reference_run, tmp_path, limit, per_page):
    # 5 kB: an image or the page data fails (view/ never appears); 12 kB with a page per record: view/ is
    # written, index.html (about 15 kB) fails and is not left half-written. Both were tracebacks, exit 1
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    proc = _dcam(["view", out, "--quiet", "--per-page", per_page], limit=limit)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"dcam view: error: DIR: writing the page into {out!r} failed {EFBIG}"]
    assert not os.path.exists(os.path.join(out, "index.html")) and _temporary_files(out) == []
    assert os.path.isdir(os.path.join(out, "view")) == (per_page == "1")
