"""The Ray backend on a local Ray instance this module starts (two CPUs, no dashboard).

Ray is an optional extra (``pip install 'kvmlock[ray]'``); CI installs it, so these run there.
"""

from __future__ import annotations

import os

import pytest

from kvmlock import explore

from .programs import abba, counter
from .test_dpor import _program

ray = pytest.importorskip("ray")

OPTS = {"lockdep": True, "stop_on_first": False, "shrink": False}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024)
    yield
    ray.shutdown()


def test_ray_workers_count_every_order_of_the_counter():
    res = explore.check(counter(3, 3), workers=2, backend="ray")
    assert res.ok and res.exhausted and res.runs == 1680 and res.backend == "ray"


@pytest.mark.parametrize("seed", [3, 11, 42, 492])
def test_ray_workers_find_the_sequential_traces(seed):
    prog = _program(seed)
    seq = explore.check(lambda: prog(set()), **OPTS)
    par = explore.check(lambda: prog(set()), workers=2, backend="ray", **OPTS)
    assert par.exhausted and par.runs == seq.runs
    assert sorted((f.kind, f.where) for f in par.failures) == \
        sorted((f.kind, f.where) for f in seq.failures)


def test_a_failure_found_on_ray_replays_here():
    res = explore.check(abba(), workers=2, backend="ray")
    assert res.failure is not None and res.failure.kind == "lockdep"
    again = explore.replay(abba(), res.failure.schedule)
    assert [f.kind for f in again.failures] == ["lockdep"]


_DRIVER = os.getpid()


def _dies_on_ray():
    if os.getpid() != _DRIVER:
        os._exit(9)  # the actor's process dies
    counter(2, 1)()


def test_a_dead_ray_worker_fails_the_exploration():
    with pytest.raises(explore.WorkerCrashed, match="Ray worker . failed"):
        explore.check(_dies_on_ray, workers=2, backend="ray")


def test_more_workers_than_the_cluster_has_cpus_is_a_clear_error():
    with pytest.raises(ValueError, match="3 Ray workers need 3 CPUs, the cluster has 2"):
        explore.check(counter(2, 1), workers=3, backend="ray")


def _kept_ids() -> list[str]:
    from kvmlock.explore import ray_backend

    return sorted(a._actor_id.hex() for a in ray_backend._kept[-1].idle)


def _dies(actor, within: float = 10.0) -> bool:
    """Whether ``actor`` is gone within ``within`` seconds (``ray.kill`` does not wait)."""
    import time

    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=within)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.05)
    return False


def test_actors_kept_in_a_block_explore_each_new_body_and_are_killed_after_it():
    from kvmlock.explore import ray_backend

    with ray_backend.reuse_actors():
        first = explore.check(counter(3, 3), workers=2, backend="ray")
        kept = _kept_ids()
        kept_actors = list(ray_backend._kept[-1].idle)
        # the same actors, given the next body: its own count, not the first body's
        second = explore.check(counter(2, 3), workers=2, backend="ray")
        assert _kept_ids() == kept and len(kept) == 2
        # stopped at its first failure while both may be mid-step: kept, and the next
        # exploration on them is complete and right
        bad = explore.check(abba(), workers=2, backend="ray")
        third = explore.check(counter(3, 3), workers=2, backend="ray")
        assert _kept_ids() == kept
    assert first.runs == 1680 and second.runs == 20 and third.runs == 1680
    assert first.exhausted and second.exhausted and third.exhausted
    assert bad.failure is not None and bad.failure.kind == "lockdep"
    assert ray_backend._kept == [] and all(_dies(a) for a in kept_actors)


def test_actors_of_an_exploration_that_crashed_are_not_kept():
    from kvmlock.explore import ray_backend

    with ray_backend.reuse_actors():
        with pytest.raises(explore.WorkerCrashed):
            explore.check(_dies_on_ray, workers=2, backend="ray")
        assert _kept_ids() == []
        res = explore.check(counter(3, 3), workers=2, backend="ray")
        assert res.exhausted and res.runs == 1680 and len(_kept_ids()) == 2


def test_outside_a_block_no_actor_is_kept():
    from kvmlock.explore import ray_backend

    res = explore.check(counter(2, 3), workers=2, backend="ray")
    assert res.runs == 20 and ray_backend._kept == []


def _spinlock_t_under_a_raw_spinlock() -> None:
    from kvmlock import spawn
    from kvmlock.sync import RawSpinLock, SpinLock

    raw, sl = RawSpinLock("t.ray.raw"), SpinLock("t.ray.sl")

    def w() -> None:
        with raw, sl:
            pass

    for t in [spawn(w), spawn(w)]:
        t.join()


def test_ray_workers_validate_with_the_callers_lockdep_settings():
    """A Ray actor's process does not inherit what the caller set (prove_raw_nesting here),
    as a forked worker does: it is shipped with the options."""
    from kvmlock import lockdep

    lockdep.prove_raw_nesting(True)
    try:
        res = explore.check(_spinlock_t_under_a_raw_spinlock, workers=2, backend="ray", **OPTS)
    finally:
        lockdep.prove_raw_nesting(False)
    assert res.failure is not None
    assert [r.kind for r in res.failure.lockdep_reports] == ["wait_context"]
    # and without it, no report
    res = explore.check(_spinlock_t_under_a_raw_spinlock, workers=2, backend="ray", **OPTS)
    assert res.ok and res.exhausted


def _counter_of(n: int) -> None:
    counter(n, 2)()


def test_a_body_wrapped_around_a_partial_runs_on_ray():
    """``functools.wraps`` around a ``functools.partial`` names the standard library's
    functools as the body's module (kvmlock verify's scenarios are such): shipping that
    module's code by value fails (or recurses without end); it is imported on the nodes."""
    import functools

    from kvmlock.explore import ray_backend

    inner = functools.partial(_counter_of, 2)

    @functools.wraps(inner)
    def body() -> None:
        inner()

    assert body.__module__ == "functools"
    shipped = {m.__name__ for m in ray_backend._local_modules(body)}
    assert "functools" not in shipped
    res = explore.check(body, workers=2, backend="ray")
    assert res.ok and res.exhausted and res.runs == 6


def test_verify_on_ray_meets_the_rows_that_need_the_callers_settings_and_wrapped_bodies(capsys):
    """``kvmlock verify --ray``: rows checked with PREEMPT_RT's wait types on (set in this
    process) and rows whose body is wrapped around a partial (checked at the end); one set of
    actors serves them all, and is gone after."""
    import json

    from kvmlock.explore import ray_backend
    from kvmlock.scenarios import verify

    names = ["posted_intr.wakeup_lock_spinlock_t.broken", "tsc.write_lock_spinlock_t.broken",
             "tdp_mmu.fast_zap_vs_fault.correct", "tdp_mmu.fast_zap_vs_fault.broken"]
    assert verify.main(["--ray", "--json", *names]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["met"]) for r in rows] == [(n, True) for n in names]
    assert ray_backend._kept == []
