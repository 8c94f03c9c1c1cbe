"""The events of the current exploration path, their vector clocks, and the races they make.

DPOR needs, for every executed event, which earlier events happen before it. Each event gets a
*vector clock*: entry ``q`` counts the events of task ``q`` that happen before it (its own entry
counts its task's events up to itself). Event ``j`` happens before event ``i`` exactly when
``clock(i)[task(j)] >= local(j)``, its number within its task. Happens-before is carried by the
program order of a task, by two dependent operations on one object (the later one sees the
earlier's whole past), by spawn (the child starts with the spawner's clock) and by join (the
joiner gets the joined task's last clock).

:class:`Events` keeps the path's events in parallel arrays (the explorer appends one per step,
and a backtrack cuts them at the branch point: the clocks of the events before it stay valid),
plus what finding races needs: each object's last write, the reads since, its whole history,
its last lock acquire, and for each waiting task the event that disabled it (``blocker``) or
last enabled it (``enabler``). :meth:`Events.record` adds an event and returns the earlier
events it *races* with: of another task, dependent, and not already ordered before it.

Which pairs race, for operations that block (an operation that is disabled cannot be moved
earlier than what enabled it):

* a lock acquire races with the *previous acquire* of the same lock, not with the release that
  let it in (moving it before the release is impossible; moving it before the other task's
  acquire gives the other order of the critical sections); a trylock can move before the
  release, and then fails, so that race is real;
* a wait that was disabled at some point races with the event that disabled it (or, if it was
  disabled from the start, with the last write of its object before it), and not with the
  event that enabled it;
* a wait whose reversal with the last write is infeasible must also try going before earlier
  conflicting writes. That scan has **no window**: it ends at the task's own last write, or at
  the first write already ordered before the wait (every write before that one is ordered
  too, through it), however many accesses lie between.
"""

from __future__ import annotations

from kvmlock.explore.records import ACQ_LOCK, ACQ_TRY, Pending

#: An operation as partial-order reduction sees it: (object key | None, writes?)
Op = tuple

#: An event handed between explorers (a wakeup sequence in parallel exploration):
#: ``(task, the task's event number, vector clock, object key | None, writes?)``.
Event = tuple


#: What :meth:`Events.record` returns when an event races with nothing (shared: never
#: appended to).
_NO_RACES: list[int] = []

#: (two clocks are joined entry by entry with a comprehension over ``zip``: every clock has the
#: same length, and ``list(map(max, a, b))`` costs twice as much, a generic call per entry)


def independent(a: Op, b: Op) -> bool:
    """Two operations commute: different objects, no object at all (spawn, join), or reads."""
    if type(a[0]) is tuple or type(b[0]) is tuple:
        return not conflict(a[0], b[0])
    return a[0] is None or b[0] is None or a[0] != b[0] or (not a[1] and not b[1])


# A *compound* operation touches several keys at once: its object is a tuple of
# ``(key, writes?)`` pairs (each key once), its ``write`` says whether any pair writes;
# ``writes?`` None is a read that only orders: the operation is enabled only after the last
# write of that key (a blocking get, after the put of the item it takes), so that write
# happens before it but is never a race (the two cannot be reversed; as a lock acquire does
# not race with the release that let it in). A queue's
# operations are such (a put writes the tail and its item's slot; a get writes the head and
# reads that slot; ``qsize()`` reads head and tail), so that a put and a get of a non-empty
# queue commute while two puts do not. A key is touched either only by compound operations or
# only by plain ones, never both: code that compares a plain key with a compound one (they are
# never equal) is right without looking inside.
def conflict(a: object, b: object) -> bool:
    """Two compound objects (or a compound one and anything) share a key one of them writes."""
    if type(a) is not tuple or type(b) is not tuple:
        return False  # a plain key is never one of a compound operation's keys
    for k, w in a:
        for k2, w2 in b:
            if k == k2 and (w or w2):
                return True
    return False


def _wrote(more: tuple, write: bool, key: int) -> bool:
    """Whether an event (its ``more`` record and ``write`` flag) wrote ``key``."""
    o = more[0]
    if type(o) is not tuple:
        return write
    for k, w in o:
        if k == key:
            return w
    return False


class Events:
    """The path's events (parallel arrays, by event index) and the maps races are found with."""

    def __init__(self) -> None:
        self.width = 4  # length of every clock; grows (doubling) as tasks are spawned
        self.tid: list[int] = []  # the event's task
        self.local: list[int] = []  # its number within its task, from 1
        self.clock: list[list[int]] = []  # its vector clock
        self.write: list[bool] = []
        # (object key | None, acquired it?, spawned task | -1, then what recording the event
        # replaced, for rewind: the task's clock before it, and the object's last write,
        # reads since, and last acquire before it)
        self.more: list[tuple] = []
        self.rewind(0)

    def __len__(self) -> int:
        return len(self.tid)

    def rewind(self, upto: int) -> None:
        """Keep the first ``upto`` events (a backtrack to that depth): the maps of last
        accesses are put back as they were after event ``upto - 1`` by undoing the later
        events, newest first, so a backtrack costs what the abandoned suffix cost, not the
        kept prefix. The blocker and enabler maps start empty (the branch's state has them)."""
        self.blocker: dict[int, int] = {}  # waiting task -> the event that disabled it
        self.enabler: dict[int, int] = {}  # waiting task -> the event that last enabled it
        if not upto:
            for arr in (self.tid, self.local, self.clock, self.write, self.more):
                arr.clear()
            # task -> its vector clock now; its own entry counts its events
            self.task_clock: dict[int, list[int]] = {0: [0] * self.width}
            self.last_write: dict[int, int] = {}
            self.reads: dict[int, list[int]] = {}  # object key -> reads since its last write
            self.hist: dict[int, list[int]] = {}  # object key -> its events, in order
            self.last_acq: dict[int, int] = {}
            return
        task_clock, ev_tid = self.task_clock, self.tid
        hist, last_acq, last_write, reads = self.hist, self.last_acq, self.last_write, self.reads
        ev_write, ev_more = self.write, self.more
        for i in range(len(ev_tid) - 1, upto - 1, -1):
            o, acquired, ch, back, lw, rs, la = ev_more[i]
            if ch >= 0:
                del task_clock[ch]
            task_clock[ev_tid[i]] = back
            if type(o) is tuple:
                for (k, w), (lwk, rsk) in zip(reversed(o), reversed(lw), strict=True):
                    hist[k].pop()
                    if w:
                        if lwk is None:
                            del last_write[k]
                        else:
                            last_write[k] = lwk
                        if rsk:
                            reads[k] = rsk
                    else:
                        reads[k].pop()
            elif o is not None:
                hist[o].pop()
                if acquired:
                    if la is None:
                        del last_acq[o]
                    else:
                        last_acq[o] = la
                if ev_write[i]:
                    if lw is None:
                        del last_write[o]
                    else:
                        last_write[o] = lw
                    if rs:  # (the write replaced its reads only when there were some)
                        reads[o] = rs
                else:
                    reads[o].pop()
        for arr in (ev_tid, self.local, self.clock, ev_write, ev_more):
            del arr[upto:]

    def grow(self, tid: int) -> None:
        """Widen every clock to hold task ``tid`` (clocks are shared between a task, its last
        event and the undo records: each is widened once)."""
        while tid >= self.width:
            extra = [0] * self.width
            self.width *= 2
            done = set()
            for c in self.clock:
                c.extend(extra)
                done.add(id(c))
            for c in (*self.task_clock.values(), *[m[3] for m in self.more]):
                if id(c) not in done:
                    c.extend(extra)
                    done.add(id(c))

    # ------------------------------------------------------------------ happens-before
    def happens_before(self, j: int, i: int) -> bool:
        """Event ``j`` happens before event ``i`` (``j`` before ``i`` on the path)."""
        return self.clock[i][self.tid[j]] >= self.local[j]

    def notdep(self, j: int, i: int) -> list[int]:
        """The events after ``j`` and before ``i`` that do not happen after ``j``, then ``i``:
        the wakeup sequence that reverses the race ``(j, i)``."""
        ev_clock = self.clock
        p = self.tid[j]
        k = self.local[j]
        seq = [x for x in range(j + 1, i) if ev_clock[x][p] < k]
        seq.append(i)
        return seq

    def op(self, x: int) -> Op:
        return (self.more[x][0], self.write[x])

    def export(self, seq: list[int]) -> list[Event]:
        """Events of this path as :data:`Event` records, which mean the same elsewhere."""
        return [(self.tid[x], self.local[x], tuple(self.clock[x]), self.more[x][0],
                 self.write[x]) for x in seq]

    # ------------------------------------------------------------------ recording, races
    def record(self, op: Pending, acquired: bool, child: int, analyze: bool) -> list[int]:
        """Append the event of ``op`` just executed (it took a lock: ``acquired``; it started
        task ``child``, else -1) and return the earlier events it races with (none unless
        ``analyze``: the events of a replayed prefix had theirs looked at already)."""
        tid, obj, write, kind, _label, acq, blocking, target = op
        if type(obj) is tuple:
            return self._record_compound(op, acquired, child, analyze)
        ev_tid = self.tid
        i = len(ev_tid)
        clock = self.task_clock[tid]
        local = clock[tid] + 1
        ev_local = self.local
        ev_clock = self.clock
        races: list[int] = _NO_RACES  # (a list of its own once there is one)
        new = None
        if obj is not None:
            lw = self.last_write.get(obj)
            rs = self.reads.get(obj)
            la = self.last_acq.get(obj)
            if analyze and acquired:
                if la is not None:
                    q = ev_tid[la]
                    if q != tid and clock[q] < ev_local[la]:
                        races = [la]
            # not with the release that let a blocking acquire in, nor with the event that
            # enabled a wait (see the module docstring)
            generic = analyze and acq != ACQ_LOCK
            en = self.enabler.pop(tid, -1) if (blocking and self.enabler) else -1
            merge = rs if (write and rs) else ((lw,) if lw is not None else ())
            for j in merge:
                q = ev_tid[j]
                if clock[q] >= ev_local[j]:
                    continue  # already happens-before: its whole past is in the clock
                if (q != tid and (generic or (not write and analyze)) and j not in races
                        and j != en):
                    if races is _NO_RACES:
                        races = []
                    races.append(j)
                new = [x if x > y else y for x, y in zip(clock if new is None else new,
                                                           ev_clock[j], strict=True)]
            b = self.blocker.pop(tid, None) if self.blocker else None
            if analyze and b is not None and b not in races:
                q = ev_tid[b]
                if q != tid and clock[q] < ev_local[b]:
                    if races is _NO_RACES:
                        races = []
                    races.append(b)
            hist = self.hist.get(obj)
            if hist is None:
                hist = self.hist[obj] = []
            if analyze and blocking and acq != ACQ_LOCK:
                if races is _NO_RACES:
                    races = []
                self._earlier_writes(hist, tid, write, clock, races, en)
            hist.append(i)
            if acquired:
                self.last_acq[obj] = i
            if write:
                self.last_write[obj] = i
                if rs:
                    self.reads[obj] = []
            elif rs is None:
                self.reads[obj] = [i]
            else:
                rs.append(i)
            more = (obj, acquired, child, clock, lw, rs, la)
        else:
            if kind == "join" and (other := self.task_clock.get(target)) is not None:
                new = [x if x > y else y for x, y in zip(clock, other, strict=True)]
            more = (None, acquired, child, clock, None, None, None)
        if new is None:
            new = clock[:]
        new[tid] = local
        self.task_clock[tid] = new
        ev_tid.append(tid)
        self.write.append(write)
        ev_local.append(local)
        ev_clock.append(new)
        self.more.append(more)
        if child >= 0:
            if child >= self.width:
                self.grow(child)
            self.task_clock[child] = self.task_clock[tid][:]
        return races

    def _earlier_writes(self, hist: list[int], tid: int, write: bool, clock: list[int],
                        races: list[int], skip: int) -> None:
        """Add to ``races`` the conflicting events of ``hist`` not ordered before a wait of
        ``tid`` (clock ``clock``), newest first, back to the task's own last write or the
        first conflicting write already ordered before it; ``skip`` is not a race (the event
        that enabled the wait). No window: see the module docstring."""
        ev_tid, ev_local, ev_write = self.tid, self.local, self.write
        for j in reversed(hist):
            q = ev_tid[j]
            if q == tid:
                if ev_write[j]:
                    break
                continue
            if not write and not ev_write[j]:
                continue
            if clock[q] < ev_local[j]:
                if j not in races and j != skip:
                    races.append(j)
            elif ev_write[j]:
                break

    def _record_compound(self, op: Pending, acquired: bool, child: int,
                         analyze: bool) -> list[int]:
        """:meth:`record` of a compound operation (see :func:`conflict`): each of its keys is
        an access of its own, and the event races with what any of them conflicts with. (No
        lock is compound: the acquire rules do not apply.)"""
        tid, objs, _write, _kind, _label, acq, blocking, _target = op
        ev_tid, ev_local, ev_clock = self.tid, self.local, self.clock
        i = len(ev_tid)
        clock = self.task_clock[tid]
        local = clock[tid] + 1
        races: list[int] = []
        new = clock
        en = self.enabler.pop(tid, -1) if (blocking and self.enabler) else -1
        b = self.blocker.pop(tid, None) if self.blocker else None
        undo = []
        last_write, reads, hists = self.last_write, self.reads, self.hist
        for key, w in objs:
            lw = last_write.get(key)
            rs = reads.get(key)
            for j in (rs if (w and rs) else ((lw,) if lw is not None else ())):
                q = ev_tid[j]
                if clock[q] >= ev_local[j]:
                    continue
                if analyze and w is not None and q != tid and j != en and j not in races:
                    races.append(j)
                new = [x if x > y else y for x, y in zip(new, ev_clock[j], strict=True)]
            hist = hists.get(key)
            if hist is None:
                hist = hists[key] = []
            if analyze and blocking and w is not None:
                self._earlier_compound(hist, key, tid, w, clock, races, en)
            hist.append(i)
            if w:
                last_write[key] = i
                if rs:
                    reads[key] = []
            elif rs is None:
                reads[key] = [i]
            else:
                rs.append(i)
            undo.append((lw, rs))
        if analyze and b is not None and b not in races:
            q = ev_tid[b]
            if q != tid and clock[q] < ev_local[b]:
                races.append(b)
        new = new[:] if new is clock else new
        new[tid] = local
        self.task_clock[tid] = new
        ev_tid.append(tid)
        self.write.append(_write)
        ev_local.append(local)
        ev_clock.append(new)
        self.more.append((objs, acquired, child, clock, undo, None, None))
        if child >= 0:
            if child >= self.width:
                self.grow(child)
            self.task_clock[child] = new[:]
        return races or _NO_RACES

    def _earlier_compound(self, hist: list[int], key: int, tid: int, write: bool,
                          clock: list[int], races: list[int], skip: int) -> None:
        """:meth:`_earlier_writes` over one key of compound events, each event's access of
        that key being a write or a read of its own."""
        ev_tid, ev_local, ev_write, ev_more = self.tid, self.local, self.write, self.more
        for j in reversed(hist):
            q = ev_tid[j]
            wj = _wrote(ev_more[j], ev_write[j], key)
            if q == tid:
                if wj:
                    break
                continue
            if not write and not wj:
                continue
            if clock[q] < ev_local[j]:
                if j not in races and j != skip:
                    races.append(j)
            elif wj:
                break

    def pending_races(self, t: Pending) -> list[int]:
        """The races the operation ``t`` would make if it executed now (it never ran: the
        execution was cut short before it), found as :meth:`record` would."""
        tid = t.tid
        clock = self.task_clock.get(tid)
        if clock is None:
            return []
        ev_tid, ev_local = self.tid, self.local
        obj, write, acq = t.obj, t.write, t.flavour
        races: list[int] = []
        if type(obj) is tuple:
            for key, w in obj:
                if w is not None:
                    self._earlier_compound(self.hist.get(key, []), key, tid, w, clock,
                                           races, -1)
            obj = None
        if acq in (ACQ_LOCK, ACQ_TRY):
            la = self.last_acq.get(obj)  # type: ignore[arg-type]
            if la is not None and ev_tid[la] != tid and clock[ev_tid[la]] < ev_local[la]:
                races.append(la)
        if acq != ACQ_LOCK:
            self._earlier_writes(self.hist.get(obj, []), tid, write, clock,  # type: ignore
                                 races, -1)
        b = self.blocker.get(tid)
        if (b is not None and ev_tid[b] != tid and clock[ev_tid[b]] < ev_local[b]
                and b not in races):
            races.append(b)
        return races

    def push(self, t: Pending) -> int:
        """A provisional event for the pending operation ``t`` (see :meth:`pending_races`),
        so that races see it like any other; :meth:`pop` removes it."""
        tid = t.tid
        clock = self.task_clock[tid]
        local = clock[tid] + 1
        c = clock[:]
        c[tid] = local
        self.tid.append(tid)
        self.local.append(local)
        self.clock.append(c)
        self.write.append(t.write)
        self.more.append((t.obj, False, -1, clock, None, None, None))
        return len(self.tid) - 1

    def pop(self) -> None:
        for arr in (self.tid, self.local, self.clock, self.write, self.more):
            arr.pop()
