"""Reports: what lockdep found, as data (``Report``, JSON) and as a kernel-style splat.

The text follows the layout Linux readers know -- banner, the lock being taken and the one
held, the dependency chain in reverse order with where each link was made, the "possible
unsafe locking scenario" table and the held locks -- so a splat from kvmlock reads like one
from the kernel, while ``Report`` keeps every piece as a field for tools.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("circular", "recursive", "bad_unlock", "held_at_exit", "sleep_in_atomic", "not_held",
         "wait_context", "suspicious_rcu", "unguarded", "inconsistent", "irq_safe_unsafe",
         "irq_inversion")

TITLES = {
    "circular": "WARNING: possible circular locking dependency detected",
    "recursive": "WARNING: possible recursive locking detected",
    "bad_unlock": "WARNING: bad unlock balance detected!",
    "held_at_exit": "WARNING: task is exiting with locks still held!",
    "sleep_in_atomic": "BUG: sleeping function called from invalid context",
    "not_held": "WARNING: lock is not held where it is asserted to be held",
    "wait_context": "BUG: Invalid wait context",
    "suspicious_rcu": "WARNING: suspicious RCU usage",
    "unguarded": "WARNING: lock-protected data accessed without its lock",
    "inconsistent": "WARNING: inconsistent lock state",
    "irq_safe_unsafe": "WARNING: {irq}-safe -> {irq}-unsafe lock order detected",
    "irq_inversion": "WARNING: possible irq lock inversion dependency detected",
}

_READ_NAMES = {0: "", 1: "read", 2: "recursive read"}
#: Report fields naming a code line: captured as file and line, text once in a report.
_SITE_FIELDS = ("where", "held_where", "safe_where", "unsafe_where", "usage_where")


@dataclass(frozen=True)
class Edge:
    """One dependency: ``dst`` was acquired while ``src`` was held, first at ``where``.

    ``src_read``/``dst_read`` are lockdep's read values: 0 exclusive, 1 shared (non-recursive
    reader), 2 recursive reader.
    """

    src: str
    dst: str
    src_read: int = 0
    dst_read: int = 0
    where: str = ""
    sync: bool = False  # dst was a synchronize() (SRCU grace period), not a hold
    stack: tuple[str, ...] = ()  # user frames (innermost first) where it was first made

    def __post_init__(self) -> None:
        # lockdep captures sites as file and line (lockdep/where.py): text from here on
        if not isinstance(self.where, str):
            object.__setattr__(self, "where", str(self.where))
        if not isinstance(self.stack, tuple):
            object.__setattr__(self, "stack", tuple(self.stack))

    @property
    def kind(self) -> str:
        """Lockdep's name for the dependency: E/S for how src is held, R/N for dst."""
        return ("S" if self.src_read else "E") + ("R" if self.dst_read == 2 else "N")


@dataclass(frozen=True)
class HeldLock:
    """A lock the task held when the report was made, and where the task took it."""

    name: str
    read: int = 0
    where: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.where, str):
            object.__setattr__(self, "where", str(self.where))


@dataclass
class ProtectedData:
    """Data a lock protects, as a run used it: a guarded field or cell, or an RCU pointer.

    ``lock`` is what protects it (for an RCU pointer: its read side, ``rcu_read_lock`` or an
    SRCU), ``read_side`` a lock whose read side also allows reads of a guarded field, ``where``
    its first checked access and ``violations`` the file:line of every access reported.
    ``updates`` (RCU pointers) lists, per distinct set of locks held when the pointer was
    published, those lock classes and where that first happened: the update side as the run
    really took it, for checking a document's "L protects updates of P".
    """

    name: str
    kind: str  # "guarded" | "rcu"
    lock: str
    read_side: str = ""
    where: str = ""
    violations: list[str] = field(default_factory=list)
    updates: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


@dataclass
class Report:
    """One distinct problem found by lockdep.

    ``lock`` is the lock being acquired/released/asserted, ``held`` the held lock it conflicts
    with, ``chain`` the dependency edges that close the cycle (for "circular", in cycle order
    ending with the new edge), ``held_locks`` what the task held, ``where`` the user code line.
    For the data reports, ``data`` names the protected pointer or field, ``lock`` what protects
    it, ``held`` the read side that would also do, and ``what`` the accessor or access.
    """

    kind: str
    lock: str | None = None
    held: str | None = None
    task: str = ""
    where: str = ""
    chain: list[Edge] = field(default_factory=list)
    held_locks: list[HeldLock] = field(default_factory=list)
    lock_read: int = 0
    held_read: int = 0
    held_where: str = ""
    what: str = ""
    data: str = ""
    #: the interrupt context that made a sleep invalid ("hard-IRQ context", ...)
    context: str = ""
    #: interrupt reports: the irq-safe and irq-unsafe classes, where each became so
    safe: str | None = None
    unsafe: str | None = None
    safe_where: str = ""
    unsafe_where: str = ""
    #: usage bits in conflict, e.g. "IN-HARDIRQ-W" (registered at usage_where) -> "HARDIRQ-ON-W"
    usage_from: str = ""
    usage_to: str = ""
    usage_where: str = ""
    irq_class: str = ""  # "HARDIRQ", "SOFTIRQ", "HARDIRQ-READ"...
    irq_state: str = ""  # the task's [HC..:SC..:HE..:SE..] when it happened
    #: each lock named in the report -> its usage characters and wait type, "{+.+.}-{3:3}"
    annotations: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _SITE_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, str):
                setattr(self, name, str(v))

    @property
    def title(self) -> str:
        return TITLES[self.kind].format(irq=self.irq_class.split("-")[0])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["title"] = self.title
        return d

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON, for tools that consume findings (CI annotations, dashboards)."""
        return json.dumps(self.to_dict(), indent=indent)

    @property
    def json(self) -> str:
        return self.to_json()

    def __str__(self) -> str:
        return _RENDER[self.kind](self)


# --------------------------------------------------------------------------- rendering


def _banner(title: str) -> list[str]:
    bar = "=" * len(title)
    return ["", bar, title, "-" * len(title)]


def _lock_line(r: Report, name: str | None, read: int = 0, where: str = "") -> str:
    mode = f", {_READ_NAMES[read]}" if read else ""
    at = f", at: {where}" if where else ""
    return f" ({name}){r.annotations.get(name or '', '')}{mode}{at}"


def _op(name: str, read: int, sync: bool = False) -> str:
    if sync:
        return f"sync({name});"
    return f"{'r' if read else ''}lock({name});"


def _held_section(r: Report) -> list[str]:
    if not r.held_locks:
        return [f"no locks held by {r.task}."]
    n = len(r.held_locks)
    out = [f"{n} lock{'s' if n > 1 else ''} held by {r.task}:"]
    for i, h in enumerate(r.held_locks):
        out.append(f" #{i}:" + _lock_line(r, h.name, h.read, h.where))
    return out


def _acquiring(r: Report) -> list[str]:
    """The two blocks every ordering splat opens with: the lock wanted, the lock held."""
    return [f"{r.task} is trying to acquire lock:", _lock_line(r, r.lock, r.lock_read, r.where),
            "", "but task is already holding lock:",
            _lock_line(r, r.held, r.held_read, r.held_where), ""]


def _finish(out: list[str], r: Report) -> str:
    """Close a splat the kernel's way: what the task holds right now."""
    return "\n".join(out + _held_section(r)) + "\n"


def _render_circular(r: Report) -> str:
    chain = r.chain
    new = chain[-1]  # held -> lock (the dependency being added)
    path = chain[:-1]  # lock -> ... -> held (the dependency that already exists)
    out = _banner(r.title)
    out += _acquiring(r)
    out += [r.what, ""] if r.what else []
    out += ["which lock already depends on the new lock.", "", ""]
    out += ["the existing dependency chain (in reverse order) is:"]
    for depth in range(len(path), -1, -1):
        e = path[depth - 1] if depth else new
        link = f"[{e.src} -({e.kind})-> {e.dst}{', synchronize' if e.sync else ''}]"
        first, *calls = e.stack or (e.where,)  # the call path that made it, innermost first
        out += ["", f"-> #{depth} ({e.dst}){r.annotations.get(e.dst, '')}:",
                f"       {first}   {link}"]
        out += [f"       {frame}" for frame in calls]
    out += ["", "other info that might help us debug this:", ""]
    # CPU0 holds `held` and wants `lock`; CPU1 came along the existing path and holds the lock
    # just before `held` on it, wanting `held`.
    parent = path[-1].src if path else new.dst
    if len(path) > 1:
        names = [path[0].src] + [e.dst for e in path]
        out += ["Chain exists of:", "  " + " --> ".join(names), ""]
    par_read = path[-1].src_read if path else r.lock_read
    pad = " " * 31
    out += [
        " Possible unsafe locking scenario:",
        "",
        "       CPU0                    CPU1",
        "       ----                    ----",
        "  " + _op(r.held or "?", r.held_read),
        pad + _op(parent, par_read),
        pad + (_op(r.held or "?", path[-1].dst_read, path[-1].sync) if path
               else _op(r.held or "?", r.held_read)),
        "  " + _op(r.lock or "?", r.lock_read, new.sync),
        "",
        " *** DEADLOCK ***",
        "",
    ]
    return _finish(out, r)


def _render_recursive(r: Report) -> str:
    out = _banner(r.title)
    out += _acquiring(r)
    out += [
        "other info that might help us debug this:",
        " Possible unsafe locking scenario:",
        "",
        "       CPU0",
        "       ----",
        "  " + _op(r.held or "?", r.held_read),
        "  " + _op(r.lock or "?", r.lock_read),
        "",
        " *** DEADLOCK ***",
        "",
        " May be due to missing lock nesting notation",
        "",
    ]
    return _finish(out, r)


def _render_bad_unlock(r: Report) -> str:
    out = _banner(r.title)
    out += [
        f"{r.task} is trying to release lock ({r.lock}) at:",
        f"{r.where}",
        "but there are no more locks to release!",
        "",
        "other info that might help us debug this:",
    ]
    return _finish(out, r)


def _render_held_at_exit(r: Report) -> str:
    out = _banner(r.title)
    at = f" at {r.where}" if r.where else ""
    out += [f"{r.task} is exiting{at} while holding locks; nobody will ever release them.", ""]
    return _finish(out, r)


def _render_sleep(r: Report) -> str:
    out = _banner(r.title)
    out += [f"{r.what} may sleep, called at: {r.where}"]
    if r.held:
        out.append(f"but {r.task} holds a spinning lock ({r.held}): sleeping there can "
                   "deadlock the CPU.")
    else:
        out.append(f"but {r.task} runs in {r.context} {r.irq_state}: it must not sleep there.")
    out.append("")
    return _finish(out, r)


def _render_not_held(r: Report) -> str:
    out = _banner(r.title)
    out += [f"{r.task} asserts that it holds ({r.lock}) at: {r.where}", "but it does not.", ""]
    return _finish(out, r)


def _render_wait_context(r: Report) -> str:
    out = _banner(r.title)
    out += [
        f"{r.task} is trying to lock:",
        _lock_line(r, r.lock, r.lock_read, r.where),
    ]
    if r.held:
        out += ["while holding a lock that may not wait that long:",
                _lock_line(r, r.held, r.held_read)]
    else:
        out += [f"in {r.context}, which may only spin."]
    out += [
        "",
        "The numbers are wait types (outer: how long taking it waits, inner: how long what is",
        "taken inside may wait): 1 never waits (rcu_read_lock), 2 spins, 3 sleeps on",
        "PREEMPT_RT (spinlock_t, rwlock_t), 4 sleeps (mutex, rw_semaphore). Nothing may wait",
        "longer than what it is nested in allows.",
        "",
    ]
    return _finish(out, r)


def _render_suspicious_rcu(r: Report) -> str:
    out = _banner(r.title)
    out += [f"{r.where} suspicious {r.what} usage!", "",
            "other info that might help us debug this:", ""]
    if r.lock:
        out.append(f"{r.data} is read outside a ({r.lock}) read-side critical section, and the "
                   f"update-side condition is false.")
    else:
        out.append(f"{r.data} is read on its update side, but the update-side condition is "
                   f"false.")
    out.append("")
    return _finish(out, r)


def _render_unguarded(r: Report) -> str:
    out = _banner(r.title)
    verb = "writes" if r.what == "write" else "reads"
    also = f" (or for reading, inside ({r.held}))" if r.held else ""
    out += [f"{r.task} {verb} {r.data} at: {r.where}",
            f"which is protected by ({r.lock}){also},"]
    if r.held_read:
        out.append(f"but the task holds ({r.lock}) only for read.")
    else:
        out.append("but the task does not hold it.")
    out += ["", "other info that might help us debug this:"]
    return _finish(out, r)


def _render_inconsistent(r: Report) -> str:
    out = _banner(r.title)
    name = r.lock or "?"
    out += [
        f"inconsistent {{{r.usage_from}}} -> {{{r.usage_to}}} usage.",
        f"{r.task} {r.irq_state} takes:",
        _lock_line(r, name, r.lock_read, r.where),
        f"{{{r.usage_from}}} state was registered at:",
        f"  {r.usage_where}",
        "",
        "other info that might help us debug this:",
        " Possible unsafe locking scenario:",
        "",
        "       CPU0",
        "       ----",
        "  " + _op(name, r.lock_read),
        "  <Interrupt>",
        "    " + _op(name, r.lock_read),
        "",
        " *** DEADLOCK ***",
        "",
    ]
    return _finish(out, r)


def _chain_lines(r: Report) -> list[str]:
    out = []
    for e in r.chain:
        out.append(f"  [{e.src} -({e.kind})-> {e.dst}]   {e.where}")
    return out


def _irq_scenario(r: Report, middle: str | None) -> list[str]:
    """CPU1 takes the safe lock with interrupts off and goes on to the unsafe one; CPU0 holds
    the unsafe one with interrupts on and is interrupted by a handler wanting the safe one."""
    safe, unsafe = r.safe or "?", r.unsafe or "?"
    irq = r.irq_class.split("-")[0]
    off = "local_irq_disable();" if irq == "HARDIRQ" else "local_bh_disable();"
    pad = " " * 31
    out = []
    if middle and middle not in (safe, unsafe):
        out += ["Chain exists of:", f"  {safe} --> {middle} --> {unsafe}", ""]
    out += [
        " Possible interrupt unsafe locking scenario:",
        "",
        "       CPU0                    CPU1",
        "       ----                    ----",
        f"  lock({unsafe});",
        pad + off,
        pad + f"lock({safe});",
    ]
    if middle and middle not in (safe, unsafe):
        out.append(pad + f"lock({middle});")
    out += [pad + f"lock({unsafe});", "  <Interrupt>", f"    lock({safe});", "",
            " *** DEADLOCK ***", ""]
    return out


def _render_irq_safe_unsafe(r: Report) -> str:
    out = _banner(r.title)
    irq = r.irq_class.split("-")[0]
    out += [
        f"{r.task} {r.irq_state} is trying to acquire:",
        _lock_line(r, r.lock, r.lock_read, r.where),
        "",
        "and this task is already holding:",
        _lock_line(r, r.held, r.held_read, r.held_where),
        "which would create a new lock dependency:",
        f" ({r.held}){r.annotations.get(r.held or '', '')} -> "
        f"({r.lock}){r.annotations.get(r.lock or '', '')}",
        "",
        f"but this new dependency connects a {irq}-irq-safe lock:",
        _lock_line(r, r.safe),
        f"... which became {irq}-irq-safe ({{{r.usage_from}}}) at:",
        f"  {r.safe_where}",
        "",
        f"to a {irq}-irq-unsafe lock:",
        _lock_line(r, r.unsafe),
        f"... which became {irq}-irq-unsafe ({{{r.usage_to}}}) at:",
        f"  {r.unsafe_where}",
        "",
        "the dependencies from the safe lock to the unsafe one:",
        *_chain_lines(r),
        "",
        "other info that might help us debug this:",
        "",
    ]
    middle = r.held if r.held != r.safe else r.lock
    out += _irq_scenario(r, middle)
    return _finish(out, r)


def _render_irq_inversion(r: Report) -> str:
    out = _banner(r.title)
    forwards = r.lock == r.safe
    out += [
        f"{r.task} {r.irq_state} just changed the state of lock:",
        _lock_line(r, r.lock, r.lock_read, r.where),
        (f"but this lock took another, {r.irq_class}-unsafe lock in the past:" if forwards
         else f"but this lock was taken by another, {r.irq_class}-safe lock in the past:"),
        _lock_line(r, r.held),
        f"({{{r.usage_from}}} registered at: {r.usage_where})",
        "",
        "and interrupts could create inverse lock ordering between them.",
        "",
        "the dependencies from the safe lock to the unsafe one:",
        *_chain_lines(r),
        "",
        "other info that might help us debug this:",
        "",
    ]
    middle = r.chain[0].dst if r.chain else None
    out += _irq_scenario(r, middle)
    return _finish(out, r)


_RENDER = {
    "circular": _render_circular,
    "recursive": _render_recursive,
    "bad_unlock": _render_bad_unlock,
    "held_at_exit": _render_held_at_exit,
    "sleep_in_atomic": _render_sleep,
    "not_held": _render_not_held,
    "wait_context": _render_wait_context,
    "suspicious_rcu": _render_suspicious_rcu,
    "unguarded": _render_unguarded,
    "inconsistent": _render_inconsistent,
    "irq_safe_unsafe": _render_irq_safe_unsafe,
    "irq_inversion": _render_irq_inversion,
}
