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
