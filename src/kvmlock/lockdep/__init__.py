"""kvmlock.lockdep: a lock-dependency validator with the semantics of Linux lockdep.

Every lock belongs to a *class* (its name or key). Taking lock B while holding A records the
dependency A -> B; a new dependency that closes a strong cycle is a possible deadlock, reported
the first time the order is seen -- before any run actually deadlocks. Also reported: taking a
held class again (AA), releasing a lock not held, exiting with locks held, sleeping under a
spinning lock and a failed ``assert_held``. See docs/lockdep.md.
"""

from __future__ import annotations

from kvmlock import runtime as _rt
from kvmlock.lockdep.api import (
    chains,
    check_live_threads,
    configure,
    disable,
    enable,
    enabled,
    gaps,
    get_mode,
    graph,
    held_locks,
    isolated,
    might_sleep,
    new_world,
    prove_raw_nesting,
    reports,
    reset,
    set_mode,
    settings,
    stats,
    task_exit,
    use_settings,
)
from kvmlock.lockdep.core import LockMap
from kvmlock.lockdep.core import irq_changed as irq_state_changed
from kvmlock.lockdep.graph import DepGraph
from kvmlock.lockdep.memo import Memo
from kvmlock.lockdep.protect import is_held, rcu_read_lock_held
from kvmlock.lockdep.report import Edge, HeldLock, Report
from kvmlock.lockdep.state import KINDS, LIMITS, LockdepError
from kvmlock.lockdep.threading_instr import instrument_threading, threading_instrumented

__all__ = [
    "KINDS", "LIMITS", "DepGraph", "Edge", "HeldLock", "LockMap", "LockdepError", "Memo", "Report",
    "chains", "check_live_threads", "configure", "disable", "enable", "enabled", "gaps", "get_mode",
    "graph", "held_locks",
    "instrument_threading", "irq_state_changed", "is_held", "isolated", "might_sleep",
    "new_world", "prove_raw_nesting", "rcu_read_lock_held", "reports", "reset", "set_mode",
    "settings", "stats", "task_exit", "threading_instrumented", "use_settings",
]

if task_exit not in _rt.task_exit_hooks:
    _rt.task_exit_hooks.append(task_exit)
