"""What every primitive shares: validating its name and nesting subclass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmlock import irq
from kvmlock.lockdep.state import check_subclass


def check_name(name: object, what: str) -> str:
    """A lock's name is its lockdep class, so an empty or non-string name is a caller bug."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what}: the name must be a non-empty string naming the lock class, "
                        f"got {name!r}")
    return name


class Nested:
    """``with lock.nested(n):`` -- take a lock of an already-held class on purpose."""

    __slots__ = ("_lock", "_subclass")

    def __init__(self, lock: object, subclass: int) -> None:
        self._lock = lock
        self._subclass = check_subclass(subclass)

    def __enter__(self) -> object:
        self._lock.lock(self._subclass)  # type: ignore[attr-defined]
        return self._lock

    def __exit__(self, *exc: object) -> None:
        self._lock.unlock()  # type: ignore[attr-defined]


class Section:
    """A context manager made of a lock and an unlock call (``with rw.read():``); its
    ``irqsave()``, ``irq()`` and ``bh()`` are the same section with interrupts (or bottom
    halves) off, as ``read_lock_irqsave`` and friends (of an rwlock_t: a lock that sleeps on
    PREEMPT_RT)."""

    __slots__ = ("_enter", "_exit")

    def __init__(self, enter, exit) -> None:  # noqa: A002 - mirrors __exit__
        self._enter = enter
        self._exit = exit

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()

    def irqsave(self) -> IrqSection:
        return IrqSection(self._enter, self._exit, "irqsave", True)

    def irq(self) -> IrqSection:
        return IrqSection(self._enter, self._exit, "irq", True)

    def bh(self) -> IrqSection:
        return IrqSection(self._enter, self._exit, "bh", True)


def irq_off(how: str, rt_sleeps: bool = False) -> Any:
    """Switch off what ``how`` names: "irqsave" (returns the flags to restore), "irq"
    (re-enabled unconditionally after), "bh" (bottom halves). ``rt_sleeps``: for a lock that
    sleeps on PREEMPT_RT (spinlock_t, rwlock_t), whose _irq forms leave interrupts on there."""
    if how == "irqsave":
        return irq.spin_irq_save() if rt_sleeps else irq.local_irq_save()
    if how == "irq":
        (irq.spin_irq_disable if rt_sleeps else irq.local_irq_disable)()
        return None
    if how == "bh":
        return irq.local_bh_disable()
    raise ValueError(f"unknown interrupt variant {how!r}; expected irqsave, irq or bh")


def irq_on(how: str, flags: Any) -> None:
    """The matching half of :func:`irq_off`, after the unlock (as spin_unlock_irqrestore)."""
    if how == "irqsave":
        irq.local_irq_restore(flags)
    elif how == "irq":
        irq.local_irq_enable()
    else:
        irq.local_bh_enable(flags)


class IrqSection:
    """``with sl.irqsave():`` -- interrupts off, then the lock; the unlock, then interrupts
    back. ``irq()`` re-enables them unconditionally (spin_unlock_irq), ``bh()`` is for bottom
    halves."""

    __slots__ = ("_lock", "_unlock", "_how", "_flags", "_rt")

    def __init__(self, lock: Callable[[], None], unlock: Callable[[], None], how: str,
                 rt_sleeps: bool = False) -> None:
        self._lock = lock
        self._unlock = unlock
        self._how = how
        self._rt = rt_sleeps
        self._flags: Any = None

    def __enter__(self) -> IrqSection:
        flags = irq_off(self._how, self._rt)
        try:
            self._lock()
        except BaseException:
            irq_on(self._how, flags)
            raise
        self._flags = flags
        return self

    def __exit__(self, *exc: object) -> None:
        flags, self._flags = self._flags, None
        try:
            self._unlock()
        finally:
            irq_on(self._how, flags)


def add_irq_forms(cls: type, lock: str = "lock", unlock: str = "unlock", prefix: str = "",
                  rt_sleeps: bool | None = None) -> type:
    """Give a spinning lock the kernel's interrupt-disabling forms of ``lock``/``unlock``:
    the sections ``{prefix}irqsave()``, ``{prefix}irq()``, ``{prefix}bh()`` and the function
    forms ``{lock}_irqsave() -> flags``/``{unlock}_irqrestore(flags)``, ``{lock}_irq()``/
    ``{unlock}_irq()``, ``{lock}_bh()``/``{unlock}_bh()``. Interrupts go off before the lock
    and come back after the unlock, as in the kernel. ``rt_sleeps`` (default: the class's
    ``KIND`` is spinlock or rwlock) marks the lock as one that sleeps on PREEMPT_RT."""
    rt = getattr(cls, "KIND", "") in ("spinlock", "rwlock") if rt_sleeps is None else rt_sleeps

    def section(how: str) -> Callable[[Any], IrqSection]:
        def make(self: Any) -> IrqSection:
            return IrqSection(getattr(self, lock), getattr(self, unlock), how, rt)
        make.__name__ = f"{prefix}{how}"
        make.__doc__ = f"``with x.{prefix}{how}():`` -- {lock}_{how} ... {unlock}"
        return make

    def take(how: str) -> Callable[[Any], Any]:
        def fn(self: Any) -> Any:
            flags = irq_off(how, rt)
            getattr(self, lock)()
            return flags
        fn.__name__ = f"{lock}_{how}"
        return fn

    def drop(how: str, name: str) -> Callable[..., None]:
        def fn(self: Any, flags: Any = None) -> None:
            getattr(self, unlock)()
            irq_on(how, flags)
        fn.__name__ = name
        return fn

    for how in ("irqsave", "irq", "bh"):
        setattr(cls, f"{prefix}{how}", section(how))
        setattr(cls, f"{lock}_{how}", take(how))
        name = f"{unlock}_irqrestore" if how == "irqsave" else f"{unlock}_{how}"
        setattr(cls, name, drop(how, name))
    return cls
