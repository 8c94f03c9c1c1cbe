"""``rw_semaphore`` and the CPU-hotplug lock: readers are *not* recursive.

A writer that has started waiting blocks every new reader. So a reader that nests a second read
of the same semaphore, or waits for something whose owner wants to read, can deadlock against a
queued writer -- the fairness deadlock lockdep models with the shared (non-recursive) edge kind.
"""

from __future__ import annotations

from kvmlock import lockdep, runtime
from kvmlock.sync._common import Section, check_name


class RWSemaphore:
    KIND = "rwsem"

    __slots__ = ("name", "_map", "_wq", "_readers", "_writer", "_waiting", "__weakref__")

    def __init__(self, name: str, *, key: object | None = None) -> None:
        self.name = check_name(name, type(self).__name__)
        self._map = lockdep.LockMap(name, self.KIND, key)
        self._wq = runtime.RT.waitq(self)
        self._readers = 0
        self._writer = False
        self._waiting = 0  # writers queued: they shut new readers out

    def _reader_may_enter(self) -> bool:
        return not self._writer and not self._waiting

    def _free(self) -> bool:
        return not self._writer and not self._readers

    def down_read(self) -> None:
        lockdep.might_sleep("down_read")
        self._map.acquire(0, 1)
        wq = self._wq
        with wq:
            wq.wait_for(self._reader_may_enter, "down_read", False)
            self._readers += 1

    def up_read(self) -> None:
        self._map.release()
        wq = self._wq
        with wq:
            wq.point("up_read", False)
            if self._readers:
                self._readers -= 1
                wq.notify_all()

    def down_write(self) -> None:
        lockdep.might_sleep("down_write")
        self._map.acquire(0, 0)
        wq = self._wq
        with wq:
            wq.point("down_write")
            if self._free():
                self._writer = True
                return
            self._waiting += 1
        with wq:
            wq.wait_for(self._free, "down_write:wait")
            self._waiting -= 1
            self._writer = True

    def up_write(self) -> None:
        self._map.release()
        wq = self._wq
        with wq:
            wq.point("up_write")
            if self._writer:
                self._writer = False
                wq.notify_all()

    def down_read_trylock(self) -> bool:
        wq = self._wq
        with wq:
            wq.point("down_read_trylock", False)
            if not self._reader_may_enter():
                return False
            self._readers += 1
        self._map.acquire(0, 1, True)
        return True

    def down_write_trylock(self) -> bool:
        wq = self._wq
        with wq:
            wq.point("down_write_trylock")
            if not self._free():
                return False
            self._writer = True
        self._map.acquire(0, 0, True)
        return True

    def read(self) -> Section:
        return Section(self.down_read, self.up_read)

    def write(self) -> Section:
        return Section(self.down_write, self.up_write)

    def assert_held(self) -> None:
        self._map.assert_held()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name} readers={self._readers} "
                f"writer={self._writer} waiting={self._waiting}>")


class CpuHotplugLock(RWSemaphore):
    """``cpu_hotplug_lock``: a per-CPU rwsem; readers (``cpus_read_lock``) are not recursive."""

    KIND = "percpu_rwsem"
    __slots__ = ()

    def __init__(self, name: str = "cpu_hotplug_lock", *, key: object | None = None) -> None:
        super().__init__(name, key=key)

    cpus_read_lock = RWSemaphore.down_read
    cpus_read_unlock = RWSemaphore.up_read
    cpus_read_trylock = RWSemaphore.down_read_trylock
    cpus_write_lock = RWSemaphore.down_write
    cpus_write_unlock = RWSemaphore.up_write
    lockdep_assert_cpus_held = RWSemaphore.assert_held
