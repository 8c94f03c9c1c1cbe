"""Parallel exploration: one exhaustive DPOR split across 2 workers, against the sequential run.

Printed from one run of this script:

* sequential vs 2 worker processes: wall time and executions for the 3x4 and 4x2 counters
  (34,650 and 2,520 Mazurkiewicz traces) and one KVM scenario (``fast_pf.aba.correct``);
* the same on a local Ray instance started here (2 CPUs), when Ray is installed;
* the explorer's cost per visible operation against a greenlet switch pair;
* a model of the overheads measured in the 2-worker 3x4 run, and what it projects for 8, 32
  and 64 cores.

The machine is shared: each pair (sequential, parallel) runs back to back, ``--rounds`` times,
and the figures are the medians; the speedup is the median of the per-round ratios.

    python benchmarks/bench_parallel.py [--quick] [--rounds N] [--no-ray]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

from greenlet import greenlet

from kvmlock import explore, spawn
from kvmlock.explore import parallel
from kvmlock.sync import Mutex


def counter(n: int, k: int) -> Callable[[], None]:
    def body() -> None:
        m = Mutex("counter_lock")
        c = [0]

        def worker() -> None:
            for _ in range(k):
                with m:
                    c[0] += 1

        ts = [spawn(worker) for _ in range(n)]
        for t in ts:
            t.join()
        assert c[0] == n * k

    return body


def scenario(name: str) -> Callable[[], None]:
    from kvmlock.scenarios.registry import SCENARIOS

    return SCENARIOS[name].body


def timed(body: Callable[[], None], **kw) -> tuple[float, float, explore.Result]:
    """Wall seconds, CPU seconds (this process's: the sequential exploration's) and result."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = explore.check(body, strategy="dpor", shrink=False, **kw)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert res.ok and res.exhausted, res.headline()
    return dt, dc, res


def compare(label: str, body: Callable[[], None], rounds: int, **par) -> dict:
    """Sequential against 2 workers, ``rounds`` pairs back to back. Two ratios: wall time,
    and sequential CPU time over the busiest worker's CPU time -- what 2 otherwise idle cores
    would give, which the machine's other load does not distort."""
    seq_t, par_t, ratios, cpu_ratios = [], [], [], []
    for _ in range(rounds):
        ts, cs, rs = timed(body)
        tp, _cp, rp = timed(body, workers=2, **par)
        assert rp.runs == rs.runs, (label, rp.runs, rs.runs)
        seq_t.append(ts)
        par_t.append(tp)
        ratios.append(ts / tp)
        cpu_ratios.append(cs / max(rp.worker_cpu))
    return {"label": label, "traces": rs.runs, "par_runs": rp.runs, "pruned": rp.pruned,
            "seq": statistics.median(seq_t), "par": statistics.median(par_t),
            "speedup": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios),
            "cpu": statistics.median(cpu_ratios), "steps": rs.steps}


def table(rows: list[dict], title: str) -> None:
    print(title)
    print(f"  {'program':28}{'traces':>8}{'2w runs':>9}{'pruned':>8}{'seq s':>9}{'2w s':>9}"
          f"{'speedup':>9}  {'rounds':9}{'CPU ratio':>10}")
    for r in rows:
        print(f"  {r['label']:28}{r['traces']:8,}{r['par_runs']:9,}{r['pruned']:8,}"
              f"{r['seq']:9.2f}{r['par']:9.2f}{r['speedup']:8.2f}x  "
              f"{r['lo']:.2f}-{r['hi']:.2f}{r['cpu']:9.2f}x")
    print("  (speedup: wall time, median of the rounds; CPU ratio: sequential CPU time over the"
          " busiest worker's)")


def switch_pair_ns(n: int = 200_000) -> float:
    """A greenlet switch there and back: the floor of one visible operation's cost."""
    main = greenlet.getcurrent()

    def other() -> None:
        while True:
            main.switch()

    g = greenlet(other)
    g.switch()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            g.switch()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def model(body: Callable[[], None]) -> None:
    """Measure the overheads of a 2-worker run and project larger machines from them.

    Work is CPU time (time.process_time), so what the machine's other processes take is
    not counted as the exploration's."""
    c0 = time.process_time()
    explore.check(body, strategy="dpor", shrink=False)
    seq_s = time.process_time() - c0
    opts = parallel.Options("dpor", 10_000, True, True, budget=0.1)
    t0 = time.perf_counter()
    out = parallel.explore(body, "dpor", 2, "process", opts, max_runs=None, timeout=None,
                           stop_on_first=False)
    wall = time.perf_counter() - t0
    inflation = out.busy / seq_s  # work the split adds (prefix replays, pruned runs, messages)
    per_msg = out.coordinator / max(out.messages, 1)
    print("Overheads of the 2-worker 3x4 run (the model's inputs):")
    print(f"  worker CPU time summed {out.busy:.2f}s for {seq_s:.2f}s of sequential CPU time: "
          f"inflation f = {inflation:.2f}")
    print(f"  start-up (fork) {out.started * 1e3:.1f} ms for 2 workers; {out.messages} replies, "
          f"{out.handed} subtrees handed out; coordinator {per_msg * 1e6:.0f} us per reply "
          f"({out.coordinator:.3f}s in all, {out.coordinator / wall:.1%} of the wall time)")
    print(f"  so 2 otherwise idle cores would give {2 / inflation:.2f}x (2 / f)")
    print(f"  wall {wall:.2f}s against the ideal {out.busy / 2:.2f}s (summed work / 2): "
          f"{wall / (out.busy / 2):.2f}x (the cores are shared with the coordinator and the "
          f"machine's other processes)")
    # T(N) = start-up (workers are started one after the other) + ramp-up (work spreads by
    # stealing, at most doubling the busy workers every FIRST_BUDGET seconds: a worker
    # handed work while others wait answers then, and gives some away) + the inflated work
    # shared by N, slowed by the coordinator if its replies (one per worker per budget
    # seconds, served one at a time) keep its core busy.
    start_per_worker = out.started / 2
    print(f"Projection for this program, one core per worker, f, start-up and the per-reply "
          f"cost as measured, budget {opts.budget}s ({parallel.FIRST_BUDGET}s while workers "
          f"wait for a share):")
    for n in (8, 32, 64):
        work = seq_s * inflation / n
        ramp = parallel.FIRST_BUDGET * math.ceil(math.log2(n))
        coord_load = n / opts.budget * per_msg  # fraction of the coordinator's core
        t = start_per_worker * n + ramp + work / max(1.0 - coord_load, 0.01)
        print(f"  {n:3} cores: ~{seq_s / t:5.1f}x  (work {work:.2f}s + start-up "
              f"{start_per_worker * n:.2f}s + ramp-up {ramp:.2f}s; coordinator busy "
              f"{coord_load:.0%}); larger explorations amortize the start-up and ramp-up")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small programs, one round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    programs = ([("counter 3x2", counter(3, 2)), ("counter 2x4", counter(2, 4))] if args.quick
                else [("counter 3x4", counter(3, 4)), ("counter 4x2", counter(4, 2)),
                      ("fast_pf.aba.correct", scenario("fast_pf.aba.correct"))])
    print(f"python {sys.version.split()[0]}; dpor, lockdep on; median of {rounds} round(s)")
    rows = [compare(label, body, rounds) for label, body in programs]
    table(rows, "Sequential vs 2 worker processes:")

    switch = switch_pair_ns()
    ref = next(r for r in rows if r["label"].startswith("counter"))
    per_step = ref["seq"] / ref["steps"] * 1e9
    print(f"Cost per visible operation, {ref['label']} sequential: {per_step:,.0f} ns = "
          f"{per_step / switch:.1f} greenlet switch pairs ({switch:.0f} ns each)")

    if not args.quick:
        model(programs[0][1])

    if not args.no_ray:
        try:
            import ray
        except ImportError:
            print("Ray is not installed (pip install -e '.[ray]'): no Ray figures")
            return 0
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"Local Ray instance (2 CPUs) started in {time.perf_counter() - t0:.1f}s")
        try:
            rows = [compare(label, body, rounds, backend="ray") for label, body in programs]
        finally:
            ray.shutdown()
        table(rows, "Sequential vs 2 Ray workers (actors on the local instance):")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
