"""``rcuwait``: one task sleeps until a condition holds, and must be woken explicitly.

The waker changes the state the condition reads and then calls :meth:`wake_up`. A change that
is not followed by a wake-up leaves the waiter asleep, as in the kernel; the explorer therefore
finds a forgotten wake-up as a deadlock (a lost wake-up) rather than hiding it.

Two ways to wait, as in the kernel:

* :meth:`wait` is ``rcuwait_wait_event``: it re-checks the condition after every wake-up;
* the open-coded loop, for a waiter whose condition must be read under a lock it drops to
  sleep (``kvm_swap_active_memslots``)::

      lock; w.prepare()
      while busy:                       # the loop IS the re-check after each wake-up
          state = w.set_current_state()
          unlock; w.schedule(state); lock
      w.finish(); ...; unlock

  :meth:`schedule` returns after a wake-up newer than ``state`` -- not when the condition
  holds -- so a caller that tests it with ``if`` instead of ``while`` goes on with it false.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmlock import lockdep, runtime
from kvmlock.sync._common import check_name


class RCUWait:
    __slots__ = ("name", "_wq", "_waiting", "__weakref__")

    def __init__(self, name: str = "rcuwait") -> None:
        self.name = check_name(name, "RCUWait")
        self._wq = runtime.active().waitq(self)
        self._waiting = False

    def wait(self, condition: Callable[[], bool], *, reads: object = None) -> None:
        """``rcuwait_wait_event``: return once ``condition()`` is true, sleeping between wakes.

        ``reads`` names the object whose plain fields the condition reads: each check is
        then also a visible read of it, so an explorer that reorders only dependent steps
        still puts a waker's late change of that state after a check (the lost wake-up).
        """
        lockdep.might_sleep("rcuwait_wait_event")
        wq = self._wq
        rt = runtime.active() if reads is not None else None
        while True:
            with wq:
                wq.point("rcuwait_wait_event")
                state = wq.ticket()  # set_current_state before the check: no wake-up is lost
                if rt is not None:  # the check is this read: nothing runs between the two
                    rt.point(reads, "rcuwait condition", False)
                if condition():
                    self._waiting = False
                    return
                self._waiting = True
            with wq:
                wq.sleep(state, "rcuwait:sleep")

    def prepare(self) -> None:
        """``prepare_to_rcuwait``: this task is the one :meth:`wake_up` wakes from now on."""
        wq = self._wq
        with wq:
            wq.point("prepare_to_rcuwait")
            self._waiting = True

    def set_current_state(self) -> int:
        """Before the last check of the condition: a wake-up after this one is not lost.
        Returns the state :meth:`schedule` sleeps from."""
        wq = self._wq
        with wq:
            wq.point("set_current_state")
            return wq.ticket()

    def schedule(self, state: int) -> None:
        """Sleep until a wake-up newer than ``state`` (at once if one came already). The
        condition is not looked at: the caller re-checks it."""
        lockdep.might_sleep("schedule")
        wq = self._wq
        with wq:
            wq.sleep(state, "rcuwait:sleep")

    def finish(self) -> None:
        """``finish_rcuwait``: no longer waiting."""
        wq = self._wq
        with wq:
            wq.point("finish_rcuwait")
            self._waiting = False

    def wake_up(self) -> bool:
        """Wake the waiter if there is one; returns whether a task was waiting."""
        wq = self._wq
        with wq:
            wq.point("rcuwait_wake_up")
            was = self._waiting
            wq.wake_up()
        return was

    def has_sleeper(self) -> bool:
        return self._waiting

    def __repr__(self) -> str:
        return f"<RCUWait {self.name} waiting={self._waiting}>"
