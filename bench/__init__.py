"""Benchmarks: `python -m bench` prints the engine table; `pytest bench/` runs
the pytest-benchmark suites (bench_*.py)."""
