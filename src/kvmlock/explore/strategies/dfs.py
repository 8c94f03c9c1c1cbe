"""Exhaustive search, fewest preemptions first (CHESS's iterative context bounding).

Every execution is identified by its schedule. A run follows a prefix and then never preempts;
each point where it could have chosen differently becomes a new prefix, filed under the number
of preemptions it costs. Prefixes with fewer preemptions run first, so the simplest failing
interleavings come out first, and a ``preemption_bound`` simply stops filing costlier ones
(Musuvathi and Qadeer, PLDI 2007). Each schedule is run exactly once: a run only files
alternatives beyond its own prefix, so the prefixes form a tree.
"""

from __future__ import annotations

from kvmlock.explore.runtime import SimRuntime, Task
from kvmlock.explore.strategies.base import Strategy


class DFS(Strategy):
    name = "dfs"
    exhaustive = True

    def __init__(self, preemption_bound: int | None = None) -> None:
        self.bound = preemption_bound
        self.levels: list[list[tuple[int, ...]]] = [[()]]
        self.rt: SimRuntime | None = None

    def begin(self, rt: SimRuntime) -> bool:
        for level in self.levels:
            if level:
                rt.prefix = level.pop()
                self.rt = rt
                return True
        return False

    def choose(self, enabled: list[Task], cur: Task) -> Task:
        rt = self.rt
        can_continue = cur in enabled  # (the prefix's steps never get here: rt.prefix)
        d = cur if can_continue else enabled[0]
        if len(enabled) > 1:
            base = rt.choices  # type: ignore[union-attr]
            for t in enabled:
                if t is d:
                    continue
                cost = len(rt.preempt_steps) + (1 if can_continue else 0)  # type: ignore[union-attr]
                if self.bound is not None and cost > self.bound:
                    continue
                while len(self.levels) <= cost:
                    self.levels.append([])
                self.levels[cost].append((*base, t.tid))
        return d

    def subtree(self, prefix: tuple[int, ...]) -> DFS:
        """Explore only the schedules that start with ``prefix`` (parallel exploration)."""
        self.levels = [[tuple(prefix)]]
        return self

    def donate(self) -> list[tuple[int, ...]]:
        """Give away half of the prefixes filed but not run yet, the shortest (the largest
        subtrees) first; each is run by exactly one explorer, so no schedule runs twice."""
        pending = sorted((p for level in self.levels for p in level), key=len)
        give = pending[:len(pending) // 2]
        if give:
            keep = set(pending[len(give):])
            self.levels = [[p for p in level if p in keep] for level in self.levels]
        return give
