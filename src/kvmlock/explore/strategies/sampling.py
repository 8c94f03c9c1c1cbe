"""Sampling strategies: PCT and a uniform random walk, both reproducible from a seed.

Neither can prove absence; both reach deep schedules that exhaustive search would need too
many executions for. Each execution draws from its own generator seeded by ``(seed, run)``, so
any run can be regenerated, and its recorded schedule replays it exactly anyway.
"""

from __future__ import annotations

import random

from kvmlock.explore.records import Finished, Pending, Plan
from kvmlock.explore.strategies.base import Strategy

_FREE = Plan()  # no prefix: every step is chosen


class _Sampler(Strategy):
    exhaustive = False

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.run = 0
        self.seen: set[int] = set()
        self.rng = random.Random(0)

    def begin(self) -> Plan | None:
        self.rng = random.Random(f"{self.name}:{self.seed}:{self.run}")
        self.run += 1
        return _FREE

    def end(self, run: Finished) -> None:
        self.seen.add(hash(run.schedule))

    def distinct(self) -> int:
        return len(self.seen)


class RandomWalk(_Sampler):
    """At every point, any runnable task with equal probability."""

    name = "random"

    def choose(self, step: int, current: Pending, enabled: tuple[Pending, ...],
               blocked: tuple[Pending, ...]) -> int:
        if len(enabled) == 1:
            return enabled[0].tid
        return enabled[self.rng.randrange(len(enabled))].tid


class PCT(_Sampler):
    """Probabilistic Concurrency Testing (Burckhardt et al., ASPLOS 2010).

    Tasks get random distinct priorities above ``depth``; the highest-priority runnable task
    always runs; at ``depth - 1`` randomly chosen steps the running task drops to a low
    priority. A bug of depth ``d`` among ``n`` tasks and ``k`` steps is then found by each run
    with probability at least ``1 / (n * k**(d-1))``. ``k`` is learnt from the runs so far.
    """

    name = "pct"

    def __init__(self, seed: int, depth: int = 3) -> None:
        super().__init__(seed)
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"pct: depth must be a positive integer, got {depth!r}")
        self.depth = depth
        self.k = 16
        self.prio: dict[int, float] = {}
        self.changes: dict[int, int] = {}

    def begin(self) -> Plan | None:
        plan = super().begin()
        self.prio = {}
        rng = self.rng
        n = min(self.depth - 1, self.k)
        points = rng.sample(range(1, self.k + 1), n) if n > 0 else []
        self.changes = {p: i for i, p in enumerate(sorted(points))}
        return plan

    def end(self, run: Finished) -> None:
        super().end(run)
        if len(run.schedule) > self.k:
            self.k = len(run.schedule)

    def choose(self, step: int, current: Pending, enabled: tuple[Pending, ...],
               blocked: tuple[Pending, ...]) -> int:
        prio = self.prio
        rng = self.rng
        for op in enabled:
            if op.tid not in prio:
                prio[op.tid] = self.depth + rng.random()
        i = self.changes.get(step)
        # the running task drops, whether it can go on or not (an ended one no longer runs)
        if i is not None and current.tid in prio:
            prio[current.tid] = float(i)
        return max(enabled, key=lambda op: prio[op.tid]).tid
