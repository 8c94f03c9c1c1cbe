"""``rwlock_t``: many readers or one writer, readers recursive.

A reader gets in whenever no writer *holds* the lock, even if a writer is waiting; that is what
makes a reader recursive (it may nest inside another reader of the same lock without deadlock),
and it is why lockdep gives rwlock readers the recursive-read edge kind.
"""

from __future__ import annotations

from kvmlock import lockdep, runtime
from kvmlock.sync._common import Section, check_name


class RWLock:
    KIND = "rwlock"

    __slots__ = ("name", "_map", "_wq", "_readers", "_writer", "__weakref__")

    def __init__(self, name: str, *, key: object | None = None) -> None:
        self.name = check_name(name, type(self).__name__)
        self._map = lockdep.LockMap(name, self.KIND, key)
        self._wq = runtime.RT.waitq(self)
        self._readers = 0
        self._writer = False

    def _no_writer(self) -> bool:
        return not self._writer

    def _free(self) -> bool:
        return not self._writer and not self._readers

    def read_lock(self) -> None:
        self._map.acquire(0, 2)
        wq = self._wq
        with wq:
            wq.wait_for(self._no_writer, "read_lock", False)
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
            wq.wait_for(self._free, "write_lock")
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
            if self._writer:
                return False
            self._readers += 1
        self._map.acquire(0, 2, True)
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
