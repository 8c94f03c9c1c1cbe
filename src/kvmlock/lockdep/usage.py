"""Interrupt-state tracking: which contexts each lock class was used in, and what that forbids.

A task's *interrupt state* is a small bit set (in hard-IRQ or soft-IRQ context, hard or soft
interrupts disabled, non-blockable). Every class gathers *usage bits* from the states it was
taken in, as the kernel's lockdep does, separately for writers and readers:

- ``USED_IN_HARDIRQ`` / ``USED_IN_SOFTIRQ``: taken inside an interrupt handler ("irq-safe":
  whoever holds it elsewhere must keep that interrupt off);
- ``ENABLED_HARDIRQ`` / ``ENABLED_SOFTIRQ``: held while that interrupt was enabled
  ("irq-unsafe").

Three problems follow. One class with both a USED_IN and the opposite ENABLED bit is an
*inconsistent lock state* (the handler can interrupt a holder on its own CPU). An irq-safe class
that reaches an irq-unsafe one through the dependency graph is reported when the linking
dependency is added (*HARDIRQ-safe -> HARDIRQ-unsafe lock order*) or when a bit is set on a class
already linked (*irq lock inversion*): a USED_IN bit searches forwards for ENABLED classes, an
ENABLED bit backwards for USED_IN ones. The searches follow only strong paths, as the cycle
search does (graph.py), so recursive readers do not make false alarms.

Bit layout (as in lockdep_internals.h since 2020): ``4 * irq + 2 * enabled + read``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from kvmlock.lockdep.graph import _N_MASK, _S_MASK, DEP_EN, DEP_ER, Link, LockClass
from kvmlock.lockdep.report import Edge, Report
from kvmlock.lockdep.state import (
    _INFO,
    IRQ_MARK,
    OPTIONS,
    RCU,
    State,
    _held_locks,
    _task_name,
)

# ---------------------------------------------------------------- the task's interrupt state
HARDIRQ = 1  # running a hard-IRQ handler
SOFTIRQ = 2  # running a soft-IRQ (bottom half)
HARDIRQS_OFF = 4  # local_irq_disable/save (always set inside a hard-IRQ handler)
SOFTIRQS_OFF = 8  # local_bh_disable (always set inside a soft-IRQ)
NONBLOCK = 16  # may not sleep, without being an interrupt (a non-blockable MMU notifier)
#: With HARDIRQS_OFF: interrupts are off only through a spinlock_t's or rwlock_t's own
#: ``_irq``/``_irqsave`` form, which on PREEMPT_RT leaves them on (the lock sleeps there).
SPIN_IRQS_OFF = 32
CONTEXT = HARDIRQ | SOFTIRQ
#: States in which sleeping is a bug.
ATOMIC = HARDIRQ | SOFTIRQ | HARDIRQS_OFF | SOFTIRQS_OFF | NONBLOCK


def describe_state(state: int) -> str:
    """Why a state is atomic, in words, innermost reason first."""
    for bit, what in ((HARDIRQ, "hard-IRQ context"), (SOFTIRQ, "soft-IRQ context"),
                      (HARDIRQS_OFF, "interrupts disabled"),
                      (SOFTIRQS_OFF, "bottom halves disabled"),
                      (NONBLOCK, "a non-blockable section")):
        if state & bit:
            return what
    return "process context"


def state_flags(state: int) -> str:
    """The kernel's ``[HC1[1]:SC0[0]:HE0:SE1]`` summary of a task's interrupt state."""
    hc = int(bool(state & HARDIRQ))
    sc = int(bool(state & SOFTIRQ))
    he = int(not state & HARDIRQS_OFF)
    se = int(not state & SOFTIRQS_OFF)
    return f"[HC{hc}[{hc}]:SC{sc}[{sc}]:HE{he}:SE{se}]"


# ---------------------------------------------------------------- usage bits
USED_IN_HARDIRQ, USED_IN_HARDIRQ_READ, ENABLED_HARDIRQ, ENABLED_HARDIRQ_READ = 0, 1, 2, 3
USED_IN_SOFTIRQ, USED_IN_SOFTIRQ_READ, ENABLED_SOFTIRQ, ENABLED_SOFTIRQ_READ = 4, 5, 6, 7
_IRQ_NAMES = ("HARDIRQ", "SOFTIRQ")
USED_IN_ALL = 0b00110011
ENABLED_ALL = 0b11001100


def usage_name(bit: int) -> str:
    """``IN-HARDIRQ-W``, ``SOFTIRQ-ON-R``...: the kernel's names of the usage bits."""
    irq = _IRQ_NAMES[bit >> 2]
    rw = "R" if bit & 1 else "W"
    return f"{irq}-ON-{rw}" if bit & 2 else f"IN-{irq}-{rw}"


def irq_class(bit: int) -> str:
    """``HARDIRQ`` or ``HARDIRQ-READ``: which interrupt (and whether readers) a bit is about."""
    return _IRQ_NAMES[bit >> 2] + ("-READ" if bit & 1 else "")


def exclusive_bit(bit: int) -> int:
    """The write bit of the opposite direction: USED_IN_X conflicts with ENABLED_X and back."""
    return (bit & ~3) | ((bit & 2) ^ 2)


def exclusive_mask(mask: int) -> int:
    """Usage bits that conflict, through a dependency, with any bit of ``mask``: the opposite
    direction, readers and writers alike (strong paths already rule out reader-only ones)."""
    inv = ((mask & ENABLED_ALL) >> 2) | ((mask & USED_IN_ALL) << 2)
    return inv | ((inv & 0b10101010) >> 1) | ((inv & 0b01010101) << 1)


def usage_chars(usage: int) -> str:
    """Four characters, hard-IRQ write/read then soft-IRQ write/read: ``.`` never used with
    interrupts on nor in the handler, ``+`` held with it enabled, ``-`` taken in the handler,
    ``?`` both (already a bug)."""
    out = []
    for bit in (USED_IN_HARDIRQ, USED_IN_HARDIRQ_READ, USED_IN_SOFTIRQ, USED_IN_SOFTIRQ_READ):
        used = usage >> bit & 1
        enabled = usage >> (bit + 2) & 1
        out.append("?" if used and enabled else "+" if enabled else "-" if used else ".")
    return "".join(out)


# ---------------------------------------------------------------- wait types
WAIT_INV, WAIT_FREE, WAIT_SPIN = 0, 1, 2
#: A kind's (outer, inner) waits: how long taking it may wait, and how long what is taken
#: inside it may. They differ only for the RCU read side, which never waits itself but
#: allows inside only what a spinlock_t allows. SRCU, percpu_rw_semaphore, pseudo-locks and
#: threading locks are not checked (0), as the kernel initialises their maps.
_WAITS = {"raw_spinlock": ("spin", "spin"), "spinlock": ("config", "config"),
          "rwlock": ("config", "config"), "mutex": ("sleep", "sleep"),
          "rwsem": ("sleep", "sleep"), "rcu": ("free", "config")}


def wait_value(what: str) -> int:
    """The kernel's numbering: free 1, spin 2, config (a lock that sleeps on PREEMPT_RT) 3 and
    sleep 4 when raw-lock nesting is proved, else config is spin (2) and sleep 3."""
    rt = OPTIONS["raw_nesting"]
    if what == "free":
        return WAIT_FREE
    if what == "spin":
        return WAIT_SPIN
    if what == "config":
        return 3 if rt else WAIT_SPIN
    return 4 if rt else 3


def wait_types(kind: str) -> tuple[int, int]:
    """A lock kind's (outer, inner) wait types; (0, 0), not checked, for the kinds above."""
    waits = _WAITS.get(kind)
    return (WAIT_INV, WAIT_INV) if waits is None else (wait_value(waits[0]),
                                                        wait_value(waits[1]))


def context_wait(state: int) -> int:
    """The most a lock may wait in a context: a hard-IRQ handler only spins (on PREEMPT_RT it
    is not threaded for raw handlers), and so does code that disabled interrupts itself
    (local_irq_save, a raw spinlock's _irqsave); soft-IRQs are threaded there, tasks sleep."""
    if state & HARDIRQ or (state & HARDIRQS_OFF and not state & SPIN_IRQS_OFF):
        return WAIT_SPIN
    if state & SOFTIRQ:
        return wait_value("config")
    return 5


def annotation(S: State, cls: LockClass) -> str:
    """``{+.+.}-{3:3}``: a class's usage characters and its wait types (outer:inner)."""
    outer, inner = wait_types(S.classes.get(cls, cls.kind))  # the kind first taken as, here
    return f"{{{usage_chars(S.usage.get(cls, 0))}}}-{{{outer}:{inner}}}"


def annotate(S: State, r: Report) -> None:
    """Give every lock a report names its usage characters and wait type, as splats print."""
    names = {r.lock, r.held, r.safe, r.unsafe}
    names.update(h.name for h in r.held_locks)
    for e in r.chain:
        names.update((e.src, e.dst))
    names.discard(None)
    names.discard("")
    for cls in S.classes:
        if cls.name in names:
            r.annotations[cls.name] = annotation(S, cls)


# ---------------------------------------------------------------- strong-path searches


_E_MASK = DEP_ER | DEP_EN


def search(S: State, start: LockClass, flag: bool, match: Callable[[LockClass, bool], bool],
           forwards: bool, include_start: bool = True
           ) -> tuple[LockClass, list[Link], bool] | None:
    """The nearest class matching ``match`` joined to ``start`` by a strong path (``start``
    too, with ``include_start``), the path's links in dependency order, and the node's flag.
    ``match`` is given the flag too: a class on the path only as a reader is judged by its
    write usage alone (see :func:`_has`).

    Forwards, a node is (class, arrived as a recursive reader), ``flag`` saying so of
    ``start``: such a class may only be left through links where it was held exclusively.
    Backwards, a node is (class, left only as a reader), ``flag`` saying so of ``start``:
    such a class may only have been arrived at through a non-recursive link. Arriving
    non-recursively (leaving exclusively) dominates, so each class is expanded at most twice.
    """
    if include_start and match(start, flag):
        return start, [], flag
    adj = S.after if forwards else S.before
    root = (start, flag)
    parent: dict = {root: None}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        cls, restricted = node
        for other, link in adj.get(cls, {}).items():
            dep = link.dep
            if restricted:
                dep &= ~_S_MASK if forwards else _N_MASK
            if not dep:
                continue
            nflag = not (dep & (_N_MASK if forwards else _E_MASK))
            state = (other, nflag)
            if state in parent or (nflag and (other, False) in parent):
                continue
            parent[state] = (node, link)
            if match(other, nflag):
                path: list[Link] = []
                back = parent[state]
                while back is not None:
                    prev, lk = back
                    path.append(lk)
                    back = parent[prev]
                if forwards:
                    path.reverse()
                return other, path, nflag
            queue.append(state)
    return None


def _edges(path: list[Link]) -> list[Edge]:
    return [link.edge(True) for link in path]


#: The usage bits about writers (USED_IN_x and ENABLED_x without _READ).
WRITE_BITS = 0b01010101


def usage_seen(S: State, cls: LockClass, only_read: bool) -> int:
    """A class's usage as a search node sees it. Reached only as a reader on the path (arrived
    as a recursive reader forwards, left as a reader backwards), its reader usage does not
    count: a reader in a handler and a reader holding it elsewhere never wait for each other,
    so only how it is written can close the interrupt's cycle (rcu_read_lock, an rwlock_t read
    on both sides). This is lockdep's ``only_xr`` rule."""
    usage = S.usage.get(cls, 0)
    return usage & WRITE_BITS if only_read else usage


def _has(S: State, mask: int) -> Callable[[LockClass, bool], bool]:
    return lambda c, only_read: bool(usage_seen(S, c, only_read) & mask)


# ---------------------------------------------------------------- marking


def mark(S: State, held: list, cls: LockClass, bit: int, read: int, state: int, where: str,
         found: list[Report]) -> None:
    """Set one usage bit of ``cls`` (taken with ``read``), reporting what it makes possible."""
    from kvmlock.lockdep.state import _note

    if S.record is not None:
        S.record.append((cls, bit))
    usage = S.usage.get(cls, 0)
    if usage >> bit & 1:
        return
    S.usage[cls] = usage | 1 << bit
    S.usage_where.setdefault((cls, bit), where)
    excl = exclusive_bit(bit)
    bad = [excl] + ([excl | 1] if not bit & 1 else [])
    for b in bad:
        if usage >> b & 1:  # this very class was used the other way: the handler can hit it
            _note(S, ("inconsistent", cls.name, b >> 2), Report(
                "inconsistent", lock=cls.name, lock_read=read, task=_task_name(), where=where,
                usage_from=usage_name(b), usage_to=usage_name(bit),
                usage_where=S.usage_where.get((cls, b), ""), irq_class=_IRQ_NAMES[bit >> 2],
                irq_state=state_flags(state), held_locks=_held_locks(held),
            ), found)
            return
    # The class itself was judged just above (with the reader rules); now its dependencies.
    mask = 1 << excl | 1 << (excl | 1)
    if bit & 2:  # now irq-unsafe: is it reached from an irq-safe class?
        hit = search(S, cls, read != 0, _has(S, mask), False, False)
        if hit is None:
            return
        other, path, _xr = hit
        safe, unsafe, chain = other, cls, _edges(path)
    else:  # now irq-safe: does it reach an irq-unsafe class?
        hit = search(S, cls, read == 2, _has(S, mask), True, False)
        if hit is None:
            return
        other, path, _xr = hit
        safe, unsafe, chain = cls, other, _edges(path)
    obit = excl if S.usage.get(other, 0) >> excl & 1 else excl | 1
    _note(S, ("irq_inversion", safe.name, unsafe.name, bit >> 2), Report(
        "irq_inversion", lock=cls.name, lock_read=read, held=other.name, task=_task_name(),
        where=where, safe=safe.name, unsafe=unsafe.name, irq_class=irq_class(obit),
        usage_to=usage_name(bit), usage_from=usage_name(obit),
        usage_where=S.usage_where.get((other, obit), ""), chain=chain,
        irq_state=state_flags(state), held_locks=_held_locks(held),
    ), found)


def mark_acquire(S: State, held: list, cls: LockClass, read: int, trylock: bool, sync: bool,
                 state: int, where: str, found: list[Report]) -> None:
    """The usage an acquire in ``state`` gives its class (a trylock cannot be the one that
    waits, so it never makes a class irq-safe; a synchronize() holds nothing). The RCU read
    side gathers none: it never waits, so no interrupt can deadlock on it."""
    if cls.kind == RCU:
        return
    r = 1 if read else 0
    if not trylock:
        if state & HARDIRQ:
            mark(S, held, cls, USED_IN_HARDIRQ + r, read, state, where, found)
        if state & SOFTIRQ:
            mark(S, held, cls, USED_IN_SOFTIRQ + r, read, state, where, found)
    if not state & HARDIRQS_OFF and not sync:
        mark(S, held, cls, ENABLED_HARDIRQ + r, read, state, where, found)
        if not state & SOFTIRQS_OFF:
            mark(S, held, cls, ENABLED_SOFTIRQ + r, read, state, where, found)


def mark_held(S: State, held: list, old: int, new: int, where: str,
              found: list[Report]) -> None:
    """Interrupts come back on while locks are held: each of them is now held with them on."""
    bits = []
    if old & HARDIRQS_OFF and not new & HARDIRQS_OFF:
        bits.append(ENABLED_HARDIRQ)
        if not new & SOFTIRQS_OFF:
            bits.append(ENABLED_SOFTIRQ)
    elif old & SOFTIRQS_OFF and not new & SOFTIRQS_OFF and not new & HARDIRQS_OFF:
        bits.append(ENABLED_SOFTIRQ)
    if not bits:
        return
    for e in held[1:]:
        if e[0] is IRQ_MARK:
            continue
        cls, read, _t, _w = e[1][_INFO]
        if cls.kind == RCU:
            continue
        for b in bits:
            mark(S, held, cls, b + (1 if read else 0), read, new, where, found)


def check_dependency(S: State, held: list, prev: LockClass, pr: int, pwhere: str,
                     nxt: LockClass, read: int, where: str, state: int,
                     found: list[Report]) -> None:
    """A new dependency prev -> next must not join an irq-safe class (prev or before it) to
    an irq-unsafe one (next or after it)."""
    from kvmlock.lockdep.state import _note

    # Step 1: every USED_IN bit found backwards from prev (a search that matches nothing).
    acc = 0

    def gather(c: LockClass, only_read: bool) -> bool:
        nonlocal acc
        acc |= usage_seen(S, c, only_read) & USED_IN_ALL
        return False

    search(S, prev, pr != 0, gather, False)
    if not acc:
        return
    # Step 2: an ENABLED class forwards from next that conflicts with them.
    hit = search(S, nxt, read == 2, _has(S, exclusive_mask(acc)), True)
    if hit is None:
        return
    unsafe, fpath, uxr = hit
    ubits = usage_seen(S, unsafe, uxr)
    # Step 3: the safe class behind prev that this unsafe class conflicts with.
    back = exclusive_mask(ubits & ENABLED_ALL) & USED_IN_ALL
    bhit = search(S, prev, pr != 0, _has(S, back), False)
    if bhit is None:  # pragma: no cover - step 1 found such a class
        return
    safe, bpath, sxr = bhit
    sbits = usage_seen(S, safe, sxr)
    sbit = next(b for b in range(8) if sbits >> b & 1 and b in (0, 1, 4, 5)
                and any(ubits >> x & 1 for x in range(8) if exclusive_mask(1 << b) >> x & 1))
    ubit = next(x for x in range(8) if ubits >> x & 1 and exclusive_mask(1 << sbit) >> x & 1)
    new = Edge(prev.name, nxt.name, pr, read, where)
    _note(S, ("irq_safe_unsafe", safe.name, unsafe.name, sbit >> 2), Report(
        "irq_safe_unsafe", lock=nxt.name, lock_read=read, held=prev.name, held_read=pr,
        held_where=pwhere, task=_task_name(), where=where, safe=safe.name, unsafe=unsafe.name,
        irq_class=irq_class(sbit), usage_from=usage_name(sbit), usage_to=usage_name(ubit),
        safe_where=S.usage_where.get((safe, sbit), ""),
        unsafe_where=S.usage_where.get((unsafe, ubit), ""),
        chain=_edges(bpath) + [new] + _edges(fpath), irq_state=state_flags(state),
        held_locks=_held_locks(held),
    ), found)
