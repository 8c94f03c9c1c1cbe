"""The cyclic garbage collector's pace during an execution: once, at its end.

Every execution builds its own world -- a runtime, tasks, and the whole model the body makes
(a KVM scenario: a VM with its pages, locks and wait queues) -- and nearly all of it is made of
reference cycles (a primitive's wait queue names its owner, a cell its runtime, a vCPU its
VM), so it dies only when the collector finds it. At the default pace (a first-generation
pass every 700 net allocations) the collector traverses the live model again and again while
the execution runs, promotes it to the older generations, and frees it there in full passes
over the whole heap: a fifth of ``kvmlock verify``'s CPU time went to that. While an
execution runs the first-generation threshold is therefore raised (:data:`THRESHOLD`
allocations, so a long execution is still collected as it goes); the default comes back at
its end, when what the collector then finds is that execution's garbage, which it frees in one
pass. Nothing else changes: which objects are collected, and that finalizers run, is the
same; only when.

The setting is the process's, so concurrent explorations (threads) share it: the first one in
raises it, the last one out puts back what it found.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: The first generation's threshold while an execution runs.
THRESHOLD = 100_000

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, ...] = ()
#: What the permanent generation held when this module was imported: none on 3.11 and 3.13; on
#: 3.12 a few hundred of the interpreter's immortal objects, which every full collection puts
#: there again (so the count alone does not say whether the program froze objects itself).
_FROZEN_AT_START = gc.get_freeze_count()


def hold() -> None:
    """An execution starts: collect at its end rather than while it runs (pair with
    :func:`release`)."""
    global _depth, _saved
    with _lock:
        if not _depth:
            _saved = gc.get_threshold()
            if _saved[0] and _saved[0] < THRESHOLD:  # (0: the program switched it off)
                gc.set_threshold(THRESHOLD, *_saved[1:])
        _depth += 1


def release() -> None:
    """The execution ended: the collector's own pace again (its next pass frees the
    execution's garbage)."""
    global _depth
    with _lock:
        _depth -= 1
        if not _depth:
            gc.set_threshold(*_saved)


@contextlib.contextmanager
def settled() -> Iterator[None]:
    """A long run of explorations (``kvmlock verify``): what is alive when it starts -- the
    imported modules, the model's classes, the parsed locking document, tens of thousands of
    objects that live as long as the process -- is left out of the collector's passes until
    the block ends (``gc.freeze``), so that a full pass, which comes every few hundred
    executions, traverses what the explorations made instead of all of that again (it was
    nearly all such a pass cost). Garbage is collected first, so none is held meanwhile; at
    the end the objects join the oldest generation again. Nothing is done when the program
    froze objects itself, or switched the collector off. (A count no higher than at import is
    not the program's: on 3.12 it is the interpreter's immortal objects, which the block thaws
    with its own and the next full collection puts back. A program that froze fewer objects
    than that is taken for the interpreter: only the collector's pace differs.)"""
    if gc.get_freeze_count() > _FROZEN_AT_START or not gc.isenabled():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
