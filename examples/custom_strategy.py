"""A scheduling strategy of one's own: tasks take turns, ``quantum`` steps each.

The strategy sees only frozen records (``explore.Pending``): the operation each task is
about to do, which of them can run now, and each step once it executed. It answers with a
task id. One execution per quantum, 1 to ``longest``: a quantum of 1 switches task at every
visible operation, which is what a lost update needs.
"""

from kvmlock import explore, spawn
from kvmlock.sync import Atomic64


class TakeTurns(explore.Strategy):
    name = "take-turns"
    exhaustive = False  # a few schedules, not all of them: it cannot prove absence

    def __init__(self, longest: int = 3) -> None:
        self.quanta = list(range(longest, 0, -1))
        self.quantum = 0
        self.ran = 0  # steps the task that runs now has had in a row
        self.last = -1

    def begin(self) -> explore.Plan | None:
        if not self.quanta:
            return None  # no next execution
        self.quantum = self.quanta.pop()
        self.ran, self.last = 0, -1
        return explore.Plan()  # nothing to replay: every step is chosen here

    def choose(self, step, current, enabled, blocked):
        if current in enabled and self.ran < self.quantum:
            return current.tid  # its turn goes on
        after = [op.tid for op in enabled if op.tid > current.tid]
        return after[0] if after else enabled[0].tid  # the next task in id order, round

    def executed(self, step, op, acquired, child):
        self.ran = self.ran + 1 if op.tid == self.last else 1
        self.last = op.tid


def lost_update():
    x = Atomic64(0, name="x")

    def inc():
        for _ in range(2):
            v = x.load()
            x.store(v + 1)

    ts = [spawn(inc), spawn(inc)]
    for t in ts:
        t.join()
    assert x.load() == 4, f"lost update: x = {x.load()}"


if __name__ == "__main__":
    res = explore.check(lost_update, TakeTurns(3))
    print(res.headline())
    print(res.failure.summary())
    print(explore.replay(lost_update, res.failure.schedule).headline())
