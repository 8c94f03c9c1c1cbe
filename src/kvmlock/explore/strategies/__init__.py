"""Exploration strategies: exhaustive (dfs, dpor) and sampling (pct, random)."""

from kvmlock.explore.strategies.base import Replay, Strategy
from kvmlock.explore.strategies.dfs import DFS
from kvmlock.explore.strategies.dpor import DPOR
from kvmlock.explore.strategies.sampling import PCT, RandomWalk

__all__ = ["DFS", "DPOR", "PCT", "RandomWalk", "Replay", "Strategy"]
