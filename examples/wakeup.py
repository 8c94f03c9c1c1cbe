"""A sleeper and its waker, as kvm_swap_active_memslots and invalidate_range_end are:
correct, with the re-check after the wake-up made an ``if`` (--if), or without the wake-up
(--no-wake)."""

import sys

from kvmlock import explore, spawn
from kvmlock.sync import Mutex, RCUWait

RECHECK = "--if" not in sys.argv
WAKE = "--no-wake" not in sys.argv


def body():                      # called afresh for every execution
    lock = Mutex("count_lock")
    w = RCUWait("updater_wait")
    active = [0]

    def invalidator():           # two invalidations, one after the other
        for _ in range(2):
            with lock:
                active[0] += 1
            with lock:
                active[0] -= 1
                last = active[0] == 0
            if last and WAKE:
                w.wake_up()

    def updater():               # may go on only while no invalidation is active
        lock.lock()
        w.prepare()
        while active[0]:
            state = w.set_current_state()
            lock.unlock()
            w.schedule(state)    # returns after a wake-up, not when active[0] is 0
            lock.lock()
            if not RECHECK:
                break
        w.finish()
        assert active[0] == 0, f"went on with {active[0]} invalidation(s) active"
        lock.unlock()

    ts = [spawn(invalidator), spawn(updater)]
    for t in ts:
        t.join()


print(explore.check(body))
