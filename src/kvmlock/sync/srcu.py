"""Sleepable RCU: readers never block each other; ``synchronize`` waits out earlier readers.

The grace period is tracked with epochs: a reader records the epoch current when it entered
(the index ``read_lock`` returns), and ``synchronize`` opens a new epoch and then waits until no
reader of an older one remains. Readers that enter after the flip are not waited for, exactly
the guarantee synchronize_srcu gives.

For lockdep, as in the kernel, the read side is a recursive read of the SRCU's own lock class and
``synchronize`` validates an exclusive acquire of it without holding it. So waiting for a grace
period while holding L, with L taken somewhere inside a read side, is a reported cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmlock import lockdep, runtime
from kvmlock.sync._common import Section, check_name


class GracePeriods:
    """Readers counted by the epoch they entered in, and grace periods that wait them out: what
    SRCU and RCU (:class:`kvmlock.sync.RCU`) share. A subclass names its ``KIND``, the lockdep
    map its read side holds (:meth:`_lock_map`) and what ``synchronize`` checks first."""

    KIND: str

    __slots__ = ("name", "_map", "_wq", "_epoch", "_readers", "_callbacks", "__weakref__")

    def __init__(self, name: str, *, key: object | None = None) -> None:
        self.name = check_name(name, type(self).__name__)
        self._map = self._lock_map(name, key)
        self._wq = runtime.active().waitq(self)
        self._epoch = 0
        self._readers: dict[int, int] = {}  # epoch -> readers still inside
        self._callbacks: list[tuple[int, Callable[[], object]]] = []

    def _lock_map(self, name: str, key: object | None) -> lockdep.LockMap:
        raise NotImplementedError

    def read_lock(self) -> int:
        """Enter a read-side critical section; pass the returned index to :meth:`read_unlock`."""
        self._map.acquire(0, 2)
        wq = self._wq
        with wq:
            wq.point(f"{self.KIND}_read_lock", False)
            idx = self._epoch
            self._readers[idx] = self._readers.get(idx, 0) + 1
        return idx

    def read_unlock(self, idx: int) -> None:
        if not isinstance(idx, int) or not self._readers.get(idx):
            raise ValueError(
                f"{self.KIND}_read_unlock({self.name}, {idx!r}): no reader is inside with that "
                f"index (pass the value {self.KIND}_read_lock returned)"
            )
        self._map.release()
        wq = self._wq
        with wq:
            wq.point(f"{self.KIND}_read_unlock", False)
            left = self._readers[idx] - 1
            if left:
                self._readers[idx] = left
            else:
                del self._readers[idx]
                wq.notify_all()

    def read(self) -> Section:
        box: list[int] = []
        return Section(lambda: box.append(self.read_lock()), lambda: self.read_unlock(box.pop()))

    def synchronize(self) -> None:
        raise NotImplementedError

    def _grace_period(self) -> None:
        """Open a new epoch, wait out every reader of an older one, run the callbacks due."""
        wq = self._wq
        sync = f"synchronize_{self.KIND}"
        with wq:
            wq.point(sync)
            old = self._epoch
            self._epoch = old + 1
        with wq:
            wq.wait_for(lambda: self._waited_out(old), f"{sync}:wait")
            due = [cb for e, cb in self._callbacks if e <= old]
            self._callbacks = [(e, cb) for e, cb in self._callbacks if e > old]
        for cb in due:
            cb()

    def _waited_out(self, old: int) -> bool:
        # Every epoch up to ``old``, not only ``old`` itself: with two updaters, the later
        # one's flip closes an epoch whose predecessor may still hold a reader that entered
        # before both grace periods began.
        return not self._readers or min(self._readers) > old

    def call_srcu(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` after a grace period: at the end of a later synchronize or at barrier()."""
        if not callable(fn):
            raise TypeError(f"call_{self.KIND}({self.name}): {fn!r} is not callable")
        wq = self._wq
        with wq:
            wq.point(f"call_{self.KIND}")
            self._callbacks.append((self._epoch, fn))

    def barrier(self) -> None:
        """``srcu_barrier``: wait until every queued callback has run."""
        while self._callbacks:
            self.synchronize()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name} epoch={self._epoch} "
                f"readers={dict(self._readers)}>")


class SRCU(GracePeriods):
    KIND = "srcu"

    __slots__ = ()

    def _lock_map(self, name: str, key: object | None) -> lockdep.LockMap:
        """The read side's lock class: each SRCU its own, named by its name (or key)."""
        return lockdep.LockMap(name, self.KIND, key)

    def synchronize(self) -> None:
        """Wait until every reader that entered before this call has left."""
        lockdep.might_sleep("synchronize_srcu")
        self._map.sync()
        self._grace_period()
