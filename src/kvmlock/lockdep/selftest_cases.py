"""The self-test's cells: lock-order patterns crossed with lock kinds, and the other cases.

Each case is a short single-threaded sequence of kvmlock.sync operations with the verdict it
must get, plus a near-miss twin that must stay silent. ``kvmlock selftest`` and the pytest suite
both run this catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvmlock import irq, lockdep
from kvmlock.runtime import spawn
from kvmlock.sync import SRCU, Mutex, RawSpinLock, RWLock, RWSemaphore, SpinLock

# --------------------------------------------------------------------------- lock kinds


@dataclass(frozen=True)
class LockKind:
    """How to build, take and drop one flavour of lock in the pattern table."""

    column: str
    make: Callable[[str], object]
    take: Callable[[object], None]
    drop: Callable[[object], None]


KINDS = [
    LockKind("spin", SpinLock, lambda lk: lk.lock(), lambda lk: lk.unlock()),
    LockKind("wlock", RWLock, lambda lk: lk.write_lock(), lambda lk: lk.write_unlock()),
    LockKind("rlock", RWLock, lambda lk: lk.read_lock(), lambda lk: lk.read_unlock()),
    LockKind("mutex", Mutex, lambda lk: lk.lock(), lambda lk: lk.unlock()),
    LockKind("wsem", RWSemaphore, lambda lk: lk.down_write(), lambda lk: lk.up_write()),
    LockKind("rsem", RWSemaphore, lambda lk: lk.down_read(), lambda lk: lk.up_read()),
]
_BY_COLUMN = {k.column: k for k in KINDS}

#: Deadlock patterns as the (held, taken) pairs each one performs, one pair at a time.
PATTERNS: dict[str, list[tuple[str, str]]] = {
    "ABBA": [("A", "B"), ("B", "A")],
    "ABBCCA": [("A", "B"), ("B", "C"), ("C", "A")],
    "ABCABC": [("A", "B"), ("C", "A"), ("B", "C")],
    "ABBCCDDA": [("A", "B"), ("B", "C"), ("C", "D"), ("D", "A")],
    "ABCDBDDA": [("A", "B"), ("C", "D"), ("B", "D"), ("D", "A")],
    "ABCDBCDA": [("A", "B"), ("C", "D"), ("B", "C"), ("D", "A")],
}

#: Recursive readers (rwlock_t) never wait for each other, so no all-read cycle deadlocks;
#: rw_semaphore readers queue behind a waiting writer, so theirs do.
PATTERN_EXPECT = {"spin": "circular", "wlock": "circular", "rlock": None, "mutex": "circular",
                  "wsem": "circular", "rsem": "circular"}
AA_EXPECT = {**{c: "recursive" for c in PATTERN_EXPECT}, "rlock": None}


@dataclass(frozen=True)
class Case:
    """One cell: ``run`` must produce a report of kind ``expect`` (None: no report at all);
    ``near_miss`` is its legal twin that must produce nothing."""

    row: str
    column: str
    run: Callable[[], None]
    expect: str | None
    near_miss: Callable[[], None] | None
    why: str = ""

    @property
    def id(self) -> str:
        return f"{self.row}/{self.column}"


def _pairs(kind: LockKind, pairs: list[tuple[str, str]], tag: str) -> Callable[[], None]:
    def run() -> None:
        locks = {n: kind.make(f"selftest.{tag}.{kind.column}.{n}") for p in pairs for n in p}
        for held, taken in pairs:
            kind.take(locks[held])
            kind.take(locks[taken])
            kind.drop(locks[taken])
            kind.drop(locks[held])

    return run


def _aa(kind: LockKind, nested: bool) -> Callable[[], None]:
    def run() -> None:
        name = f"selftest.AA.{kind.column}"
        x1, x2 = kind.make(name), kind.make(name)  # two instances, one class
        kind.take(x1)
        if nested:
            x2.lock(subclass=1)  # type: ignore[attr-defined]
        else:
            kind.take(x2)
        kind.drop(x2)
        kind.drop(x1)

    return run


def _aa_near(kind: LockKind) -> Callable[[], None]:
    if kind.column in ("spin", "mutex"):
        return _aa(kind, nested=True)  # the nesting annotation makes it legal

    def run() -> None:  # no nesting form: the legal twin takes them one after the other
        name = f"selftest.AA.{kind.column}"
        x1, x2 = kind.make(name), kind.make(name)
        kind.take(x1)
        kind.drop(x1)
        kind.take(x2)
        kind.drop(x2)

    return run


def _seq(*steps: tuple[str, str, str]) -> Callable[[], None]:
    """Run steps ``(column, lock, op)`` where op is "L" (take) or "U" (drop)."""

    def run() -> None:
        locks: dict[tuple[str, str], object] = {}
        for column, name, op in steps:
            kind = _BY_COLUMN[column]
            family = "rw" if column in ("wlock", "rlock") else "sem" if column in (
                "wsem", "rsem") else column
            lk = locks.get((family, name))
            if lk is None:
                lk = locks[(family, name)] = kind.make(f"selftest.seq.{family}.{name}")
            (kind.take if op == "L" else kind.drop)(lk)

    return run


def _rw_mix(first: str, second: str) -> Callable[[], None]:
    """Two instances of one rwlock class, the second taken inside the first."""

    def run() -> None:
        k1, k2 = _BY_COLUMN[first], _BY_COLUMN[second]
        name = f"selftest.mix.{first}.{second}"
        x1, x2 = k1.make(name), k2.make(name)
        k1.take(x1)
        k2.take(x2)
        k2.drop(x2)
        k1.drop(x1)

    return run


def _three(ops: str) -> Callable[[], None]:
    """Kernel-style "W1R2_W2R3_W3R1": each pair takes lock a then lock b (W write, R read)."""

    def run() -> None:
        locks = {n: RWLock(f"selftest.3.{ops}.{n}") for n in "123"}
        take = {"W": lambda lk: lk.write_lock(), "R": lambda lk: lk.read_lock()}
        drop = {"W": lambda lk: lk.write_unlock(), "R": lambda lk: lk.read_unlock()}
        for pair in ops.split("_"):
            (m1, n1), (m2, n2) = pair[0:2], pair[2:4]
            take[m1](locks[n1])
            take[m2](locks[n2])
            drop[m2](locks[n2])
            drop[m1](locks[n1])

    return run


# --------------------------------------------------------------------------- SRCU and misc


def _srcu_sync_under_lock(read_side_first: bool) -> Callable[[], None]:
    def run() -> None:
        srcu, m = SRCU("selftest.srcu"), Mutex("selftest.srcu.L")

        def read_side() -> None:
            with srcu.read():
                with m:
                    pass

        def updater() -> None:
            with m:
                srcu.synchronize()

        for step in ((read_side, updater) if read_side_first else (updater, read_side)):
            step()

    return run


def _srcu_sync_outside() -> None:
    srcu, m = SRCU("selftest.srcu"), Mutex("selftest.srcu.L")
    with srcu.read():
        with m:
            pass
    srcu.synchronize()  # not under L: no cycle
    with m:
        pass


def _srcu_nested(same: bool) -> Callable[[], None]:
    def run() -> None:
        s1 = SRCU("selftest.srcu1")
        s2 = s1 if same else SRCU("selftest.srcu2")
        with s1.read():
            with s2.read():
                pass
        with s2.read():
            with s1.read():
                pass

    return run


def _srcu_sync_in_own_read_side() -> None:
    s = SRCU("selftest.srcu.self")
    with s.read():
        s.synchronize()  # waits for itself; reported (raise mode) before it could hang


def _srcu_cross_sync() -> None:
    s1, s2 = SRCU("selftest.srcuA"), SRCU("selftest.srcuB")
    with s1.read():
        s2.synchronize()
    with s2.read():
        s1.synchronize()


def _srcu_cross_near() -> None:
    s1, s2 = SRCU("selftest.srcuA"), SRCU("selftest.srcuB")
    with s1.read():
        s2.synchronize()
    with s1.read():
        s2.synchronize()
    s1.synchronize()


def _double_unlock(kind: str) -> Callable[[], None]:
    def run() -> None:
        lk = Mutex("selftest.du.m") if kind == "mutex" else SpinLock("selftest.du.s")
        lk.lock()
        lk.unlock()
        lk.unlock()

    return run


def _single_unlock(kind: str) -> Callable[[], None]:
    def run() -> None:
        lk = Mutex("selftest.du.m") if kind == "mutex" else SpinLock("selftest.du.s")
        lk.lock()
        lk.unlock()
        lk.lock()
        lk.unlock()

    return run


def _sleep_in(outer: str, inner: str) -> Callable[[], None]:
    def make(kind: str, name: str) -> tuple[Callable[[], None], Callable[[], None]]:
        if kind == "spin":
            lk = SpinLock(name)
            return lk.lock, lk.unlock
        if kind == "raw":
            lk2 = RawSpinLock(name)
            return lk2.lock, lk2.unlock
        if kind == "rlock":
            rw = RWLock(name)
            return rw.read_lock, rw.read_unlock
        if kind == "mutex":
            mx = Mutex(name)
            return mx.lock, mx.unlock
        if kind == "rsem":
            sem = RWSemaphore(name)
            return sem.down_read, sem.up_read
        if kind == "sync":
            s = SRCU(name)
            return s.synchronize, lambda: None
        raise ValueError(kind)

    def run() -> None:
        o_take, o_drop = make(outer, f"selftest.sl.{outer}")
        i_take, i_drop = make(inner, f"selftest.sl.{inner}")
        o_take()
        i_take()
        i_drop()
        o_drop()

    return run


def _exit_holding(release: bool) -> Callable[[], None]:
    def run() -> None:
        m = Mutex("selftest.exit")

        def task() -> None:
            m.lock()
            if release:
                m.unlock()

        spawn(task, name="selftest-task").join()

    return run


def _assert_held(hold: bool) -> Callable[[], None]:
    def run() -> None:
        m = Mutex("selftest.assert")
        if hold:
            with m:
                m.assert_held()
        else:
            m.assert_held()

    return run


def _out_of_order() -> None:
    a, b, c = Mutex("selftest.ooo.A"), Mutex("selftest.ooo.B"), Mutex("selftest.ooo.C")
    a.lock()
    b.lock()
    c.lock()
    b.unlock()  # out of order: C is re-validated on top of A, as the kernel does
    c.unlock()
    a.unlock()


def _out_of_order_then_inversion() -> None:
    _out_of_order()
    a, c = Mutex("selftest.ooo.A"), Mutex("selftest.ooo.C")
    with c:
        with a:
            pass


def _trylock_abba(try_second: bool) -> Callable[[], None]:
    def run() -> None:
        a, b = Mutex("selftest.try.A"), Mutex("selftest.try.B")
        with a:
            with b:
                pass
        with b:
            if try_second:
                if a.trylock():  # cannot deadlock: trylock adds no dependency
                    a.unlock()
            else:
                with a:
                    pass

    return run


def _raw_nesting(spin_inside_raw: bool) -> Callable[[], None]:
    def run() -> None:
        raw, spin = RawSpinLock("selftest.rt.raw"), SpinLock("selftest.rt.spin")
        outer, inner = (raw, spin) if spin_inside_raw else (spin, raw)
        lockdep.prove_raw_nesting(True)
        try:
            with outer:
                with inner:
                    pass
        finally:
            lockdep.prove_raw_nesting(False)

    return run


# --------------------------------------------------------------------------- interrupts


@dataclass(frozen=True)
class IrqColumn:
    """One interrupt flavour crossed with one access mode: how the handler takes a lock, how
    process context takes it with the interrupt on, and with it off."""

    column: str
    context: Callable[[], object]  # the handler's context manager
    make: Callable[[str], object]
    handler: Callable[[object], object]  # -> context manager taking the lock in the handler
    on: Callable[[object], object]  # ... in process context, interrupt enabled
    off: Callable[[object], object]  # ... in process context, interrupt disabled


IRQ_COLUMNS = [
    IrqColumn("hard W", irq.hardirq, SpinLock, lambda lk: lk, lambda lk: lk,
              lambda lk: lk.irqsave()),
    IrqColumn("hard R", irq.hardirq, RWLock, lambda lk: lk.read(), lambda lk: lk.write(),
              lambda lk: lk.write_irqsave()),
    IrqColumn("soft W", irq.softirq, SpinLock, lambda lk: lk, lambda lk: lk,
              lambda lk: lk.bh()),
    IrqColumn("soft R", irq.softirq, RWLock, lambda lk: lk.read(), lambda lk: lk.write(),
              lambda lk: lk.write().bh()),
]


def _irq_steps(col: IrqColumn, steps: str, near: bool) -> Callable[[], None]:
    """Steps separated by spaces: ``hA`` A in the handler, ``pA`` A in process context with
    the interrupt on, ``oA`` with it off, ``oA>pB`` B inside A. The near-miss turns every
    ``p`` step on a lock marked by a trailing ``!`` into an ``o`` step (``pB!``)."""

    def run() -> None:
        tag = f"selftest.irq.{col.column.replace(' ', '')}.{steps.replace(' ', '_')}"
        locks: dict[str, object] = {}

        def lk(n: str) -> object:
            if n not in locks:
                locks[n] = col.make(f"{tag}.{n}")
            return locks[n]

        def section(step: str) -> object:
            how, name = step[0], step[1]
            if step.endswith("!"):
                how = "o" if near else "p"
            if how == "h":
                return col.handler(lk(name))
            return (col.on if how == "p" else col.off)(lk(name))

        for step in steps.split():
            parts = step.split(">")
            ctx = col.context() if parts[0][0] == "h" else None
            try:
                with section(parts[0]):  # type: ignore[attr-defined]
                    if len(parts) > 1:
                        with section(parts[1]):  # type: ignore[attr-defined]
                            pass
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)  # type: ignore[attr-defined]

    return run


#: Interrupt rows: (row, steps, expected report, what the near-miss changes).
IRQ_ROWS = [
    ("safe A, then A irq-on", "hA pA!", "inconsistent", "A taken with the interrupt off"),
    ("A irq-on, then safe A", "pA! hA", "inconsistent", "A taken with the interrupt off"),
    ("safe A -> unsafe B", "hA pB! oA>pB", "irq_safe_unsafe", "B only with it off"),
    ("A -> B, unsafe B, safe A", "oA>pB pB! hA", "irq_inversion", "B only with it off"),
    ("A -> B, safe A, unsafe B", "oA>pB hA pB!", "irq_inversion", "B only with it off"),
]


def _irq_sleep(context: Callable[[], object], in_context: bool, make: str) -> Callable[[], None]:
    def run() -> None:
        if make == "mutex":
            lk: object = Mutex("selftest.irq.sleep.mutex")
        else:
            lk = RWSemaphore("selftest.irq.sleep.rwsem").read()
        if in_context:
            with context():  # type: ignore[attr-defined]
                with lk:  # type: ignore[attr-defined]
                    pass
        else:
            with lk:  # type: ignore[attr-defined]
                pass

    return run


def _irq_read_recursion() -> None:
    """rwlock_t readers in a handler and with interrupts on cannot deadlock: readers in
    interrupt context never wait for other readers."""
    rw = RWLock("selftest.irq.rr")
    with rw.read():
        pass
    with irq.hardirq():
        with rw.read():
            pass


def _irq_reader_link(order: str, write: bool) -> Callable[[], None]:
    """An rwlock_t A read in a handler (read-safe), the dependency A -> B with A written or
    read (interrupts off), and B held with interrupts on (unsafe), the link first or last.
    Written, a handler's reader waits for the writer, who waits for B: a deadlock. Read, the
    handler's reader gets in beside the other reader: none."""

    def run() -> None:
        tag = f"selftest.irq.readlink.{order}.{'w' if write else 'r'}"
        a, b = RWLock(f"{tag}.A"), SpinLock(f"{tag}.B")

        def link() -> None:
            with a.write_irqsave() if write else a.read_irqsave():
                with b:
                    pass

        def usage() -> None:
            with irq.hardirq():
                with a.read():
                    pass
            with b:
                pass

        for step in ((usage, link) if order == "link last" else (link, usage)):
            step()

    return run


def irq_cases() -> list[Case]:
    cases = []
    for row, steps, expect, near_why in IRQ_ROWS:
        for col in IRQ_COLUMNS:
            cases.append(Case(row, col.column, _irq_steps(col, steps, False), expect,
                              _irq_steps(col, steps, True), "near-miss: " + near_why))
    for col, ctx in (("hard", irq.hardirq), ("soft", irq.softirq)):
        for what in ("mutex", "rwsem"):
            cases.append(Case(f"sleep in {col}irq", what, _irq_sleep(ctx, True, what),
                              "sleep_in_atomic", _irq_sleep(ctx, False, what),
                              "near-miss: the same outside the handler"))
    for label, ctx in (("irqs off", irq.local_irq_save), ("bh off", irq.local_bh_disable),
                       ("non-blockable", irq.nonblocking)):
        cases.append(Case(f"sleep with {label}", "mutex", _irq_sleep(ctx, True, "mutex"),
                          "sleep_in_atomic", _irq_sleep(ctx, False, "mutex"),
                          "a mutex where the task may not sleep"))
    cases += [
        Case("hardirq read recursion", "rlock", _irq_read_recursion, None, _irq_read_recursion,
             "readers in a handler and with interrupts on never wait for each other"),
        Case("read-safe A, A -> unsafe B", "rlock", _irq_reader_link("link last", True),
             "irq_safe_unsafe", _irq_reader_link("link last", False),
             "near-miss: A only read on the way to B"),
        Case("A -> B, read-safe A, unsafe B", "rlock", _irq_reader_link("link first", True),
             "irq_inversion", _irq_reader_link("link first", False),
             "near-miss: A only read on the way to B"),
    ]
    return cases


# --------------------------------------------------------------------------- the table


def build_cases() -> list[Case]:
    cases: list[Case] = []
    for k in KINDS:
        cases.append(Case("AA", k.column, _aa(k, nested=False), AA_EXPECT[k.column],
                          _aa_near(k), "same class taken twice"))
    for row, pairs in PATTERNS.items():
        legal = [tuple(sorted(p)) for p in pairs]
        for k in KINDS:
            cases.append(Case(row, k.column, _pairs(k, pairs, row), PATTERN_EXPECT[k.column],
                              _pairs(k, legal, row), "cycle of " + row))  # type: ignore[arg-type]
    rw = "rwlock: same class, second inside first"
    cases += [
        Case("rw R-R", "mix", _rw_mix("rlock", "rlock"), None, _rw_mix("rlock", "rlock"),
             rw + "; recursive reads are fine"),
        Case("rw R-W", "mix", _rw_mix("rlock", "wlock"), "recursive",
             _seq(("rlock", "X", "L"), ("rlock", "X", "U"), ("wlock", "X", "L"),
                  ("wlock", "X", "U")), rw),
        Case("rw W-R", "mix", _rw_mix("wlock", "rlock"), "recursive",
             _seq(("wlock", "X", "L"), ("wlock", "X", "U"), ("rlock", "X", "L"),
                  ("rlock", "X", "U")), rw),
        Case("rwsem r-r", "mix", _rw_mix("rsem", "rsem"), "recursive",
             _seq(("rsem", "X", "L"), ("rsem", "X", "U"), ("rsem", "X", "L"),
                  ("rsem", "X", "U")), "rwsem readers are not recursive (a writer may wait)"),
        Case("rlock ABBA read/write", "mix",
             _seq(("rlock", "X", "L"), ("spin", "Y", "L"), ("spin", "Y", "U"),
                  ("rlock", "X", "U"), ("spin", "Y", "L"), ("wlock", "X", "L"),
                  ("wlock", "X", "U"), ("spin", "Y", "U")), "circular",
             _seq(("rlock", "X", "L"), ("spin", "Y", "L"), ("spin", "Y", "U"),
                  ("rlock", "X", "U"), ("spin", "Y", "L"), ("rlock", "X", "L"),
                  ("rlock", "X", "U"), ("spin", "Y", "U")),
             "near-miss: both sides read the rwlock recursively"),
        Case("rwsem ABBA read/read", "mix",
             _seq(("rsem", "X", "L"), ("mutex", "Y", "L"), ("mutex", "Y", "U"),
                  ("rsem", "X", "U"), ("mutex", "Y", "L"), ("rsem", "X", "L"),
                  ("rsem", "X", "U"), ("mutex", "Y", "U")), "circular",
             _seq(("rsem", "X", "L"), ("mutex", "Y", "L"), ("mutex", "Y", "U"),
                  ("rsem", "X", "U"), ("rsem", "X", "L"), ("mutex", "Y", "L"),
                  ("mutex", "Y", "U"), ("rsem", "X", "U")),
             "a waiting writer makes rwsem readers deadlock"),
        Case("W1R2_W2R3_W3R1", "mix", _three("W1R2_W2R3_W3R1"), "circular",
             _three("W1R2_R2R3_W3W1"), "strong cycle through recursive readers"),
        Case("W1R2_R2R3_W3W1", "mix", _three("W1R2_R2R3_W3W1"), None,
             _three("W1W2_R2R3_R3W1"), "-(*R)-> then -(S*)-> is not a deadlock"),
        Case("srcu sync-under-L / L-in-read", "srcu", _srcu_sync_under_lock(False), "circular",
             _srcu_sync_outside, "synchronize_srcu under L, L inside the read side"),
        Case("srcu L-in-read / sync-under-L", "srcu", _srcu_sync_under_lock(True), "circular",
             _srcu_sync_outside, "the same, discovered in the other order"),
        Case("srcu nested read sides", "srcu", _srcu_nested(True), None, _srcu_nested(False),
             "read sides nest, of one SRCU or of two in any order"),
        Case("srcu sync in own read side", "srcu", _srcu_sync_in_own_read_side, "recursive",
             _srcu_nested(True), "synchronize waits for its own reader"),
        Case("srcu cross synchronize", "srcu", _srcu_cross_sync, "circular", _srcu_cross_near,
             "each read side waits for the other's grace period"),
        Case("double unlock", "mutex", _double_unlock("mutex"), "bad_unlock",
             _single_unlock("mutex"), "unlock of a lock not held"),
        Case("double unlock", "spin", _double_unlock("spin"), "bad_unlock",
             _single_unlock("spin"), "unlock of a lock not held"),
        Case("sleep in atomic", "spin+mutex", _sleep_in("spin", "mutex"), "sleep_in_atomic",
             _sleep_in("mutex", "spin"), "mutex inside a spinlock (near-miss: spin in mutex)"),
        Case("sleep in atomic", "raw+rwsem", _sleep_in("raw", "rsem"), "sleep_in_atomic",
             _sleep_in("rsem", "raw"), "down_read inside a raw spinlock"),
        Case("sleep in atomic", "rlock+sync", _sleep_in("rlock", "sync"), "sleep_in_atomic",
             _sleep_in("mutex", "sync"), "synchronize_srcu inside read_lock(rwlock_t)"),
        Case("raw lock nesting (RT)", "raw+spin", _raw_nesting(True), "wait_context",
             _raw_nesting(False), "spinlock_t inside raw_spinlock_t sleeps on PREEMPT_RT"),
        Case("held at exit", "mutex", _exit_holding(False), "held_at_exit",
             _exit_holding(True), "a task ends holding a mutex"),
        Case("assert held", "mutex", _assert_held(False), "not_held", _assert_held(True),
             "lockdep_assert_held without the lock"),
        Case("AA nested annotation", "mutex", _aa(_BY_COLUMN["mutex"], nested=True), None,
             _aa(_BY_COLUMN["spin"], nested=True), "subclass 1 is its own class"),
        Case("trylock ABBA", "mutex", _trylock_abba(True), None,
             _pairs(_BY_COLUMN["mutex"], [("A", "B"), ("A", "B")], "try"),
             "a trylock cannot deadlock and adds no dependency"),
        Case("out-of-order unlock", "mutex", _out_of_order, None, _out_of_order,
             "releasing B before C is legal; C is re-validated on A"),
        Case("out-of-order then C->A", "mutex", _out_of_order_then_inversion, "circular",
             _out_of_order, "the re-validated chain still knows A before C"),
    ]
    return cases + irq_cases()


CASES = build_cases()
