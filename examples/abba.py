"""ABBA under the explorer with lockdep off: the explorer has to find the deadlock itself."""

from kvmlock import explore, spawn
from kvmlock.sync import Mutex


def body():                      # called afresh for every execution
    a, b = Mutex("a"), Mutex("b")

    def t1():
        with a:
            with b:
                pass

    def t2():
        with b:
            with a:
                pass

    ts = [spawn(t1), spawn(t2)]
    for t in ts:
        t.join()


print(explore.check(body, strategy="dpor", lockdep=False))
