"""The reader/writer lock machinery shared by ``rwlock_t`` and ``rw_semaphore``.

Both count readers, admit one writer, and queue writers that must wait. They differ in three
facts, which subclasses state as data: whether a queued writer holds new readers back (it makes
readers non-recursive), whether the lock may sleep, and the operation names traces show.
A lock that sleeps also needs its releases to wake the waiters: its waits say so
(``sleeps``), and the explorer fails a waiter that goes on with no wake-up since it began.
"""

from __future__ import annotations

from kvmlock import lockdep, runtime
from kvmlock.sync._common import Section, check_name


class ReadWriteLock:
    KIND = "rwlock"
    SLEEPS = False
    #: labels of (read lock, read unlock, write lock, write unlock) for traces
    OPS = ("read_lock", "read_unlock", "write_lock", "write_unlock")

    __slots__ = ("name", "queued", "_map", "_wq", "_readers", "_writer", "_waiting",
                 "_read_kind", "_may_read", "_fair", "_wqueued", "_wgone", "__weakref__")

    def __init__(self, name: str, *, key: object | None = None, queued: bool = False) -> None:
        self.name = check_name(name, type(self).__name__)
        self.queued = bool(queued)
        self._map = lockdep.LockMap(name, self.KIND, key)
        self._wq = runtime.active().waitq(self)
        self._readers = 0
        self._writer = False
        self._waiting = 0  # writers queued; they hold new readers back only when queued
        # lockdep read kinds: 1 shared (a queued writer can stall it), 2 recursive shared
        self._read_kind = 1 if queued else 2
        self._may_read = self._no_writer_queued if queued else self._no_writer
        # On real threads a queued writer holds back only the readers that came after it
        # (the kernel's hand-off): writers queued so far, and those of them that got the lock.
        self._fair = queued and runtime.active().name == "threads"
        self._wqueued = 0
        self._wgone = 0

    def _no_writer(self) -> bool:
        return not self._writer

    def _no_writer_queued(self) -> bool:
        return not self._writer and not self._waiting

    def _free(self) -> bool:
        return not self._writer and not self._readers

    def read_lock(self) -> None:
        if self.SLEEPS:
            lockdep.might_sleep(self.OPS[0])
        self._map.acquire(0, self._read_kind)
        wq = self._wq
        with wq:
            if self._fair:
                ahead = self._wqueued
                wq.wait_for(lambda: not self._writer and self._wgone >= ahead, self.OPS[0], False,
                            self.SLEEPS)
            else:
                wq.wait_for(self._may_read, self.OPS[0], False, self.SLEEPS)
            self._readers += 1

    def read_unlock(self) -> None:
        wq = self._wq
        with wq:
            wq.point(self.OPS[1], False)
            if self._readers:
                self._readers -= 1
                wq.notify_all()
        self._map.release()  # after the real unlock, as for Mutex

    def write_lock(self) -> None:
        if self.SLEEPS:
            lockdep.might_sleep(self.OPS[2])
        self._map.acquire(0, 0)
        wq = self._wq
        if not self.queued:
            # Nobody looks at queued writers: one visible step, as few interleavings as can be.
            with wq:
                wq.wait_for(self._free, self.OPS[2], True, self.SLEEPS)
                self._writer = True
            return
        with wq:
            wq.point(self.OPS[2])
            if self._free() and not (self._fair and wq.busy()):
                self._writer = True
                return
            self._waiting += 1  # from here on new readers queue behind us
            self._wqueued += 1
        with wq:
            wq.wait_for(self._free, self.OPS[2] + ":wait", True, self.SLEEPS)
            self._waiting -= 1
            self._wgone += 1
            self._writer = True

    def write_unlock(self) -> None:
        wq = self._wq
        with wq:
            wq.point(self.OPS[3])
            if self._writer:
                self._writer = False
                wq.notify_all()
        self._map.release()

    def read_trylock(self) -> bool:
        wq = self._wq
        with wq:
            wq.point(self.OPS[0] + "_trylock", False)
            if not self._may_read():
                return False
            self._readers += 1
        self._map.acquire(0, self._read_kind, True)
        return True

    def write_trylock(self) -> bool:
        wq = self._wq
        with wq:
            wq.point(self.OPS[2] + "_trylock")
            if not self._free():
                return False
            self._writer = True
        self._map.acquire(0, 0, True)
        return True

    def read(self) -> Section:
        return Section(self.read_lock, self.read_unlock)

    def write(self) -> Section:
        return Section(self.write_lock, self.write_unlock)

    def assert_held(self) -> None:
        """``lockdep_assert_held``: reports "not_held" unless the task holds it (either mode)."""
        self._map.assert_held()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name} readers={self._readers} "
                f"writer={self._writer} waiting={self._waiting}>")
