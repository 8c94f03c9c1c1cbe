"""Exhaustive search, fewest preemptions first (CHESS's iterative context bounding).

Every execution is identified by its schedule. A run follows a prefix and then never preempts;
each point where it could have chosen differently becomes a new prefix, filed under the number
of preemptions it costs. Prefixes with fewer preemptions run first, so the simplest failing
interleavings come out first, and a ``preemption_bound`` simply stops filing costlier ones
(Musuvathi and Qadeer, PLDI 2007). Each schedule is run exactly once: a run only files
alternatives beyond its own prefix, so the prefixes form a tree.
"""

from __future__ import annotations

from kvmlock.explore.records import Pending, Plan
from kvmlock.explore.strategies.base import Strategy


class DFS(Strategy):
    name = "dfs"
    exhaustive = True

    def __init__(self, preemption_bound: int | None = None) -> None:
        self.bound = preemption_bound
        self.levels: list[list[tuple[int, ...]]] = [[()]]
        self.path: list[int] = []  # the current execution's schedule so far
        self.pre = 0  # its preemptions: its prefix's level (the steps it chooses never preempt)

    def begin(self) -> Plan | None:
        for cost, level in enumerate(self.levels):
            if level:
                prefix = level.pop()
                self.path = list(prefix)
                self.pre = cost
                return Plan(prefix)
        return None

    def choose(self, step: int, current: Pending, enabled: tuple[Pending, ...],
               blocked: tuple[Pending, ...]) -> int:
        can_continue = current in enabled
        d = current.tid if can_continue else enabled[0].tid
        if len(enabled) > 1:
            base = self.path
            cost = self.pre + (1 if can_continue else 0)
            if self.bound is None or cost <= self.bound:
                while len(self.levels) <= cost:
                    self.levels.append([])
                level = self.levels[cost]
                for op in enabled:
                    if op.tid != d:
                        level.append((*base, op.tid))
        self.path.append(d)
        return d

    def subtree(self, prefix: tuple[int, ...], cost: int = 0) -> DFS:
        """Explore only the schedules that start with ``prefix``, which makes ``cost``
        preemptions (parallel exploration)."""
        self.levels = [[] for _ in range(cost)] + [[tuple(prefix)]]
        return self

    def donate(self) -> list[tuple[tuple[int, ...], int]]:
        """Give away half of the prefixes filed but not run yet, the shortest (the largest
        subtrees) first, each with its cost; each is run by exactly one explorer, so no
        schedule runs twice."""
        pending = sorted(((p, c) for c, level in enumerate(self.levels) for p in level),
                         key=lambda pc: len(pc[0]))
        give = pending[:len(pending) // 2]
        if give:
            keep = {p for p, _c in pending[len(give):]}
            self.levels = [[p for p in level if p in keep] for level in self.levels]
        return give
