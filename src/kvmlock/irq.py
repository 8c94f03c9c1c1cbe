"""Interrupt context for kernel-style code: what a CPU may be doing when a lock is taken.

A task runs in *process context* unless told otherwise. These calls change the current task's
interrupt state the way the kernel's primitives change a CPU's, so lockdep can judge the locks
taken there (usage bits, ``inconsistent``, ``irq_safe_unsafe``, ``irq_inversion``,
``sleep_in_atomic``; see docs/lockdep.md) and the explorer knows when an interrupt may arrive::

    with irq.hardirq():            # the body is an interrupt handler on this CPU
        with lock: ...
    with irq.softirq(): ...        # a bottom half
    with irq.local_irq_save(): ... # flags = irq.local_irq_save(); irq.local_irq_restore(flags)
    with irq.local_bh_disable(): ...   # token = irq.local_bh_disable(); irq.local_bh_enable()
    with irq.nonblocking(): ...    # may not sleep, without being an interrupt (MMU notifiers
                                   # called with blockable == false)

Every form that changes the state returns a token; leaving its ``with`` block, or handing it to
the matching restore call, puts back exactly the bits it changed, so sections nest as the
kernel's do. A spinlock's ``irqsave()``/``irq()``/``bh()`` variants are built on these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmlock import lockdep, runtime
from kvmlock.lockdep.state import IRQ_BITS
from kvmlock.lockdep.usage import (
    HARDIRQ,
    HARDIRQS_OFF,
    NONBLOCK,
    SOFTIRQ,
    SOFTIRQS_OFF,
    SPIN_IRQS_OFF,
    describe_state,
)

__all__ = [
    "HARDIRQ", "HARDIRQS_OFF", "NONBLOCK", "SOFTIRQ", "SOFTIRQS_OFF", "BhDisabled", "Flags",
    "hardirq", "inject",
    "in_atomic", "in_hardirq", "in_interrupt", "in_softirq", "irqs_disabled", "local_bh_disable",
    "local_bh_enable", "local_irq_disable", "local_irq_enable", "local_irq_restore",
    "local_irq_save", "nonblocking", "softirq", "state", "describe_state",
]


#: A task's ``irq`` holds the state bits below this, and its bottom-half disable depth above.
_BITS = IRQ_BITS
_BH_UNIT = _BITS + 1


def state() -> int:
    """The current task's interrupt state bits (0: process context, everything enabled)."""
    return getattr(runtime.current_task(), "irq", 0) & _BITS


def _set(t: object, new: int) -> None:
    old = getattr(t, "irq", 0)
    if old != new:
        t.irq = new  # type: ignore[attr-defined]
        if (old ^ new) & _BITS:
            lockdep.irq_state_changed(old & _BITS, new & _BITS)


class Flags:
    """What one state change altered: the bits it owns and their value before. A context
    manager too: leaving the block restores them."""

    __slots__ = ("task", "mask", "prev", "done")

    def __init__(self, mask: int, set_bits: int) -> None:
        t = self.task = runtime.current_task()
        cur = getattr(t, "irq", 0)
        self.mask = mask
        self.prev = cur & mask
        self.done = False
        _set(t, (cur & ~mask) | set_bits)

    def restore(self) -> None:
        if self.done:
            raise RuntimeError("these interrupt flags were already restored")
        self.done = True
        t = self.task
        _set(t, (getattr(t, "irq", 0) & ~self.mask) | self.prev)

    def __enter__(self) -> Flags:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        return f"<irq flags {self.prev:#x}/{self.mask:#x}{' restored' if self.done else ''}>"


_OFF = HARDIRQS_OFF | SPIN_IRQS_OFF  # the bits that say how interrupts are off


def hardirq() -> Flags:
    """Run the body as a hard-interrupt handler on this CPU (interrupts are off inside)."""
    return Flags(HARDIRQ | _OFF, HARDIRQ | HARDIRQS_OFF)


def softirq() -> Flags:
    """Run the body as a soft interrupt (bottom half): bottom halves are off inside."""
    return Flags(SOFTIRQ | SOFTIRQS_OFF, SOFTIRQ | SOFTIRQS_OFF)


def nonblocking() -> Flags:
    """A section that must not sleep though it is no interrupt (blockable == false)."""
    return Flags(NONBLOCK, NONBLOCK)


def local_irq_save() -> Flags:
    """Disable interrupts on this CPU; the result restores the previous setting."""
    return Flags(_OFF, HARDIRQS_OFF)


def spin_irq_save() -> Flags:
    """What a spinlock_t's (rwlock_t's) ``_irqsave`` does to interrupts: off, as
    ``local_irq_save`` -- except on PREEMPT_RT, where the lock sleeps and they stay on, so
    lockdep's wait-context check (raw-lock nesting) does not count them off."""
    if state() & HARDIRQS_OFF:
        return Flags(0, 0)  # already off (for real or not): nothing changes
    return Flags(_OFF, _OFF)


def local_irq_restore(flags: Flags) -> None:
    """Put interrupts back as ``local_irq_save`` found them."""
    if not isinstance(flags, Flags):
        raise TypeError(f"local_irq_restore takes what local_irq_save returned, got {flags!r}")
    flags.restore()


def local_irq_disable() -> None:
    """Disable interrupts (unconditionally re-enabled by ``local_irq_enable``)."""
    t = runtime.current_task()
    _set(t, (getattr(t, "irq", 0) & ~SPIN_IRQS_OFF) | HARDIRQS_OFF)


def spin_irq_disable() -> None:
    """``spin_lock_irq``'s half of :func:`local_irq_disable` (see :func:`spin_irq_save`)."""
    t = runtime.current_task()
    cur = getattr(t, "irq", 0)
    if not cur & HARDIRQS_OFF:
        _set(t, cur | _OFF)


def local_irq_enable() -> None:
    """Enable interrupts; inside a hard-IRQ handler that is a bug the kernel warns about."""
    t = runtime.current_task()
    cur = getattr(t, "irq", 0)
    if cur & HARDIRQ:
        raise RuntimeError("local_irq_enable() inside a hard-IRQ handler")
    _set(t, cur & ~_OFF)


class BhDisabled:
    """One level of ``local_bh_disable``; leaving its block is the matching enable."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        t = runtime.current_task()
        _set(t, (getattr(t, "irq", 0) + _BH_UNIT) | SOFTIRQS_OFF)
        self.done = False

    def __enter__(self) -> BhDisabled:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.done:
            local_bh_enable()
            self.done = True


def local_bh_disable() -> BhDisabled:
    """Disable bottom halves (soft interrupts) on this CPU; the calls nest, as in the kernel."""
    return BhDisabled()


def local_bh_enable(token: BhDisabled | None = None) -> None:
    """Undo one ``local_bh_disable`` (the given one, if any): bottom halves come back on when
    the last is undone, unless this already is a soft interrupt."""
    if token is not None:
        if not isinstance(token, BhDisabled):
            raise TypeError(f"local_bh_enable takes what local_bh_disable returned, "
                            f"got {token!r}")
        if token.done:
            raise RuntimeError("this local_bh_disable() was already undone")
        token.done = True
    t = runtime.current_task()
    cur = getattr(t, "irq", 0)
    if cur < _BH_UNIT:
        raise RuntimeError("local_bh_enable() without local_bh_disable()")
    cur -= _BH_UNIT
    if cur < _BH_UNIT and not cur & SOFTIRQ:
        cur &= ~SOFTIRQS_OFF
    _set(t, cur)


def inject(handler: Callable[..., Any], *args: Any, cpu: Any = None, name: str | None = None,
           soft: bool = False) -> runtime.Handle:
    """An interrupt: ``handler(*args)`` runs once in hard-IRQ context (soft-IRQ with
    ``soft=True``) on the CPU of ``cpu`` (a handle from ``kvmlock.spawn``; default: the
    caller's). Returns a handle whose ``join()`` waits for the handler.

    Under ``kvmlock.explore`` it fires at a moment the exploration chooses: between two
    visible operations of that CPU's task while its interrupts (bottom halves) are enabled --
    never inside an irqs-off or irqsave region -- or after the task ended. The task waits
    while the handler runs, so a handler spinning on a lock its CPU holds deadlocks as it does
    in the kernel. With real threads a running thread cannot be interrupted: the handler
    runs at once, in a thread of its own (another CPU), in interrupt context.
    """
    if not callable(handler):
        raise TypeError(f"inject: the handler must be callable, got {handler!r}")
    rt = runtime.world().rt
    if hasattr(rt, "inject"):
        victim = getattr(cpu, "task", None) if cpu is not None else None
        if cpu is not None and victim is None:
            raise TypeError(f"inject: cpu must be a handle returned by kvmlock.spawn, got {cpu!r}")
        return rt.inject(handler, args, victim, name, soft)

    def run() -> None:
        with softirq() if soft else hardirq():
            handler(*args)

    return runtime.spawn(run, name=name or f"irq {getattr(handler, '__name__', 'handler')}")


def irqs_disabled() -> bool:
    return bool(state() & HARDIRQS_OFF)


def in_hardirq() -> bool:
    return bool(state() & HARDIRQ)


def in_softirq() -> bool:
    """True in a soft-IRQ and with bottom halves disabled, as the kernel's ``in_softirq``."""
    return bool(state() & (SOFTIRQ | SOFTIRQS_OFF))


def in_interrupt() -> bool:
    return bool(state() & (HARDIRQ | SOFTIRQ))


def in_atomic() -> bool:
    """Whether sleeping here is a bug (held spinning locks are lockdep's to judge)."""
    return bool(state() & (HARDIRQ | SOFTIRQ | HARDIRQS_OFF | SOFTIRQS_OFF | NONBLOCK))
