"""What fork-based checkpoints could save `kvmlock verify`, modelled from measured costs.

A DPOR execution starts by replaying the path's prefix up to its branch point. A checkpoint
(a process forked at a branch point and kept there) would let a later execution start at the
branch point instead. A fork is the only way back to a process's earlier state and it is used
up by the execution it serves, so every execution that starts from a checkpoint costs at
least one fork, exit and reap: the best any such scheme can do is to use a checkpoint for an
execution only where the replay it saves costs more than that.

This script runs every scenario (or those named) in this process, with the explorer's watched
worker bypassed, and records per DPOR execution its replayed prefix, its steps and its CPU time
(the thread's); then it times fork, exit and reap here, with the heap those explorations left
(the parent's CPU and the child's), and prints the model's saving under two step costs:

* fitted: per scenario ``time = setup + new steps x a + replayed steps x b`` by least squares
  (a replayed step skips the strategy, so it is cheaper than a new one);
* uniform: a replayed step costs as much as a new one (``time = setup + steps x a``): an upper
  bound on what replay costs.

No checkpoint code exists; the model says whether one is worth building.

    python benchmarks/bench_checkpoints.py [NAME ...]
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections import defaultdict

from kvmlock.cli import main as kvmlock_main
from kvmlock.explore import engine, guard
from kvmlock.explore.strategies import dpor as _dpor
from kvmlock.scenarios import verify as _verify

#: A scenario with fewer executions than this gets the mean step cost instead of a fit.
MIN_FIT = 30


def record(names: list[str]) -> list[tuple[str, int, int, float]]:
    """(scenario, replayed prefix, steps, CPU seconds) per DPOR execution of ``names``."""
    rows: list[tuple[str, int, int, float]] = []
    last: dict[str, object] = {}
    begin, execute, run_scenario, run = (_dpor.DPOR.begin, engine.execute,
                                         _verify.run_scenario, guard.run)

    def dpor_begin(self):  # type: ignore[no-untyped-def]
        plan = begin(self)
        last["p"] = None if plan is None else len(plan.prefix)
        return plan

    def timed_execute(*a, **k):  # type: ignore[no-untyped-def]
        last["p"] = None
        t = time.thread_time()
        ex = execute(*a, **k)
        t = time.thread_time() - t
        if ex is not None and last["p"] is not None:
            rows.append((str(last["name"]), int(last["p"]), ex.steps, t))  # type: ignore[arg-type]
        return ex

    def named(sc, *a, **k):  # type: ignore[no-untyped-def]
        last["name"] = sc.name
        return run_scenario(sc, *a, **k)

    _dpor.DPOR.begin = dpor_begin  # type: ignore[method-assign]
    engine.execute = timed_execute
    _verify.run_scenario = named
    guard.run = lambda job, timeout, stall: job()  # the thread's CPU time is the execution's
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            kvmlock_main(["verify", "--json", *names])
    finally:
        _dpor.DPOR.begin, engine.execute = begin, execute  # type: ignore[method-assign]
        _verify.run_scenario, guard.run = run_scenario, run
    return rows


def fork_cost(n: int = 200) -> tuple[float, float]:
    """CPU seconds of one fork + immediate exit + reap: the parent's, the child's."""
    c0, t0 = time.process_time(), os.times()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    t1 = os.times()
    child = t1.children_user + t1.children_system - t0.children_user - t0.children_system
    return (time.process_time() - c0) / n, child / n


def _solve(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares by the normal equations (a handful of unknowns)."""
    k = len(rows[0])
    a = [[sum(r[i] * r[j] for r in rows) for j in range(k)] for i in range(k)]
    b = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(k)]
    for c in range(k):  # Gauss-Jordan with partial pivoting
        piv = max(range(c, k), key=lambda r: abs(a[r][c]))
        a[c], a[piv], b[c], b[piv] = a[piv], a[c], b[piv], b[c]
        if abs(a[c][c]) < 1e-12:
            raise ArithmeticError("singular")
        for r in range(k):
            if r != c:
                f = a[r][c] / a[c][c]
                a[r] = [x - f * y for x, y in zip(a[r], a[c], strict=True)]
                b[r] -= f * b[c]
    return [b[i] / a[i][i] for i in range(k)]


def step_costs(xs: list[tuple[int, int, float]], uniform: bool) -> tuple[float, float]:
    """(cost of a new step, cost of a replayed step) for one scenario's executions."""
    total = sum(t for _, _, t in xs)
    steps = sum(s for _, s, _ in xs)
    mean = total / max(steps, 1)
    if len(xs) < MIN_FIT:
        return mean, mean
    try:
        if uniform:
            _, a = _solve([[1.0, s] for _, s, _ in xs], [t for _, _, t in xs])
            return (a, a) if a > 0 else (mean, mean)
        _, a, b = _solve([[1.0, s - p, p] for p, s, _ in xs], [t for _, _, t in xs])
    except ArithmeticError:
        return mean, mean
    return (a, b) if a > 0 and b > 0 else (mean, mean)


def model(rows: list[tuple[str, int, int, float]], fork: float, uniform: bool) -> tuple[float,
                                                                                        float]:
    """(CPU seconds spent replaying, the most a checkpoint at every branch point saves)."""
    by: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for name, p, s, t in rows:
        by[name].append((p, s, t))
    replay = saved = 0.0
    for xs in by.values():
        _, b = step_costs(xs, uniform)
        replay += sum(p for p, _, _ in xs) * b
        saved += sum(max(0.0, p * b - fork) for p, _, _ in xs)
    return replay, saved


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    rows = record(names)
    if not rows:
        raise SystemExit("bench_checkpoints: no DPOR execution among the chosen scenarios")
    parent, child = fork_cost()
    total = sum(r[3] for r in rows)
    steps = sum(r[2] for r in rows)
    replayed = sum(r[1] for r in rows)
    prefixes = sorted(r[1] for r in rows)
    q = [prefixes[int(f * (len(prefixes) - 1))] for f in (0.1, 0.5, 0.9)]
    try:
        load = " (load average {:.1f} {:.1f} {:.1f})".format(*os.getloadavg())
    except OSError:
        load = ""
    print(f"kvmlock verify {' '.join(names) or '(every scenario)'}{load}")
    print(f"{len(rows):,} DPOR executions, {total:.2f} s of CPU, {steps:,} steps, "
          f"{replayed:,} of them replayed ({replayed / steps:.0%}); replayed prefix per "
          f"execution: {q[0]} / {q[1]} / {q[2]} steps (10th / 50th / 90th percentile)")
    print(f"fork + exit + reap: {parent * 1e3:.2f} ms of the parent's CPU, "
          f"{child * 1e3:.2f} ms of the child's")
    print(f"{'step cost':<10} {'replay s':>9} {'share':>6}  "
          f"{'best saving: full fork':>22}  {'parent only':>11}  {'free forks':>10}")
    for label, uniform in (("fitted", False), ("uniform", True)):
        replay, full = model(rows, parent + child, uniform)
        _, par = model(rows, parent, uniform)
        print(f"{label:<10} {replay:>9.2f} {replay / total:>6.0%}  "
              f"{total / (total - full):>21.2f}x  {total / (total - par):>10.2f}x  "
              f"{total / (total - replay):>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
