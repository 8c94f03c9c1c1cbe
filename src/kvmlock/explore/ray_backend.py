"""Parallel exploration's workers as Ray actors (``pip install 'kvmlock[ray]'``).

The coordinator stays in the calling process; each worker is an actor holding one
:class:`kvmlock.explore.parallel.Worker`, so the same subtree scheme runs on one machine's
local Ray instance or on a cluster that ``ray.init(address=...)`` joined.

Starting an actor takes a worker process of Ray's, and Ray starts a new one for each actor
after the first few: 0.1 to 0.5 s on a 2-CPU machine, more than most of ``kvmlock verify``'s
explorations. Inside :func:`reuse_actors` (``kvmlock verify --ray`` runs its scenarios there)
an exploration that ended well hands its actors on to the next one, which gives them its body
and options. Outside it, and after an exploration that did not end well (a worker stuck in an
uncontrolled call, crashed, or stopped by an error), every actor is killed when its
exploration ends: kept ones hold a CPU of the cluster each while they wait.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


class _Kept:
    """Actors kept between the explorations of one :func:`reuse_actors` block."""

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self.job: Any = None  # the Ray job they belong to (a new ``ray.init`` ends them)


_kept: list[_Kept] = []  # the open blocks, innermost last


@contextlib.contextmanager
def reuse_actors() -> Iterator[None]:
    """Explorations on Ray within the block reuse the worker actors of the ones before
    (see the module docstring); the actors are killed when the block ends."""
    kept = _Kept()
    _kept.append(kept)
    try:
        yield
    finally:
        _kept.remove(kept)
        if kept.idle:
            _kill(import_ray(), kept.idle)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError("the Ray backend needs Ray: pip install 'kvmlock[ray]'") from None
    return ray


def connect(address: str | None = None, **init: Any) -> Any:
    """Join the Ray cluster at ``address`` ("auto": the one started on this node with
    ``ray start``), or start a local instance when ``address`` is None and none is running."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, **init)
    return ray


def start(n: int, body: Callable[[], Any], opts: Any) -> tuple[Any, list[Any]]:
    """``n`` worker actors, one CPU each, holding ``body``."""
    from kvmlock.explore.parallel import Worker

    ray = connect()
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < n:
        raise ValueError(f"explore: {n} Ray workers need {n} CPUs, the cluster has {cpus:g}")
    for mod in _local_modules(body):
        # the user's own modules may not be importable on the cluster's nodes: ship their code
        ray.cloudpickle.register_pickle_by_value(mod)
    actors: list[Any] = []
    kept = _kept[-1] if _kept else None
    if kept is not None:
        job = ray.get_runtime_context().get_job_id()
        if kept.job != job:  # (Ray was shut down and started again: those actors are gone)
            kept.idle, kept.job = [], job
        while kept.idle and len(actors) < n:
            actors.append(kept.idle.pop())
        if actors:
            # waited for: a step must never run on the body of the exploration before
            try:
                ray.get([a.reset.remote(body, opts) for a in actors])
            except ray.exceptions.RayError:  # (one died meanwhile: new ones all round)
                _kill(ray, actors)
                actors = []
    # (two calls at once: ``halt`` reaches an actor while its step runs)
    actor = ray.remote(num_cpus=1, max_concurrency=2)(Worker)
    return ray, actors + [actor.remote(body, opts) for _ in range(n - len(actors))]


def release(actors: list[Any], pending: dict[Any, int], clean: bool, budget: float) -> None:
    """The exploration is over: keep its actors for the next one (inside :func:`reuse_actors`,
    when it ended well and each actor finished the step it was on; ``pending``: the steps
    asked for and not answered, by actor), else kill them."""
    ray = import_ray()
    kept = _kept[-1] if _kept else None
    if kept is None or not clean:
        _kill(ray, actors)
        return
    late: set[int] = set()
    if pending:  # stopped early: a step under way ends after its current execution
        refs = list(pending)
        for i in set(pending.values()):
            actors[i].halt.remote()
        _done, waiting = ray.wait(refs, num_returns=len(refs), timeout=budget + 5.0)
        late = {pending[r] for r in waiting}
        _kill(ray, [actors[i] for i in late])
    kept.idle.extend(a for i, a in enumerate(actors) if i not in late)  # (of kept.job: see start)


def _kill(ray: Any, actors: list[Any]) -> None:
    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - already gone
            pass


def _local_modules(body: Callable[[], Any]) -> list[Any]:
    """The body's module and every module loaded from under the working directory (the
    project's own code and tests), never the standard library, installed packages or kvmlock,
    which the cluster's nodes import themselves. (A body's ``__module__`` may name one of
    those: ``functools.wraps`` around a ``functools.partial`` gives "functools". Shipping
    a module of the standard library by value fails, or recurses without end.)"""
    import os
    import sysconfig

    here = os.path.abspath(os.getcwd()) + os.sep
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    paths = sysconfig.get_paths()
    shared = tuple({os.path.abspath(paths[k]) + os.sep
                    for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths})
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if name == "__main__" or not f:
            continue
        f = os.path.abspath(f)
        mine = name == getattr(body, "__module__", None)
        if (mine or f.startswith(here)) and not f.startswith(pkg) and \
                not f.startswith(shared) and "site-packages" not in f and \
                name.split(".")[0] not in sys.stdlib_module_names and \
                not name.startswith("kvmlock"):
            out.append(mod)
    return out
