"""Parallel exploration: the same traces as the sequential search, on every backend.

The "inline" backend runs the workers in turn in this process and makes each give work away
after every execution, the most splitting and stealing there can be; "process" forks real
worker processes. Outcomes (what every task read, final values) are only visible in this
process with "inline"; with "process" the counts and failures are compared.
"""

from __future__ import annotations

import os
from math import factorial

import pytest

from kvmlock import explore, spawn
from kvmlock.sync import Atomic64

from .programs import abba, counter, lost_update
from .test_dpor import _program

OPTS = {"lockdep": True, "stop_on_first": False, "shrink": False}


def keys(res: explore.Result) -> list[tuple]:
    return sorted((f.kind, f.where) for f in res.failures)


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
# 492: a run a sleep set cuts short holds the only sighting of a race (a blocked acquire)
@pytest.mark.parametrize("seed", [*range(40), 492])
def test_most_split_exploration_finds_the_sequential_traces(seed, strategy):
    prog = _program(seed)
    seq_out: set = set()
    par_out: set = set()
    seq = explore.check(lambda: prog(seq_out), strategy=strategy, max_runs=1000, **OPTS)
    if not seq.exhausted:  # (a few dfs spaces are too big for the test's budget)
        assert strategy == "dfs"
        return
    par = explore.check(lambda: prog(par_out), strategy=strategy, workers=3, backend="inline",
                        **OPTS)
    assert par.exhausted and par.stopped == "exhausted"
    assert par.runs == seq.runs  # one complete execution per trace (dpor) / schedule (dfs)
    assert par_out == seq_out
    assert keys(par) == keys(seq)


@pytest.mark.parametrize("seed", range(0, 120, 8))
def test_worker_processes_find_the_sequential_traces(seed):
    prog = _program(seed)
    seq = explore.check(lambda: prog(set()), strategy="dpor", **OPTS)
    par = explore.check(lambda: prog(set()), strategy="dpor", workers=2, **OPTS)
    assert par.exhausted and par.runs == seq.runs and keys(par) == keys(seq)


@pytest.mark.parametrize("n,k", [(2, 3), (3, 2), (3, 3)])
def test_counter_orders_are_each_explored_once_in_parallel(n, k):
    log: list[tuple] = []
    res = explore.check(counter(n, k, log), workers=2, backend="inline", **OPTS)
    want = factorial(n * k) // factorial(k) ** n
    assert res.ok and res.exhausted and res.runs == want
    assert len(log) == want == len(set(log))


def test_counter_in_worker_processes_counts_every_order():
    res = explore.check(counter(3, 3), workers=2)
    assert res.ok and res.exhausted and res.runs == 1680 and res.workers == 2


def test_a_failure_found_by_a_worker_replays_here():
    res = explore.check(abba(), workers=2)
    assert not res.ok and res.stopped == "failure"
    f = res.failure
    assert f.kind == "lockdep" and "circular" in f.message
    again = explore.replay(abba(), f.schedule)
    assert [x.kind for x in again.failures] == ["lockdep"]
    assert "CPU0" in f.trace_table() or "task" in f.trace_table()


def test_parallel_dfs_with_a_preemption_bound_matches_sequential():
    seq = explore.check(lost_update(), strategy="dfs", preemption_bound=1, **OPTS)
    par = explore.check(lost_update(), strategy="dfs", preemption_bound=1, workers=2,
                        backend="inline", **OPTS)
    assert par.runs == seq.runs and keys(par) == keys(seq) and par.exhausted


def test_max_runs_stops_a_parallel_exploration_unexhausted():
    res = explore.check(counter(3, 3), workers=2, max_runs=50)
    assert res.stopped == "max_runs" and not res.exhausted and res.runs >= 50


_MAIN = os.getpid()
_calls = [0]


def _dies_in_a_worker():
    _calls[0] += 1
    if os.getpid() != _MAIN and _calls[0] > 5:
        os._exit(7)  # the worker process dies without a word
    x = Atomic64(0, name="x")

    def inc() -> None:
        x.fetch_add(1)

    ts = [spawn(inc) for _ in range(3)]
    for t in ts:
        t.join()


def test_a_worker_that_dies_fails_the_exploration_instead_of_a_partial_result():
    with pytest.raises(explore.WorkerCrashed, match="died .exit code 7.*incomplete"):
        explore.check(_dies_in_a_worker, workers=2)
    # the near miss: the same body, no worker dying, is fully explored
    _calls[0] = -10**9
    assert explore.check(_dies_in_a_worker, workers=2).exhausted


def test_an_error_inside_a_worker_is_reported_with_its_traceback():
    def body():
        if os.getpid() != _MAIN:
            raise SystemExit(3)  # ends the exploration in the worker, not an explored failure
        counter(2, 1)()

    with pytest.raises(explore.WorkerCrashed, match="worker . failed"):
        explore.check(body, workers=2)


@pytest.mark.parametrize("kwargs,msg", [
    ({"workers": 0}, "workers must be an integer >= 1"),
    ({"workers": 2, "strategy": "pct"}, "exhaustive exploration"),
    ({"workers": 2, "preemption_bound": 1}, "no preemption_bound"),
    ({"workers": 2, "backend": "mpi"}, "unknown backend 'mpi'"),
])
def test_bad_parallel_arguments_are_clear_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        explore.check(counter(2, 1), **kwargs)


def test_interrupts_make_a_parallel_dpor_a_parallel_dfs_as_sequentially():
    from .test_interrupts import _dev

    seq = explore.check(_dev(True), **OPTS)
    par = explore.check(_dev(True), workers=2, **OPTS)
    assert seq.strategy == par.strategy == "dfs" and "interrupts" in par.headline()
    assert par.exhausted and par.runs == seq.runs and keys(par) == keys(seq)


def test_a_worker_holding_all_the_work_answers_early_while_others_wait(monkeypatch):
    """The first subtree is the whole tree, handed while the other worker waits: its worker
    answers after FIRST_BUDGET, not the whole budget, so the other gets a share soon; with
    two workers every later step has the full one."""
    from kvmlock.explore import parallel

    sent: list[tuple[bool, float | None]] = []
    real = parallel._Inline.send

    def send(self, i, item, donate, budget=None):
        sent.append((donate, budget))
        return real(self, i, item, donate, budget)

    monkeypatch.setattr(parallel._Inline, "send", send)
    res = explore.check(counter(3, 2), workers=2, backend="inline")
    assert res.exhausted and res.runs == 90
    assert sent[0] == (False, parallel.FIRST_BUDGET)
    assert all(b is None for _d, b in sent[1:])


def test_a_worker_answers_at_once_when_it_finds_a_new_failure():
    """The coordinator may be waiting for the first failure (stop_on_first): a worker does
    not explore on to the end of its budget first."""
    from kvmlock.explore import parallel

    big = counter(3, 3)

    def body() -> None:
        abba()()  # lockdep reports the inversion in the first execution
        big()

    opts = parallel.Options("dpor", 10_000, True, True, budget=30.0)
    reply = parallel.Worker(body, opts).step(("dpor", (), {}, None, ({}, {})), False)
    assert reply.runs == 1 and [k[0][0] for k, _c in reply.failures] == ["lockdep"]


def test_a_halted_worker_ends_its_step_after_the_execution_under_way():
    """(How a Ray actor kept for the next exploration is stopped mid-step; ``reset`` for the
    next exploration clears it.)"""
    from kvmlock.explore import parallel

    root = ("dpor", (), {}, None, ({}, {}))
    w = parallel.Worker(counter(3, 3), parallel.Options("dpor", 10_000, True, True, budget=30.0))
    w.halt()
    assert w.step(root, False).runs == 1
    w.reset(counter(2, 2), w.opts)
    reply = w.step(root, False)
    assert reply.idle and reply.runs == 6
