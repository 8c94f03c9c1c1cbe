"""kvmlock.explore: run the same code under every interleaving that matters.

``check(body, strategy=...)`` calls ``body`` once per execution under a deterministic
scheduler. Tasks started with ``kvmlock.spawn`` inside it are cooperative greenlets that stop
at every visible operation (each lock, atomic, SRCU and rcuwait operation, spawn, join and
:func:`yield_point`), and the strategy decides which one goes on. Deadlocks, failed asserts,
exceptions, lockdep reports and runaway executions are reported with a replayable schedule
and a CPU0 | CPU1 | ... trace table. An async function is explored on a deterministic event
loop whose asyncio tasks are the explored tasks (``check_async``). See docs/explore.md.
"""

from __future__ import annotations

from kvmlock import runtime as _runtime
from kvmlock.explore.engine import STRATEGIES, check, check_async, replay
from kvmlock.explore.parallel import WorkerCrashed
from kvmlock.explore.records import Finished, Pending, Plan
from kvmlock.explore.result import Failure, Result
from kvmlock.explore.runtime import ACQ_NONE, SHARED, SimRuntime
from kvmlock.explore.schedule import decode, encode
from kvmlock.explore.strategies.base import Strategy


def yield_point(label: str = "", obj: object = None, write: bool = True) -> None:
    """A visible operation for plain shared state the primitives do not see.

    Put one before each read or write of shared plain Python state so the explorer may
    interleave there. ``obj`` names what is touched (default: one object standing for all
    plain shared state) and ``write=False`` marks a read, so partial-order reduction knows two
    reads commute. Outside an exploration it does nothing.
    """
    rt = _runtime.world().rt
    if isinstance(rt, SimRuntime):
        target = SHARED if obj is None else obj
        rt.visible(rt.current, rt.key(target), "yield_point", bool(write), None,  # type: ignore[arg-type]
                   label or getattr(obj, "name", None) or "shared", ACQ_NONE, None)


__all__ = [
    "STRATEGIES",
    "Failure",
    "Finished",
    "Pending",
    "Plan",
    "Result",
    "SimRuntime",
    "Strategy",
    "WorkerCrashed",
    "check",
    "check_async",
    "decode",
    "encode",
    "replay",
    "yield_point",
]
