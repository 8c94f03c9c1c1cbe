"""Parallel exploration of plain threading and asyncio bodies, watched as a sequential check is.

Each worker runs its executions under the explorer's guard: an execution stuck in a call the
explorer does not control, or never reaching a visible operation, ends the exploration with a
"blocked" or "hang" failure (its trace table drawn in the calling process), never a hang of
the coordinator; ``timeout`` bounds the whole check.
"""

from __future__ import annotations

import time

import pytest

from kvmlock import explore
from kvmlock.explore import pythreads

from . import asyncprogs, threadprogs

BACKENDS = ["process", "inline"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_threading_bodies_explore_the_same_traces_in_parallel(backend, strategy):
    body = threadprogs.locked_counter(2, 2)
    seq = explore.check(body, strategy)
    par = explore.check(body, strategy, workers=2, backend=backend)
    assert seq.ok and par.ok and seq.exhausted and par.exhausted
    assert par.runs == seq.runs
    broken = explore.check(threadprogs.abba(), strategy, workers=2, backend=backend,
                           lockdep=False)
    assert broken.failure is not None and broken.failure.kind == "deadlock"
    assert "CPU1" in broken.failure.trace_table()


@pytest.mark.parametrize("backend", BACKENDS)
def test_asyncio_bodies_explore_the_same_traces_in_parallel(backend):
    seq = explore.check(asyncprogs.check_then_act_locked, "dpor")
    par = explore.check(asyncprogs.check_then_act_locked, "dpor", workers=2, backend=backend)
    assert par.ok and par.exhausted and par.runs == seq.runs == 4
    race = explore.check(asyncprogs.check_then_act, "dpor", workers=2, backend=backend)
    assert race.failure is not None and race.failure.kind == "assertion"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_blocked_in_an_uncontrolled_call_is_reported_with_its_trace(backend):
    t0 = time.monotonic()
    res = explore.check(threadprogs.steps_then_a_socket_read, "dfs", workers=2, backend=backend,
                        stall=0.5)
    assert time.monotonic() - t0 < 30
    f = res.failure
    assert f is not None and f.kind == "blocked" and res.stopped == "blocked" and not res.ok
    assert "sockets[0].recv(1)" in f.message and f.steps > 3
    table = f.trace_table()
    assert "CPU1 (Thread-1 (w))" in table and "blocked: `sockets[0].recv(1)`" in table
    assert not pythreads.substituted()  # the stuck worker's execution left threading alone


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_that_never_reaches_a_visible_operation_is_a_hang(backend):
    res = explore.check(threadprogs.steps_then_plain_spinning, "dpor", workers=2,
                        backend=backend, stall=0.5)
    f = res.failure
    assert f is not None and f.kind == "hang" and res.stopped == "hang"
    assert "threadprogs.py:" in f.where and f.steps > 3
    assert "hang: `" in f.trace_table()


def test_timeout_bounds_a_parallel_check_whose_worker_is_stuck():
    t0 = time.monotonic()
    res = explore.check(threadprogs.steps_then_a_socket_read, "dfs", workers=2, stall=None,
                        timeout=1.0)
    assert time.monotonic() - t0 < 15
    # stopped by the clock, with nothing found and nothing claimed exhausted
    assert res.stopped == "timeout" and not res.exhausted and not res.failures
