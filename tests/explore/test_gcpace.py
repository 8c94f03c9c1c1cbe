"""The collector's pace during executions: raised while one runs, the program's own after, and
what the body built is garbage once its execution is over (see explore/gcpace.py)."""

from __future__ import annotations

import gc
import threading
import weakref

from kvmlock import explore, spawn
from kvmlock.explore import gcpace
from kvmlock.explore.engine import execute
from kvmlock.explore.strategies.dpor import DPOR
from kvmlock.sync import Mutex


class Node:
    """Part of a model: it names its lock, and the lock's owner is itself (a cycle)."""

    def __init__(self) -> None:
        self.lock = Mutex("gcpace_node")
        self.me = self


def test_threshold_raised_during_an_execution_and_restored_after() -> None:
    before = gc.get_threshold()
    seen = []

    def body() -> None:
        seen.append(gc.get_threshold()[0])
        m = Mutex("gcpace_lock")
        t = spawn(lambda: m.lock() or m.unlock())
        with m:
            pass
        t.join()

    res = explore.check(body, shrink=False)
    assert res.ok and res.exhausted
    assert seen and all(s == gcpace.THRESHOLD for s in seen)
    assert gc.get_threshold() == before


def test_a_program_that_set_its_own_pace_gets_it_back() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(500_000, 5, 5)  # higher than ours: left as it is
        seen = []
        explore.check(lambda: seen.append(gc.get_threshold()), shrink=False)
        assert seen == [(500_000, 5, 5)]
        assert gc.get_threshold() == (500_000, 5, 5)
        gc.set_threshold(0)  # the program switched automatic collection off: so it stays
        explore.check(lambda: seen.append(gc.get_threshold()[0]), shrink=False)
        assert seen[-1] == 0 and gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)


def test_concurrent_explorations_restore_the_pace_once_all_are_done() -> None:
    before = gc.get_threshold()
    go = threading.Barrier(3)
    seen: list[int] = []

    def body() -> None:
        seen.append(gc.get_threshold()[0])
        m = Mutex("gcpace_concurrent")
        ts = [spawn(lambda: m.lock() or m.unlock()) for _ in range(3)]
        for t in ts:
            t.join()

    def explore_in_thread() -> None:
        go.wait()
        assert explore.check(body, shrink=False).runs == 6

    ths = [threading.Thread(target=explore_in_thread) for _ in range(3)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert len(seen) == 18 and set(seen) == {gcpace.THRESHOLD}
    assert gc.get_threshold() == before


def test_the_body_objects_are_garbage_once_the_execution_is_over() -> None:
    refs: list[weakref.ref] = []

    def body() -> None:
        n = Node()
        refs.append(weakref.ref(n))

        def worker() -> None:
            with n.lock:
                pass

        t = spawn(worker)
        with n.lock:
            pass
        t.join()

    ex = execute(body, DPOR(), 1000)
    assert ex is not None and ex.kind is None and ex.steps > 0
    gc.collect()
    assert refs and refs[0]() is None  # the Execution kept nothing of the model alive
    assert [t.name for t in ex.rt.tasks] == ["main", "worker"]  # what it is read for stays


def test_a_failing_execution_keeps_its_exception() -> None:
    def body() -> None:
        n = Node()
        assert n.me is None, "the invariant"

    ex = execute(body, DPOR(), 1000)
    assert ex is not None and ex.kind == "assertion"
    assert "the invariant" in str(ex.exc)


def test_settled_leaves_what_lives_out_of_passes_and_takes_it_back() -> None:
    class Old:
        pass

    old = Old()
    old.me = old  # a cycle alive before the block
    dead = Old()
    dead.me = dead
    dead_ref = weakref.ref(dead)
    del dead  # garbage before the block: collected first, not kept frozen
    assert gc.get_freeze_count() <= gcpace._FROZEN_AT_START  # (3.12 starts with some)
    with gcpace.settled():
        assert dead_ref() is None
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert not any(o is old for o in gc.get_objects())  # out of every generation
        young = Old()
        young.me = young
        assert any(o is young for o in gc.get_objects())  # made inside: collected as usual
    assert gc.get_freeze_count() == 0
    assert any(o is old for o in gc.get_objects())  # back in the oldest generation


def test_settled_leaves_a_program_s_own_freeze_and_a_switched_off_collector_alone() -> None:
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        with gcpace.settled():
            assert gc.get_freeze_count() == mine
        assert gc.get_freeze_count() == mine  # not thawed by us
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        with gcpace.settled():
            assert gc.get_freeze_count() <= gcpace._FROZEN_AT_START
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_verify_runs_settled_and_thaws_after() -> None:
    from kvmlock.scenarios import verify

    seen = []
    real = gcpace.settled

    def spy():  # type: ignore[no-untyped-def]
        cm = real()

        class Watch:
            def __enter__(self) -> None:
                cm.__enter__()
                seen.append(gc.get_freeze_count())

            def __exit__(self, *exc: object) -> None:
                cm.__exit__(*exc)

        return Watch()

    gcpace.settled = spy
    try:
        assert verify.main(["--list"]) == 0
    finally:
        gcpace.settled = real
    assert seen and seen[0] > 0
    assert gc.get_freeze_count() <= gcpace._FROZEN_AT_START  # (3.12: its immortal objects)


def test_objects_frozen_when_the_interpreter_started_do_not_stop_the_block(monkeypatch) -> None:
    """CPython 3.12 keeps some of its own objects in the permanent generation: as many as
    were counted at import are not a program's own freeze, so the block still freezes and
    thaws (seen failing with the count compared against zero)."""
    gc.freeze()  # (as the interpreter did before kvmlock was imported)
    try:
        at_start = gc.get_freeze_count()
        assert at_start > 0
        monkeypatch.setattr(gcpace, "_FROZEN_AT_START", at_start)
        with gcpace.settled():
            assert gc.get_freeze_count() > at_start  # the block froze what lives now
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
