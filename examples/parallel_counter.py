"""One exhaustive exploration on worker processes: the same traces as in one process."""

import sys

from kvmlock import explore, spawn
from kvmlock.sync import Mutex


def body():                      # 3 tasks x 3 locked increments: 9!/(3!)^3 = 1680 traces
    m = Mutex("counter_lock")
    c = [0]

    def worker():
        for _ in range(3):
            with m:
                c[0] += 1

    ts = [spawn(worker) for _ in range(3)]
    for t in ts:
        t.join()
    assert c[0] == 9


workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
print(explore.check(body, workers=workers))
