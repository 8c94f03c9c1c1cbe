"""A report's lock chain as a kvmlock program, run under the explorer.

One task per dependency: it takes the first lock, then the second, in the mode the report shows
(an SRCU read side, a synchronize, a read or write of a read-write lock). The locks get the kinds
the document's Reference gives them, so the same chain can deadlock under one document and not
under another. A read-write semaphore whose two uses in the cycle are both reads gets one more
task, a writer: readers of an rw_semaphore queue behind a waiting writer, which is how two
readers take part in a real deadlock. rwlock_t and SRCU readers never wait for each other.

An interrupt-order report has no chain to run: its program is lockdep's unsafe scenario, with an
interrupt injected on the CPU that holds the irq-unsafe lock.
"""

from __future__ import annotations

import keyword
import linecache
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from kvmlock import explore, irq, spawn
from kvmlock.spec.names import kind_of
from kvmlock.splat.report import Dependency, LockRef, Splat
from kvmlock.sync import SRCU, Mutex, RawSpinLock, RWLock, RWSemaphore, SpinLock

_BUILD: dict[str, Callable[[str], Any]] = {
    "mutex": Mutex,
    "spinlock": SpinLock,
    "raw_spinlock": RawSpinLock,
    "rwlock": RWLock,
    "rwsem": RWSemaphore,
    "percpu_rwsem": RWSemaphore,
    "srcu": SRCU,
}
_READERS_SHARE = {"rwlock": "readers of an rwlock_t are recursive: they never wait for each other",
                  "srcu": "srcu_read_lock never waits"}


@dataclass
class Outcome:
    """What exploring the chain found."""

    deadlock: bool
    explanation: str
    table: str = ""
    schedule: str = ""
    headline: str = ""
    kinds: dict[str, str] | None = None
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"deadlock": self.deadlock, "explanation": self.explanation,
                "schedule": self.schedule, "explored": self.headline, "kinds": self.kinds,
                "complete": self.complete, "trace": self.table}


def lock_kind(name: str, declared: dict[str, tuple[str, ...]], ref: LockRef | None) -> str:
    """The document's kind, else the model's, else what the report's wait type implies."""
    k = kind_of(name, declared)
    if k in _BUILD:
        return k
    if name.endswith("srcu"):
        return "srcu"
    wait = ref.wait.split(":")[0] if ref is not None and ref.wait else ""
    return "raw_spinlock" if wait in ("1", "2") else "mutex"


def _cycle(splat: Splat) -> list[Dependency]:
    deps = splat.dependencies()
    if splat.kind == "recursive":
        # one lock class, two instances (two VMs' kvm->lock) taken in opposite orders
        return deps * 2
    return deps


#: the kernel call that takes a lock of each kind: (for a read, for a write)
_CALLS = {
    "mutex": ("mutex_lock", "mutex_lock"),
    "spinlock": ("spin_lock", "spin_lock"),
    "raw_spinlock": ("raw_spin_lock", "raw_spin_lock"),
    "rwlock": ("read_lock", "write_lock"),
    "rwsem": ("down_read", "down_write"),
    "percpu_rwsem": ("percpu_down_read", "percpu_down_write"),
    "srcu": ("srcu_read_lock", "synchronize_srcu"),
}


#: what each call does to a kvmlock primitive (the generated program's vocabulary)
_ACTIONS: dict[str, Callable[[Any], Any]] = {
    "mutex_lock": lambda o: o, "spin_lock": lambda o: o, "raw_spin_lock": lambda o: o,
    "read_lock": lambda o: o.read(), "write_lock": lambda o: o.write(),
    "down_read": lambda o: o.read(), "down_write": lambda o: o.write(),
    "percpu_down_read": lambda o: o.read(), "percpu_down_write": lambda o: o.write(),
    "srcu_read_lock": lambda o: o.read(), "synchronize_srcu": SRCU.synchronize,
}


def _call(kind: str, read: int, sync: bool) -> str:
    on_read, on_write = _CALLS[kind]
    if kind == "srcu":
        return on_write if sync or read == 0 else on_read
    return on_read if read else on_write


def _expr(name: str) -> str:
    """``kvm->arch.tdp_mmu_pages_lock`` -> ``kvm.arch.tdp_mmu_pages_lock``, a valid expression."""
    parts = [re.sub(r"\W", "_", p) or "_" for p in re.split(r"->|\.|::", name)]
    parts = [f"_{p}" if p[0].isdigit() or keyword.iskeyword(p) else p for p in parts]
    return ".".join(parts)


def _program(deps: list[Dependency], kinds: dict[str, str], recursive: bool,
             writers: list[str]) -> tuple[str, dict[str, str]]:
    """Python source for the chain (one task per dependency) and each lock's expression."""
    names = list(dict.fromkeys([n for d in deps for n in (d.src, d.dst)]))
    exprs = {n: _expr(n) for n in names}
    lines: list[str] = []
    spawns: list[str] = []
    for i, d in enumerate(deps):
        a, b = exprs[d.src], exprs[d.dst]
        if recursive and i % 2:
            a, b = f"other_vm.{a}", b
        elif recursive:
            b = f"other_vm.{b}"
        inner = _call(kinds[d.dst], d.dst_read, d.sync)
        lines += [f"def task_{i}():",
                  f"    with {_call(kinds[d.src], d.src_read, False)}({a}):",
                  # a synchronize holds nothing: it is a call, not a critical section
                  f"        {inner}({b})" if inner == "synchronize_srcu" else
                  f"        with {inner}({b}):\n            pass", ""]
        label = f"{d.origin} {d.where.split('+')[0].split(' ')[0]}".strip()
        spawns.append(f"spawn(task_{i}, name={label!r})")
    for j, n in enumerate(writers):
        lines += [f"def writer_{j}():", f"    with {_CALLS[kinds[n]][1]}({exprs[n]}):",
                  "        pass", ""]
        spawns.append(f"spawn(writer_{j}, name={('writer of ' + n)!r})")
    lines += ["def main():", "    tasks = [", *[f"        {s}," for s in spawns], "    ]",
              "    for t in tasks:", "        t.join()", ""]
    return "\n".join(lines), exprs


_IRQ_KINDS = ("irq_inversion", "irq_safe_unsafe")
#: locks an interrupt handler may take: they spin, never sleep
_SPINNING = ("spinlock", "raw_spinlock", "rwlock")


def _soft(splat: Splat, safe: LockRef | None) -> bool:
    """Whether the report is about soft interrupts: its title says so, or the irq-safe lock
    was used only in softirq context (``{.-..}``: the hardirq bit unused)."""
    if "SOFTIRQ" in splat.title:
        return True
    usage = safe.usage if safe is not None else ""
    return len(usage) >= 3 and usage[0] not in "-?" and usage[2] in "-?"


def _irq_program(d: Dependency, kinds: dict[str, str], soft: bool) -> tuple[str, dict[str, str]]:
    """Lockdep's unsafe scenario as a program: CPU0 holds the irq-unsafe lock with interrupts
    on; CPU1 turns them off, takes the irq-safe lock, then the unsafe one; an interrupt on CPU0
    takes the irq-safe lock."""
    exprs = {n: _expr(n) for n in (d.src, d.dst)}
    safe, unsafe = exprs[d.src], exprs[d.dst]
    take_safe = _call(kinds[d.src], d.src_read, False)
    take_unsafe = _call(kinds[d.dst], d.dst_read, False)
    off = "local_bh_disable" if soft else "local_irq_save"
    what = "softirq" if soft else "interrupt"
    source = "\n".join([
        "def unsafe_holder():",
        f"    with {take_unsafe}({unsafe}):",
        "        pass",
        "",
        "def safe_then_unsafe():",
        f"    with {off}():",
        f"        with {take_safe}({safe}):",
        f"            with {take_unsafe}({unsafe}):",
        "                pass",
        "",
        f"def {what}_handler():",
        f"    with {take_safe}({safe}):",
        "        pass",
        "",
        "def main():",
        f"    cpu0 = spawn(unsafe_holder, name={'takes ' + d.dst!r})",
        f"    cpu1 = spawn(safe_then_unsafe, name={'takes ' + d.src + ' then ' + d.dst!r})",
        f"    irq = inject({what}_handler, cpu=cpu0, name={what + ' taking ' + d.src!r},"
        f" soft={soft})",
        "    cpu0.join()",
        "    cpu1.join()",
        "    irq.join()",
        "",
    ])
    return source, exprs


def _tree(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``[("kvm.lock", o), ("kvm.arch.x", p)]`` -> {"kvm": namespace(lock=o, arch=...)}."""
    root: dict[str, Any] = {}
    for expr, value in pairs:
        *path, leaf = expr.split(".")
        node = root
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(d: dict[str, Any]) -> Any:
        return SimpleNamespace(**{k: build(v) if isinstance(v, dict) else v
                                  for k, v in d.items()})

    return {k: build(v) if isinstance(v, dict) else v for k, v in root.items()}


def _namespace(exprs: dict[str, str], objs: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """The generated program's globals: the calls, ``spawn`` and a tree of lock objects (and a
    second VM's, for a report about two locks of one class)."""
    ns: dict[str, Any] = {"spawn": spawn, "inject": irq.inject, **_ACTIONS,
                          "local_irq_save": irq.local_irq_save,
                          "local_bh_disable": irq.local_bh_disable}
    ns.update(_tree([(e, objs[("", n)]) for n, e in exprs.items()]))
    ns["other_vm"] = SimpleNamespace(**_tree([(e, objs[("other", n)])
                                              for n, e in exprs.items()]))
    return ns


def _why_not(deps: list[Dependency], kinds: dict[str, str], spell: Callable[[str], str]) -> str:
    """Where the cycle has no wait: a lock whose holder and waiter do not exclude each other."""
    reasons = []
    n = len(deps)
    for i, d in enumerate(deps):
        nxt = deps[(i + 1) % n]  # holds d.dst while taking the next lock
        lock, kind = spell(d.dst), kinds.get(d.dst, "mutex")
        waiter_read, holder_read = d.dst_read or 0, nxt.src_read or 0
        if kind == "srcu" and (waiter_read or not d.sync):
            reasons.append(f"{lock}: {_READERS_SHARE['srcu']} (the task taking it is a reader)")
        elif kind == "rwlock" and waiter_read and holder_read:
            reasons.append(f"{lock}: {_READERS_SHARE['rwlock']}")
    if reasons:
        return "no deadlock under the document's lock kinds: " + "; ".join(reasons)
    return "no interleaving of the chain's tasks deadlocks"


def explore_splat(splat: Splat, declared: dict[str, tuple[str, ...]] | None = None,
                  timeout: float = 30.0, spell: Callable[[str], str] = str) -> Outcome:
    """Explore every interleaving of the chain's tasks (DPOR) and say whether one deadlocks.

    ``declared`` are the document's Reference kinds; ``spell`` names locks as it does.
    """
    declared = declared or {}
    deps = splat.dependencies() if splat.kind in _IRQ_KINDS else _cycle(splat)
    if not deps:
        return Outcome(False, f"a {splat.kind} report states no lock order to explore",
                       complete=True)
    refs = {r.name: r for r in [splat.acquiring, splat.held, *splat.holding,
                                *(lk.lock for lk in splat.chain)] if r is not None}
    names = list(dict.fromkeys([n for d in deps for n in (d.src, d.dst)]))
    kinds = {n: lock_kind(n, declared, refs.get(n)) for n in names}
    recursive = splat.kind == "recursive"
    writers = [n for n in names if kinds[n] in ("rwsem", "percpu_rwsem")
               and any(d.dst == n and d.dst_read for d in deps)
               and any(d.src == n and d.src_read for d in deps)]

    if splat.kind in _IRQ_KINDS:
        sleeping = [n for n in names if kinds[n] not in _SPINNING]
        if len(deps) != 1 or sleeping:
            why = (f"{', '.join(map(spell, sleeping))} would sleep in an interrupt handler"
                   if sleeping else "the report states more than one dependency")
            return Outcome(False, f"a {splat.kind} report deadlocks through an interrupt on the "
                           f"CPU that holds the lock; not explored: {why}", kinds=kinds,
                           complete=False)
        source, exprs = _irq_program(deps[0], kinds, _soft(splat, refs.get(deps[0].src)))
    else:
        source, exprs = _program(deps, kinds, recursive, writers)
    filename = "<splat>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec")

    def body() -> None:
        objs = {(p, n): _BUILD[kinds[n]](n) for n in names for p in ("", "other")}
        ns = _namespace(exprs, objs)
        exec(code, ns)
        ns["main"]()

    res = explore.check(body, "dpor", lockdep=False, timeout=timeout, stop_on_first=True)
    f = res.failure
    if f is not None and f.kind == "deadlock":
        message = f.message
        if recursive:
            lock = spell(deps[0].dst)
            message += (f"\n(assumed: two instances of {lock}, say two VMs', taken in opposite "
                        "orders by two tasks; lockdep cannot tell instances of one class apart, "
                        "so if the code orders them -- a flag, an address order -- the report is "
                        "a false positive that wants a nesting annotation)")
        return Outcome(True, message, f.trace_table(), f.schedule, res.headline(), kinds)
    if f is not None:
        return Outcome(False, f"the program failed otherwise: {f.summary()}", f.trace_table(),
                       f.schedule, res.headline(), kinds, complete=False)
    if not res.exhausted:
        return Outcome(False, "inconclusive: the explorer stopped before covering every "
                       f"interleaving ({res.stopped})", "", "", res.headline(), kinds,
                       complete=False)
    return Outcome(False, _why_not(deps, kinds, spell), "", "", res.headline(), kinds)
