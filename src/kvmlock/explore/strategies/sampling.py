"""Sampling strategies: PCT and a uniform random walk, both reproducible from a seed.

Neither can prove absence; both reach deep schedules that exhaustive search would need too
many executions for. Each execution draws from its own generator seeded by ``(seed, run)``, so
any run can be regenerated, and its recorded schedule replays it exactly anyway.
"""

from __future__ import annotations

import random

from kvmlock.explore.runtime import SimRuntime, Task
from kvmlock.explore.strategies.base import Strategy


class _Sampler(Strategy):
    exhaustive = False

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.run = 0
        self.seen: set[int] = set()
        self.rng = random.Random(0)

    def begin(self, rt: SimRuntime) -> bool:
        self.rng = random.Random(f"{self.name}:{self.seed}:{self.run}")
        self.run += 1
        return True

    def end(self, rt: SimRuntime) -> None:
        self.seen.add(hash(tuple(rt.choices)))

    def distinct(self) -> int:
        return len(self.seen)


class RandomWalk(_Sampler):
    """At every point, any runnable task with equal probability."""

    name = "random"

    def choose(self, enabled: list[Task], cur: Task) -> Task:
        if len(enabled) == 1:
            return enabled[0]
        return enabled[self.rng.randrange(len(enabled))]


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
        self.rt: SimRuntime | None = None

    def begin(self, rt: SimRuntime) -> bool:
        super().begin(rt)
        self.rt = rt
        self.prio = {}
        rng = self.rng
        n = min(self.depth - 1, self.k)
        points = rng.sample(range(1, self.k + 1), n) if n > 0 else []
        self.changes = {p: i for i, p in enumerate(sorted(points))}
        return True

    def end(self, rt: SimRuntime) -> None:
        super().end(rt)
        if rt.nsteps > self.k:
            self.k = rt.nsteps

    def choose(self, enabled: list[Task], cur: Task) -> Task:
        prio = self.prio
        rng = self.rng
        for t in enabled:
            if t.tid not in prio:
                prio[t.tid] = self.depth + rng.random()
        n = self.rt.nsteps  # type: ignore[union-attr]
        i = self.changes.get(n)
        if i is not None and cur.tid in prio:
            prio[cur.tid] = float(i)
        return max(enabled, key=lambda t: prio[t.tid])
