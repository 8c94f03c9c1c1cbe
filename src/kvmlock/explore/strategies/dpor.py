"""DPOR with sleep sets and wakeup trees (Abdulla, Aronis, Jonsson, Sagonas, POPL 2014): the
strategy.

Two executions that differ only in the order of *independent* operations (different objects,
or two reads of one object) are the same Mazurkiewicz trace and need not both run. The pieces:

* ``events.py``: the path's events and their vector clocks; which earlier events a new one
  races with (including the rules for operations that block);
* ``wakeup.py``: the path's states, each with its sleep set and wakeup tree, and how a race's
  reversal is inserted into a tree (or found redundant);
* this module: the strategy that drives them through the runtime's interface (``begin``,
  ``choose``, ``executed``, ``end``): it follows the deepest unexplored branch of a wakeup tree
  step by step, keeps sleep sets along the path, and notes which waits each step disabled or
  enabled.

After each execution every newly executed event is checked for races; for each race the state
before its first event gets the reversal in its wakeup tree. Sleep sets keep a task that was
already explored from a state asleep until something dependent runs, so no two complete
executions are equivalent: the number of complete executions is the number of traces.

A wait whose condition only held because of an event it never saw disabled (a reader arriving
after a writer's unlock, say) can still get a race with that event whose reversal cannot run:
the branch then finds its task disabled, continues freely, and may end with every runnable
task asleep. Such runs are cut short and counted as ``pruned``; they are the only waste.

``preemption_bound`` prunes: branches needing more preemptions are not explored, so
"exhausted" then means "exhausted within the bound". Under a bound only the first step of a
wakeup sequence is followed.
"""

from __future__ import annotations

from kvmlock.explore.records import ACQ_WAIT, Finished, Pending, Plan, ReplayMismatch
from kvmlock.explore.strategies.base import Strategy
from kvmlock.explore.strategies.events import Events, Op, conflict
from kvmlock.explore.strategies.wakeup import (
    _EMPTY,
    NO_SLEEP,
    PATH,
    State,
    covered,
    insert,
    placeholder,
    source_branch,
)

_new_state = State.__new__


class DPOR(Strategy):
    name = "dpor"
    exhaustive = True

    def __init__(self, preemption_bound: int | None = None) -> None:
        self.bound = preemption_bound
        self.stack: list[State] = []
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
        # Events of the current path persist across runs: a run that branches at depth j
        # reuses the clocks of events 0..j-1 and only rebuilds the cheap last-access maps.
        self.ev = Events()

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
        self.stack = [placeholder(q) for q in forced]
        if forced:
            self.stack[-1].snap = snap
        # races of the path's events were analyzed where they ran, except the last one's:
        # it is this subtree's branch (as after a backtrack in the sequential search)
        self.branch = max(self.root - 1, 0)
        return self

    def begin(self) -> Plan | None:
        # steps before the branch point replay the stack's choices, no questions asked
        if self.first:
            self.first = False
            self.ev.rewind(0)
            # (a subtree's path: its events' clocks are needed, so they are told too)
            return Plan(tuple([node.choice for node in self.stack[:self.branch]]), 0)
        if not self._next_branch():
            return None
        self.ev.rewind(self.branch)
        return Plan(tuple([node.choice for node in self.stack[:self.branch]]))

    # ------------------------------------------------------------------ events and races
    def executed(self, step: int, op: Pending, acquired: bool, child: int) -> None:
        ev = self.ev
        i = len(ev.tid)
        for j in ev.record(op, acquired, child, i >= self.branch):
            self._reverse(j, i)

    def _reverse(self, j: int, i: int) -> None:
        """Race (j, i): the state before ``j`` must also explore ``i`` going first, by the
        wakeup sequence ``notdep(j).i``. It is dropped when a task asleep (or already
        explored) at that state could start an equivalent execution, and otherwise inserted
        into the state's wakeup tree (see wakeup.py); a subtree's explorer applies the
        source-set rule instead, or hands the race to the coordinator when the state is
        one of the coordinator's."""
        ev = self.ev
        seq = ev.notdep(j, i)
        if self.source:
            evs = ev.export(seq)
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
        if not covered(node, ev, seq):
            insert(node.wut, ev, seq, ev.tid[j])

    # ------------------------------------------------------------------ scheduling
    def choose(self, step: int, current: Pending, enabled: tuple[Pending, ...],
               blocked: tuple[Pending, ...]) -> int | None:
        n = step
        stack = self.stack
        if n == self.branch and n < len(stack):
            # the branch point (the steps before it are the plan's prefix): take the branch
            node = stack[n]
            self.ev.blocker = dict(node.snap[0])
            self.ev.enabler = dict(node.snap[1])
            if node.done is PATH:  # a subtree's branch, never run here: now it has a state
                node.enabled = enabled
                node.waits = tuple([op for op in blocked if op[5] == ACQ_WAIT])
                node.done = {node.choice}
            want = node.choice
            for op in enabled:
                if op.tid == want:
                    node.ops[want] = (op.obj, op.write)
                    return want
            raise ReplayMismatch(f"dpor: step {n} names task {want}, which cannot run "
                                 f"(the body is not deterministic)")
        # note which waits got disabled, and by what (lock acquires race with the previous
        # acquire instead, which covers them), or enabled: a wait pending in the state before
        # too (its task is not the one that just ran) and enabled (disabled) there
        ev = self.ev
        blocker = ev.blocker
        enabler = ev.enabler
        if n:
            parent = stack[n - 1]
            pc = parent.choice
            before = parent.enabled
            for op in parent.waits:
                if op[0] != pc and op in enabled:
                    enabler[op[0]] = n - 1  # the event just executed enabled it
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
                    o = op[1]
                    if type(o) is tuple:  # a compound wait: its first key disables it
                        o = o[0][0]
                    lw = ev.last_write.get(o)  # type: ignore[arg-type]
                    if lw is not None:
                        blocker[tid] = lw

        cur_on = current in enabled
        cur_tid = current.tid if cur_on else -1  # type: ignore[union-attr]
        sleep = NO_SLEEP
        if parent is not None:
            pcur = parent.cur
            pre = parent.pre + 1 if pcur >= 0 and pc != pcur else parent.pre
            psleep = parent.sleep
            pdone = parent.done
            if psleep or len(pdone) > 1:  # else: nothing to carry over (done holds pc alone)
                pops = parent.ops
                lo, lw = pops[pc]
                sleep = {}
                if type(lo) is tuple:  # compound (see events.conflict)
                    for q, op in psleep.items():
                        if q != pc and not conflict(op[0], lo):
                            sleep[q] = op
                    for q in pdone:
                        if (q != pc and q not in sleep and q in pops
                                and not conflict(pops[q][0], lo)):
                            sleep[q] = pops[q]
                    psleep, pdone = NO_SLEEP, ()  # (nothing is left for the loops below)
                # (independent(op, (lo, lw)), inlined: this runs for every sleeper at every
                # step below a branch; a compound op's tuple never equals a plain key)
                for q, op in psleep.items():
                    if q != pc and (lo is None or (o := op[0]) is None or o != lo
                                    or not (op[1] or lw)):
                        sleep[q] = op
                for q in pdone:
                    if q != pc and q not in sleep and q in pops:
                        op = pops[q]
                        if (lo is None or (o := op[0]) is None or o != lo
                                or not (op[1] or lw)):
                            sleep[q] = op
                if not sleep:
                    sleep = NO_SLEEP
        else:
            pre = 0
        if n == self.root and self.root and self.root_sleep:
            sleep = self.root_sleep
        # (the fields set one by one: a call of State's __init__ costs more, at every step)
        node = _new_state(State)
        node.enabled = enabled
        node.waits = waits
        node.cur = cur_tid
        node.pre = pre
        node.sleep = sleep
        node.snap = (dict(blocker), dict(enabler)) if blocker or enabler else _EMPTY
        cand = [op for op in enabled if op[0] not in sleep] if sleep else enabled
        if self.bound is not None and cur_tid >= 0 and pre >= self.bound:
            cand = [op for op in cand if op[0] == cur_tid]
        stack.append(node)
        # Following a wakeup tree: the subtree of the branch taken at the state before is this
        # state's tree, and its leftmost entry that can run here is taken.
        wut = self.guide
        pick = None
        if wut:
            self.guide = None
            for entry in wut:
                for op in cand:
                    if op[0] == entry[0]:
                        pick = op
                        self.guide = entry[2]
                        break
                if pick is not None:
                    break
        else:
            wut = []
        if pick is None:
            if not cand:
                node.choice = -1
                node.ops = {}
                node.done = set()
                node.wut = wut
                return None
            pick = current if cur_on and (cand is enabled or current in cand) else cand[0]
            tid = pick[0]
            op = (pick[1], pick[2])
            wut.append([tid, op, []])
        else:
            tid = pick[0]
            op = (pick[1], pick[2])
        node.ops = {tid: op}
        node.choice = tid
        node.done = {tid}
        node.wut = wut
        return tid

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
        ev = self.ev
        races = ev.pending_races(t)
        if not races:
            return
        i = ev.push(t)
        try:
            for j in races:
                self._reverse(j, i)
        finally:
            ev.pop()

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
                if not node.left(q, bound):
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
            give = [e for e in rest if node.left(e[0], None)]
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
