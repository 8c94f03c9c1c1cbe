"""The module-level API: reports, modes, limits, isolation, graph snapshots, task end."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import replace
from typing import Any

from kvmlock import runtime as _rt
from kvmlock.lockdep import core
from kvmlock.lockdep import state as _state_mod
from kvmlock.lockdep.graph import DepGraph
from kvmlock.lockdep.memo import Memo
from kvmlock.lockdep.report import Edge, HeldLock, Report
from kvmlock.lockdep.state import (
    _INFO,
    _SYNC,
    LIMITS,
    MODES,
    OPTIONS,
    RCU,
    SPINNING,
    Limits,
    State,
    _emit,
    _GraphLock,
    _held_locks,
    _held_state,
    _info,
    _lock_entries,
    _note,
    _owned,
    _reentered,
    _task_name,
    _wipe,
    mark_off,
    switch_off,
)
from kvmlock.lockdep.usage import ATOMIC
from kvmlock.lockdep.validate import _check_sleep, _contexts
from kvmlock.lockdep.where import user_site


def might_sleep(what: str = "might_sleep") -> None:
    """Report "sleep_in_atomic" when the current task holds a spinning lock or runs where it
    may not sleep (an interrupt handler, interrupts or bottom halves off, non-blockable)."""
    w = _rt.world()
    held = (w.rt.current or core._TLS).lockdep
    if held is None or len(held) < 2:
        return  # nothing held, process context: the common case, decided without the state
    S = w.lockdep
    if not S.on:
        return
    held = core._stack(S)
    state = _held_state(held)
    if not state & ATOMIC and not any(e[0].kind in SPINNING or e[0].kind == RCU
                                      for e in held[1:]):
        return
    found: list[Report] = []
    where = user_site()
    with contextlib.nullcontext() if _reentered(S) else _GraphLock(S):
        _check_sleep(S, held, _contexts(held), state, None, what, where, found)
    _emit(S, found)


def task_exit(task_name: str | None = None) -> None:
    """End of a task: report "held_at_exit" for locks still held, then forget the stack."""
    t = _rt.current_task()
    held = t.lockdep
    if held is None:
        return
    if len(held) == 1:  # nothing held: the common end
        t.lockdep = None
        if t is core._TLS:
            core.LIVE.pop(core._get_ident(), None)
        return
    S = core._state()
    locks = _owned(_lock_entries(held))
    if locks and S.on and held[0][1] is S.root:
        names = tuple(_info(e)[0].name for e in locks)
        found: list[Report] = []
        with _GraphLock(S):
            _note(S, ("held_at_exit", names), Report(
                "held_at_exit", lock=names[-1], task=task_name or _task_name(),
                held_locks=_held_locks([held[0], *locks]),
            ), found)
        if found and S.mode == "warn":  # never raise here: the task is already ending
            sys.stderr.write(str(found[0]))
    del held[1:]
    t.lockdep = None
    if t is core._TLS:
        core.LIVE.pop(core._get_ident(), None)


#: Where a thread blocked acquiring a lock waits (kvmlock's primitives and runtime, the
#: threading wrappers): the top entry of its stack is then the lock it waits for (validated
#: before blocking), not one it holds.
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(core.__file__)))
_WAITING_IN = (os.path.join(_PKG_DIR, "sync") + os.sep, os.path.abspath(_rt.__file__),
               os.path.join(_PKG_DIR, "lockdep", "threading_instr.py"))


def check_live_threads(why: str = "still running when the process ends") -> list[Report]:
    """The process is ending: report "held_at_exit" for every other thread still running with
    locks held (a daemon thread, one started by ``_thread.start_new_thread``). Nobody will
    release them, and whatever needs them during shutdown -- an atexit handler, a finalizer,
    logging's flush -- waits forever. A thread blocked acquiring a lock is not holding it."""
    S = _rt.THREADS_WORLD.lockdep
    if not S.on:
        return []
    me = core._get_ident()
    frames = sys._current_frames()
    found: list[Report] = []
    for ident, held in list(core.LIVE.items()):
        f = frames.get(ident)
        if ident == me or f is None or held[0][1] is not S.root:
            continue
        locks = _lock_entries(held)
        if locks and os.path.abspath(f.f_code.co_filename).startswith(_WAITING_IN):
            locks = locks[:-1]
        locks = _owned(locks)
        if not locks:
            continue
        names = tuple(_info(e)[0].name for e in locks)
        th = threading._active.get(ident)  # type: ignore[attr-defined]
        task = f"{th.name if th is not None else STARTED.get(ident, f'thread {ident}')} ({why})"
        with _GraphLock(S):
            _note(S, ("held_at_exit", names, "live"), Report(
                "held_at_exit", lock=names[-1], task=task,
                held_locks=_held_locks([held[0], *locks]),
            ), found)
    if S.mode == "warn":
        for r in found:
            sys.stderr.write(str(r))
    return found


#: thread ident -> the function a ``_thread.start_new_thread`` thread runs (its name in reports)
STARTED: dict[int, str] = {}


def held_locks() -> list[HeldLock]:
    """What the current task holds, innermost last (debug_show_held_locks); nothing is
    tracked while validation is off."""
    S = core._state()
    return _held_locks(core._stack(S)) if S.on else []


def reports() -> list[Report]:
    """Every distinct problem found so far in the current state, oldest first."""
    return list(core._state().reports)


def reset() -> None:
    """Forget everything: classes, dependencies, chains, reports. Locks held now are dropped
    from their stacks (their later release passes silently)."""
    w = _rt.world()
    old = w.lockdep
    w.lockdep = State(old.mode)
    _state_mod.GAPS.clear()
    with _GraphLock(old):
        _wipe(old.root)


def set_mode(mode: str) -> None:
    """"warn": print each problem once; "raise": raise LockdepError; "collect": stay silent."""
    if mode not in MODES:
        raise ValueError(f"lockdep mode must be one of {MODES}, got {mode!r}")
    core._state().mode = mode


def get_mode() -> str:
    """The current mode: "warn", "raise" or "collect"."""
    return core._state().mode


def enable() -> None:
    """Switch validation back on (held stacks restart empty)."""
    S = core._state()
    if not S.on:
        with _GraphLock(S):  # stacks from before are restarted on their next miss
            old, S.root, S.nchains = S.root, {}, 0
            _wipe(old)
        S.on = True
        S.overflow = None
        mark_off(S, False)


def disable() -> None:
    """Switch validation off: the chain cache is emptied, so every acquire misses it and the
    miss path, seeing the flag, only notes that the lock was taken unvalidated."""
    S = core._state()
    if S.on:
        with _GraphLock(S):
            switch_off(S)


def enabled() -> bool:
    """Whether validation is on (off after disable() or a table overflow)."""
    return core._state().on


def prove_raw_nesting(on: bool = True) -> None:
    """Also report "wait_context": a spinlock_t or rwlock_t taken under a raw spinlock, which
    sleeps on PREEMPT_RT (the kernel's CONFIG_PROVE_RAW_LOCK_NESTING). Off by default; set it
    before the run, since chains already validated are not checked again."""
    if not isinstance(on, bool):
        raise TypeError(f"prove_raw_nesting takes a bool, got {type(on).__name__}")
    OPTIONS["raw_nesting"] = on


def configure(**limits: int) -> dict[str, int]:
    """Set table limits (max_classes, max_edges, max_chains, max_depth); returns them all."""
    for name, value in limits.items():
        if name not in Limits.__slots__:
            raise ValueError(f"unknown lockdep limit {name!r}; known: {list(Limits.__slots__)}")
        if value.__class__ is not int or value < 1:
            raise ValueError(f"lockdep limit {name} must be a positive int, got {value!r}")
    for name, value in limits.items():
        setattr(LIMITS, name, value)
    return LIMITS.as_dict()


def settings() -> dict[str, Any]:
    """The process-wide validation settings (:func:`prove_raw_nesting`, :func:`configure`'s
    limits), for a worker in another process to validate as this one does: a process Ray
    starts does not inherit them, as a forked one does."""
    return {"options": dict(OPTIONS), "limits": LIMITS.as_dict()}


def use_settings(got: dict[str, Any]) -> None:
    """Validate with the settings :func:`settings` read in another process."""
    prove_raw_nesting(got["options"]["raw_nesting"])
    configure(**got["limits"])


def gaps() -> list[str]:
    """What this process's lockdep could not validate since the last :func:`reset`: a run
    with gaps may have missed a problem, so a clean report from it is incomplete."""
    return list(_state_mod.GAPS)


def stats() -> dict[str, Any]:
    """Sizes of the tables: how much validation work a run created."""
    S = core._state()
    return {"classes": len(S.classes), "edges": S.nedges, "chains": S.nchains,
            "reports": len(S.reports), "enabled": S.on}


def graph() -> DepGraph:
    """A snapshot of the dependency graph (one Edge per recorded kind of each link)."""
    S = core._state()
    with contextlib.nullcontext() if _reentered(S) else _GraphLock(S):
        g = DepGraph({c.name: kind for c, kind in S.classes.items()})
        for c, links in list(S.after.items()):
            for link in list(links.values()):
                for (sr, dr), where in list(link.sites.items()):
                    g.edges.append(Edge(c.name, link.dst.name, sr, max(dr, 0), where, dr < 0))
        g.refused = list(S.refused.values())
        g.protected = [replace(p, where=str(p.where), violations=list(p.violations),
                               updates=[(h, str(w)) for h, w in p.updates])
                       for p in S.protected.values()]
    g.chains = [tuple(h.name for h in chain) for chain in chains()]
    return g


def chains() -> list[tuple[HeldLock, ...]]:
    """Every distinct chain of held locks validated so far (outermost first): which locks
    were held together when each lock was taken. synchronize() checks are not chains."""
    S = core._state()
    out: list[tuple[HeldLock, ...]] = []
    if not S.on:
        return out  # switching off emptied the chain cache (its trie is a sink now)
    with contextlib.nullcontext() if _reentered(S) else _GraphLock(S):
        todo: list[tuple[dict, tuple[HeldLock, ...]]] = [(S.root, ())]
        while todo:
            node, trail = todo.pop()
            for hid, child in list(node.items()):
                if hid < -1:  # an interrupt-state mark: its chains go on from here
                    todo.append((child, trail))
                    continue
                if hid < 0 or hid % 8 == _SYNC:
                    continue
                cls, read, _trylock, where = child[_INFO]
                step = (*trail, HeldLock(cls.name, read, where))
                out.append(step)
                todo.append((child, step))
    return out


def new_world(rt: Any, mode: str = "collect", memo: Memo | None = None) -> _rt.World:
    """A world for ``rt`` with a fresh lockdep state of its own (graph, chains, reports).

    ``memo``: the chain memory of the exploration this world's execution belongs to (see
    lockdep/memo.py); the state then skips validating chains the exploration already
    validated, with the same reports, graph and chains as without it."""
    if mode not in MODES:
        raise ValueError(f"lockdep mode must be one of {MODES}, got {mode!r}")
    S = State(mode)
    if memo is not None:
        memo.attach(S)
    return _rt.World(rt, S)


class isolated:  # noqa: N801 - used like the function it replaced: ``with isolated():``
    """A fresh private lockdep state for the block (graph, chains, reports), then the old one.

    The block runs in a world of its own (same runtime, new lockdep state), entered in the
    calling context only: other threads keep theirs, and threads started inside with
    ``kvmlock.spawn`` inherit it. Read :func:`reports` before leaving. The current task's held
    stack is set aside too.
    """

    __slots__ = ("mode", "token", "task", "saved")

    def __init__(self, mode: str = "collect") -> None:
        if mode not in MODES:
            raise ValueError(f"lockdep mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def __enter__(self) -> State:
        w = new_world(_rt.world().rt, self.mode)
        t = self.task = _rt.current_task()
        self.saved = t.lockdep
        t.lockdep = None
        self.token = _rt.enter(w)
        return w.lockdep

    def __exit__(self, *exc: object) -> None:
        _rt.leave(self.token)
        self.task.lockdep = self.saved
