"""Sleeping on a wait queue has the kernel's semantics in both worlds: a sleeper runs on only
after a wake-up that came after it got ready to sleep; a wake-up with nobody asleep is lost;
a woken sleeper is not told its condition holds."""

from __future__ import annotations

import random
import threading
import time

import pytest

from kvmlock import explore, runtime, spawn
from kvmlock.sync import Atomic64, Mutex, RCUWait, RWLock, RWSemaphore

from .programs import assert_dpor_agrees_with_dfs


class _Flag:
    """A queue and a flag: the smallest waker/sleeper pair, written with the raw protocol."""

    name = "flag"

    def __init__(self) -> None:
        self.wq = runtime.RT.waitq(self)
        self.value = 0

    def wait_for_value(self, want: int, *, recheck: bool, ticket_first: bool) -> None:
        wq = self.wq
        while True:
            with wq:
                wq.point("prepare_to_wait")
                if ticket_first:
                    ticket = wq.ticket()
                if self.value >= want:
                    return
            if not ticket_first:  # broken: ready to sleep only after the check
                with wq:
                    wq.point("set_current_state")
                    ticket = wq.ticket()
            with wq:
                wq.sleep(ticket, "schedule")
            if not recheck:
                return

    def bump(self, *, wake: bool = True) -> None:
        wq = self.wq
        with wq:
            wq.point("bump")
            self.value += 1
            if wake:
                wq.wake_up()


def _sleeper_and_waker(*, recheck=True, ticket_first=True, wake=True, bumps=1, want=1):
    def body():
        f = _Flag()

        def sleeper():
            f.wait_for_value(want, recheck=recheck, ticket_first=ticket_first)
            assert f.value >= want, f"woke with value {f.value} < {want}"

        def waker():
            for _ in range(bumps):
                f.bump(wake=wake)

        ts = [spawn(sleeper, name="sleeper"), spawn(waker, name="waker")]
        for t in ts:
            t.join()

    return body


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
def test_correct_protocol_never_hangs(strategy):
    res = explore.check(_sleeper_and_waker(bumps=2, want=2), strategy=strategy)
    assert res.ok and res.exhausted, res.failure


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
def test_missing_wake_up_is_a_lost_wake_up(strategy):
    res = explore.check(_sleeper_and_waker(wake=False), strategy=strategy)
    assert res.failure is not None and res.failure.kind == "deadlock"
    assert "a lost wake-up" in res.failure.message
    assert "sleeps in: schedule flag" in res.failure.message
    assert "no wake-up came after it went to sleep" in res.failure.message
    # the trace table shows the sleep
    assert "schedule" in res.failure.trace_table()


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
def test_wake_up_before_the_ticket_is_lost(strategy):
    """Checking the condition before getting ready to sleep: the wake-up can fall between."""
    res = explore.check(_sleeper_and_waker(ticket_first=False), strategy=strategy)
    assert res.failure is not None and res.failure.kind == "deadlock"
    assert "a lost wake-up" in res.failure.message


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
def test_woken_sleeper_without_recheck_runs_with_its_condition_false(strategy):
    # woken by the first of two bumps, it wanted two
    res = explore.check(_sleeper_and_waker(recheck=False, bumps=2, want=2), strategy=strategy)
    assert res.failure is not None and res.failure.kind == "assertion"
    assert "woke with value 1 < 2" in res.failure.message


def test_polling_wait_needs_no_wake_up():
    """wait_for keeps its polling meaning (locks, grace periods): no wake-up is needed."""
    def body():
        f = _Flag()

        def poller():
            with f.wq:
                f.wq.wait_for(lambda: f.value > 0, "poll")

        t = spawn(poller)
        f.bump(wake=False)
        t.join()

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted


# ------------------------------------------------------------ sleeping polls (rw_semaphore)


def _notified_poll(*, notify: bool, sleeps: bool = True):
    """A sleeping poll of the flag, and a bump that notifies the queue or forgets to."""
    def body():
        f = _Flag()

        def poller():
            with f.wq:
                f.wq.wait_for(lambda: f.value > 0, "poll", True, sleeps)

        t = spawn(poller, name="poller")
        with f.wq:
            f.wq.point("bump")
            f.value += 1
            if notify:
                f.wq.notify_all()
        t.join()

    return body


def test_sleeping_poll_needs_the_notify():
    assert explore.check(_notified_poll(notify=True), strategy="dfs").ok
    res = explore.check(_notified_poll(notify=False), strategy="dfs")
    assert res.failure is not None and res.failure.kind == "deadlock"
    assert "task 1 (poller) went on from a sleeping wait" in res.failure.message
    assert "lost wake-up" in res.failure.message
    # a plain poll of the same program needs none
    assert explore.check(_notified_poll(notify=False, sleeps=False), strategy="dfs").ok


class _Forgetful:
    """An rw_semaphore's queue that drops the ``notify_all`` of the release named ``drop``
    (the release's first step names it), as ``up_read`` without ``rwsem_wake`` would."""

    def __init__(self, wq, drop: str | None) -> None:
        self.wq, self.drop, self.last = wq, drop, None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def point(self, kind: str, write: bool = True) -> None:
        self.wq.point(kind, write)
        self.last = kind  # (once it executes: what follows up to the next step is atomic)

    def wait_for(self, *args, **kw) -> None:
        self.wq.wait_for(*args, **kw)
        self.last = None

    def notify_all(self) -> None:
        if self.last != self.drop:
            self.wq.notify_all()


def _rwsem_users(drop: str | None, *, cls=RWSemaphore, writers: int = 1, readers: int = 1):
    """Readers and writers of one lock, each taking it once."""
    def body():
        sem = cls("sem")
        sem._wq = _Forgetful(sem._wq, drop)

        def reader():
            sem.read_lock()
            sem.read_unlock()

        def writer():
            sem.write_lock()
            sem.write_unlock()

        ts = [spawn(reader, name=f"reader{i}") for i in range(readers)]
        ts += [spawn(writer, name=f"writer{i}") for i in range(writers)]
        for t in ts:
            t.join()

    return body


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
def test_rwsem_up_read_without_wake_up_is_a_lost_wake_up(strategy):
    res = explore.check(_rwsem_users("up_read"), strategy=strategy)
    assert res.failure is not None and res.failure.kind == "deadlock", res.failure
    msg = res.failure.message
    assert "(writer0) went on from a sleeping wait" in msg and "lost wake-up" in msg
    assert "sleeps in: down_write:wait sem (<RWSemaphore sem" in msg


def _behind_a_writer(drop: str | None, waiter: str):
    """A writer holds the lock while it starts a task that wants it too, then lets go."""
    def body():
        sem = RWSemaphore("sem")
        sem._wq = _Forgetful(sem._wq, drop)

        def waiting():
            if waiter == "reader":
                sem.read_lock()
                sem.read_unlock()
            else:
                sem.write_lock()
                sem.write_unlock()

        sem.write_lock()
        t = spawn(waiting, name=waiter)
        sem.write_unlock()
        t.join()

    return body


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
@pytest.mark.parametrize("waiter", ["reader", "writer"])
def test_rwsem_up_write_without_wake_up_is_a_lost_wake_up(strategy, waiter):
    assert explore.check(_behind_a_writer(None, waiter), strategy=strategy).ok
    res = explore.check(_behind_a_writer("up_write", waiter), strategy=strategy)
    assert res.failure is not None and res.failure.kind == "deadlock", res.failure
    msg = res.failure.message
    assert f"({waiter}) went on from a sleeping wait" in msg and "lost wake-up" in msg
    assert f"sleeps in: down_{'read' if waiter == 'reader' else 'write:wait'} sem" in msg


class _PollingRWSemaphore(RWSemaphore):
    """The same lock with waits that poll: what the explorer explored before sleeping polls."""

    SLEEPS = False
    __slots__ = ()


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
def test_rwsem_that_wakes_passes_with_the_same_schedules(strategy):
    for users in ({"readers": 2}, {"readers": 1, "writers": 2}):
        res = explore.check(_rwsem_users(None, **users), strategy=strategy)
        assert res.ok and res.exhausted, res.failure
        polling = explore.check(_rwsem_users(None, cls=_PollingRWSemaphore, **users),
                                strategy=strategy)
        assert (res.runs, res.steps) == (polling.runs, polling.steps)


def test_rwlock_t_spins_and_needs_no_wake_up():
    """rwlock_t waiters spin: a release that notifies nobody leaves no sleeper behind."""
    for drop in ("read_unlock", "write_unlock"):
        assert explore.check(_rwsem_users(drop, cls=RWLock), strategy="dfs").ok


# --------------------------------------------------------------------- rcuwait, open-coded


def _open_coded(recheck: bool):
    """kvm_swap_active_memslots' shape: count read under a lock, dropped to sleep."""
    def body():
        lock = Mutex("count_lock")
        w = RCUWait("updater")
        count = [0]
        swapped_while_active = []

        def invalidator():
            for _ in range(2):
                with lock:
                    count[0] += 1
                with lock:
                    count[0] -= 1
                    zero = count[0] == 0
                if zero:
                    w.wake_up()

        def updater():
            lock.lock()
            w.prepare()
            while count[0]:
                state = w.set_current_state()
                lock.unlock()
                w.schedule(state)
                lock.lock()
                if not recheck:
                    break
            w.finish()
            swapped_while_active.append(count[0])
            lock.unlock()

        ts = [spawn(invalidator), spawn(updater)]
        for t in ts:
            t.join()
        assert swapped_while_active == [0], f"swapped with {swapped_while_active[0]} active"

    return body


def test_open_coded_rcuwait_loop_passes_and_its_if_variant_fails():
    ok = explore.check(_open_coded(True), strategy="dpor")
    assert ok.ok and ok.exhausted
    bad = explore.check(_open_coded(False), strategy="dpor")
    assert bad.failure is not None and "swapped with 1 active" in bad.failure.message


# --------------------------------------------------------------------- real threads

SHORT = 0.05


def test_threads_sleep_returns_after_a_later_wake_up_only():
    class Owner:
        name = "q"

    wq = runtime.THREADS.waitq(Owner())
    with wq:
        wq.wake_up()  # nobody asleep: lost
        ticket = wq.ticket()
    woke = threading.Event()

    def sleeper():
        with wq:
            wq.sleep(ticket, "schedule")
        woke.set()

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    time.sleep(SHORT)
    assert not woke.is_set()  # the earlier wake-up does not count
    with wq:
        wq.notify_all()  # a polling waiter's nudge is no wake-up
    time.sleep(SHORT)
    assert not woke.is_set()
    with wq:
        wq.wake_up()
    t.join(5)
    assert woke.is_set()


def test_threads_wake_up_between_ticket_and_sleep_is_not_lost():
    class Owner:
        name = "q"

    wq = runtime.THREADS.waitq(Owner())
    with wq:
        ticket = wq.ticket()
    with wq:
        wq.wake_up()

    def sleeper():
        with wq:
            wq.sleep(ticket, "schedule")  # returns at once

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the wake-up after the ticket was lost"


def test_threads_rcuwait_schedule_does_not_recheck():
    w = RCUWait("w")
    w.prepare()
    state = w.set_current_state()
    w.wake_up()
    t = threading.Thread(target=w.schedule, args=(state,), daemon=True)
    t.start()
    t.join(5)  # woken: returns although nothing changed
    assert not t.is_alive(), "the wake-up after set_current_state was lost"
    w.finish()
    assert not w.has_sleeper()


# --------------------------------------------------------------------- DPOR vs DFS


def _program(seed: int):
    """Random tasks over two atomics and a queue whose sleepers wait for a counter."""
    rng = random.Random(seed)
    scripts = []
    for _ in range(rng.choice([2, 2, 3])):
        scripts.append([rng.choice([("load", rng.randrange(2)), ("store", rng.randrange(2)),
                                    ("bump", rng.random() < 0.8), ("wait", rng.randint(1, 2)),
                                    ("waitif", 1)])
                        for _ in range(rng.randint(1, 3))])

    def body(out: set):
        xs = [Atomic64(0, name=f"x{i}") for i in range(2)]
        f = _Flag()
        seen: list[list[int]] = [[] for _ in scripts]

        def task(i: int):
            for n, op in enumerate(scripts[i]):
                if op[0] == "load":
                    seen[i].append(xs[op[1]].load())
                elif op[0] == "store":
                    xs[op[1]].store(10 * i + n + 1)
                elif op[0] == "bump":
                    f.bump(wake=op[1])
                else:
                    f.wait_for_value(op[1], recheck=op[0] == "wait", ticket_first=True)
                    seen[i].append(f.value)

        ts = [spawn(task, i) for i in range(len(scripts))]
        for t in ts:
            t.join()
        out.add((tuple(x.peek() for x in xs), f.value, tuple(map(tuple, seen))))

    return body


@pytest.mark.parametrize("seed", range(40))
def test_dpor_sees_every_outcome_dfs_sees_with_sleeps(seed):
    assert_dpor_agrees_with_dfs(_program(seed))


def test_threads_open_coded_rcuwait_loop_under_contention():
    """The memslot swap's loop on real threads: it never goes on with an invalidation active,
    and no wake-up is lost (every round ends)."""
    lock = Mutex("t.count_lock")
    w = RCUWait("t.updater")
    count = [0]
    bad: list[int] = []
    rounds = 300

    def invalidator():
        for _ in range(rounds):
            with lock:
                count[0] += 1
            with lock:
                count[0] -= 1
                zero = count[0] == 0
            if zero:
                w.wake_up()

    def updater():
        for _ in range(rounds):
            lock.lock()
            w.prepare()
            while count[0]:
                state = w.set_current_state()
                lock.unlock()
                w.schedule(state)
                lock.lock()
            w.finish()
            if count[0]:
                bad.append(count[0])
            lock.unlock()

    ts = [threading.Thread(target=f, daemon=True) for f in (invalidator, invalidator, updater)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not any(t.is_alive() for t in ts), "a wake-up was lost: a thread still sleeps"
    assert bad == []


# --------------------------------------------------------------------- a condition's own reads


class _Kicked:
    """A sleeper waits for ``kicks``, a plain field; the waker changes it as a visible step."""

    def __init__(self) -> None:
        self.kicks = 0
        self.w = RCUWait("kicked")


def _late_kick(*, declared: bool, wake_first: bool):
    def body() -> None:
        s = _Kicked()

        def sleeper() -> None:
            s.w.wait(lambda: s.kicks > 0, reads=s if declared else None)

        def waker() -> None:
            if wake_first:
                s.w.wake_up()  # broken: the sleeper may re-check before the kick
            runtime.active().point(s, "kick", True)
            s.kicks += 1
            if not wake_first:
                s.w.wake_up()

        ts = [spawn(sleeper, name="sleeper"), spawn(waker, name="waker")]
        for t in ts:
            t.join()

    return body


def test_a_declared_condition_read_lets_dpor_find_a_wake_up_before_the_change():
    res = explore.check(_late_kick(declared=True, wake_first=True), strategy="dpor")
    assert res.failure is not None and res.failure.kind == "deadlock", res.headline()
    assert explore.check(_late_kick(declared=True, wake_first=False), strategy="dpor").ok


def test_an_undeclared_condition_read_is_invisible_to_dpor_but_not_to_dfs():
    # why ``reads=`` exists: the check's read of the plain field is no visible step, so DPOR
    # takes the kick as independent of it and never moves the check in between
    assert explore.check(_late_kick(declared=False, wake_first=True), strategy="dpor").ok
    res = explore.check(_late_kick(declared=False, wake_first=True), strategy="dfs")
    assert res.failure is not None and res.failure.kind == "deadlock"
