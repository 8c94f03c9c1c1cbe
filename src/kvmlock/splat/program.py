"""A report's lock chain as a kvmlock program, run under the explorer.

One task per dependency: it takes the first lock, then the second, in the mode the report shows
(an SRCU read side, a synchronize, a read or write of a read-write lock). The locks get the kinds
the document's Reference gives them, so the same chain can deadlock under one document and not
under another. A read-write semaphore whose two uses in the cycle are both reads gets one more
task, a writer: readers of an rw_semaphore queue behind a waiting writer, which is how two
readers take part in a real deadlock. rwlock_t and SRCU readers never wait for each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kvmlock import explore, spawn
from kvmlock.spec.names import kind_of
from kvmlock.splat.report import Dependency, LockRef, Splat
from kvmlock.sync import SRCU, Mutex, RawSpinLock, RWLock, RWSemaphore, SpinLock

_BUILD: dict[str, Callable[[str], Any]] = {
    "mutex": Mutex,
    "spinlock": SpinLock,
    "raw_spinlock": RawSpinLock,
    "rwlock": RWLock,
    "rwsem": RWSemaphore,
    "percpu_rwsem": RWSemaphore,
    "srcu": SRCU,
}
_READERS_SHARE = {"rwlock": "readers of an rwlock_t are recursive: they never wait for each other",
                  "srcu": "srcu_read_lock never waits"}


@dataclass
class Outcome:
    """What exploring the chain found."""

    deadlock: bool
    explanation: str
    table: str = ""
    schedule: str = ""
    headline: str = ""
    kinds: dict[str, str] | None = None
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"deadlock": self.deadlock, "explanation": self.explanation,
                "schedule": self.schedule, "explored": self.headline, "kinds": self.kinds,
                "complete": self.complete, "trace": self.table}


def lock_kind(name: str, declared: dict[str, tuple[str, ...]], ref: LockRef | None) -> str:
    """The document's kind, else the model's, else what the report's wait type implies."""
    k = kind_of(name, declared)
    if k in _BUILD:
        return k
    if name.endswith("srcu"):
        return "srcu"
    wait = ref.wait.split(":")[0] if ref is not None and ref.wait else ""
    return "raw_spinlock" if wait in ("1", "2") else "mutex"


def _cycle(splat: Splat) -> list[Dependency]:
    deps = splat.dependencies()
    if splat.kind == "recursive":
        # one lock class, two instances taken in opposite orders by two tasks
        return [d for d in deps] * 2
    return deps


def _enter(obj: Any, kind: str, read: int, sync: bool) -> contextlib.AbstractContextManager:
    if kind == "srcu":
        if sync or read == 0:
            return _synchronize(obj)
        return obj.read()
    if kind in ("rwlock", "rwsem", "percpu_rwsem"):
        return obj.read() if read else obj.write()
    return obj


@contextlib.contextmanager
def _synchronize(srcu: Any) -> Iterator[None]:
    srcu.synchronize()
    yield


def _why_not(deps: list[Dependency], kinds: dict[str, str]) -> str:
    """Where the cycle has no wait: a lock whose holder and waiter do not exclude each other."""
    reasons = []
    n = len(deps)
    for i, d in enumerate(deps):
        nxt = deps[(i + 1) % n]  # holds d.dst while taking the next lock
        lock, kind = d.dst, kinds.get(d.dst, "mutex")
        waiter_read, holder_read = d.dst_read or 0, nxt.src_read or 0
        if kind == "srcu" and (waiter_read or not d.sync):
            reasons.append(f"{lock}: {_READERS_SHARE['srcu']} (the task taking it is a reader)")
        elif kind == "rwlock" and waiter_read and holder_read:
            reasons.append(f"{lock}: {_READERS_SHARE['rwlock']}")
    if reasons:
        return "no deadlock under the document's lock kinds: " + "; ".join(reasons)
    return "no interleaving of the chain's tasks deadlocks"


def explore_splat(splat: Splat, declared: dict[str, tuple[str, ...]] | None = None,
                  timeout: float = 30.0) -> Outcome:
    """Explore every interleaving of the chain's tasks (DPOR) and say whether one deadlocks."""
    declared = declared or {}
    deps = _cycle(splat)
    if not deps:
        return Outcome(False, f"a {splat.kind} report states no lock order to explore",
                       complete=True)
    refs = {r.name: r for r in [splat.acquiring, splat.held, *splat.holding,
                                *(lk.lock for lk in splat.chain)] if r is not None}
    names = list(dict.fromkeys([n for d in deps for n in (d.src, d.dst)]))
    kinds = {n: lock_kind(n, declared, refs.get(n)) for n in names}
    recursive = splat.kind == "recursive"
    writers = [n for n in names if kinds[n] in ("rwsem", "percpu_rwsem")
               and any(d.dst == n and d.dst_read for d in deps)
               and any(d.src == n and d.src_read for d in deps)]

    def body() -> None:
        if recursive:
            objs = {0: _BUILD[kinds[names[0]]](names[0]), 1: _BUILD[kinds[names[0]]](names[0])}
        else:
            objs = {n: _BUILD[kinds[n]](n) for n in names}
        tasks = []
        for i, d in enumerate(deps):
            a, b = (objs[i % 2], objs[(i + 1) % 2]) if recursive else (objs[d.src], objs[d.dst])

            def run(a: Any = a, b: Any = b, d: Dependency = d) -> None:
                with _enter(a, kinds[d.src], d.src_read, False):
                    with _enter(b, kinds[d.dst], d.dst_read, d.sync):
                        pass

            label = f"{d.origin} {d.where.split('+')[0].split(' ')[0]}".strip()
            tasks.append(spawn(run, name=label))
        for n in writers:
            def write(o: Any = objs[n]) -> None:
                with o.write():
                    pass
            tasks.append(spawn(write, name=f"writer of {n}"))
        for t in tasks:
            t.join()

    res = explore.check(body, "dpor", lockdep=False, timeout=timeout, stop_on_first=True)
    f = res.failure
    if f is not None and f.kind == "deadlock":
        return Outcome(True, f.message, f.trace_table(), f.schedule, res.headline(), kinds)
    if f is not None:
        return Outcome(False, f"the program failed otherwise: {f.summary()}", f.trace_table(),
                       f.schedule, res.headline(), kinds, complete=False)
    if not res.exhausted:
        return Outcome(False, "inconclusive: the explorer stopped before covering every "
                       f"interleaving ({res.stopped})", "", "", res.headline(), kinds,
                       complete=False)
    return Outcome(False, _why_not(deps, kinds), "", "", res.headline(), kinds)
