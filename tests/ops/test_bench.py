"""The bench's timing helpers, on a clock the test drives (no timed asserts): what they
time, in which order, and how they reduce the pairs; and bench/gpu_check.py run end to
end in its smoke mode."""
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import pytest

from dcam.ops import bench


class FakeClock:
    """perf_counter for bench.time: advanced only by the calls under test."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self):
        return self.now

    def work(self, name, seconds):
        def fn():
            self.calls.append(name)
            self.now += next(seconds) if hasattr(seconds, "__next__") else seconds
        return fn


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", c)
    return c


def test_time_against_is_the_median_of_per_pair_ratios(clock):
    # fn takes 4, 4, 4, 40, ... while base takes 1, 2, 1, 2, ...: the pair ratios are
    # 4, 2, 4, 20, ...; their median is 4, whereas the ratio of the two medians would be
    # 4 / 1.5 = 2.67 (medians of times taken in different pairs)
    fn_times = itertools.chain([0.0], itertools.cycle([4.0, 4.0, 4.0, 40.0]))  # first call: the warm-up
    base_times = itertools.chain([0.0], itertools.cycle([1.0, 2.0, 1.0, 2.0]))
    ratio = bench.time_against(clock.work("fn", fn_times), clock.work("base", base_times), min_time=1e9,
                               max_pairs=8)
    assert ratio == 4.0
    # a warm-up of each, then pairs in alternating order (fn first, base first), until max_pairs
    assert clock.calls == ["fn", "base"] + ["fn", "base", "base", "fn"] * 4


def test_time_against_times_at_least_five_pairs(clock):
    bench.time_against(clock.work("fn", 10.0), clock.work("base", 10.0), min_time=1.0, max_pairs=40)
    assert clock.calls.count("fn") == 1 + 5  # min_time passed after the first pair, but 5 pairs at least


def test_time_beside_copy_pairs_each_call_with_the_copy_before_it(clock, monkeypatch):
    # the copy moves 2 x 400 bytes (read + write) in 1, 2, 1, 2, ... s; fn reads 100 bytes in
    # 1, 1, 1, 1, ... s: per-pair ratios (100 / 1) / (800 / t_copy) = t_copy / 8
    copy_times = itertools.chain([0.0], itertools.cycle([1.0, 2.0]))
    copies = clock.work("copy", copy_times)

    class Dst:
        def copy_(self, src):
            copies()

    monkeypatch.setattr(bench.torch, "empty_like", lambda src: Dst())
    t, bw, ratio = bench.time_beside_copy(clock.work("fn", itertools.chain([0.0], itertools.repeat(1.0))), 100,
                                          400, min_time=1e9, max_pairs=6)
    assert clock.calls == ["fn", "copy"] + ["copy", "fn"] * 6
    assert t == 1.0 and bw == statistics.median([800.0, 400.0] * 3) and ratio == statistics.median([1 / 8, 2 / 8] * 3)


def test_table_has_the_one_call_column():
    row = dict(backend="cpp", case="pool, streamed", seconds=0.01, us_per_map=156.0, maps_per_s=6400.0,
               gb_per_s=30.0, ratio_to_reference=36.0, copy_gb_per_s=52.0, ratio_to_bandwidth=0.58,
               ratio_to_one_call=1.0625)
    other = dict(row, case="refine", gb_per_s=None, copy_gb_per_s=None, ratio_to_bandwidth=None,
                 ratio_to_one_call=None)
    lines = bench.format_table(dict(device="cpu", threads=2, copy_gb_per_s=[52.0], rows=[row, other])).splitlines()
    assert lines[2].endswith("| of copy bandwidth | x one call |")
    assert lines[4] == "| cpp | pool, streamed | 10.00 ms | 156.0 | 6400 | 30.00 | 36.0 | 52.0 | 58% | 1.062 |"
    assert lines[5].endswith("| - | - | - |")


def test_gpu_check_runs_end_to_end_in_its_smoke_mode(tmp_path):
    # bench/gpu_check.py runs only where a GPU is lent, which this project rarely sees: its
    # smoke mode runs the same three steps at toy sizes on this machine, so a broken step
    # (it once built the real-size bench's arguments by hand and lacked one) shows here
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_check.py"), "--smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] is True and report["tests"]["returncode"] == 0
    assert "passed" in report["tests"]["summary"] and "failed" not in report["tests"]["summary"]
    assert report["tests"]["workers"] >= 1  # the test step runs under pytest-xdist (a test extra)
    rows = report["engine"]["rows"]
    compiled = "triton" if report["engine"]["device"] == "cuda" else "cpp"
    assert {r["backend"] for r in rows} == {"torch", compiled}
    assert len(rows) == 2 * len({r["case"] for r in rows}) and all(r["seconds"] > 0 for r in rows)
    assert [r["T"] for r in report["real_size"]["rows"]] == [2, 4]
    assert all(r["words"] == r["T"] and r["dcam_s_per_word"] > 0 for r in report["real_size"]["rows"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert "smoke run at toy sizes" in md and "## Operators" in md and "## Real-size explanation" in md


def _load_bench(name):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_gpu_check():
    return _load_bench("gpu_check")


def test_real_size_bench_refuses_a_hook_without_a_block_above(capsys):
    # --blocks 1 or --layer at the last block built the model, then ended in a LastLayerError traceback
    main = _load_bench("bench_real_size").main
    small = ["--hidden", "128", "--image-tokens", "48", "--words", "2"]
    for extra, message in ((["--blocks", "1"], "--blocks must be >= 2 (the hooked block needs one above it), got 1"),
                           (["--blocks", "2", "--layer", "1"], "--layer must name a block below the last of the 2 "
                                                               "blocks (0..0), got 1"),
                           (["--layer", "-1"], "--layer must name a block below the last of the 3 blocks (0..1), "
                                               "got -1")):
        with pytest.raises(SystemExit) as exc:
            main(small + extra)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_gpu_check_test_step_timing_out_leaves_no_test_process_behind(monkeypatch):
    # killed alone, pytest left its xdist worker running for seconds (on a GPU, beside the
    # benches that follow); every process started for the step carries this mark
    if not os.path.isdir("/proc/self"):
        pytest.skip("processes are found through /proc")
    mark = f"gpu-check-{uuid.uuid4().hex}"
    monkeypatch.setenv("DCAM_TEST_MARK", mark)
    report = _load_gpu_check().run_tests(smoke=False, timeout_s=6)
    assert report["returncode"] is None and report["summary"].startswith("timed out after 6 s"), report

    def marked(pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f"DCAM_TEST_MARK={mark}".encode() in f.read()
        except OSError:  # gone, or not ours
            return False
    assert [p for p in os.listdir("/proc") if p.isdigit() and marked(p)] == []


def _marked_processes(mark):
    """The processes whose environment carries DCAM_TEST_MARK=mark (gone or not ours: left out)."""
    def marked(pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f"DCAM_TEST_MARK={mark}".encode() in f.read()
        except OSError:
            return False
    return [p for p in os.listdir("/proc") if p.isdigit() and marked(p)]


def test_gpu_check_test_step_interrupted_leaves_no_test_process_behind(monkeypatch):
    # only a timeout stopped the test step: an OverflowError (--test-timeout inf) or Ctrl-C in the
    # wait left pytest running on its own (parent 1)
    if not os.path.isdir("/proc/self"):
        pytest.skip("processes are found through /proc")
    gpu_check = _load_gpu_check()
    mark = f"gpu-check-{uuid.uuid4().hex}"
    monkeypatch.setenv("DCAM_TEST_MARK", mark)
    started = []

    class InterruptedPopen(subprocess.Popen):
        def communicate(self, input=None, timeout=None):
            if timeout is not None:  # the wait for the tests: interrupted as Ctrl-C does, once pytest runs
                deadline = time.monotonic() + 30
                while not started and time.monotonic() < deadline:
                    started.extend(_marked_processes(mark))
                raise KeyboardInterrupt
            return super().communicate(input, timeout)

    monkeypatch.setattr(gpu_check.subprocess, "Popen", InterruptedPopen)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.run_tests(smoke=False, timeout_s=60)
    assert started and _marked_processes(mark) == []  # it had started, and was stopped


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_gpu_check_rejects_a_test_timeout_that_is_not_a_finite_positive_time(capsys, value):
    with pytest.raises(SystemExit) as exc:
        _load_gpu_check().main(["--smoke", "--test-timeout", value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --test-timeout must be a finite number of seconds > 0, got {value}")


def test_bench_tools_refuse_bad_options_before_measuring(tmp_path, capsys):
    # each of these measured for minutes first and then lost the results to a traceback (a file as --out or
    # --json), or was a traceback at once (--threads -1, an unavailable device, --rounds 0)
    (tmp_path / "afile").write_text("x")
    small = ["--hidden", "128", "--blocks", "2", "--image-tokens", "48", "--words", "2"]
    cases = [(_load_gpu_check().main, ["--smoke", "--out", str(tmp_path / "afile")],
              f"--out: {str(tmp_path / 'afile')!r} exists and is not a folder"),
             (_load_bench("bench_real_size").main, small + ["--json", str(tmp_path)],
              f"--json: {str(tmp_path)!r} is a folder, not a file"),
             (_load_bench("bench_real_size").main, small + ["--threads", "-1"], "--threads must be >= 1, got -1"),
             (_load_bench("bench_real_size").main, small + ["--device", "xpu"], "--device: 'xpu' is not available"),
             (_load_bench("bench_op_overhead").main, ["--rounds", "0"], "--rounds must be >= 1, got 0")]
    for main, argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_bench_times_the_reference_first_and_each_backend_once(monkeypatch):
    # --backends cpp,torch gave the cpp rows no "x reference" (read off a torch row not timed yet), and a
    # repeated name was timed twice
    case = bench.Case("toy", lambda b: (lambda: None), 4, 0)
    monkeypatch.setattr(bench, "cases", lambda device, quick: [case])
    times = iter([2.0, 0.5])
    monkeypatch.setattr(bench, "time_call", lambda fn, **k: next(times))
    rows = bench.run(["cpp", "torch", "cpp"], quick=True)["rows"]
    assert [(r["backend"], r["ratio_to_reference"]) for r in rows] == [("torch", 1.0), ("cpp", 4.0)]


def _usage_error(main, argv, capsys):
    """The last stderr line of main(argv), which must exit with status 2 (argparse's usage error)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    return err.strip().splitlines()[-1]


def test_bench_explain_has_a_command_line(capsys):
    # any argument, --help too, started the full measurement (minutes); only `--peak-memory KIND` was read
    main = _load_bench("bench_explain").main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("usage: ")
    assert _usage_error(main, ["--bogus"], capsys).endswith("error: unrecognized arguments: --bogus")
    assert "--peak-memory: invalid choice: 'dcam-chunk8'" in _usage_error(main, ["--peak-memory", "dcam-chunk8"],
                                                                          capsys)


@pytest.mark.parametrize("threads", ["0", "two"])
def test_bench_explain_and_batch_refuse_a_bad_thread_count(monkeypatch, capsys, threads):
    # DCAM_BENCH_THREADS=0 was torch's RuntimeError, a word a ValueError traceback
    monkeypatch.setenv("DCAM_BENCH_THREADS", threads)
    for name in ("bench_explain", "bench_batch"):
        assert _usage_error(_load_bench(name).main, [], capsys).endswith(
            f"error: DCAM_BENCH_THREADS must be a count >= 1, got '{threads}'")


@pytest.mark.parametrize("n", [0, -1, 9, 20])
def test_bench_batch_refuses_a_batch_it_has_no_prompts_for(capsys, n):
    # 8 prompts, one per image: --n 0 ran 1 image and --n 20 ran 8, silently
    assert _usage_error(_load_bench("bench_batch").main, ["--n", str(n)], capsys).endswith(
        f"error: --n must be 1 to 8 (one prompt of its own per image), got {n}")


@pytest.mark.parametrize("option", ["--rounds", "--processes"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_compare_builds_refuses_no_rounds_or_processes_before_building(monkeypatch, capsys, option, value):
    # checked after minutes of building: --processes 0 printed an empty table, --rounds -1 ended in a traceback
    mod = _load_bench("compare_builds")
    monkeypatch.setattr(mod, "build", lambda *a: pytest.fail("built before the options were checked"))
    assert _usage_error(mod.main, ["WORKTREE", "WORKTREE", option, value], capsys).endswith(
        f"error: {option} must be >= 1, got {value}")


def test_compare_builds_shows_the_message_of_a_timing_process_that_failed(monkeypatch, capfd):
    # the timing process ran with check=True: a CalledProcessError traceback, its own stderr never shown
    mod = _load_bench("compare_builds")
    monkeypatch.setattr(mod, "build", lambda rev, workdir, index: f"/nonexistent/build-{index}/libdcam.so")
    with pytest.raises(SystemExit) as exc:
        mod.main(["WORKTREE", "WORKTREE", "--rounds", "1"])
    err = capfd.readouterr().err
    assert exc.value.code == 1  # the child's status (its uncaught OSError)
    assert "OSError: /nonexistent/build-0/libdcam.so: cannot open shared object file" in err  # the child's message
    assert "CalledProcessError" not in err and err.splitlines()[-1].startswith("child process failed with status 1: ")


def test_compare_builds_reports_a_revision_that_does_not_compile_without_a_traceback(monkeypatch, tmp_path):
    mod = _load_bench("compare_builds")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "broken.cpp").write_text("int f() { return }\n")
    monkeypatch.setattr(mod, "ROOT", str(tmp_path))
    monkeypatch.setattr(mod, "setup_flags", lambda rev: ["-O0"])
    with pytest.raises(SystemExit) as exc:
        mod.main(["WORKTREE", "WORKTREE"])
    assert str(exc.value.code).startswith("compare_builds: WORKTREE: g++ failed on broken.cpp:\n")
    assert "error" in str(exc.value.code)  # g++'s own message follows


SMALL_MODEL = ["--hidden", "128", "--image-tokens", "48"]


@pytest.mark.parametrize("name, argv, message", [
    ("bench_head_memory", SMALL_MODEL + ["--words", "2,0"], "--words must each be >= 1, got 2,0"),
    ("bench_head_memory", ["--hidden", "128", "--image-tokens", "0"], "--image-tokens must be a multiple of 48 "
                                                                      "(rows of 48), got 0"),
    ("bench_head_memory", ["--hidden", "128", "--image-tokens", "50"], "--image-tokens must be a multiple of 48 "
                                                                       "(rows of 48), got 50"),
    ("bench_head_memory", SMALL_MODEL + ["--chunk", "0"], "--chunk must be >= 1, got 0"),
    ("bench_head_memory", ["--hidden", "200"], "--hidden must be a multiple of 128 (heads of 128), got 200"),
    ("bench_scored_rows", SMALL_MODEL + ["--words", "0"], "--words must be >= 1, got 0"),
    ("bench_scored_rows", SMALL_MODEL + ["--threads", "0"], "--threads must be >= 1, got 0"),
    ("bench_scored_rows", SMALL_MODEL + ["--chunk", "-1"], "--chunk must be >= 1, got -1"),
    ("bench_scored_rows", SMALL_MODEL + ["--blocks", "1"], "--blocks must be >= 2, got 1"),
    ("bench_scored_rows", ["--hidden", "128", "--image-tokens", "-48"], "--image-tokens must be a multiple of 48 "
                                                                        "(rows of 48), got -48"),
    ("bench_scored_rows", ["--hidden", "0"], "--hidden must be a multiple of 128 (heads of 128), got 0"),
    ("bench_real_size", SMALL_MODEL + ["--words", "16,0"], "--words must each be >= 1, got 16,0"),
    ("measure_word_rule", ["--n", "2", "--threads", "0"], "--threads must be >= 1, got 0"),
    ("measure_word_rule", ["--n", "0"], "--n must be >= 1, got 0"),
    ("bench_pool_parts", ["--reps-time", "inf"], "--reps-time must be a finite number of seconds > 0, got inf"),
    ("bench_pool_parts", ["--reps-time", "0"], "--reps-time must be a finite number of seconds > 0, got 0"),
    ("bench_render", ["--sizes", "1024", "1"], "--sizes must each be >= 2, got 1024,1"),
    ("bench_render", ["--rounds", "0"], "--rounds must be >= 1, got 0"),
])
def test_bench_scripts_refuse_bad_options_before_measuring(capsys, name, argv, message):
    # each of these built a model in a child process that ended in a traceback (hidden behind the parent's
    # CalledProcessError), a torch RuntimeError (--threads 0), or an empty or meaningless table
    assert _usage_error(_load_bench(name).main, argv, capsys).endswith("error: " + message)


@pytest.fixture
def failing_python(tmp_path, monkeypatch):
    """sys.executable made a program that writes one line to stderr and exits with status 3."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'the child says why it failed' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    return str(fake)


@pytest.mark.parametrize("name, argv", [("bench_head_memory", SMALL_MODEL + ["--words", "2"]),
                                        ("bench_scored_rows", SMALL_MODEL + ["--blocks", "2", "--words", "2"]),
                                        ("bench_real_size", SMALL_MODEL + ["--blocks", "2", "--words", "2,4"])])
def test_bench_scripts_show_why_a_child_process_failed(failing_python, capfd, name, argv):
    # the children ran with check=True and their stderr captured: a CalledProcessError traceback was all
    # one saw
    with pytest.raises(SystemExit) as exc:
        _load_bench(name).main(argv)
    err = capfd.readouterr().err
    assert exc.value.code == 3 and "CalledProcessError" not in err
    assert err.splitlines()[0] == "the child says why it failed"
    assert err.splitlines()[1].startswith(f"child process failed with status 3: {failing_python} ")


def test_bench_engine_times_every_case_beside_the_copy_dcam_bench_uses(monkeypatch):
    # it timed each case beside a copy of that case's own size (the bf16 cases: half of dcam bench's copy,
    # which fits in a larger share of the caches), while its ratios were said to be dcam bench's
    def noop(backend):
        return lambda: None
    toy = [bench.Case("pool bf16", noop, 4, 100), bench.Case("pool fp32", noop, 4, 200),
           bench.Case("refine", noop, 8, 0)]
    monkeypatch.setattr(bench, "cases", lambda device, quick=False: toy)
    engine_bench = _load_bench("bench_engine")
    beside = []

    def time_beside_copy(fn, bytes_read, copy_bytes, *args):
        beside.append((bytes_read, copy_bytes))
        return 1.0, 1.0, 1.0
    monkeypatch.setattr(engine_bench, "time_beside_copy", time_beside_copy)
    monkeypatch.setattr(engine_bench, "time_call", lambda fn, **k: 1.0)

    class Benchmark:
        extra_info = {}

        def pedantic(self, fn, **k):
            self.stats = type("S", (), {"stats": type("M", (), {"median": 1.0})})

    for name in ("pool bf16", "pool fp32", "refine"):
        engine_bench.test_engine(Benchmark(), name, "cpp")
    assert beside == [(100, 200), (200, 200)]  # dcam bench's copy: the largest gradients, 200 bytes
