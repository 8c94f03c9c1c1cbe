"""Small concurrent programs the explorer tests share (each a body factory)."""

from __future__ import annotations

from kvmlock import explore, spawn
from kvmlock.sync import Atomic64, Mutex, RWLock, RWSemaphore


def abba(same_order: bool = False):
    def body():
        a, b = Mutex("a"), Mutex("b")

        def t1():
            with a:
                with b:
                    pass

        def t2():
            first, second = (a, b) if same_order else (b, a)
            with first:
                with second:
                    pass

        ts = [spawn(t1), spawn(t2)]
        for t in ts:
            t.join()

    return body


def counter(n: int, k: int, log: list | None = None):
    """N tasks each doing K increments of one counter under one mutex."""

    def body():
        m = Mutex("counter_lock")
        c = [0]
        order: list[int] = []

        def worker(i: int):
            for _ in range(k):
                with m:
                    c[0] += 1
                    order.append(i)

        ts = [spawn(worker, i) for i in range(n)]
        for t in ts:
            t.join()
        assert c[0] == n * k
        if log is not None:
            log.append(tuple(order))

    return body


def disjoint():
    def body():
        a, b = Mutex("a"), Mutex("b")

        def t(m):
            with m:
                pass

        ts = [spawn(t, a), spawn(t, b)]
        for h in ts:
            h.join()

    return body


def lost_update(fix: str | None = None):
    """Two increments of an atomic: racy load/store, or fixed with cmpxchg retry or a lock."""

    def body():
        x = Atomic64(0, name="x")
        m = Mutex("x_lock")

        def inc():
            if fix == "cmpxchg":
                while True:
                    v = x.load()
                    if x.cmpxchg(v, v + 1) == v:
                        break
            elif fix == "lock":
                with m:
                    v = x.load()
                    x.store(v + 1)
            else:
                v = x.load()
                x.store(v + 1)

        ts = [spawn(inc), spawn(inc)]
        for t in ts:
            t.join()
        assert x.peek() == 2, f"lost update: x = {x.peek()}"

    return body


def rwsem_fairness(recursive: bool):
    """A reads S then wants X; B wants to write S; C holds X and wants to read S.

    With an rw_semaphore the queued writer B shuts C out while A waits for C: a deadlock.
    With a recursive-read rwlock_t, C's read gets in past the waiting writer.
    """

    def body():
        s = RWLock("S") if recursive else RWSemaphore("S")
        x = Mutex("X")
        rd = s.read
        wr = s.write

        def a():
            with rd():
                with x:
                    pass

        def b():
            with wr():
                pass

        def c():
            with x:
                with rd():
                    pass

        ts = [spawn(a), spawn(b), spawn(c)]
        for t in ts:
            t.join()

    return body


def spin_until_set(waiter_first: bool):
    """One task spins reading a flag until the other sets it."""

    def body():
        flag = Atomic64(0, name="flag")

        def waiter():
            while not flag.load():
                pass

        def setter():
            flag.store(1)

        order = (waiter, setter) if waiter_first else (setter, waiter)
        ts = [spawn(f) for f in order]
        for t in ts:
            t.join()

    return body


def reread_then_store(seen: set, loads: int = 2):
    """A writer that loads one atomic ``loads`` times from the same line (no write between,
    not a spin wait: a bounded loop) and then stores it, beside a reader of it; ``seen``
    collects the reader's values, so both 0 and 1 must turn up."""

    def body():
        x = Atomic64(0, name="x")

        def reader():
            seen.add(x.load())

        def writer():
            for _ in range(loads):
                x.load()
            x.store(1)

        ts = [spawn(reader), spawn(writer)]
        for t in ts:
            t.join()

    return body


def assert_dpor_agrees_with_dfs(prog) -> None:
    """``prog(out)`` adds each execution's outcome to ``out``: the outcomes (and kinds of
    failure) under DPOR must be those under plain exhaustive DFS -- DPOR that skipped a trace
    would miss one sooner or later; this is the soundness check."""
    by_dfs: set = set()
    by_dpor: set = set()
    opts = {"lockdep": False, "stop_on_first": False, "shrink": False}
    dfs = explore.check(lambda: prog(by_dfs), strategy="dfs", max_runs=3000, **opts)
    dpor = explore.check(lambda: prog(by_dpor), strategy="dpor", **opts)
    assert dpor.exhausted
    assert by_dfs <= by_dpor  # even a partial dfs only finds outcomes dpor found
    assert dfs.kinds() <= dpor.kinds()  # ... and only kinds of failure dpor found
    if dfs.exhausted:
        assert by_dpor == by_dfs
        assert dpor.kinds() == dfs.kinds()
        assert dpor.runs <= dfs.runs
