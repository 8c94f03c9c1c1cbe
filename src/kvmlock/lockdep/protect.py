"""What a lock protects: "is this lock held here?", and the two reports about protected data.

The kernel checks the data side of locking with the same held-lock stacks it validates orders
with: ``lockdep_is_held()`` answers whether the current task holds a lock, ``rcu_dereference_check``
and friends print "suspicious RCU usage" when a protected pointer is read outside its read side
without the update-side condition. This module is that half: :func:`is_held` (any kvmlock
primitive, a ``LockMap``, a ``threading`` lock made under instrumentation), the RCU read side
that ``kvmlock.sync.rcu_read_lock()`` enters, and the reports ``suspicious_rcu`` and
``unguarded`` that ``kvmlock.sync``'s protected pointers and guarded fields make.

With validation off every lock counts as held (as the kernel's ``lockdep_is_held`` does once
``debug_locks`` is off): a check that cannot know stays silent rather than raise a false alarm.
"""

from __future__ import annotations

from kvmlock import runtime as _rt
from kvmlock.lockdep import core
from kvmlock.lockdep.report import ProtectedData, Report
from kvmlock.lockdep.state import _INFO, _held_locks, _info, _lock_entries, _report, _task_name
from kvmlock.lockdep.where import site, user_site

#: The RCU read side (``rcu_read_lock``): a recursive read of one pseudo-lock, as in the kernel,
#: so it shows among a task's held locks in every report.
RCU_READ_LOCK = core.LockMap("rcu_read_lock", "rcu")


_world = _rt.world
_LockMap = core.LockMap
_TLS = core._TLS


def lock_map(lock: object) -> core.LockMap | None:
    """The lockdep map behind ``lock`` (a kvmlock primitive, a checked threading lock, or a
    ``LockMap`` itself); None for a lock lockdep does not see."""
    if lock.__class__ is _LockMap:
        return lock  # type: ignore[return-value]
    m = getattr(lock, "_map", lock)
    return m if isinstance(m, _LockMap) else None


def lock_name(lock: object) -> str:
    """The class name reports give ``lock``."""
    m = lock_map(lock)
    return m.name if m is not None else getattr(lock, "name", None) or repr(lock)


def read_of(w: _rt.World, m: core.LockMap) -> int | None:
    """How the current task of world ``w`` holds map ``m``: None (not held), 0 (exclusively),
    1 or 2 (for read). The caller has checked that validation is on."""
    held = (w.rt.current or _TLS).lockdep
    if held is None:
        return None
    S = w.lockdep
    if held[0][1] is not S.root:
        held = core._stack(S)  # left from before reset()/enable(): restarted (emptied) here
    i = len(held) - 1
    while i:
        e = held[i]
        if e[0] is m:
            return e[1][_INFO][1]  # the chain node: (class, read, trylock, where)
        i -= 1
    return None


def held_read(lock: object) -> int | None:
    """How the current task holds ``lock``: None (not held), 0 (exclusively), 1 or 2 (for
    read). With validation off, 0: whatever the task does is taken as allowed."""
    w = _world()
    if not w.lockdep.on:
        return 0
    m = lock_map(lock)
    if m is None:
        return 0 if _plain_held(lock) else None
    return read_of(w, m)


def check_lock(lock: object) -> None:
    """A clear TypeError, up front, for something that is not a lock lockdep can ask about."""
    if lock_map(lock) is None and not callable(getattr(lock, "_is_owned", None)) and \
            not callable(getattr(lock, "locked", None)):
        raise TypeError(f"{lock!r} is not a lock (a kvmlock primitive, a threading lock or a "
                        f"LockMap)")


def _plain_held(lock: object) -> bool:
    """A ``threading`` lock lockdep does not track (made before instrumentation): an RLock
    knows its owner; a plain Lock only whether anyone holds it, the best that can be said."""
    owned = getattr(lock, "_is_owned", None)
    if callable(owned):
        return bool(owned())
    check_lock(lock)
    return bool(lock.locked())  # type: ignore[attr-defined]


def is_held(lock: object) -> bool:
    """``lockdep_is_held()``: whether the current task holds ``lock``, in any mode.

    The usual ``cond`` of ``srcu_dereference_check`` / ``dereference_protected``.
    """
    return held_read(lock) is not None


def rcu_read_lock_held() -> bool:
    """Whether the current task is inside an RCU read-side critical section."""
    return held_read(RCU_READ_LOCK) is not None


def record(kind: str, name: str, lock: str, read_side: str = "") -> ProtectedData:
    """The current state's record of one protected datum, made on its first checked access.

    Guarded data is one datum per (name, lock); an RCU pointer one per name, ``lock`` being
    the read side its readers use. Callers keep the record until the state changes, so a
    checked access pays for this once per run, not once per access. Its ``where`` is kept as
    a :class:`~kvmlock.lockdep.where.Site`, made text by the graph snapshot that shows it.
    """
    key = (kind, name, "" if kind == "rcu" else lock)
    table = _world().lockdep.protected
    p = table.get(key)
    if p is None:
        p = table.setdefault(key, ProtectedData(name, kind, lock, read_side, site(2)))
    elif not p.lock and lock:
        p.lock = lock
    return p


def published(name: str) -> None:
    """An RCU pointer was published: remember which locks its update side held."""
    held = core._stack()
    names = tuple(sorted({_info(e)[0].name for e in _lock_entries(held)}))
    p = record("rcu", name, "")
    if all(h != names for h, _w in p.updates):
        p.updates.append((names, site(2)))  # (text in the graph snapshot, as ``where``)


def _violated(p: ProtectedData, where: str) -> None:
    if where not in p.violations:
        p.violations.append(where)


def suspicious_rcu(data: str, api: str, read_side: str) -> None:
    """Report a protected pointer read outside its read side, the condition false.

    ``data`` names the pointer, ``api`` the accessor (``srcu_dereference_check()``), and
    ``read_side`` the lock whose read side was missing ("" for ``rcu_dereference_protected``,
    which has none). Reported once per pointer and call site, as the kernel warns once per site.
    """
    where = user_site()
    _violated(record("rcu", data, read_side), where)
    _report(core._state(), ("suspicious_rcu", data, where), Report(
        "suspicious_rcu", lock=read_side or None, task=_task_name(), where=where, what=api,
        data=data, held_locks=_held_locks(core._stack()),
    ))


def unguarded(data: str, lock: str, access: str, read_side: str = "", how: int | None = None,
              ) -> None:
    """Report an access to lock-protected data without the protection.

    ``access`` is "read" or "write"; ``read_side`` the lock whose read side would also have
    allowed a read; ``how`` what the task held of ``lock`` (1 or 2: only its read side).
    """
    where = user_site()
    _violated(record("guarded", data, lock, read_side), where)
    _report(core._state(), ("unguarded", data, access, where), Report(
        "unguarded", lock=lock, held=read_side or None, task=_task_name(), where=where,
        what=access, data=data, held_read=how or 0, held_locks=_held_locks(core._stack()),
    ))
