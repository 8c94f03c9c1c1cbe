"""Parallel exploration's workers as Ray actors (``pip install 'kvmlock[ray]'``).

The coordinator stays in the calling process; each worker is an actor holding one
:class:`kvmlock.explore.parallel.Worker`, so the same subtree scheme runs on one machine's
local Ray instance or on a cluster that ``ray.init(address=...)`` joined.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


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
    actor = ray.remote(num_cpus=1)(Worker)
    return ray, [actor.remote(body, opts) for _ in range(n)]


def _local_modules(body: Callable[[], Any]) -> list[Any]:
    """The body's module and every module loaded from under the working directory (the
    project's own code and tests, not installed packages nor kvmlock)."""
    import os

    here = os.path.abspath(os.getcwd()) + os.sep
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if name == "__main__" or not f:
            continue
        f = os.path.abspath(f)
        mine = name == getattr(body, "__module__", None)
        if (mine or f.startswith(here)) and not f.startswith(pkg) and \
                "site-packages" not in f and not name.startswith("kvmlock"):
            out.append(mod)
    return out
