"""What a strategy is: a chooser for one execution at a time, and a plan for the next one.

A strategy sees an execution only through the frozen records of ``explore/records.py``; it
never touches the runtime, its tasks or their primitives. That is the whole contract:

* ``begin()`` -> :class:`Plan` | None: there is a next execution (None: the space is
  exhausted), and these are the task ids of its first steps, which the runtime replays
  without asking (a strategy replays its own earlier executions' prefixes this way; it is
  the one replay path);
* ``choose(step, current, enabled, blocked)`` -> task id | None, at every later scheduling
  point: ``current`` is the pending operation of the task that ran up to here (of a task
  that ended, its last one; it can go on exactly when ``current in enabled``), ``enabled``
  the pending operations that can execute now, in task id order, ``blocked`` those of the
  other live tasks. None abandons the execution (it is counted as pruned);
* ``executed(step, op, acquired, child)``: each step from the plan's ``report_from`` on,
  once it executed;
* ``end(run)``: how the execution ended.

``exhaustive`` strategies can prove the absence of failures (within their bounds); sampling
ones cannot.
"""

from __future__ import annotations

from kvmlock.explore.records import (
    LENIENT,
    STRICT,
    Finished,
    Pending,
    Plan,
)


class Strategy:
    """Decides every scheduling point of an execution and which execution comes next."""

    name = "base"
    exhaustive = False

    def begin(self) -> Plan | None:
        raise NotImplementedError

    def choose(self, step: int, current: Pending, enabled: tuple[Pending, ...],
               blocked: tuple[Pending, ...]) -> int | None:
        raise NotImplementedError

    def executed(self, step: int, op: Pending, acquired: bool, child: int) -> None:
        """Step ``step``, ``op``, executed: it took a lock (``acquired``: a blocking acquire,
        or a trylock that succeeded), it started task ``child`` (a spawn; else -1)."""
        return None

    executed.quiet = True  # type: ignore[attr-defined]  # the runtime need not call it

    def end(self, run: Finished) -> None:
        return None

    def distinct(self) -> int | None:
        """How many different executions were seen, when the strategy can tell cheaply."""
        return None


def default_choice(current: Pending, enabled: tuple[Pending, ...]) -> int:
    """Keep running the task that stopped if it can go on (no preemption), else the lowest id."""
    return current.tid if current in enabled else enabled[0].tid


class Replay(Strategy):
    """Follow a fixed schedule, then continue without preemptions.

    ``strict`` makes a schedule that names a task which cannot run an error (a replayed
    failure must be exact); lenient mode takes the default choice there instead and goes on
    with the schedule's next step, which is what shrinking wants when it tries edited
    schedules.
    """

    name = "replay"
    exhaustive = True

    def __init__(self, schedule: list[int], strict: bool = True) -> None:
        self.schedule = tuple(schedule)
        self.strict = strict
        self._done = False

    def begin(self) -> Plan | None:
        if self._done:
            return None
        self._done = True
        return Plan(self.schedule, check=STRICT if self.strict else LENIENT)

    def choose(self, step: int, current: Pending, enabled: tuple[Pending, ...],
               blocked: tuple[Pending, ...]) -> int:
        return default_choice(current, enabled)
