"""Data a lock protects, checked on every access: ``guarded_by`` fields and ``Guarded`` cells.

Clang's ``GUARDED_BY`` and Rust's ``Mutex<T>`` make "this field is protected by that lock" part
of the program; here it is checked at run time with lockdep's held-lock stacks, so it works for
every kind of lock lockdep sees -- kvmlock primitives, and ``threading`` locks made under
``kvmlock lockdep`` -- in real threads and under the explorer alike. An access without the
protection is a report of kind ``unguarded`` naming the field, the lock, the access site and
what the task held.

A protection is one of:

* any access needs the lock (the default);
* writes need the lock, reads need the lock *or* a named read side (``read_side=``: an SRCU,
  or ``"rcu_read_lock"``) -- data published to readers;
* writes need the lock and reads are free (``writes_only=True``) -- data read locklessly on
  purpose, as the kernel's ``READ_ONCE`` readers do.

A write needs the lock held exclusively: a reader-writer lock held for read guards reads only.
The first assignment of a field initialises it and is not checked (an object is built before
anyone else can see it), nor is an access made while the lock itself is not built yet.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Generic, TypeVar

from kvmlock.lockdep.protect import (
    RCU_READ_LOCK,
    check_lock,
    held_read,
    lock_map,
    lock_name,
    read_of,
    record,
    unguarded,
)
from kvmlock.lockdep.where import user_site
from kvmlock.runtime import world as _world

__all__ = ["Guarded", "changed_in_place", "data_racy", "guarded_by", "peek"]

T = TypeVar("T")


class data_racy:  # noqa: N801 - reads as the annotation it is: ``x = data_racy("why")``
    """A field whose accesses may race on purpose, as the kernel's ``data_race()`` says: a
    statistic, a hint re-checked under a lock. The race audit (``kvmlock verify --audit``)
    excuses unordered accesses of the field, counting them under ``why``; nothing else changes
    (the value lives in the instance, the class attribute only names the reason)."""

    __slots__ = ("racy_why",)

    def __init__(self, why: str) -> None:
        if not isinstance(why, str) or not why.strip():
            raise TypeError("data_racy: say why the race is benign, as a non-empty string")
        self.racy_why = why


class _Seen:
    """What a guard remembers so a checked access pays nothing to be counted: the lockdep
    state (and the lock's map) its data was last recorded in."""

    __slots__ = ("data", "_seen_state", "_seen_map")

    def __init__(self) -> None:
        self.data = ""
        self._seen_state: object = None
        self._seen_map: object = None

    def _read_side(self, src: object) -> object:
        """The read side that also allows reads (None: none), given the accessed object."""
        raise NotImplementedError

    def _check(self, lock: object, src: object, write: bool) -> None:
        """Report the access unless the task holds what protects the data."""
        w = _world()
        S = w.lockdep
        if not S.on:
            return
        m = lock_map(lock)
        if self._seen_state is not S or self._seen_map is not m:
            side = self._read_side(src)
            record("guarded", self.data, lock_name(lock),
                   "" if side is None else lock_name(side))
            self._seen_state, self._seen_map = S, m
        how = read_of(w, m) if m is not None else held_read(lock)
        if how == 0 or (how is not None and not write):
            return
        read_side = self._read_side(src)
        if not write and read_side is not None and held_read(read_side) is not None:
            return
        side = "" if read_side is None or write else lock_name(read_side)
        unguarded(self.data, lock_name(lock), "write" if write else "read", side, how)


def _rcu_or(value: object) -> object:
    return RCU_READ_LOCK if value == "rcu_read_lock" else value


class guarded_by(_Seen):  # noqa: N801 - reads as the annotation it is: ``x = guarded_by(...)``
    """A field of a class protected by the lock at attribute ``lock`` of the same object.

    ``lock`` and ``read_side`` are attribute paths (``"vm.slots_lock"`` follows ``self.vm``);
    ``read_side`` may also be ``"rcu_read_lock"``. The value lives in the instance's
    ``__dict__`` under the field's name, so the class needs one.

    ``visible=True`` makes every read and every write after the first a visible operation of
    the explorer (on the owning object): for a field whose race is the point, such as one a
    broken variant writes after dropping the lock, the access must be a step of its own or no
    schedule can put another task between the unlock and it.
    """

    __slots__ = ("lock", "read_side", "writes_only", "visible", "field", "_lock", "_side")

    def __init__(self, lock: str, *, read_side: str | None = None,
                 writes_only: bool = False, visible: bool = False) -> None:
        if not isinstance(lock, str) or not lock:
            raise TypeError(f"guarded_by: name the lock attribute as a string, got {lock!r}")
        if read_side is not None and (not isinstance(read_side, str) or not read_side):
            raise TypeError(f"guarded_by: read_side must be an attribute name or "
                            f"'rcu_read_lock', got {read_side!r}")
        if read_side is not None and writes_only:
            raise ValueError("guarded_by: writes_only already leaves reads free; drop read_side")
        super().__init__()
        self.lock = lock
        self.read_side = read_side
        self.writes_only = bool(writes_only)
        self.visible = bool(visible)
        self.field = ""
        self._lock = attrgetter(lock)
        self._side = None if read_side is None or read_side == "rcu_read_lock" else \
            attrgetter(read_side)

    def __set_name__(self, owner: type, name: str) -> None:
        if not any(k is not object and ("__slots__" not in vars(k) or "__dict__" in k.__slots__)
                   for k in owner.__mro__):
            raise TypeError(f"guarded_by on {owner.__name__}.{name}: the class has __slots__ and "
                            f"no __dict__ to keep the value in")
        self.field = name
        self.data = f"{owner.__name__}.{name}"

    def visible_access(self, obj: object, kind: str) -> bool:
        """Whether an access of this field (``kind``: "read", "write" or "delete") about to be
        made on ``obj`` is a visible operation of the explorer: with ``visible=True``, every
        read, and every write but the first; a delete never is. The race audit credits such
        an access to its own step rather than to the step before it."""
        if not self.visible or kind == "delete":
            return False
        return kind == "read" or self.field in getattr(obj, "__dict__", ())

    def _read_side(self, src: object) -> object:
        if self.read_side is None:
            return None
        if self._side is None:
            return RCU_READ_LOCK
        try:
            return self._side(src)
        except AttributeError:
            return None  # not built yet: only the lock itself guards the field

    def _guard(self, obj: object, write: bool) -> None:
        try:
            lock = self._lock(obj)
        except AttributeError:
            return  # the lock is not built yet: the object is still being constructed
        self._check(lock, obj, write)

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if self.visible:
            _world().rt.point(obj, f"read {self.field}", False)
        try:
            value = obj.__dict__[self.field]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute "
                                 f"{self.field!r} (guarded by {self.lock}, not set yet)") from None
        if not self.writes_only:
            self._guard(obj, False)
        return value

    def __set__(self, obj: object, value: Any) -> None:
        d = obj.__dict__
        if self.field in d:
            if self.visible:
                _world().rt.point(obj, f"write {self.field}", True)
            self._guard(obj, True)
        d[self.field] = value

    def __delete__(self, obj: object) -> None:
        self._guard(obj, True)
        try:
            del obj.__dict__[self.field]
        except KeyError:
            raise AttributeError(self.field) from None

    def __repr__(self) -> str:
        return f"<guarded_by {self.lock} for {self.data or '?'}>"


def _field(obj: object, field: str, who: str) -> guarded_by:
    desc = getattr(type(obj), field, None)
    if not isinstance(desc, guarded_by):
        raise TypeError(f"{who}: {type(obj).__name__}.{field} is not a guarded_by field")
    return desc


def peek(obj: object, field: str) -> Any:
    """A guarded field's value read without the check.

    For what stands outside the program: an invariant a test asserts once every task has
    finished, or a wait condition the scheduler evaluates as the wake-up that the waiter then
    re-checks under the lock. Program code reads through the attribute.
    """
    _field(obj, field, "peek")
    return obj.__dict__[field]


def changed_in_place(obj: object, field: str) -> None:
    """The container a guarded field holds was changed in place (an item added or removed):
    checked as the write it is. The field's readers keep using the same container, so
    nothing is stored; storing it back would also look, to the race audit, like a new
    value published to every lockless reader of the field."""
    _field(obj, field, "changed_in_place")._guard(obj, True)


class Guarded(_Seen, Generic[T]):
    """A standalone value protected by ``lock``: read with :meth:`get` (or ``.value``), write
    with :meth:`set`. ``read_side`` (a lock, an SRCU, or ``"rcu_read_lock"``) also allows reads;
    ``writes_only`` leaves reads free. ``name`` is what reports call it (by default, where it
    was made)."""

    __slots__ = ("_value", "lock", "read_side", "writes_only")

    def __init__(self, value: T, lock: object, *, read_side: object = None,
                 writes_only: bool = False, name: str | None = None) -> None:
        check_lock(lock)
        if read_side not in (None, "rcu_read_lock"):
            check_lock(read_side)
        super().__init__()
        self._value = value
        self.lock = lock
        self.read_side = _rcu_or(read_side)
        self.writes_only = bool(writes_only)
        self.data = name or f"guarded value made at {user_site()}"

    def get(self) -> T:
        if not self.writes_only:
            self._check(self.lock, None, False)
        return self._value

    def set(self, value: T) -> None:
        self._check(self.lock, None, True)
        self._value = value

    def _read_side(self, src: object) -> object:
        return self.read_side

    value = property(get, set)

    @property
    def name(self) -> str:
        """What reports call the value."""
        return self.data

    def __repr__(self) -> str:
        return f"<Guarded {self.data} by {lock_name(self.lock)}>"
