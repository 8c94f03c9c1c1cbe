"""Find the lockdep reports in a log and read each into a :class:`~kvmlock.splat.report.Splat`.

A report starts at its headline (one of :data:`kvmlock.splat.kinds.KINDS`) and runs to the next
headline or the end of the log; ``stack backtrace:`` ends what is read of it. Inside, the kernel's
fixed phrases ("is trying to acquire lock:", "-> #1 (...):", "2 locks held by ...") say what the
next lines are, so the reader is a small state machine over those phrases.
"""

from __future__ import annotations

import re

from kvmlock.spec.names import kind_of
from kvmlock.splat.kinds import report_starts
from kvmlock.splat.report import Link, LockRef, Splat
from kvmlock.splat.text import kernel_lines

_NAME = r"(?:[^()\s]|\([^()\s]*\))+"
LOCK_RE = re.compile(
    rf"(?:(?<![\w(])[0-9a-f]{{8,16}} )?\((?P<name>{_NAME})\)"
    r"(?:\{(?P<usage>[.+?\-]{2,})\})?(?:-\{(?P<wait>\d+:\d+)\})?"
    r"(?:,? at: (?P<at>.*))?"
)
_TASK = re.compile(
    r"^\s*(?P<task>\S.*?)(?: \[(?:[^\[\]]|\[[^\]]*\])*\])? (?:is trying to acquire"
    r"|is trying to lock|is trying to release|just changed the state|is leaving the kernel"
    r"|takes:|still has)"
)
_LINK = re.compile(rf"^\s*-> #(?P<n>\d+) \((?P<name>{_NAME})\)")
_HELD_HEAD = re.compile(r"^\s*(?:\d+|no) locks? held by (?P<task>.+?):?\s*$")
_HELD_ITEM = re.compile(r"^\s*#(?P<n>\d+): ")
_RELEASE = re.compile(rf"is trying to release lock \((?P<name>{_NAME})\)")
_SLEEP_TASK = re.compile(r"\bpid: (?P<pid>\d+), name: (?P<name>.+?)\s*$")
_SYNC = re.compile(r"\b(?:lock_sync|__?synchronize_srcu\w*|synchronize_rcu\w*)\b")
_READ = re.compile(
    r"\b(?:\w*down_read\w*|cpus_read_lock|_raw_read_lock\w*|read_lock\w*|\w*srcu_read_lock\w*"
    r"|rcu_read_lock\w*|\w+_read_lock)\b"
)
#: frames that belong to the lock implementation, above the caller that took the lock
_LOCKING = re.compile(
    r"^(?:\?\s*)?(?:\[<[0-9a-f]+>\]\s*)?(?:_*lock_acquire|validate_chain|check_prev_add"
    r"|check_noncircular|lock_sync|_*mutex_lock|_raw_|_*down_|percpu_down|rwsem_|cpus_read_lock"
    r"|cpus_write_lock|_*synchronize_srcu|synchronize_rcu|_*srcu_read_lock|read_lock|write_lock"
    r"|spin_lock|_*might_|lock_acquire|__lock|do_raw_|queued_|rt_)"
)
_STACK_LINE = re.compile(r"^\s+(?:\?\s*)?(?:\[<[0-9a-f]+>\]\s*)?[\w.]+\+0x[0-9a-f]+/0x[0-9a-f]+"
                         r"|^\s+(?:\?\s*)?[\w.]+ \(\S+:\d+\)|^\s+0x[0-9a-f]+\s*$"
                         r"|^\s+\S+\.py:\d+(?:\s|$)|^\s+<\w+>:\d+(?:\s|$)")
_SECTION_END = re.compile(
    r"other info that might|Possible (?:interrupt )?unsafe|stack backtrace|-> #\d+|"
    r"(?:\d+|no) locks? held by|\*\*\* DEADLOCK|the shortest dependencies|which lock already"
)


def read_log(text: str) -> list[Splat]:
    """Every report in ``text``, in order (an empty list when there is none)."""
    lines = kernel_lines(text)
    starts = report_starts(lines)
    out: list[Splat] = []
    for n, (i, kind) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        out.append(_report(lines, i, end, kind.id))
    return out


def _lock(line: str) -> LockRef | None:
    m = LOCK_RE.search(line)
    if not m:
        return None
    at = re.sub(r"^\[<[0-9a-f]+>\]\s*", "", (m["at"] or "").strip())
    ref = LockRef(m["name"], m["usage"] or "", m["wait"] or "", at)
    _mode(ref, [ref.at])
    return ref


def _mode(ref: LockRef, frames: list[str]) -> None:
    """How the lock was taken, from the frames that took it: synchronize, a read, or a write."""
    top = [f for f in frames[:12] if f]
    if any(_SYNC.search(f) for f in top):
        ref.sync, ref.read = True, 0
        return
    srcu = kind_of(ref.name) == "srcu" or ref.name.endswith("srcu")
    if srcu or any(_READ.search(f) for f in top):
        ref.read = 2 if srcu or kind_of(ref.name) == "rwlock" else 1


def _caller(stack: list[str]) -> str:
    """The first frame below the lock implementation: who took the lock."""
    for f in stack:
        s = f.strip()
        if s and not _LOCKING.match(s):
            return re.sub(r"^\?\s*|^\[<[0-9a-f]+>\]\s*", "", s)
    return stack[0].strip() if stack else ""


def _report(lines: list[str], start: int, end: int, kind: str) -> Splat:
    sp = Splat(kind=kind, title=lines[start].strip().strip("[] "), line=start + 1)
    want = ""  # what the next lock line is: "acquiring" | "held" | "other"
    link: Link | None = None
    in_held = in_scenario = False
    held_seen: dict[str, int] = {}
    i = start + 1
    while i < end:
        line = lines[i]
        s = line.strip()
        i += 1
        if s.startswith("stack backtrace") or s.startswith("Call Trace"):
            break
        if in_scenario:
            if s:
                sp.scenario.append(line.rstrip())
            if "DEADLOCK" in s:
                in_scenario = False
            continue
        if link is not None:
            if _STACK_LINE.match(line) and not _LINK.match(line):
                link.stack.append(s)
                continue
            if s and not _SECTION_END.search(s) and not LOCK_RE.search(s) and s != "[kvm]":
                if re.match(r"^[\w.]+\+0x", s) or re.match(r"^\[<", s):
                    link.stack.append(s)
                    continue
            if s == "" or s.startswith("[") and s.endswith("]"):
                continue
            _close(link)
            link = None
        if m := _LINK.match(line):
            ref = _lock(line) or LockRef(m["name"])
            link = Link(int(m["n"]), ref)
            sp.chain.append(link)
            continue
        if in_held:
            if (m := _HELD_ITEM.match(line)) and (ref := _lock(line)):
                _add_held(sp, held_seen, m["n"], ref)
                continue
            if s == "":
                continue
            in_held = False
        if m := _HELD_HEAD.match(line):
            in_held = True
            if not sp.task:
                sp.task = m["task"].strip()
            continue
        if "unsafe locking scenario" in s:
            in_scenario = True
            continue
        if m := _RELEASE.search(line):
            sp.acquiring = LockRef(m["name"])
            sp.task = sp.task or _task(line)
            want = "at"
            continue
        if want == "at" and sp.acquiring is not None and s:
            sp.acquiring.at = re.sub(r"^\[<[0-9a-f]+>\]\s*", "", s)
            want = ""
            continue
        if m := _TASK.match(line):
            sp.task = m["task"]
            want = "acquiring"
            ref = _lock(line[m.end():])
            if ref:
                sp.acquiring, want = ref, ""
            continue
        if re.search(r"already holding|lock took another|lock was taken by another|"
                     r"connects a \S+-irq-safe lock|to a \S+-irq-unsafe lock", s):
            want = "held" if "holding" in s else "other"
            if "lock took another" in s or "lock was taken by another" in s:
                sp.inversion = "took" if "took another" in s else "taken"
            ref = _lock(s)
            if ref:
                _store(sp, ref, want)
                want = ""
            continue
        if "would create a new lock dependency" in s:
            want = "pair"
            continue
        if want == "pair" and " -> " in s:
            a, _, b = s.partition(" -> ")
            ra, rb = _lock(a), _lock(b)
            if ra and rb:
                sp.extra.append((ra, rb))
            want = ""
            continue
        if want and (ref := _lock(line)) and not s.startswith("lock("):
            _store(sp, ref, want)
            want = ""
            continue
        if (ref := _lock(line)) and _same(sp, ref):
            continue
        if m := _SLEEP_TASK.search(s):
            sp.task = sp.task or f"{m['name']}/{m['pid']}"
            sp.details.append(s)
            continue
        if re.search(r"suspicious \S+ usage|context-\{|inconsistent \{|in_atomic\(\)|"
                     r"no more locks to release|Preemption disabled at|is leaving the kernel"
                     r"|rcu_scheduler_active", s):
            sp.details.append(s)
            continue
        if kind == "sleeping" and not sp.details and " at " in s:
            sp.details.append(s)
    if link is not None:
        _close(link)
    if kind == "sleeping" and lines[start]:
        m = re.search(r"invalid context at (\S+)", lines[start])
        if m:
            sp.details.insert(0, f"might sleep at {m.group(1)}")
    _check(sp)
    return sp


def _add_held(sp: Splat, seen: dict[str, int], index: str, ref: LockRef) -> None:
    """One held lock per index: a bot prints "#0:" again for each inlined frame of the taker."""
    at = seen.get(index)
    if at is not None and sp.held_list[at].raw == ref.raw:
        if "[inline]" in sp.held_list[at].at and ref.at:
            sp.held_list[at] = ref
        return
    if any(r.raw == ref.raw and r.at == ref.at for r in sp.held_list):
        return
    seen[index] = len(sp.held_list)
    sp.held_list.append(ref)


def _task(line: str) -> str:
    m = re.match(r"^\s*(\S.*?/\d+) ", line)
    return m.group(1) if m else ""


def _store(sp: Splat, ref: LockRef, want: str) -> None:
    if want == "acquiring":
        sp.acquiring = ref
    elif want == "held":
        sp.held = ref
    elif sp.acquiring is not None and sp.held is None:
        # irq inversion: the other lock of the pair, and which way round the pair was taken
        sp.held = ref
        if sp.inversion:
            pair = (sp.acquiring, ref) if sp.inversion == "took" else (ref, sp.acquiring)
            sp.extra.append(pair)


def _same(sp: Splat, ref: LockRef) -> bool:
    """A bot prints a lock once per inlined frame; keep the last, real, function."""
    for cur in (sp.acquiring, sp.held):
        if cur is not None and cur.raw == ref.raw and "[inline]" in cur.at and ref.at:
            cur.at = ref.at
            return True
    return False


def _close(link: Link) -> None:
    _mode(link.lock, link.stack)
    link.where = _caller(link.stack)


def _check(sp: Splat) -> None:
    """Say what a report should have had and did not (a log cut short, an unknown layout)."""
    if sp.kind in ("circular", "recursive", "invalid_wait", "bad_unlock", "irq_safe_unsafe",
                   "inconsistent", "irq_inversion") and sp.acquiring is None:
        sp.problems.append("the lock being acquired (or released) was not found")
    if sp.kind in ("circular", "recursive", "irq_safe_unsafe") and sp.held is None:
        sp.problems.append("the lock already held was not found")
    if sp.kind == "irq_inversion" and sp.acquiring is not None and not sp.extra:
        sp.problems.append("the other lock of the inversion was not found")
    if sp.kind == "circular" and not sp.chain:
        sp.problems.append("the dependency chain was not found")
    if sp.kind == "circular" and sp.chain:
        idx = sorted(lk.index for lk in sp.chain)
        if idx != list(range(len(idx))):
            sp.problems.append(f"the dependency chain is incomplete (links {idx})")
