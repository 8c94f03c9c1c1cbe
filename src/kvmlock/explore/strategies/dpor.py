"""DPOR with sleep sets and wakeup trees (Abdulla, Aronis, Jonsson, Sagonas, POPL 2014).

Two executions that differ only in the order of *independent* operations (different objects,
or two reads of one object) are the same Mazurkiewicz trace and need not both run. After each
execution every newly executed event ``e`` is checked for *races*: an earlier event ``e'`` of
another task, dependent with ``e``, and not already ordered before ``e`` by happens-before
through some other event. For each race the state before ``e'`` must also explore ``e`` going
first: the *wakeup sequence* ``notdep(e').e`` (the events after ``e'`` that do not happen
after it, then ``e``) goes into that state's wakeup tree, unless a task asleep there, or a
branch already in the tree, starts an equivalent execution. The next execution follows the
deepest unexplored branch step by step, so it reaches the reversed race without choices that
the sleep sets would have to cut short. Sleep sets keep a task that was already explored from a
state asleep until something dependent runs, so no two complete executions are equivalent: the
number of complete executions is the number of traces.

Blocking needs care, because an operation that is disabled cannot be moved earlier:

* a lock acquire races with the *previous acquire* of the same lock, not with the release
  that enabled it (moving it before the release is impossible, moving it before the other
  task's acquire is what gives the other order of the critical sections);
* a ``wait_for`` that was disabled at some point also races with the event that disabled it
  (or, if it was disabled from the start, with the last write of its object before it), and
  not with the event that enabled it;
* spawn and join are independent of everything and carry happens-before (child after spawn,
  joiner after the child's last event).

A wait whose condition only held because of an event it never saw disabled (a reader arriving
after a writer's unlock, say) can still get a race with that event whose reversal cannot run:
the branch then finds its task disabled, continues freely, and may end with every runnable
task asleep. Such runs are cut short and counted as ``pruned``; they are the only waste.

``preemption_bound`` prunes: branches needing more preemptions are not explored, so
"exhausted" then means "exhausted within the bound". Under a bound only the first step of a
wakeup sequence is followed.
"""

from __future__ import annotations

from kvmlock.explore.records import (
    ACQ_LOCK,
    ACQ_TRY,
    ACQ_WAIT,
    Finished,
    Pending,
    Plan,
    ReplayMismatch,
)
from kvmlock.explore.strategies.base import Strategy

# An operation as partial-order reduction sees it: (object key | None, writes?)
Op = tuple


_EMPTY: tuple[dict, dict] = ({}, {})
_NO_SLEEP: dict[int, Op] = {}


class _Node:
    """One state on the current exploration path."""

    __slots__ = ("choice", "done", "wut", "sleep", "ops", "enabled", "waits", "cur", "pre",
                 "snap")

    def __init__(self) -> None:
        self.choice = -1
        self.done: set[int]  # set by choose(), with the task it picks
        # the wakeup tree: [task, op, children] entries, leftmost first; the current choice's
        # entry stays in it until its exploration is over
        self.wut: list[list]
        self.sleep: dict[int, Op] = _NO_SLEEP  # shared while empty: never mutated in place
        self.ops: dict[int, Op] = {}  # the operation of each task explored from here
        self.enabled: tuple[Pending, ...] = ()
        self.cur = -1  # the task that stopped at this state (-1: it ended)
        self.pre = 0  # preemptions before this state
        self.waits: tuple[Pending, ...] = ()  # the waits disabled here
        self.snap: tuple[dict, dict] = _EMPTY  # the blocker and enabler maps here


_PATH: set[int] = set()  # the ``done`` of a path state never run by this explorer


def _placeholder(choice: int) -> _Node:
    """A state on the way to a subtree's root: only its choice is known, and matters."""
    node = _Node()
    node.choice = choice
    node.done = _PATH
    node.wut = [[choice, None, []]]
    return node


def _independent(a: Op, b: Op) -> bool:
    return a[0] is None or b[0] is None or a[0] != b[0] or (not a[1] and not b[1])


# A wakeup sequence handed between explorers: its events, each ``(task, the task's event
# number, vector clock, object key | None, writes?)``.
Event = tuple


def source_branch(seq: list[Event], have: set[int] | dict, enabled: set[int]) -> list | None:
    """The source-set rule (Abdulla et al., POPL 2014, Algorithm 1) for the wakeup sequence
    ``seq`` at a state whose branches (started, queued, or asleep there) are ``have``: None
    when one of them is an *initial* of ``seq`` (its first event there has nothing of ``seq``
    before it), so exploring that branch covers the reversal (or did: a sleeping one); else a
    new branch: the first initial that can run at that state goes first, the rest of ``seq``
    after it as its wakeup subtree."""
    firsts: set[int] = set()
    pick = -1
    for k, (tid, _local, cy, _obj, _w) in enumerate(seq):
        if tid in firsts:
            continue
        firsts.add(tid)
        if all(cy[x[0]] < x[1] for x in seq[:k]):
            if tid in have:
                return None
            if pick < 0 and tid in enabled:
                pick = k
    if pick < 0:
        return None  # none can run there: nothing to add, as the sequential search drops it
    out: list = []
    children = out
    for tid, _l, _c, obj, write in [seq[pick]] + seq[:pick] + seq[pick + 1:]:
        entry = [tid, (obj, write), []]
        children.append(entry)
        children = entry[2]
    return out[0]


class DPOR(Strategy):
    name = "dpor"
    exhaustive = True

    def __init__(self, preemption_bound: int | None = None) -> None:
        self.bound = preemption_bound
        self.stack: list[_Node] = []
        self.branch = 0
        self.first = True
        self.guide: list[list] | None = None  # wakeup subtree for the state after the branch
        # Exploring one subtree (parallel exploration): the ``root`` first states belong to
        # the coordinator (races that reverse there are handed to it: ``upper``); the state
        # the last of them leads to, the subtree's root, has the sleep set ``root_sleep``.
        self.source = False  # source sets instead of wakeup trees (see subtree)
        self.root = 0
        self.root_sleep: dict[int, Op] = {}
        self.upper: list[tuple] = []
        self._reset_run()

    def subtree(self, forced: tuple[int, ...], sleep: dict[int, Op],
                guide: list[list] | None, snap: tuple[dict, dict] = _EMPTY) -> DPOR:
        """Explore only the subtree reached by the steps ``forced``, whose root state has the
        sleep set ``sleep`` and follows the wakeup subtree ``guide`` first; ``snap`` is the
        blocker and enabler maps of the state where the last of ``forced`` is taken.

        The path is replayed as a backtrack of the sequential search is: the plan's prefix
        leads to the state before the subtree's branch, whose maps come from ``snap``, and the
        branch is taken there; the path's events are told from the first step on, so their
        clocks are known (their races were analyzed by whoever explored them).

        A subtree's explorer decides every state with the source-set rule
        (:func:`source_branch`) instead of wakeup trees: a state's branches then depend on no
        order between them, so subtrees explored at the same time, and races decided by the
        coordinator after a sibling already started, still give every trace (source sets are
        sound for any order of exploration), and sleep sets still keep any two complete
        executions apart. The price is some runs that a sleep set cuts short (``pruned``)."""
        self.source = True
        self.root = len(forced)
        self.root_sleep = dict(sleep)
        self.guide = guide or None
        # the path's states, as placeholders: the coordinator's (only their choices matter)
        self.stack = [_placeholder(q) for q in forced]
        if forced:
            self.stack[-1].snap = snap
        # races of the path's events were analyzed where they ran, except the last one's:
        # it is this subtree's branch (as after a backtrack in the sequential search)
        self.branch = max(self.root - 1, 0)
        return self

    # ------------------------------------------------------------------ per-run bookkeeping
    # Events of the current path persist across runs: a run that branches at depth j reuses
    # the clocks of events 0..j-1 and only rebuilds the cheap last-access maps from them.
    def _reset_run(self) -> None:
        self.width = 4  # grows (doubling) as tasks are spawned
        self.ev_tid: list[int] = []
        self.ev_local: list[int] = []
        self.ev_clock: list[list[int]] = []
        self.ev_write: list[bool] = []
        # (object key | None, acquired it?, spawned task | -1): read only by _rebuild
        self.ev_more: list[tuple[int | None, bool, int]] = []
        self._rebuild(0)

    def _rebuild(self, upto: int) -> None:
        for arr in (self.ev_tid, self.ev_local, self.ev_clock, self.ev_write, self.ev_more):
            del arr[upto:]
        # task -> its vector clock; its own entry counts its events (the next one's number - 1)
        self.clock: dict[int, list[int]] = {0: [0] * self.width}
        self.last_write: dict[int, int] = {}
        self.reads: dict[int, list[int]] = {}
        self.hist: dict[int, list[int]] = {}  # object key -> its events, in order
        self.last_acq: dict[int, int] = {}
        self.blocker: dict[int, int] = {}
        self.enabler: dict[int, int] = {}  # waiting task -> the event that last enabled it
        clock = self.clock
        hist, last_acq, last_write, reads = self.hist, self.last_acq, self.last_write, self.reads
        ev_tid, ev_clock, ev_more = self.ev_tid, self.ev_clock, self.ev_more
        ev_write = self.ev_write
        for i in range(upto):
            c = ev_clock[i]
            clock[ev_tid[i]] = c
            o, acquired, ch = ev_more[i]
            if ch >= 0:
                clock[ch] = c[:]
            if o is not None:
                hist.setdefault(o, []).append(i)
                if acquired:
                    last_acq[o] = i
                if ev_write[i]:
                    last_write[o] = i
                    reads[o] = []
                else:
                    reads.setdefault(o, []).append(i)

    def begin(self) -> Plan | None:
        # steps before the branch point replay the stack's choices, no questions asked
        if self.first:
            self.first = False
            self._reset_run()
            # (a subtree's path: its events' clocks are needed, so they are told too)
            return Plan(tuple([node.choice for node in self.stack[:self.branch]]), 0)
        if not self._next_branch():
            return None
        self._rebuild(self.branch)
        return Plan(tuple([node.choice for node in self.stack[:self.branch]]))

    def _grow(self, tid: int) -> None:
        while tid >= self.width:
            extra = [0] * self.width
            self.width *= 2
            done = set()
            for c in self.ev_clock:
                c.extend(extra)
                done.add(id(c))
            for c in self.clock.values():
                if id(c) not in done:
                    c.extend(extra)
                    done.add(id(c))

    # ------------------------------------------------------------------ events and races
    def executed(self, step: int, op: Pending, acquired: bool, child: int) -> None:
        """Account for the event just executed: its clock, its races, last-access maps."""
        tid, obj, write, kind, _label, acq, blocking, target = op
        ev_tid = self.ev_tid
        i = len(ev_tid)
        clock = self.clock[tid]
        local = clock[tid] + 1
        ev_local = self.ev_local
        ev_clock = self.ev_clock
        races: list[int] = []
        new = clock[:]
        if obj is not None:
            analyze = i >= self.branch
            lw = self.last_write.get(obj)
            rs = self.reads.get(obj)
            if analyze and acquired:
                la = self.last_acq.get(obj)
                if la is not None:
                    q = ev_tid[la]
                    if q != tid and clock[q] < ev_local[la]:
                        races.append(la)
            # A blocking acquire cannot move before the release that let it in (it would be
            # disabled there); a trylock can, and then fails: that race is real.
            # Likewise a wait cannot move before the event that enabled it: it was disabled
            # just before that event, and nothing else wrote its object since.
            generic = analyze and acq != ACQ_LOCK
            en = self.enabler.pop(tid, -1) if (blocking and self.enabler) else -1
            merge = rs if (write and rs) else ((lw,) if lw is not None else ())
            for j in merge:
                q = ev_tid[j]
                if clock[q] >= ev_local[j]:
                    continue  # already happens-before: its whole past is in the clock
                if (q != tid and (generic or (not write and analyze)) and j not in races
                        and j != en):
                    races.append(j)
                c = ev_clock[j]
                new = [a if a > b else b for a, b in zip(new, c, strict=True)]
            b = self.blocker.pop(tid, None) if self.blocker else None
            if analyze and b is not None and b not in races:
                q = ev_tid[b]
                if q != tid and clock[q] < ev_local[b]:
                    races.append(b)
            hist = self.hist.get(obj)
            if hist is None:
                hist = self.hist[obj] = []
            if analyze and blocking and acq != ACQ_LOCK:
                # A wait whose reversal with the last write is infeasible (it would be
                # disabled there) must also try going before earlier conflicting writes. The
                # scan has no window: it ends at the task's own last write, or at the first
                # write already ordered before it (everything earlier is ordered too).
                ev_write = self.ev_write
                for j in reversed(hist):
                    q = ev_tid[j]
                    if q == tid:
                        if ev_write[j]:
                            break
                        continue
                    if not write and not ev_write[j]:
                        continue
                    if clock[q] < ev_local[j]:
                        if j not in races and j != en:
                            races.append(j)
                    elif ev_write[j]:
                        break
            hist.append(i)
            if acquired:
                self.last_acq[obj] = i
            if write:
                self.last_write[obj] = i
                self.reads[obj] = []
            elif rs is None:
                self.reads[obj] = [i]
            else:
                rs.append(i)
        elif kind == "join":
            other = self.clock.get(target)
            if other is not None:
                new = [a if a > b else b for a, b in zip(new, other, strict=True)]
        new[tid] = local
        self.clock[tid] = new
        ev_tid.append(tid)
        self.ev_write.append(write)
        ev_local.append(local)
        ev_clock.append(new)
        self.ev_more.append((obj, acquired, child))
        if child >= 0:
            if child >= self.width:
                self._grow(child)
            self.clock[child] = self.clock[tid][:]
        for j in races:
            self._reverse(j, i)

    def _op(self, x: int) -> Op:
        return (self.ev_more[x][0], self.ev_write[x])

    def _weak_initial(self, q: int, op: Op, seq: list[int]) -> bool:
        """Can task ``q`` (next operation ``op``) go first in some reordering of ``seq`` (event
        indices of this run) that is equivalent to it followed by more events?"""
        ev_tid = self.ev_tid
        for k, y in enumerate(seq):
            if ev_tid[y] == q:
                cy = self.ev_clock[y]
                ev_local = self.ev_local
                # no earlier event of seq happens before q's first one
                return all(cy[ev_tid[x]] < ev_local[x] for x in seq[:k])
        obj, write = op
        if obj is None:
            return True  # spawn, join: independent of everything
        ev_more, ev_write = self.ev_more, self.ev_write
        for x in reversed(seq):  # _independent, inlined; the racing event is last, so a
            if ev_more[x][0] == obj and (write or ev_write[x]):  # conflict shows up early
                return False
        return True

    def _reverse(self, j: int, i: int) -> None:
        """Race (j, i): the state before ``j`` must also explore ``i`` going first.

        The wakeup sequence is ``notdep(j).i``: the events after ``j`` that do not happen
        after it, then ``i``. It is dropped when a task asleep (or already explored) at that
        state could start an equivalent execution, and otherwise inserted into the state's
        wakeup tree, unless the tree already holds an equivalent branch (Abdulla et al.,
        POPL 2014, optimal DPOR).
        """
        ev_tid = self.ev_tid
        ev_clock = self.ev_clock
        p = ev_tid[j]
        k = self.ev_local[j]
        seq = [x for x in range(j + 1, i) if ev_clock[x][p] < k]
        seq.append(i)
        if self.source:
            evs = [(ev_tid[x], self.ev_local[x], tuple(ev_clock[x]), self.ev_more[x][0],
                    self.ev_write[x]) for x in seq]
            if j < self.root:  # a state of the coordinator's: it decides there
                self.upper.append((tuple(n.choice for n in self.stack[:j]), evs))
                return
            node = self.stack[j]
            entry = source_branch(evs, node.done.union(node.sleep, (e[0] for e in node.wut)),
                                  {t.tid for t in node.enabled})
            if entry is not None:
                node.wut.append(entry)
            return
        node = self.stack[j]
        for q, op in node.sleep.items():
            if self._weak_initial(q, op, seq):
                return
        ops = node.ops
        for q in node.done:
            if q != node.choice and q in ops and self._weak_initial(q, ops[q], seq):
                return
        children = node.wut
        while True:
            for entry in children:
                # the task that did j cannot go first: j and i race, so they conflict (or j
                # disabled i), whatever their operations say
                if entry[0] != p and self._weak_initial(entry[0], entry[1], seq):
                    if not entry[2]:
                        return  # a leaf: an equivalent branch is (being) explored
                    q = entry[0]
                    for n, x in enumerate(seq):
                        if ev_tid[x] == q:
                            del seq[n]
                            break
                    if not seq:
                        return
                    children = entry[2]
                    break
            else:
                for x in seq:  # a new rightmost branch
                    entry = [ev_tid[x], self._op(x), []]
                    children.append(entry)
                    children = entry[2]
                return

    # ------------------------------------------------------------------ scheduling
    def choose(self, step: int, current: Pending, enabled: tuple[Pending, ...],
               blocked: tuple[Pending, ...]) -> int | None:
        n = step
        stack = self.stack
        if n == self.branch and n < len(stack):
            # the branch point (the steps before it are the plan's prefix): take the branch
            node = stack[n]
            self.blocker = dict(node.snap[0])
            self.enabler = dict(node.snap[1])
            if node.done is _PATH:  # a subtree's branch, never run here: now it has a state
                node.enabled = enabled
                node.waits = tuple([op for op in blocked if op[5] == ACQ_WAIT])
                node.done = {node.choice}
            want = node.choice
            for op in enabled:
                if op.tid == want:
                    node.ops[want] = (op.obj, op.write)
                    return self._take(op)
            raise ReplayMismatch(f"dpor: step {n} names task {want}, which cannot run "
                                 f"(the body is not deterministic)")
        # note which waits got disabled, and by what (lock acquires race with the previous
        # acquire instead, which covers them), or enabled: a wait pending in the state before
        # too (its task is not the one that just ran) and enabled (disabled) there
        blocker = self.blocker
        if n:
            parent = stack[n - 1]
            pc = parent.choice
            before = parent.enabled
            for op in parent.waits:
                if op[0] != pc and op in enabled:
                    self.enabler[op[0]] = n - 1  # the event just executed enabled it
        else:
            parent = None
            pc = -1
            before = ()
        waits: tuple[Pending, ...] = ()
        for op in blocked:
            if op[5] == ACQ_WAIT:  # (op.flavour: an index is cheaper, and this runs a lot)
                waits += (op,)
                tid = op[0]
                if tid != pc and op in before:
                    blocker[tid] = n - 1  # ... or disabled it
                elif tid not in blocker:
                    lw = self.last_write.get(op[1])  # type: ignore[arg-type]
                    if lw is not None:
                        blocker[tid] = lw

        node = _Node()
        if blocker or self.enabler:
            node.snap = (dict(blocker), dict(self.enabler))
        node.enabled = enabled
        node.waits = waits
        cur_on = current in enabled
        node.cur = cur_tid = current.tid if cur_on else -1  # type: ignore[union-attr]
        sleep = _NO_SLEEP
        if parent is not None:
            pcur = parent.cur
            node.pre = parent.pre + 1 if pcur >= 0 and pc != pcur else parent.pre
            psleep = parent.sleep
            pdone = parent.done
            if psleep or len(pdone) > 1:  # else: nothing to carry over (done holds pc alone)
                ev = parent.ops[pc]
                sleep = {}
                for q, op in psleep.items():
                    if q != pc and _independent(op, ev):
                        sleep[q] = op
                pops = parent.ops
                for q in pdone:
                    if q != pc and q not in sleep and q in pops:
                        op = pops[q]
                        if _independent(op, ev):
                            sleep[q] = op
                if sleep:
                    node.sleep = sleep
        if n == self.root and self.root:
            sleep = self.root_sleep
            if sleep:
                node.sleep = sleep
        cand = [op for op in enabled if op.tid not in sleep] if sleep else enabled
        if self.bound is not None and cur_tid >= 0 and node.pre >= self.bound:
            cand = [op for op in cand if op.tid == cur_tid]
        stack.append(node)
        # Following a wakeup tree: the subtree of the branch taken at the state before is this
        # state's tree, and its leftmost entry that can run here is taken.
        wut = self.guide
        pick = None
        if wut:
            self.guide = None
            for entry in wut:
                for op in cand:
                    if op.tid == entry[0]:
                        pick = op
                        self.guide = entry[2]
                        break
                if pick is not None:
                    break
        else:
            wut = []
        if pick is None:
            if not cand:
                node.done = set()
                node.wut = wut
                return None
            pick = current if cur_on and current in cand else cand[0]
            op = (pick.obj, pick.write)  # type: ignore[union-attr]
            wut.append([pick.tid, op, []])  # type: ignore[union-attr]
        else:
            op = (pick.obj, pick.write)
        tid = pick.tid  # type: ignore[union-attr]
        node.ops[tid] = op
        node.choice = tid
        node.done = {tid}
        node.wut = wut
        return self._take(pick)  # type: ignore[arg-type]

    def _take(self, t: Pending) -> int:
        return t.tid

    def end(self, run: Finished) -> None:
        if run.outcome is not None and (run.outcome != "pruned" or self.source):
            # Cut short (deadlock, failure, hang): the operations the live tasks were about
            # to do never ran, so their races would otherwise never be looked at. Source sets
            # need this of a run a sleep set cut short too: a blocked task's acquire there may
            # race with the holder's, and no other run need meet that race.
            for op in run.pending:
                if op.obj is not None:
                    self._pending_races(op)
        # a run cut short at a fresh node leaves that node without a choice
        if self.stack and self.stack[-1].choice < 0:
            self.stack.pop()

    def _pending_races(self, t: Pending) -> None:
        tid = t.tid
        clock = self.clock.get(tid)
        if clock is None:
            return
        ev_tid, ev_local, ev_write = self.ev_tid, self.ev_local, self.ev_write
        obj, write, acq = t.obj, t.write, t.flavour

        def unordered(j: int) -> bool:
            return ev_tid[j] != tid and clock[ev_tid[j]] < ev_local[j]

        races: list[int] = []
        if acq in (ACQ_LOCK, ACQ_TRY):
            la = self.last_acq.get(obj)  # type: ignore[arg-type]
            if la is not None and unordered(la):
                races.append(la)
        hist = self.hist.get(obj, [])  # type: ignore[arg-type]
        if acq != ACQ_LOCK:
            for j in reversed(hist):
                if ev_tid[j] == tid:
                    if ev_write[j]:
                        break
                    continue
                if not write and not ev_write[j]:
                    continue
                if unordered(j):
                    if j not in races:
                        races.append(j)
                elif ev_write[j]:
                    break
        b = self.blocker.get(tid)
        if b is not None and unordered(b) and b not in races:
            races.append(b)
        if not races:
            return
        # a provisional event record for the operation, so races see it like any other
        i = len(ev_tid)
        local = clock[tid] + 1
        c = clock[:]
        c[tid] = local
        arrays = (ev_tid, ev_local, self.ev_clock, ev_write, self.ev_more)
        for arr, v in zip(arrays, (tid, local, c, write, (obj, False, -1)), strict=True):
            arr.append(v)
        try:
            for j in races:
                self._reverse(j, i)
        finally:
            for arr in arrays:
                arr.pop()

    def _next_branch(self) -> bool:
        """The deepest state whose wakeup tree has a branch left: run that branch next."""
        stack = self.stack
        bound = self.bound
        for j in range(len(stack) - 1, self.root - 1, -1):
            node = stack[j]
            wut = node.wut
            choice = node.choice
            if len(wut) == 1 and wut[0][0] == choice:
                continue  # nothing else to explore here (the usual case)
            for n, entry in enumerate(wut):
                if entry[0] == choice:
                    del wut[n]  # its exploration is over
                    break
            while wut:
                entry = wut[0]
                q = entry[0]
                if (q in node.done or q in node.sleep
                        or all(t.tid != q for t in node.enabled)
                        or (bound is not None and node.cur >= 0 and q != node.cur
                            and node.pre + 1 > bound)):
                    del wut[0]  # asleep, explored or not runnable here, or over the bound
                    node.done.add(q)
                    continue
                node.done.add(q)
                node.choice = q
                del stack[j + 1:]
                self.branch = j
                self.guide = entry[2] if bound is None else None
                return True
        return False

    def donate(self) -> tuple[list[tuple], list[tuple]]:
        """Give the coordinator the shallowest state with unexplored branches, and the states
        above it: they become its states (``root`` moves below them). Returns the states, each
        ``(path, sleep, done, enabled tasks, blocker and enabler maps)``, and the branches,
        each ``(path, task, op, wakeup subtree)``."""
        stack = self.stack
        for k in range(self.root, len(stack)):
            node = stack[k]
            rest = [e for e in node.wut if e[0] != node.choice]
            if not rest:
                continue
            give = [e for e in rest if not (
                e[0] in node.done or e[0] in node.sleep
                or all(t.tid != e[0] for t in node.enabled))]  # asleep, explored, not runnable
            node.wut = [e for e in node.wut if e[0] == node.choice]
            if not give:
                continue
            states = []
            for d in range(self.root, k + 1):
                n = stack[d]
                path = tuple(x.choice for x in stack[:d])
                done = {q: n.ops[q] for q in n.done if q in n.ops}
                states.append((path, dict(n.sleep), done, {t.tid for t in n.enabled}, n.snap))
            path = tuple(x.choice for x in stack[:k])
            self.root = k + 1
            return states, [(path, e[0], e[1], e[2]) for e in give]
        return [], []

    def distinct(self) -> int | None:
        return None
