"""Exhaustive DPOR, kvmlock.explore side by side with the PyPI package ``frontrun``.

Two programs, each explored to exhaustion by both tools in this one process:

* ``counter 3x3``: three tasks each doing three increments of one counter under one lock.
  Its Mazurkiewicz traces are the orders of the nine critical sections: 9!/(3!)^3 = 1680.
* ``lost update``: two tasks each doing ``v = x; x = v + 1`` without a lock.

frontrun is run twice: with its defaults (preemption bound 2, I/O detection on), and fully
exhaustive (no preemption bound, I/O detection off, its fastest setting). kvmlock runs with
lockdep validating every acquire, as it does by default, and without shrinking (the benchmark
counts explorations, not failure reports).

The machine is shared and noisy, so the tools take turns: each round times every tool once, one
after the other, and the figures are medians over the rounds. Printed per tool: executions per
exploration, median executions per second, and kvmlock's rate as a multiple of the tool's
(the median over rounds of the ratio measured within one round, and its range).

A second table runs unmodified threading programs, the same code for both tools (frontrun's
home ground): a lost update on a plain attribute (kvmlock with ``memory=True``), the locked
counter 3x3 with ``threading.Lock``, three dining philosophers to the first failure (kvmlock
with lockdep off, so the explorer itself must reach the deadlock), and a producer/consumer
pipeline through a bounded ``queue.Queue`` (and through an unbounded one). In each round every
tool takes a turn of about 0.4 s, exploring the program again and again; printed are
executions per exploration (completed ones: a frontrun exploration whose execution times out
is inconclusive, reported as such and run only once), exec/s, executions per CPU second (the
process's CPU time, all its threads), what the exploration ended with, and kvmlock's rate over
the tool's per round (median and range) in wall time and in CPU time; and the machine's load
average at the start and the end. Last, the cost memory=True adds per traced operation.

    pip install -e '.[bench]'      # frontrun==0.7.0
    python benchmarks/bench_explore.py
"""

from __future__ import annotations

import gc
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable

from kvmlock import explore, spawn
from kvmlock.sync import Atomic64, Mutex


# ---------------------------------------------------------------------------- kvmlock bodies
def counter_body() -> None:
    m = Mutex("counter_lock")
    c = [0]

    def worker() -> None:
        for _ in range(3):
            with m:
                c[0] += 1

    ts = [spawn(worker) for _ in range(3)]
    for t in ts:
        t.join()
    assert c[0] == 9


def lost_update_body() -> None:
    x = Atomic64(0, name="x")

    def inc() -> None:
        v = x.load()
        x.store(v + 1)

    ts = [spawn(inc), spawn(inc)]
    for t in ts:
        t.join()
    assert x.peek() == 2


#: Rounds, and explorations per turn of (kvmlock, frontrun). The lost-update space is tiny, so
#: each turn explores it many times over, enough for a turn to last about half a second.
ROUNDS = {"counter 3x3": 3, "lost update": 7}
PER_ROUND = {"counter 3x3": (1, 1), "lost update": (1500, 70)}


def run_kvmlock(body, repeat: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    runs = 0
    for _ in range(repeat):
        res = explore.check(body, strategy="dpor", stop_on_first=False, shrink=False,
                            progress=False)
        assert res.exhausted
        runs += res.runs
    return runs, time.perf_counter() - t0


# ---------------------------------------------------------------------------- frontrun programs
class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.v = 0


def _counter_worker(s: _Counter) -> None:
    for _ in range(3):
        with s.lock:
            s.v += 1


class _Word:
    def __init__(self) -> None:
        self.v = 0


def _inc(s: _Word) -> None:
    v = s.v
    s.v = v + 1


def frontrun_runner(which: str, exhaustive: bool) -> Callable[[int], tuple[int, float]]:
    import frontrun

    kw: dict = {"stop_on_first": False, "reproduce_on_failure": 0}
    if exhaustive:
        kw.update(preemption_bound=None, detect_io=False)

    def once():
        if which == "counter 3x3":
            return frontrun.explore(setup=_Counter, workers=_counter_worker, count=3,
                                    invariant=lambda s: s.v == 9, **kw)
        return frontrun.explore(setup=_Word, workers=_inc, count=2,
                                invariant=lambda s: s.v == 2, **kw)

    def run(repeat: int) -> tuple[int, float]:
        from frontrun._cooperative import patch_locks, unpatch_locks

        patch_locks()  # what the frontrun CLI does before running a test (undone after)
        try:
            t0 = time.perf_counter()
            runs = 0
            for _ in range(repeat):
                runs += once().num_explored
            return runs, time.perf_counter() - t0
        finally:
            unpatch_locks()

    return run


def _tools(name: str, body) -> dict[str, Callable[[int], tuple[int, float]]]:
    tools: dict[str, Callable[[int], tuple[int, float]]] = {
        "kvmlock dpor": lambda k: run_kvmlock(body, k)}
    try:
        import frontrun  # noqa: F401
    except ImportError:
        return tools
    tools["frontrun dpor (defaults)"] = frontrun_runner(name, exhaustive=False)
    tools["frontrun dpor (exhaustive)"] = frontrun_runner(name, exhaustive=True)
    return tools


def main() -> int:
    programs = (("counter 3x3", counter_body), ("lost update", lost_update_body))
    have_frontrun = True
    print(f"{'program':<12} {'explorer':<28} {'executions':>10} {'exec/s':>9} "
          f"{'kvmlock speedup (range)':>24}")
    for name, body in programs:
        tools = _tools(name, body)
        have_frontrun = have_frontrun and len(tools) > 1
        k_ours, k_theirs = PER_ROUND[name]
        if name == "lost update":  # untimed warm-up of every tool
            for run in tools.values():
                run(1)
        execs: dict[str, int] = {}
        rates: dict[str, list[float]] = {t: [] for t in tools}
        for _ in range(ROUNDS[name]):
            for tool, run in tools.items():
                k = k_ours if tool == "kvmlock dpor" else k_theirs
                n, dt = run(k)
                execs[tool] = n // k
                rates[tool].append(n / dt)
        ours = rates["kvmlock dpor"]
        for tool in tools:
            rate = statistics.median(rates[tool])
            speed = ""
            if tool != "kvmlock dpor":
                ratios = [a / b for a, b in zip(ours, rates[tool], strict=True)]
                speed = (f"{statistics.median(ratios):,.1f}x ({min(ratios):,.1f}-"
                         f"{max(ratios):,.1f})")
            print(f"{name:<12} {tool:<28} {execs[tool]:>10} {rate:>9,.0f} {speed:>24}")
    print("\nmedians over rounds in which every tool takes one turn; explorations per turn "
          "(kvmlock, frontrun): " + ", ".join(f"{n}: {ROUNDS[n]} rounds of {PER_ROUND[n]}"
                                              for n in ROUNDS))
    if not have_frontrun:
        print("frontrun is not installed (pip install -e '.[bench]'): kvmlock figures only")
    return 0


# ---------------------------------------------------------------------------- plain threading
# The same unmodified threading code for both tools: a setup making the shared state, worker
# functions taking it, and an invariant over it. frontrun runs the workers as its threads;
# kvmlock explores a body that starts them as threading.Threads, joins them and asserts.
class _Table:
    """Three dining philosophers, each taking its left fork, then its right one."""

    def __init__(self, n: int = 3) -> None:
        self.forks = [threading.Lock() for _ in range(n)]
        self.seat = threading.Lock()
        self.n = n
        self.next = 0
        self.ate = 0


def _philosopher(t: _Table) -> None:
    with t.seat:
        i = t.next
        t.next += 1
    with t.forks[i]:
        with t.forks[(i + 1) % t.n]:
            t.ate += 1


class _Pipe:
    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=1)
        self.out: list[int] = []


def _producer(p: _Pipe) -> None:
    for i in range(3):
        p.q.put(i)
    p.q.put(None)


def _consumer(p: _Pipe) -> None:
    while True:
        v = p.q.get()
        if v is None:
            return
        p.out.append(v)


class _Unbounded(_Pipe):
    def __init__(self) -> None:
        super().__init__()
        self.q = queue.Queue()


#: name -> (setup, workers, invariant, stop at the first failure?, kvmlock options)
PLAIN: dict[str, tuple] = {
    "lost update": (_Word, [_inc, _inc], lambda s: s.v == 2, False, {"memory": True}),
    "counter 3x3": (_Counter, [_counter_worker] * 3, lambda s: s.v == 9, False, {}),
    "philosophers": (_Table, [_philosopher] * 3, lambda t: t.ate == 3, True,
                     {"lockdep": False}),
    "pipeline": (_Pipe, [_producer, _consumer], lambda p: p.out == [0, 1, 2], False, {}),
    "pipeline, unbounded": (_Unbounded, [_producer, _consumer], lambda p: p.out == [0, 1, 2],
                            False, {}),
}


def plain_body(setup, workers, invariant) -> Callable[[], None]:
    def body() -> None:
        state = setup()
        ts = [threading.Thread(target=w, args=(state,)) for w in workers]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert invariant(state)

    return body


#: What one exploration did: (executions completed, seconds, CPU seconds, outcome)
Explored = tuple[int, float, float, str]


def plain_tools(name: str) -> dict[str, Callable[[], Explored]]:
    """Each tool explores the program once."""
    setup, workers, invariant, first, opts = PLAIN[name]
    body = plain_body(setup, workers, invariant)

    def ours() -> Explored:
        c0, t0 = time.process_time(), time.perf_counter()
        res = explore.check(body, strategy="dpor", stop_on_first=first, shrink=False,
                            progress=False, **opts)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        what = res.failure.kind if res.failure else ("exhausted" if res.exhausted else "?")
        return res.runs, dt, dc, what

    tools = {"kvmlock dpor": ours}
    try:
        import frontrun
        from frontrun._cooperative import patch_locks, unpatch_locks
    except ImportError:
        return tools

    def theirs(exhaustive: bool) -> Callable[[], Explored]:
        kw: dict = {"stop_on_first": first, "reproduce_on_failure": 0}
        if exhaustive:
            kw.update(preemption_bound=None, detect_io=False)

        def run() -> Explored:
            patch_locks()  # what the frontrun CLI does before running a test (undone after)
            try:
                c0, t0 = time.process_time(), time.perf_counter()
                r = frontrun.explore(setup=setup, workers=list(workers), invariant=invariant,
                                     **kw)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
            finally:
                unpatch_locks()
            if r.property_holds is None:  # inconclusive: its last execution did not finish
                why = (getattr(r, "inconclusive_reason", "") or "").lower()
                return (r.num_explored - 1, dt, dc,
                        "timed out" if "timed out" in why else "inconclusive")
            return r.num_explored, dt, dc, "found" if not r.property_holds else "exhausted"

        return run

    tools["frontrun dpor (defaults)"] = theirs(False)
    tools["frontrun dpor (exhaustive)"] = theirs(True)
    return tools


_STUCK = ("timed out", "inconclusive")


def _turn(run: Callable[[], Explored], budget: float) -> tuple[int, int, float, float, str]:
    """Explore the program again and again for about ``budget`` seconds (at least once):
    (explorations, executions, seconds, CPU seconds, outcome). A turn of one exploration of
    a few milliseconds would measure the machine's other load more than the tool."""
    k = n = 0
    dt = dc = 0.0
    what = ""
    while k == 0 or (dt < budget and what not in _STUCK):
        runs, t, c, what = run()
        # what one exploration left for the garbage collector (an abandoned execution's
        # locks) is collected before the next one, not inside its traced threads
        gc.collect()
        k, n, dt, dc = k + 1, n + runs, dt + t, dc + c
    return k, n, dt, dc, what


def memory_cost() -> tuple[float, int]:
    """Microseconds of CPU time memory=True adds per traced operation: two threads, each
    updating an object and a dict of its own that the body made and handed to it (no
    conflicts, so one execution; every access is a scheduling point, since the body could
    reach them too), with and without tracing. (While one task runs alone nothing is traced,
    and an object only the accessing frame refers to is no scheduling point: such accesses
    cost less.)"""

    class Box:
        def __init__(self) -> None:
            self.v = 0

    def work(b: Box, d: dict) -> None:
        for _ in range(1000):
            b.v = b.v + 1
            d["k"] += 1

    def body() -> None:
        ts = [threading.Thread(target=work, args=(Box(), {"k": 0})) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def timed(memory: bool) -> tuple[float, int]:
        best = float("inf")
        steps = 0
        for _ in range(5):
            t0 = time.process_time()  # (CPU time: the machine's other load does not count)
            res = explore.check(body, memory=memory, progress=False)
            best = min(best, time.process_time() - t0)
            assert res.ok and res.runs == 1
            steps = res.steps
        return best, steps

    plain, base = timed(False)
    traced, steps = timed(True)
    return (traced - plain) / (steps - base) * 1e6, steps - base


def _ratio(ours: list[float], theirs: list[float]) -> str:
    """The median of the per-round ratios, and their range."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b > 0]
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):,.1f}x ({min(ratios):,.1f}-{max(ratios):,.1f})"


def plain_main(rounds: int = 5, budget: float = 0.4) -> None:
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("\nunmodified threading programs (the same code for both tools; lost update with "
          "memory=True, philosophers to the first failure)")
    print(f"{'program':<20} {'explorer':<27} {'executions':>10} {'exec/s':>7} {'exec/CPU s':>10} "
          f"{'outcome':>14} {'speedup (range)':>17} {'CPU speedup (range)':>20}")
    for name in PLAIN:
        tools = plain_tools(name)
        stuck: dict[str, tuple[int, float, float, str]] = {}
        for tool, run in tools.items():  # untimed warm-up (and a tool that cannot finish the
            n, dt, dc, what = run()      # program's executions is not asked again)
            gc.collect()
            if what in _STUCK:
                stuck[tool] = (n, dt, dc, what)
        out: dict[str, tuple[int, str]] = {}
        rates: dict[str, list[float]] = {t: [] for t in tools}
        cpu: dict[str, list[float]] = {t: [] for t in tools}
        for _ in range(rounds):
            for tool, run in tools.items():
                if tool in stuck:
                    n, dt, dc, what = stuck[tool]
                    k = 1
                else:
                    k, n, dt, dc, what = _turn(run, budget)
                out[tool] = (n // k, what)
                rates[tool].append(n / dt)
                cpu[tool].append(n / dc if dc > 0 else float("nan"))
        for tool in tools:
            n, what = out[tool]
            speed = cspeed = ""
            if tool != "kvmlock dpor":
                speed = _ratio(rates["kvmlock dpor"], rates[tool])
                cspeed = _ratio(cpu["kvmlock dpor"], cpu[tool])
            if tool in stuck:
                n0, dt0, _dc, what = stuck[tool]
                what = f"{what} ({dt0:.0f}s)"
                speed = cspeed = "no execution ends"
            print(f"{name:<20} {tool:<27} {n:>10} {statistics.median(rates[tool]):>7,.0f} "
                  f"{statistics.median(cpu[tool]):>10,.0f} {what:>14} {speed:>17} {cspeed:>20}")
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmedians over {rounds} rounds; in each round every tool takes one turn of about "
          f"{budget}s, exploring the program again and again (speedup: kvmlock's exec/s over "
          f"the tool's, per round, median and range; CPU speedup: the same for executions per "
          f"CPU second of the whole process, which the machine's other load distorts less). "
          f"executions: per exploration, completed ones only (a frontrun exploration whose "
          f"execution timed out is inconclusive; it is run once). load average {load0:.1f} "
          f"at the start, {load1:.1f} at the end, on {os.cpu_count()} CPUs")
    us, ops = memory_cost()
    print(f"memory=True costs {us:.1f} us of CPU time per traced operation ({ops} operations, "
          f"two threads, each access a scheduling point)")
    handover_main()


def handover_main(rounds: int = 7, per_turn: int = 200) -> None:
    """What waking the watched worker on its caller's CPU saves (see kvmlock/explore/guard.py):
    CPU time per check, with the worker and its caller steered onto one CPU for the hand-over
    and without (the OS wakes each where it likes), taking turns, with a full collection
    between checks as above; medians over rounds."""
    from kvmlock.explore import guard

    getcpu = guard._getcpu
    if getcpu is None:
        print("\nhand-over: this OS does not let the worker be woken on its caller's CPU")
        return

    def nothing() -> None:
        pass

    programs = {"empty body": (nothing, {}),
                "lost update": (plain_body(*PLAIN["lost update"][:3]), {"memory": True}),
                "pipeline, unbounded": (plain_body(*PLAIN["pipeline, unbounded"][:3]), {})}
    cost: dict[tuple[str, bool], list[float]] = {}
    try:
        for _ in range(rounds):
            for name, (body, opts) in programs.items():
                for steer in (True, False):
                    guard._getcpu = getcpu if steer else None
                    cpu = 0.0
                    for _ in range(per_turn):
                        c0 = time.process_time()
                        explore.check(body, strategy="dpor", stop_on_first=False, shrink=False,
                                      progress=False, **opts)
                        cpu += time.process_time() - c0
                        gc.collect()
                    cost.setdefault((name, steer), []).append(cpu / per_turn * 1e6)
    finally:
        guard._getcpu = getcpu
    print(f"\nthe watched worker's hand-over, CPU time per check (median of {rounds} rounds of "
          f"{per_turn} checks each way, taking turns; a full collection between checks):")
    for name in programs:
        on = statistics.median(cost[(name, True)])
        off = statistics.median(cost[(name, False)])
        print(f"  {name:<20} woken on the caller's CPU {on:6.0f} us, where the OS likes "
              f"{off:6.0f} us: {off / on:.2f}x")


if __name__ == "__main__":
    main()
    plain_main()
    sys.exit(0)
