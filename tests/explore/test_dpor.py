"""DPOR explores one execution per Mazurkiewicz trace: never fewer, never more."""

from __future__ import annotations

import random
from math import factorial

import pytest

from kvmlock import explore, spawn
from kvmlock.sync import Atomic64, Mutex, RWLock, RWSemaphore

from .programs import assert_dpor_agrees_with_dfs, counter, disjoint


@pytest.mark.parametrize("n,k", [(2, 2), (2, 3), (3, 2), (3, 3)])
def test_locked_increments_exact_count(n, k):
    log: list[tuple] = []
    res = explore.check(counter(n, k, log), strategy="dpor")
    want = factorial(n * k) // factorial(k) ** n
    assert res.ok and res.exhausted
    assert res.runs == want
    # each execution is a different order of the critical sections, and all orders appear
    assert len(set(log)) == want == len(log)


def test_disjoint_locks_one_execution():
    res = explore.check(disjoint(), strategy="dpor")
    assert res.ok and res.exhausted and res.runs == 1


def test_dfs_explores_more_than_dpor_on_the_same_space():
    dfs = explore.check(counter(2, 2), strategy="dfs")
    dpor = explore.check(counter(2, 2), strategy="dpor")
    assert dfs.exhausted and dpor.exhausted
    assert dfs.runs > dpor.runs == 6


def test_reads_commute():
    def body():
        x = Atomic64(5, name="x")

        def reader():
            for _ in range(3):
                x.load()

        ts = [spawn(reader) for _ in range(3)]
        for t in ts:
            t.join()

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted and res.runs == 1


def test_preemption_bound_is_honoured():
    from .programs import lost_update

    bound0 = explore.check(lost_update(), strategy="dfs", preemption_bound=0)
    assert bound0.ok and bound0.exhausted and bound0.preemption_bound == 0
    bound1 = explore.check(lost_update(), strategy="dfs", preemption_bound=1)
    assert not bound1.ok and bound1.failure.preemptions <= 1
    d0 = explore.check(lost_update(), strategy="dpor", preemption_bound=0)
    assert d0.ok and d0.exhausted
    d1 = explore.check(lost_update(), strategy="dpor", preemption_bound=1)
    assert not d1.ok


def test_max_runs_stops_and_says_not_exhausted():
    res = explore.check(counter(3, 3), strategy="dpor", max_runs=10)
    assert res.runs == 10 and not res.exhausted and res.stopped == "max_runs"


# ---------------------------------------------------------------------------- cross-check
# Random small programs: the set of observable outcomes (final values and every value each
# task read) under DPOR must equal the set under plain exhaustive DFS. DPOR that skipped a
# trace would miss an outcome sooner or later; this is the soundness check.


def _program(seed: int):
    rng = random.Random(seed)
    ntasks = rng.choice([2, 2, 3])
    scripts = []
    for _ in range(ntasks):
        ops = []
        for _ in range(rng.randint(1, 3 if ntasks == 2 else 2)):
            ops.append(rng.choice([
                ("load", rng.randrange(2)), ("store", rng.randrange(2)),
                ("add", rng.randrange(2)), ("cas", rng.randrange(2)),
                ("locked", rng.randrange(2), rng.randrange(2)),
                ("trylock", rng.randrange(2)), ("rread", 0), ("rwrite", 0),
                ("sread", 0), ("swrite", 0), ("nested", 0, 1), ("nested", 1, 0),
            ]))
        scripts.append(ops)

    def body(out: set):
        xs = [Atomic64(0, name=f"x{i}") for i in range(2)]
        ms = [Mutex(f"m{i}") for i in range(2)]
        rw = RWLock("rw")
        sem = RWSemaphore("sem")
        plain = [0, 0]  # one word per lock that protects it
        seen: list[list[int]] = [[] for _ in scripts]

        def task(i: int):
            for n, op in enumerate(scripts[i]):
                v = 10 * i + n + 1
                if op[0] == "load":
                    seen[i].append(xs[op[1]].load())
                elif op[0] == "store":
                    xs[op[1]].store(v)
                elif op[0] == "add":
                    seen[i].append(xs[op[1]].fetch_add(v))
                elif op[0] == "cas":
                    seen[i].append(xs[op[1]].cmpxchg(0, v))
                elif op[0] == "locked":
                    with ms[op[1]]:
                        seen[i].append(xs[op[2]].load())
                        xs[op[2]].store(v)
                elif op[0] == "nested":  # both orders appear: ABBA deadlocks are possible
                    with ms[op[1]]:
                        with ms[op[2]]:
                            seen[i].append(xs[0].fetch_add(1))
                elif op[0] == "trylock":
                    if ms[op[1]].trylock():
                        seen[i].append(-1)
                        ms[op[1]].unlock()
                    else:
                        seen[i].append(-2)
                elif op[0] in ("rread", "sread"):
                    j = op[0] == "sread"
                    with (sem.read() if j else rw.read()):
                        seen[i].append(plain[j])
                else:
                    j = op[0] == "swrite"
                    with (sem.write() if j else rw.write()):
                        plain[j] = v

        ts = [spawn(task, i) for i in range(len(scripts))]
        for t in ts:
            t.join()
        out.add((tuple(x.peek() for x in xs), tuple(plain), tuple(map(tuple, seen))))

    return body


@pytest.mark.parametrize("seed", range(50))
def test_dpor_sees_every_outcome_dfs_sees(seed):
    assert_dpor_agrees_with_dfs(_program(seed))


def test_wakeup_trees_leave_no_run_to_prune():
    """r reads y, and reads x only if y was still 0. Three traces: r sees q's store (x never
    read), or not, with p's store to x before or after r's read of x. Source sets alone run
    a fourth execution that the sleep sets cut short (p's store is asleep at the state where
    it would be needed); following the wakeup sequence avoids it."""
    seen: set = set()

    def body():
        x, y = Atomic64(0, name="x"), Atomic64(0, name="y")
        got = []

        def p():
            x.store(1)

        def q():
            y.store(1)

        def r():
            got.append(y.load())
            if got[0] == 0:
                got.append(x.load())

        ts = [spawn(p), spawn(q), spawn(r)]
        for t in ts:
            t.join()
        seen.add(tuple(got))

    res = explore.check(body, stop_on_first=False)
    assert res.exhausted and res.runs == 3 and res.pruned == 0
    assert seen == {(1,), (0, 0), (0, 1)}


def _readers_and_a_writer(sections: int, seen: set):
    """R takes the rwsem's read side ``sections`` times; W writes a flag under the write side
    once. Each trace is where W's section falls among R's: R's sum of flags tells which."""

    def body():
        s = RWSemaphore("S")
        flag = [0]
        got: list[int] = []

        def w():
            with s.write():
                flag[0] = 1

        def r():
            for _ in range(sections):
                with s.read():
                    got.append(flag[0])

        ts = [spawn(r), spawn(w)]
        for t in ts:
            t.join()
        seen.add(sum(got))

    return body


def test_races_further_back_than_64_accesses_are_all_explored():
    """80 accesses of S by R lie between W's first and last possible places; there is no
    window on how far back a race is looked for, so every one of them is explored."""
    seen: set = set()
    res = explore.check(_readers_and_a_writer(40, seen), stop_on_first=False)
    assert res.ok and res.exhausted
    assert seen == set(range(41))  # W before R's first section, ..., after its last
    # W can also queue for the write side while R is inside a section: 2 * 40 + 1 traces
    assert res.runs == 81
    small: set = set()
    by_dfs: set = set()
    d = explore.check(_readers_and_a_writer(3, small), stop_on_first=False)
    f = explore.check(_readers_and_a_writer(3, by_dfs), strategy="dfs", stop_on_first=False)
    assert d.runs == 7 and small == by_dfs == set(range(4)) and f.exhausted


def _reader_behind_a_long_write_section(tries: int, seen: set):
    """W holds S's write side across ``tries`` failing read_trylocks of its own (reads of S);
    R does two accesses of other objects, then takes S's read side and reads the flag W sets.
    R's read can go before W's section (flag 0) or after it (flag 1)."""

    def body():
        s = RWSemaphore("S")
        xs = [Atomic64(0, name="x0"), Atomic64(0, name="x1")]
        flag = [0]
        got: list[int] = []

        def w():
            with s.write():
                for _ in range(tries):
                    assert not s.read_trylock()
                flag[0] = 1

        def r():
            xs[0].load()
            xs[1].cmpxchg(0, 5)
            with s.read():
                got.append(flag[0])

        ts = [spawn(w), spawn(r)]
        for t in ts:
            t.join()
        seen.add(tuple(got))

    return body


def test_a_wait_races_with_a_write_more_than_64_accesses_back():
    """R's read wait, disabled by W's section, must race with W's write_lock although 70 reads
    of S lie between that write and the write_unlock that let R in: the scan for a wait's
    earlier conflicting writes has no window (one of the last 64 accesses would lose the
    order where R reads first)."""
    by_dfs: set = set()
    small = explore.check(_reader_behind_a_long_write_section(3, by_dfs), strategy="dfs",
                          stop_on_first=False, lockdep=False)
    assert small.exhausted and by_dfs == {(0,), (1,)}
    for tries in (3, 70):
        seen: set = set()
        res = explore.check(_reader_behind_a_long_write_section(tries, seen),
                            stop_on_first=False, lockdep=False)
        assert res.ok and res.exhausted
        assert seen == by_dfs, tries
