"""lockdep's chain memory across the executions of one exploration (kvmlock.lockdep.Memo).

Every execution must report, graph and chain exactly as it does with a fresh lockdep state and
no memory: the memory only skips work. Each test runs the same exhaustive exploration twice,
execution by execution, with and without a Memo, and compares what every execution left.
"""

from __future__ import annotations

import pytest

from kvmlock import explore, lockdep, spawn
from kvmlock.explore import engine
from kvmlock.explore.strategies.dpor import DPOR
from kvmlock.sync import SRCU, Atomic64, Mutex, RWSemaphore, SpinLock
from tests.explore.test_dpor import _program


def _per_execution(body, memo, limit: int = 300):
    """What each execution of a DPOR exploration left (the first ``limit`` executions): its
    reports, as printed, and the graph and chains it had at its end (when it got there)."""
    snaps: list = []

    def wrapped():
        body()
        snaps.append((lockdep.graph().to_json(), lockdep.chains(), lockdep.stats()))

    strat = DPOR(None)
    out = []
    while len(out) < limit:
        before = len(snaps)
        ex = engine.execute(wrapped, strat, 10_000, True, memo=memo)
        if ex is None:
            return out
        out.append((tuple(ex.choices), [str(r) for r in ex.reports],
                    snaps[before] if len(snaps) > before else None))
    return out


def late_inversion():
    """A then B in one task; B then A in the other only when it runs before the first one's
    store. The first execution (task 1 runs first) validates and remembers A -> B; an
    execution where task 2 takes B -> A first and task 1 then takes A -> B must report the
    cycle at task 1's A -> B, a chain remembered from an earlier execution."""

    def body():
        a, b = Mutex("memo.A"), Mutex("memo.B")
        flag = Atomic64(0, name="memo.flag")

        def t1():
            with a:
                with b:
                    pass
            flag.store(1)

        def t2():
            if flag.load() == 0:
                with b:
                    with a:
                        pass

        ts = [spawn(t1), spawn(t2)]
        for t in ts:
            t.join()

    return body


def consistent():
    """Orders that never conflict, shared and recursive readers, SRCU and interrupts off
    around a spinlock: a memory that stays clean and is used in every execution."""

    def body():
        outer, inner = Mutex("memo.outer"), Mutex("memo.inner")
        sem, srcu, spin = RWSemaphore("memo.sem"), SRCU("memo.srcu"), SpinLock("memo.spin")

        def reader():
            with srcu.read(), sem.read(), outer, inner:
                pass
            with spin.irqsave():
                pass

        def writer():
            with sem.write(), outer:
                with spin:
                    pass
            srcu.synchronize()

        ts = [spawn(reader), spawn(writer)]
        for t in ts:
            t.join()

    return body


def test_a_report_on_a_remembered_chain_is_still_made():
    body = late_inversion()
    memo = lockdep.Memo()
    fresh = _per_execution(body, None)
    assert _per_execution(body, memo) == fresh
    reported = [i for i, (_c, reps, _g) in enumerate(fresh) if reps]
    assert reported and reported[0] > 0  # not in the first execution, in some later one
    # one of them reports at task 1's A -> B, taken after task 2's B -> A
    assert any("memo.B" in r[0] and r[0].index("memo.A") > 0 for _c, r, _g in fresh if r)
    assert memo.hits > 0 and not memo.clean  # remembered chains were used, then turned off


def test_a_clean_exploration_uses_the_memory_and_changes_nothing():
    body = consistent()
    memo = lockdep.Memo()
    fresh = _per_execution(body, None)
    assert _per_execution(body, memo) == fresh
    assert all(not reps for _c, reps, _g in fresh)
    assert all(g is not None and g[0] for _c, _r, g in fresh)  # every one has a graph
    assert memo.clean
    assert memo.hits > 5 * memo.misses  # most first sightings of a chain were remembered ones


class _NeverOff(lockdep.Memo):
    """A memory that ignores the problems its union state finds (wrongly reused)."""

    clean = property(lambda self: True, lambda self, value: None)


def test_a_wrongly_reused_memory_is_caught():
    body = late_inversion()
    assert _per_execution(body, _NeverOff()) != _per_execution(body, None)


@pytest.mark.parametrize("seed", range(40))
def test_random_programs_report_the_same_per_execution(seed):
    prog = _program(seed)

    def body():
        prog(set())

    assert _per_execution(body, lockdep.Memo()) == _per_execution(body, None)


def test_check_gives_the_same_result_with_its_memory():
    res = explore.check(late_inversion(), strategy="dfs", stop_on_first=False, shrink=False)
    kinds = {f.kind for f in res.failures}
    assert "lockdep" in kinds and res.exhausted
    for f in res.failures:
        assert explore.replay(late_inversion(), f.schedule).failures[0].message == f.message
