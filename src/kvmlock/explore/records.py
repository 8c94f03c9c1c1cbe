"""What a strategy sees of an execution: frozen records, never the runtime's own objects.

A strategy (see ``strategies/base.py``) is handed, at every scheduling point, the pending
operation of each live task as a :class:`Pending` record, split into the tasks that may run now
and those that may not; it answers with a task id. It is told each step that then executed
(its record, and what only the execution could tell: whether a trylock took its lock, which
task a spawn started) and, at the end, how the execution ended (:class:`Finished`). Before an
execution it says what to replay first (:class:`Plan`). All are immutable tuples, so a
strategy may keep them as long as it likes (DPOR keeps a state's enabled set), and nothing it
does with them can disturb the execution.
"""

from __future__ import annotations

from typing import NamedTuple

#: How an operation synchronises (partial-order reduction treats them apart): a plain access,
#: a blocking lock acquire, a trylock, a lock release, a wait for a condition.
ACQ_NONE, ACQ_LOCK, ACQ_TRY, ACQ_RELEASE, ACQ_WAIT = 0, 1, 2, 3, 4


class ReplayMismatch(Exception):
    """A schedule asked for a task that cannot run at that step."""


class Pending(NamedTuple):
    """The visible operation a task stopped at, to execute when it is scheduled."""

    tid: int  #: the task
    #: a small key of the object it touches (None: spawn, join, interrupt), or a tuple of
    #: ``(key, writes?)`` pairs: a compound operation (see ``strategies/events.conflict``)
    obj: int | tuple | None
    write: bool  #: it may change the object (two operations that do not write commute)
    kind: str  #: "lock", "unlock", "trylock", "load", "spawn", "join", "irq", ...
    label: str  #: the object's name, for traces
    flavour: int  #: ACQ_NONE, ACQ_LOCK, ACQ_TRY, ACQ_RELEASE or ACQ_WAIT
    blocking: bool  #: it runs only while a condition holds (a lock free, a task ended, ...)
    target: int  #: join: the task joined; else -1


class Finished(NamedTuple):
    """How an execution ended."""

    #: None (ran to the end) | "deadlock" | "hang" | "exception" | "pruned" (the strategy
    #: gave up on it) | "error" (a replayed schedule did not fit)
    outcome: str | None
    schedule: tuple[int, ...]  #: the task chosen at each step
    pending: tuple[Pending, ...]  #: what the live tasks were about to do when it ended


#: How strictly :class:`Plan` replays its prefix: the strategy's own earlier steps (a task that
#: cannot run means the body is not deterministic), a user's schedule (the same, said as such),
#: or a candidate schedule (a task that cannot run is replaced by the default choice).
TRUSTED, STRICT, LENIENT = 0, 1, 2


class Plan(NamedTuple):
    """What a strategy wants of the next execution before it is asked anything."""

    #: task ids of the first steps, replayed by the runtime without asking the strategy
    prefix: tuple[int, ...] = ()
    #: the first step the strategy is told of (:meth:`Strategy.executed`); None: the first
    #: step after the prefix (it knows the prefix's steps)
    report_from: int | None = None
    check: int = TRUSTED


def pending(tid: int, obj: int | None, kind: str, write: bool, label: str, flavour: int,
            blocking: bool, target: int = -1) -> Pending:
    """The :class:`Pending` record of these fields. Records are shared: the same operation of
    the same task in the next execution (object keys agree between executions) gets the same
    record, so an execution does not pay for making them again."""
    key = (tid, obj, write, kind, label, flavour, blocking, target)
    return _made.get(key) or _record(key)


def _record(key: tuple) -> Pending:
    """The record of a key of :func:`pending`'s fields, in field order (the runtime's hot
    paths look ``_made`` up themselves and come here on a miss)."""
    if len(_made) >= _MADE_MAX:
        _made.clear()
    rec = _made[key] = _new(Pending, key)
    return rec


_new = tuple.__new__
_made: dict[tuple, Pending] = {}
_MADE_MAX = 1 << 16
