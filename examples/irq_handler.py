"""A device's interrupt handler takes the lock its driver takes: with irqsave, and without."""

import sys

from kvmlock import explore, irq, spawn
from kvmlock.sync import SpinLock


def driver(irqsave):
    def body():                  # called afresh for every execution
        dev_lock = SpinLock("dev->lock")

        def handler():           # runs on the worker's CPU, whenever it has interrupts on
            with dev_lock:
                pass

        def worker():
            for _ in range(2):
                with dev_lock.irqsave() if irqsave else dev_lock:
                    pass

        t = spawn(worker)
        irq.inject(handler, cpu=t, name="dev_irq")
        t.join()

    return body


irqsave = "--irqsave" in sys.argv
print(explore.check(driver(irqsave), lockdep=False))
