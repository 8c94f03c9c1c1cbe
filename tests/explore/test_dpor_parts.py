"""DPOR's pieces on their own: vector clocks and races (events.py), wakeup trees (wakeup.py)."""

from __future__ import annotations

from kvmlock.explore.records import ACQ_LOCK, ACQ_NONE, ACQ_RELEASE, pending
from kvmlock.explore.strategies.events import Events, independent
from kvmlock.explore.strategies.wakeup import State, covered, insert, weak_initial

X, Y, Z = 10, 11, 12  # object keys


def _spawn(tid: int) -> tuple:
    return pending(tid, None, "spawn", False, "task", ACQ_NONE, False)


def _access(tid: int, obj: int, write: bool) -> tuple:
    return pending(tid, obj, "store" if write else "load", write, f"o{obj}", ACQ_NONE, False)


def _path() -> tuple[Events, list[list[int]]]:
    """Task 0 starts 1 and 2; 1 writes X, 2 writes X then reads Y, 1 reads Y, 0 joins 1.
    Returns the events and the races each step reported."""
    ev = Events()
    races = [
        ev.record(_spawn(0), False, 1, True),  # 0
        ev.record(_spawn(0), False, 2, True),  # 1
        ev.record(_access(1, X, True), False, -1, True),  # 2
        ev.record(_access(2, X, True), False, -1, True),  # 3
        ev.record(_access(2, Y, False), False, -1, True),  # 4
        ev.record(_access(1, Y, False), False, -1, True),  # 5
        ev.record(pending(0, None, "join", False, "task", ACQ_NONE, True, 1), False, -1,
                  True),  # 6
    ]
    return ev, races


def test_clocks_order_program_order_conflicts_spawn_and_join():
    ev, _ = _path()
    hb = ev.happens_before
    assert hb(0, 2) and hb(1, 3)  # a spawn before the child's events
    assert not hb(1, 2)  # task 2's spawn is not before task 1's events
    assert hb(2, 3)  # two writes of X: the later one sees the earlier
    assert hb(2, 4) and hb(3, 4)  # ... and so do task 2's later events
    assert not hb(4, 5)  # two reads of Y commute: no order
    assert hb(2, 6) and hb(5, 6)  # the join comes after everything task 1 did
    assert not hb(4, 6)  # but not after task 2's read
    assert ev.local == [1, 2, 1, 1, 2, 2, 3]


def test_races_are_unordered_conflicting_pairs_of_two_tasks():
    _ev, races = _path()
    assert races[3] == [2]  # the two writes of X
    assert races[5] == []  # reads of Y commute
    assert all(not r for n, r in enumerate(races) if n != 3)


def test_a_race_is_not_reported_for_a_replayed_prefix():
    ev = Events()
    ev.record(_spawn(0), False, 1, False)
    ev.record(_access(0, X, True), False, -1, False)
    assert ev.record(_access(1, X, True), False, -1, False) == []
    assert len(ev) == 3


def test_notdep_keeps_what_does_not_happen_after_the_first_event():
    ev, _ = _path()
    # between 2 (task 1 writes X) and 5 (task 1 reads Y): 3 and 4 both happen after 2
    assert ev.notdep(2, 5) == [5]
    # between 1 (0 spawns 2) and 5: task 1's write of X (2) is not after it, 3 and 4 are
    assert ev.notdep(1, 5) == [2, 5]


def test_rewind_keeps_the_clocks_of_the_prefix():
    ev, _ = _path()
    before = [c[:] for c in ev.clock[:4]]
    ev.rewind(4)
    assert len(ev) == 4 and ev.clock == before
    assert ev.last_write == {X: 3}
    # the next event is numbered and ordered as on the original path
    assert ev.record(_access(1, Y, False), False, -1, True) == []
    assert ev.local[-1] == 2 and not ev.happens_before(3, 4)


def _maps(ev: Events) -> tuple:
    return (ev.task_clock, ev.last_write, {o: r for o, r in ev.reads.items() if r},
            {o: h for o, h in ev.hist.items() if h}, ev.last_acq)


def test_rewind_leaves_what_recording_the_prefix_alone_leaves():
    """Undoing a suffix puts every last-access map back as it was after the prefix, at every
    depth, including a spawn, a join, lock acquires and a read after a write."""
    ops = [
        (_spawn(0), False, 1),
        (_spawn(0), False, 2),
        (pending(1, X, "lock", True, "m", ACQ_LOCK, True), True, -1),
        (_access(2, Y, False), False, -1),
        (pending(1, X, "unlock", True, "m", ACQ_RELEASE, False), False, -1),
        (_access(1, Y, True), False, -1),
        (pending(2, X, "lock", True, "m", ACQ_LOCK, True), True, -1),
        (_access(2, Y, False), False, -1),
        (pending(0, None, "join", False, "task", ACQ_NONE, True, 1), False, -1),
    ]
    for depth in range(len(ops) + 1):
        fresh = Events()
        for op, acquired, child in ops[:depth]:
            fresh.record(op, acquired, child, True)
        full = Events()
        for op, acquired, child in ops:
            full.record(op, acquired, child, True)
        full.rewind(depth)
        assert _maps(full) == _maps(fresh), depth
        assert full.clock == fresh.clock and full.tid == fresh.tid


def test_weak_initials():
    ev, _ = _path()
    seq = [3]  # task 2's write of X
    assert weak_initial(ev, 2, (X, True), seq)  # its own task goes first
    assert weak_initial(ev, 0, (Z, True), seq)  # another object: independent
    assert weak_initial(ev, 0, (X, False), [4])  # a read beside a read
    assert not weak_initial(ev, 0, (X, False), seq)  # a read before a write of X: not
    # task 2's first event in the sequence happens after task 1's write of X, before it
    assert not weak_initial(ev, 2, (X, True), [2, 3])
    assert not weak_initial(ev, 2, (Y, False), [2, 4])
    assert weak_initial(ev, 1, (X, True), [2, 4])


def test_wakeup_tree_insertion():
    ev, _ = _path()
    tree = [[1, (X, True), []]]  # task 1 went first from the state before event 2
    insert(tree, ev, ev.notdep(2, 3), racer=1)
    assert tree == [[1, (X, True), []], [2, (X, True), []]]
    insert(tree, ev, ev.notdep(2, 3), racer=1)  # already there: an equivalent branch
    assert tree == [[1, (X, True), []], [2, (X, True), []]]
    # a branch whose task is independent of the whole sequence covers it
    other = [[0, (Z, True), []]]
    insert(other, ev, [3], racer=1)
    assert other == [[0, (Z, True), []]]
    # one that conflicts does not: the sequence becomes a new rightmost branch
    other = [[0, (X, False), []]]
    insert(other, ev, [3], racer=1)
    assert other == [[0, (X, False), []], [2, (X, True), []]]
    # the racer's own task is never taken as covering it
    mine = [[1, (Z, True), []]]
    insert(mine, ev, [3], racer=1)
    assert mine == [[1, (Z, True), []], [2, (X, True), []]]


def test_wakeup_tree_insertion_goes_down_a_branch():
    ev, _ = _path()
    # a tree whose branch starts with task 2 and goes on: the sequence [3, 5] (task 2 then
    # task 1) follows it, and what is left ([5]) is inserted below it
    tree = [[2, (X, True), [[0, (X, False), []]]]]
    insert(tree, ev, [3, 5], racer=0)
    assert tree == [[2, (X, True), [[0, (X, False), []], [1, (Y, False), []]]]]
    # a sequence used up on the way down: an equivalent branch exists
    again = [[2, (X, True), [[1, (Y, False), []]]]]
    insert(again, ev, [3, 5], racer=0)
    assert again == [[2, (X, True), [[1, (Y, False), []]]]]


def test_sleeping_and_explored_tasks_cover_a_sequence():
    ev, _ = _path()
    node = State()
    node.choice = 1
    node.done = {1}
    assert not covered(node, ev, [3])
    node.sleep = {0: (Z, True)}  # asleep, independent of task 2's write of X
    assert covered(node, ev, [3])
    node.sleep = {0: (X, False)}  # asleep, but it conflicts
    assert not covered(node, ev, [3])
    node.done = {1, 2}
    node.ops = {1: (X, True), 2: (X, True)}  # task 2 was explored from here already
    assert covered(node, ev, [3])


def test_independence():
    assert independent((X, True), (Y, True))
    assert independent((X, False), (X, False))
    assert independent((None, False), (X, True))
    assert not independent((X, True), (X, False))
    assert not independent((X, False), (X, True))
