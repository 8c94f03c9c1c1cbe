"""``rwlock_t``: many readers or one writer.

By default a reader gets in whenever no writer *holds* the lock, even if a writer is waiting;
that is what makes a reader recursive (it may nest inside another reader of the same lock
without deadlock), and it is why lockdep gives rwlock readers the recursive-read edge kind.

``queued=True`` models x86's queued rwlock as seen from process context: a waiting writer shuts
new readers out, so readers are *not* recursive and lockdep records them as plain shared
readers (the kernel's ``read_lock_is_recursive()`` is false there; only interrupt-context
readers jump the queue).
"""

from __future__ import annotations

from kvmlock import lockdep, runtime
from kvmlock.sync._common import Section, check_name


class RWLock:
    KIND = "rwlock"

    __slots__ = ("name", "queued", "_map", "_wq", "_readers", "_writer", "_waiting",
                 "_read_kind", "_may_read", "__weakref__")

    def __init__(self, name: str, *, key: object | None = None, queued: bool = False) -> None:
        self.name = check_name(name, type(self).__name__)
        self.queued = bool(queued)
        self._map = lockdep.LockMap(name, self.KIND, key)
        self._wq = runtime.RT.waitq(self)
        self._readers = 0
        self._writer = False
        self._waiting = 0  # writers queued; they hold readers back only when queued=True
        self._read_kind = 1 if queued else 2
        self._may_read = self._no_writer_queued if queued else self._no_writer

    def _no_writer(self) -> bool:
        return not self._writer

    def _no_writer_queued(self) -> bool:
        return not self._writer and not self._waiting

    def _free(self) -> bool:
        return not self._writer and not self._readers

    def read_lock(self) -> None:
        self._map.acquire(0, self._read_kind)
        wq = self._wq
        with wq:
            wq.wait_for(self._may_read, "read_lock", False)
            self._readers += 1

    def read_unlock(self) -> None:
        self._map.release()
        wq = self._wq
        with wq:
            wq.point("read_unlock", False)
            if self._readers:
                self._readers -= 1
                wq.notify_all()

    def write_lock(self) -> None:
        self._map.acquire(0, 0)
        wq = self._wq
        with wq:
            wq.point("write_lock")
            if self._free():
                self._writer = True
                return
            self._waiting += 1
        with wq:
            wq.wait_for(self._free, "write_lock:wait")
            self._waiting -= 1
            self._writer = True

    def write_unlock(self) -> None:
        self._map.release()
        wq = self._wq
        with wq:
            wq.point("write_unlock")
            if self._writer:
                self._writer = False
                wq.notify_all()

    def read_trylock(self) -> bool:
        wq = self._wq
        with wq:
            wq.point("read_trylock", False)
            if not self._may_read():
                return False
            self._readers += 1
        self._map.acquire(0, self._read_kind, True)
        return True

    def write_trylock(self) -> bool:
        wq = self._wq
        with wq:
            wq.point("write_trylock")
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
        self._map.assert_held()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} readers={self._readers} writer={self._writer}>"
