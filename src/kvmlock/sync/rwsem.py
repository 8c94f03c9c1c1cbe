"""``rw_semaphore`` and the CPU-hotplug lock: readers are *not* recursive.

A writer that has started waiting blocks every new reader. So a reader that nests a second read
of the same semaphore, or waits for something whose owner wants to read, can deadlock against a
queued writer -- the fairness deadlock lockdep models with the shared (non-recursive) edge kind.
"""

from __future__ import annotations

from kvmlock.sync._rw import ReadWriteLock


class RWSemaphore(ReadWriteLock):
    KIND = "rwsem"
    SLEEPS = True
    OPS = ("down_read", "up_read", "down_write", "up_write")
    __slots__ = ()

    def __init__(self, name: str, *, key: object | None = None) -> None:
        super().__init__(name, key=key, queued=True)

    down_read = ReadWriteLock.read_lock
    up_read = ReadWriteLock.read_unlock
    down_write = ReadWriteLock.write_lock
    up_write = ReadWriteLock.write_unlock
    down_read_trylock = ReadWriteLock.read_trylock
    down_write_trylock = ReadWriteLock.write_trylock


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
