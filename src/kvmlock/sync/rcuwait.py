"""``rcuwait``: one task sleeps until a condition holds, and must be woken explicitly.

The waker changes the state the condition reads and then calls :meth:`wake_up`. A change that
is not followed by a wake-up leaves the waiter asleep, as in the kernel; the explorer therefore
finds a forgotten wake-up as a hang or deadlock rather than hiding it.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmlock import lockdep, runtime
from kvmlock.sync._common import check_name


class RCUWait:
    __slots__ = ("name", "_wq", "_wakeups", "_waiting", "__weakref__")

    def __init__(self, name: str = "rcuwait") -> None:
        self.name = check_name(name, "RCUWait")
        self._wq = runtime.RT.waitq(self)
        self._wakeups = 0
        self._waiting = False

    def wait(self, condition: Callable[[], bool]) -> None:
        """``rcuwait_wait_event``: return once ``condition()`` is true, sleeping between wakes."""
        lockdep.might_sleep("rcuwait_wait_event")
        wq = self._wq
        while True:
            with wq:
                wq.point("rcuwait_wait_event")
                if condition():
                    self._waiting = False
                    return
                seen = self._wakeups
                self._waiting = True
            with wq:
                wq.wait_for(lambda seen=seen: self._wakeups != seen, "rcuwait:sleep")

    def wake_up(self) -> bool:
        """Wake the waiter if there is one; returns whether a task was waiting."""
        wq = self._wq
        with wq:
            wq.point("rcuwait_wake_up")
            self._wakeups += 1
            was = self._waiting
            wq.notify_all()
        return was

    def has_sleeper(self) -> bool:
        return self._waiting

    def __repr__(self) -> str:
        return f"<RCUWait {self.name} waiting={self._waiting}>"
