"""The strategy interface: frozen records in, a task id out, each executed step told."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from kvmlock import explore, spawn
from kvmlock.explore import Pending, Plan, Strategy
from kvmlock.sync import Atomic64, Mutex

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "custom_strategy.py"


def _example():
    spec = importlib.util.spec_from_file_location("custom_strategy", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_strategy_of_ones_own_finds_the_lost_update_and_its_schedule_replays():
    ex = _example()
    res = explore.check(ex.lost_update, ex.TakeTurns(3))
    assert not res.ok and res.failure.kind == "assertion" and res.strategy == "take-turns"
    again = explore.replay(ex.lost_update, res.failure.schedule)
    assert again.failure is not None and again.failure.kind == "assertion"


def test_the_same_strategy_passes_a_locked_counter_and_claims_no_exhaustion():
    ex = _example()

    def locked():
        m = Mutex("m")
        c = [0]

        def inc():
            for _ in range(2):
                with m:
                    c[0] += 1

        ts = [spawn(inc), spawn(inc)]
        for t in ts:
            t.join()
        assert c[0] == 4

    res = explore.check(locked, ex.TakeTurns(3))
    assert res.ok and res.runs == 3  # one execution per quantum
    assert not res.exhausted and res.stopped == "done"  # sampling proves nothing


class _Highest(Strategy):
    """One execution; always the newest runnable task. Keeps what it was shown."""

    name = "highest"

    def __init__(self) -> None:
        self.done = False
        self.shown: list[tuple] = []
        self.told: list[tuple] = []
        self.ended = None

    def begin(self) -> Plan | None:
        if self.done:
            return None
        self.done = True
        return Plan()

    def choose(self, step, current, enabled, blocked):
        self.shown.append((step, current, enabled, blocked))
        return enabled[-1].tid

    def executed(self, step, op, acquired, child):
        self.told.append((step, op, acquired, child))

    def end(self, run):
        self.ended = run


def _trylock_body():
    m = Mutex("m")
    x = Atomic64(0, name="x")

    def child():
        if m.trylock():  # main holds m here: fails
            m.unlock()
        x.store(1)

    with m:
        t = spawn(child)
        x.load()
    t.join()
    if m.trylock():  # free now: succeeds
        m.unlock()


def test_a_strategy_sees_frozen_records_and_is_told_each_step():
    s = _Highest()
    res = explore.check(_trylock_body, s)
    assert res.ok and res.runs == 1
    for _step, current, enabled, blocked in s.shown:
        assert isinstance(enabled, tuple) and isinstance(blocked, tuple)
        assert all(isinstance(op, Pending) for op in enabled + blocked + (current,))
    op = s.shown[0][2][0]
    with pytest.raises(AttributeError):
        op.tid = 5  # frozen
    # every step was chosen by the strategy (no prefix), and each was told once, in order
    assert [t[0] for t in s.told] == list(range(len(s.ended.schedule)))
    assert [t[1].tid for t in s.told] == list(s.ended.schedule)
    spawns = [(op.kind, child) for _, op, _, child in s.told if op.kind == "spawn"]
    assert spawns == [("spawn", 1)]
    tries = [acquired for _, op, acquired, _ in s.told if op.kind == "trylock"]
    assert tries == [False, True]  # the child's, under main's hold; main's own, later
    locks = [acquired for _, op, acquired, _ in s.told if op.kind == "lock"]
    assert locks == [True]
    assert s.ended.outcome is None and s.ended.pending == ()


def test_an_answer_that_cannot_run_is_a_clear_error_and_none_prunes():
    class Wrong(_Highest):
        def choose(self, step, current, enabled, blocked):
            return 7

    with pytest.raises(ValueError, match="strategy highest chose task 7 at step 0, which "
                                         "cannot run there"):
        explore.check(_trylock_body, Wrong())

    class GivesUp(_Highest):
        exhaustive = True

        def choose(self, step, current, enabled, blocked):
            return None if step == 3 else enabled[0].tid

    res = explore.check(_trylock_body, GivesUp())
    assert res.runs == 0 and res.pruned == 1 and res.exhausted


def test_strategy_objects_are_checked_for_settings_they_do_not_take():
    with pytest.raises(ValueError, match="not a strategy object"):
        explore.check(_trylock_body, _Highest(), workers=2)
    with pytest.raises(ValueError, match="preemption_bound"):
        explore.check(_trylock_body, _Highest(), preemption_bound=1)
    with pytest.raises(ValueError, match="or pass a kvmlock.explore.Strategy"):
        explore.check(_trylock_body, "bfs")


class _Recorder(Strategy):
    """Runs the tasks in order and keeps every pending record it is shown."""

    name = "recorder"
    exhaustive = False

    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.seen: list[list[Pending]] = []

    def begin(self):
        if self.runs == 0:
            return None
        self.runs -= 1
        self.seen.append([])
        return Plan()

    def choose(self, step, current, enabled, blocked):
        self.seen[-1].extend(enabled + blocked)
        return enabled[0].tid


def test_a_wait_queue_s_records_are_those_of_its_fields_and_shared_between_executions():
    from kvmlock import runtime
    from kvmlock.explore.records import ACQ_NONE, ACQ_WAIT, pending

    def body():
        a = Atomic64(0, name="shared word")
        wq = runtime.active().waitq(a)

        def reader():
            wq.point("peek", 1)  # a write given as 1: the record of True, as pending() has it
            wq.point("peek", False)
            wq.wait_for(lambda: True, "peek", False)

        t = spawn(reader)
        a.store(a.load() + 1)
        wq.point("peek", False)
        t.join()

    rec = _Recorder(2)
    explore.check(body, rec, max_runs=2)
    first, second = rec.seen
    assert first == second and all(x is y for x, y in zip(first, second, strict=True))
    peeks = list(dict.fromkeys(p for p in first if p.kind == "peek"))
    k = peeks[0].obj
    assert sorted(peeks) == sorted([
        pending(1, k, "peek", True, "shared word", ACQ_NONE, False),
        pending(1, k, "peek", False, "shared word", ACQ_NONE, False),
        pending(1, k, "peek", False, "shared word", ACQ_WAIT, True),
        pending(0, k, "peek", False, "shared word", ACQ_NONE, False)])
