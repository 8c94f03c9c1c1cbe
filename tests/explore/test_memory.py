"""memory=True: loads and stores of plain Python data as visible operations."""

from __future__ import annotations

import sys
import threading

import pytest

from kvmlock import explore
from kvmlock.explore import memtrace

from . import threadprogs

TOTAL = 0


def _two(fn):
    threadprogs.run_all(fn, fn)


def _dict_counter(locked: bool):
    """A dict counter, its lock, and a thread function adding one to the counter (under the
    lock when ``locked``); made inside the explored body, where ``threading.Lock`` is
    explored."""
    d = {"n": 0}
    lock = threading.Lock()

    def inc():
        if locked:
            lock.acquire()
        d["n"] += 1
        if locked:
            lock.release()

    return d, lock, inc


@pytest.mark.memory_tracing
def test_lost_update_on_a_dict_item_is_found_and_the_locked_one_is_clean():
    def body(locked):
        def run():
            d, _lock, inc = _dict_counter(locked)
            _two(inc)
            assert d["n"] == 2

        return run

    res = explore.check(body(False), memory=True)
    assert res.failure is not None and res.failure.kind == "assertion"
    assert "store dict[]" in res.failure.trace_table()
    res = explore.check(body(True), memory=True, stop_on_first=False)
    assert res.ok and res.exhausted


@pytest.mark.memory_tracing
def test_lost_update_on_a_global_and_on_a_closure_variable():
    def on_global():
        global TOTAL
        TOTAL = 0

        def inc():
            global TOTAL
            TOTAL += 1

        _two(inc)
        assert TOTAL == 2

    def on_cell():
        n = 0

        def inc():
            nonlocal n
            n += 1

        _two(inc)
        assert n == 2

    for body in (on_global, on_cell):
        res = explore.check(body, memory=True)
        assert res.failure is not None and res.failure.kind == "assertion", body


@pytest.mark.memory_tracing
def test_check_then_act_on_a_list_is_found():
    def body():
        seen: list[int] = []

        def add():
            if 1 not in seen:
                seen.append(1)

        _two(add)
        assert seen == [1], seen

    res = explore.check(body, memory=True)
    assert res.failure is not None and res.failure.kind == "assertion"


@pytest.mark.memory_tracing
def test_reads_commute_so_a_read_mostly_program_stays_one_trace():
    """Three threads reading shared data many times, writing only their own slot: no two of
    their operations conflict, so DPOR runs one execution, not the interleavings."""

    def body():
        config = {"a": 1, "b": 2}
        out = [0, 0, 0]

        def reader(i):
            total = 0
            for _ in range(5):
                total += config["a"] + config["b"]
            out[i] = total  # one write each, to a list only the parent reads afterwards

        ts = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out == [15, 15, 15]

    res = explore.check(body, memory=True, stop_on_first=False)
    assert res.ok and res.exhausted
    # the writes to ``out`` conflict with each other (one container): 3! orders at most
    assert res.runs <= 6 and res.steps > 30


@pytest.mark.memory_tracing
def test_a_value_handed_to_untraced_code_counts_as_written():
    def body():
        items = [3, 1, 2]

        def sorter():
            items.sort()

        def reader():
            assert items[0] in (1, 3)
            assert items == [3, 1, 2] or items == [1, 2, 3], items

        threadprogs.run_all(sorter, reader)

    res = explore.check(body, memory=True, stop_on_first=False)
    assert res.ok and res.runs >= 2  # the sort and the reads were ordered both ways


@pytest.mark.memory_tracing
def test_tracing_is_removed_after_the_exploration():
    before = sys.gettrace()
    explore.check(threadprogs.lost_update(), memory=True)
    assert sys.gettrace() is before


def test_an_unsupported_interpreter_is_refused_with_a_clear_error(monkeypatch):
    monkeypatch.setattr(memtrace, "_checked", "its frame layout is not the one this tracer reads")
    with pytest.raises(memtrace.MemoryTracingUnsupported, match=r"memory=True\) is not supported"):
        explore.check(threadprogs.lost_update(), memory=True)


@pytest.mark.memory_tracing
def test_tracing_resumes_after_a_lock_operation_and_the_scheduler_is_not_traced(monkeypatch):
    """The scheduler runs untraced at every visible operation (a lock, a start, a join), and
    the task's own code is traced again once it goes on: an unlocked update right after a
    locked section is still a lost update, and the same update inside the section is not."""
    called: set[str] = set()
    real = memtrace.Tracer._call

    def spy(self, frame, event, arg):
        called.add(frame.f_code.co_name)
        return real(self, frame, event, arg)

    monkeypatch.setattr(memtrace.Tracer, "_call", spy)

    def body(inside):
        def run():
            box = {"n": 0}
            lock = threading.Lock()

            def inc():
                with lock:
                    if inside:
                        box["n"] += 1
                if not inside:
                    box["n"] += 1

            _two(inc)
            assert box["n"] == 2, box

        return run

    res = explore.check(body(False), memory=True)
    assert res.failure is not None and res.failure.kind == "assertion"
    assert "_pick" not in called and "choose" not in called  # (the scheduler's own calls)
    assert "inc" in called
    ok = explore.check(body(True), memory=True, stop_on_first=False)
    assert ok.ok and ok.exhausted and ok.runs == 2


def _race_after_running_alone(locked: bool):
    """The body runs alone, then in a function entered while alone starts a second thread and
    races with it: tracing, off while one task ran, must cover that function's frame too."""

    def body():
        d, lock, inc = _dict_counter(locked)
        first = threading.Thread(target=lambda: None)
        first.start()
        first.join()  # alone again

        def race():
            t = threading.Thread(target=inc)
            t.start()
            if locked:
                lock.acquire()
            d["n"] += 1  # (in this frame, entered before tracing started)
            if locked:
                lock.release()
            t.join()

        race()
        assert d["n"] == 2, d

    return body


@pytest.mark.memory_tracing
def test_a_race_after_a_phase_alone_is_found_and_its_locked_version_is_clean():
    res = explore.check(_race_after_running_alone(False), memory=True)
    assert res.failure is not None and res.failure.kind == "assertion"
    assert "store dict[]" in res.failure.trace_table()
    ok = explore.check(_race_after_running_alone(True), memory=True, stop_on_first=False)
    assert ok.ok and ok.exhausted and ok.runs == 2  # the two orders of the critical sections


def _read_beside_an_interrupt(seen: set[int], after: bool):
    """An interrupt injected on a task that has ended fires at a moment the exploration
    chooses; the body, which ran alone just before, reads what the handler writes."""
    from kvmlock import irq, spawn

    def body():
        box = {"n": 0}

        def handler():
            box["n"] += 1

        t = spawn(lambda: None)
        t.join()  # alone again until the interrupt is made
        if not after:
            seen.add(box["n"])
        h = irq.inject(handler, cpu=t)
        if after:
            seen.add(box["n"])  # before or after the handler ran: both are explored
        h.join()

    return body


@pytest.mark.memory_tracing
def test_a_read_racing_an_interrupt_is_explored_both_ways_and_one_before_it_once():
    seen: set[int] = set()
    res = explore.check(_read_beside_an_interrupt(seen, after=True), memory=True,
                        stop_on_first=False)
    assert res.ok and res.exhausted and seen == {0, 1}
    seen.clear()
    res = explore.check(_read_beside_an_interrupt(seen, after=False), memory=True,
                        stop_on_first=False)
    assert res.ok and res.exhausted and seen == {0}


# ---------------------------------------------------------------------------- private objects
class Box:
    def __init__(self, v: int = 0) -> None:
        self.v = v


def _outcomes(body_of, memory=True):
    """The set of outcomes under dpor and under exhaustive dfs (they must agree)."""
    got = {}
    for strategy in ("dpor", "dfs"):
        seen: set = set()
        res = explore.check(body_of(seen), strategy=strategy, memory=memory,
                            stop_on_first=False, shrink=False, lockdep=False)
        assert res.exhausted, res
        got[strategy] = seen
    return got


@pytest.mark.memory_tracing
def test_an_object_another_task_reached_and_dropped_is_not_private():
    """The worker publishes a box, writes it, and drops its reference; the reader takes it out
    of the list, so its own frame holds the only reference: its read still races with the
    worker's write, which came before it in one order and after it in the other."""

    def body_of(seen):
        def body():
            slot: list = []
            got = []

            def worker():
                o = Box(0)
                slot.append(o)
                o.v = 1
                del o

            def reader():
                o = slot.pop() if slot else None
                if o is not None:
                    got.append(o.v)

            threadprogs.run_all(worker, reader)
            seen.add(tuple(got))

        return body

    got = _outcomes(body_of)
    assert got["dpor"] == got["dfs"] and {(0,), (1,)} <= got["dpor"]


@pytest.mark.memory_tracing
def test_an_object_reachable_through_a_weak_reference_is_not_private():
    import weakref

    def body_of(seen):
        def body():
            refs: dict = {}
            got = []

            def worker():
                o = Box(0)
                refs["o"] = weakref.ref(o)
                o.v = 1  # only this frame refers to it, but a weak reference reaches it
                refs["keep"] = o

            def reader():
                r = refs.get("o")
                o = r() if r is not None else None
                if o is not None:
                    got.append(o.v)

            threadprogs.run_all(worker, reader)
            seen.add(tuple(got))

        return body

    got = _outcomes(body_of)
    assert got["dpor"] == got["dfs"] and {(0,), (1,)} <= got["dpor"]


class Scratch:
    """A plain object made without an ``__init__`` (while its constructor runs, an object is
    also referred to from the interpreter's own call, so stores there stay visible)."""


@pytest.mark.memory_tracing
def test_a_task_s_own_scratch_objects_are_no_scheduling_points():
    """Each worker counts in an object, a dict and a list of its own, then adds to a shared
    counter under a lock: the scratch accesses cannot race (only the worker's frame refers to
    them), so they add no step and no execution; the shared counter's accesses still do."""

    def body():
        d, _lock, inc = _dict_counter(True)

        def worker():
            b = Scratch()
            b.v = 0
            scratch = {"n": 0}
            items = []
            for _ in range(3):
                b.v += 1
                scratch["n"] += b.v
                items.append(b.v)
            if items and "n" in scratch:
                inc()

        threadprogs.run_all(worker, worker)
        assert d["n"] == 2

    def plain():
        d, _lock, inc = _dict_counter(True)
        threadprogs.run_all(inc, inc)
        assert d["n"] == 2

    res = explore.check(body, memory=True, stop_on_first=False)
    ref = explore.check(plain, memory=True, stop_on_first=False)
    assert res.ok and res.exhausted and ref.ok
    assert (res.runs, res.steps) == (ref.runs, ref.steps)


@pytest.mark.memory_tracing
def test_an_object_another_task_holds_in_a_local_is_not_private():
    """The reader takes the box out of the list and then waits for a lock, holding the box in
    one local only; the writer's frame is the only other holder: its write is not private."""

    def body_of(seen):
        def body():
            slot: list = []
            lock = threading.Lock()
            got = []

            def writer():
                o = Scratch()
                o.v = 0
                slot.append(o)
                lock.acquire()
                o.v = 1
                lock.release()

            def reader():
                o = slot.pop() if slot else None
                with lock:
                    pass
                if o is not None:
                    got.append(o.v)

            threadprogs.run_all(writer, reader)
            seen.add(tuple(got))

        return body

    got = _outcomes(body_of)
    assert got["dpor"] == got["dfs"] and {(0,), (1,)} <= got["dpor"]
