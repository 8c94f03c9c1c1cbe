"""The benchmark script still runs and prints every figure (no timing is asserted here)."""

import importlib.util
import pathlib

from kvmlock import lockdep

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lockdep.py"


def test_benchmark_quick_run_prints_all_figures(capsys):
    spec = importlib.util.spec_from_file_location("bench_lockdep", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for label in ("threading.Lock, with", "bare Python wrapper, with",
                  "cached chain depth 1", "cached chain depth 4", "first-time chain",
                  "validation on", "validation off", "on/off ratio", "plain attribute",
                  "guarded_by field", "Guarded.get()", "RcuPointer.srcu_dereference"):
        assert label in out
    assert lockdep.enabled() and lockdep.reports() == []
