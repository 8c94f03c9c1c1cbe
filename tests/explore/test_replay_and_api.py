"""Schedules replay exactly, shrinking keeps failures failing, and bad input says what is wrong."""

from __future__ import annotations

import io

import pytest

from kvmlock import explore, runtime, spawn
from kvmlock.explore.progress import Progress
from kvmlock.explore.schedule import blocks, decode, encode
from kvmlock.sync import Atomic64, Mutex

from .programs import abba, counter, lost_update, rwsem_fairness


def test_schedule_round_trip():
    for choices in ([], [0], [0, 0, 0, 1, 2, 2, 0], [3] * 10 + [1]):
        assert decode(encode(choices)) == choices
    assert encode([0, 0, 0, 1, 2, 2]) == "0x3 1 2x2"
    assert blocks([0, 0, 1, 0]) == [(0, 2), (1, 1), (0, 1)]


@pytest.mark.parametrize("bad", ["0x", "a", "1y2", "0x0", "-1"])
def test_bad_schedule_strings_name_the_token(bad):
    with pytest.raises(ValueError, match="schedule"):
        decode(bad)


def test_bad_schedule_types():
    with pytest.raises(TypeError):
        decode(3.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decode([0, -1])


@pytest.mark.parametrize("prog,kw", [
    (abba(), {"lockdep": False}),
    (abba(), {}),
    (lost_update(), {}),
    (rwsem_fairness(False), {"lockdep": False}),
])
@pytest.mark.parametrize("strategy", ["dfs", "dpor", "pct", "random"])
def test_every_reported_failure_replays(prog, kw, strategy):
    res = explore.check(prog, strategy=strategy, stop_on_first=False, max_runs=300, seed=3,
                        **kw)
    assert res.failures, f"{strategy} found nothing"
    for f in res.failures:
        for _ in range(3):
            again = explore.replay(prog, f.schedule, **kw)
            assert again.failure is not None
            assert again.failure.kind == f.kind
            assert again.failure.schedule == f.schedule


def test_shrinking_never_returns_a_passing_schedule_and_never_grows():
    for seed in range(8):
        res = explore.check(lost_update(), strategy="random", seed=seed, max_runs=200)
        f = res.failure
        assert f is not None
        pre0, steps0 = f.shrunk_from
        assert (f.preemptions, f.steps) <= (pre0, steps0)
        assert explore.replay(lost_update(), f.schedule).failure.kind == "assertion"


def test_shrinking_reduces_a_random_walks_preemptions():
    body = counter(3, 2)

    def broken():
        x = Atomic64(0, name="x")
        m = Mutex("m")

        def inc():
            with m:
                pass
            v = x.load()
            x.store(v + 1)

        ts = [spawn(inc) for _ in range(3)]
        for t in ts:
            t.join()
        assert x.peek() == 3

    del body
    raw = explore.check(broken, strategy="random", seed=11, max_runs=300, shrink=False)
    shrunk = explore.check(broken, strategy="random", seed=11, max_runs=300)
    assert raw.failure and shrunk.failure
    assert shrunk.failure.preemptions <= raw.failure.preemptions
    assert shrunk.failure.preemptions == 1  # a lost update needs exactly one preemption


def test_replay_of_a_prefix_continues_without_preemption():
    res = explore.replay(lost_update(), "0x2")
    assert res.ok and res.runs == 1


def test_replay_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot run here"):
        explore.replay(lost_update(), "0 5")


def test_trace_table_has_a_column_per_task_and_user_lines():
    res = explore.check(abba(), strategy="dpor", lockdep=False)
    table = res.failure.trace_table()
    for col in ("CPU0 (main)", "CPU1 (t1)", "CPU2 (t2)"):
        assert col in table
    assert "with a:" in table and "with first:" in table and "with b:" in table
    assert "programs.py:" in table
    assert "blocked: lock" in table
    text = str(res)
    assert "deadlock" in text and res.failure.schedule in text and "CPU1" in text


def test_result_headline_reports_coverage():
    res = explore.check(counter(2, 2), strategy="dpor")
    line = res.headline()
    assert "6 runs" in line and "exhausted" in line and "ok" in line
    bounded = explore.check(counter(2, 2), strategy="dfs", preemption_bound=0)
    assert "within preemption bound 0" in bounded.headline()


@pytest.mark.parametrize("kw,err", [
    ({"strategy": "bfs"}, ValueError),
    ({"max_runs": 0}, ValueError),
    ({"max_steps": -1}, ValueError),
    ({"preemption_bound": -1}, ValueError),
    ({"timeout": 0}, ValueError),
    ({"depth": 0, "strategy": "pct"}, ValueError),
    ({"seed": "x"}, ValueError),
    ({"strategy": "random", "preemption_bound": 1}, ValueError),
])
def test_bad_options_are_rejected_with_a_message(kw, err):
    with pytest.raises(err) as info:
        explore.check(counter(1, 1), **kw)
    assert str(info.value)


def test_body_must_be_callable():
    with pytest.raises(TypeError, match="callable"):
        explore.check(42)  # type: ignore[arg-type]


def test_check_inside_an_execution_is_refused():
    def body():
        explore.check(counter(1, 1))

    res = explore.check(body, strategy="dfs")
    assert res.failure.kind == "exception"
    assert "inside an explored execution" in res.failure.message


def test_runtime_restored_after_check_and_after_failure():
    before = runtime.RT
    explore.check(counter(2, 1))
    explore.check(abba(), lockdep=False)
    assert runtime.RT is before


def test_sampling_is_reproducible_from_the_seed():
    for strategy in ("pct", "random"):
        a = explore.check(lost_update(), strategy=strategy, seed=5, max_runs=100, shrink=False)
        b = explore.check(lost_update(), strategy=strategy, seed=5, max_runs=100, shrink=False)
        assert a.failure.schedule == b.failure.schedule
        assert a.runs == b.runs


def test_sampling_never_claims_exhaustion():
    res = explore.check(counter(2, 1), strategy="pct", max_runs=20)
    assert res.ok and not res.exhausted and res.runs == 20 and res.stopped == "max_runs"


def test_timeout_stops_an_exhaustive_search():
    res = explore.check(counter(3, 3), strategy="dfs", timeout=0.05)
    assert not res.exhausted and res.stopped == "timeout"


def test_yield_point_is_free_outside_and_visible_inside():
    explore.yield_point("outside")  # no runtime: nothing happens

    def body():
        shared = {"v": 0}

        def inc():
            explore.yield_point("read v", shared, write=False)
            v = shared["v"]
            explore.yield_point("write v", shared)
            shared["v"] = v + 1

        ts = [spawn(inc), spawn(inc)]
        for t in ts:
            t.join()
        assert shared["v"] == 2

    res = explore.check(body, strategy="dpor")
    assert res.failure is not None and res.failure.kind == "assertion"


def test_progress_is_silent_off_a_terminal_and_shows_on_one():
    quiet = io.StringIO()
    p = Progress("x", stream=quiet)
    p.t0 -= 5
    p.last -= 5
    p.tick(10, 10)
    p.close()
    assert quiet.getvalue() == ""

    loud = io.StringIO()
    p = Progress("explore[dpor]", enabled=True, stream=loud)
    p.t0 -= 5
    p.last -= 5
    p.tick(100, 90)
    assert "100 runs" in loud.getvalue() and "90 distinct" in loud.getvalue()
    p.close()


def test_exhaustive_check_reports_progress_nothing_when_captured(capsys):
    explore.check(counter(2, 2), strategy="dfs")
    assert capsys.readouterr().err == ""


def test_trace_of_a_runaway_execution_is_cut_in_the_middle():
    def body():
        x = Atomic64(0, name="x")

        def runaway():
            while True:
                x.fetch_add(1)

        spawn(runaway).join()

    res = explore.check(body, strategy="dfs", max_steps=1000)
    table = res.failure.trace_table()
    assert "steps not shown" in table
    assert table.count("fetch_add x") < 300


def test_trace_table_folds_the_setup_before_the_first_spawn():
    def body():
        x = Atomic64(0, name="x")
        for _ in range(5):
            x.fetch_add(1)  # setup: only main exists, nothing can interleave yet

        def bump():
            v = x.load()
            x.store(v + 1)

        ts = [spawn(bump), spawn(bump)]
        for t in ts:
            t.join()
        assert x.peek() == 7

    res = explore.check(body, strategy="dpor", lockdep=False)
    folded = res.failure.trace_table()
    assert "0-4" in folded and "(5 setup" in folded  # one row stands for steps 0..4
    assert "fetch_add x" not in folded and "load x" in folded
    full = res.failure.trace_table(setup=True)
    assert full.count("fetch_add x") == 5 and "(5 setup" not in full


def test_parked_tasks_are_unwound_and_nothing_of_an_execution_lingers():
    """Task greenlets are pooled across executions: a deadlocked execution's tasks still run
    their ``finally`` blocks, and once check() returns no execution's objects stay alive."""
    import gc
    import weakref

    unwound: list[str] = []
    made: list[weakref.ref] = []

    class Payload:
        pass

    def body():
        a, b = Mutex("a"), Mutex("b")
        p = Payload()
        made.append(weakref.ref(p))

        def t(x, y, name, payload):
            try:
                with x:
                    with y:
                        pass
            finally:
                unwound.append(name)

        hs = [spawn(t, a, b, "ab", p), spawn(t, b, a, "ba", p)]
        for h in hs:
            h.join()

    res = explore.check(body, lockdep=False, shrink=False, stop_on_first=False)
    assert any(f.kind == "deadlock" for f in res.failures)
    # every execution ran both tasks' finally blocks, deadlocked or not
    assert unwound.count("ab") == unwound.count("ba") == len(made)
    del res  # a failure keeps its execution, to render its trace table
    gc.collect()
    assert made and all(r() is None for r in made)


def test_explore_runs_in_a_thread_other_than_the_first():
    """Pooled task greenlets belong to the thread that made them; another thread gets its own."""
    import threading

    out: list[object] = [explore.check(counter(2, 2), stop_on_first=False)]
    th = threading.Thread(target=lambda: out.append(explore.check(counter(2, 2),
                                                                  stop_on_first=False)))
    th.start()
    th.join()
    assert [r.runs for r in out] == [6, 6]


def test_a_full_greenlet_pool_retires_the_extra_greenlets(monkeypatch):
    """Past the pool's size a finished task's greenlet ends instead of parking; the explored
    results are the same."""
    import types

    from kvmlock.explore import runtime as sim

    monkeypatch.setattr(sim, "_POOL_MAX", 1)
    # the exploration runs in a worker thread: one pool object that thread will use
    monkeypatch.setattr(sim, "_POOLS", types.SimpleNamespace(pool=[]))
    res = explore.check(counter(3, 1), stop_on_first=False)
    assert res.ok and res.exhausted and res.runs == 6
    assert len(sim._pool()) == 1
