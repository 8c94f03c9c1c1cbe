"""The dependency rules themselves, driven through LockMap as the primitives drive it."""

import sys

import pytest

from kvmlock import lockdep
from kvmlock.lockdep import LockMap


def take(m, read=0, subclass=0):
    m.acquire(subclass=subclass, read=read)


def pair(a, ra, b, rb):
    take(a, ra)
    take(b, rb)
    b.release()
    a.release()


def kinds():
    return [r.kind for r in lockdep.reports()]


@pytest.mark.parametrize(
    "first,second,caught",
    [
        # (read of A, read of B) in A->B, then (read of B, read of A) in B->A
        ((0, 0), (0, 0), True),  # EN + EN
        ((2, 0), (0, 2), False),  # A -(SN)-> B, B -(ER)-> A: weak at A (arrive R, leave S)
        ((2, 0), (0, 0), True),  # A -(SN)-> B, B -(EN)-> A
        ((1, 0), (0, 1), True),  # rwsem reader: -(SN)-> and -(EN)-> are both non-recursive
        ((2, 2), (2, 2), False),  # all recursive readers never wait for each other
        ((0, 2), (0, 2), True),  # A -(ER)-> B, B -(ER)-> A: each leaves its lock exclusively
        ((0, 2), (2, 0), False),  # A -(ER)-> B, B -(SN)-> A: both sides only read B, weak at B
    ],
)
def test_two_lock_cycles_follow_strong_path_rule(first, second, caught):
    a, b = LockMap("A", "rwlock"), LockMap("B", "rwlock")
    pair(a, first[0], b, first[1])
    pair(b, second[0], a, second[1])
    assert (kinds() == ["circular"]) is caught, kinds()


def test_weak_junction_inside_a_longer_cycle_is_not_a_deadlock():
    a, b, c = (LockMap(n, "rwlock") for n in "ABC")
    pair(a, 0, b, 2)  # A -(ER)-> B
    pair(b, 1, c, 0)  # B -(SN)-> C : arriving at B as recursive reader then leaving shared: weak
    pair(c, 0, a, 0)  # C -(EN)-> A closes A->B->C->A
    assert kinds() == []


def test_same_cycle_with_strong_junction_is_caught():
    a, b, c = (LockMap(n, "rwlock") for n in "ABC")
    pair(a, 0, b, 2)  # A -(ER)-> B
    pair(b, 0, c, 0)  # B -(EN)-> C : leaves B exclusively, strong
    pair(c, 0, a, 0)
    assert kinds() == ["circular"]
    r = lockdep.reports()[0]
    assert [e.kind for e in r.chain] == ["ER", "EN", "EN"]


def test_search_prefers_non_recursive_arrival_over_a_shorter_recursive_one():
    # Two routes from A to C: A -(ER)-> C directly (arrives recursive) and A -(EN)-> B -(EN)-> C
    # (arrives non-recursive). C -(SN)-> A then needs the non-recursive arrival to be strong.
    a, b, c = (LockMap(n, "rwlock") for n in "ABC")
    pair(a, 0, c, 2)
    pair(a, 0, b, 0)
    pair(b, 0, c, 0)
    pair(c, 1, a, 0)
    assert kinds() == ["circular"]


def test_cycle_reported_once_and_not_added_to_graph():
    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    pair(a, 0, b, 0)
    pair(b, 0, a, 0)
    pair(b, 0, a, 0)
    assert kinds() == ["circular"]
    g = lockdep.graph()
    assert g.has_edge("A", "B") and not g.has_edge("B", "A")


def test_edges_come_from_top_of_stack_only_through_trylocks():
    a, b, c = (LockMap(n, "mutex") for n in "ABC")
    a.acquire()
    b.acquire(trylock=True)
    c.acquire()
    for m in (c, b, a):
        m.release()
    g = lockdep.graph()
    assert g.has_edge("B", "C") and g.has_edge("A", "C")  # below a trylock: linked too
    assert not g.has_edge("A", "B")  # a trylock adds no dependency into itself
    a.acquire()
    b.acquire()
    c.acquire()
    for m in (c, b, a):
        m.release()
    g = lockdep.graph()
    assert g.has_edge("A", "B") and g.has_edge("B", "C")


def test_subclass_is_its_own_class_and_validated():
    x1, x2 = LockMap("X", "mutex"), LockMap("X", "mutex")
    take(x1)
    take(x2, subclass=1)
    x2.release()
    x1.release()
    assert kinds() == []
    assert "X/1" in lockdep.graph().classes
    take(x2, subclass=1)
    take(x1)  # X/1 -> X inverts the nesting just recorded
    x1.release()
    x2.release()
    assert kinds() == ["circular"]


def test_bad_subclass_and_read_values_are_clear_errors():
    m = LockMap("M", "mutex")
    with pytest.raises(ValueError, match="0..7"):
        m.acquire(subclass=8)
    with pytest.raises(ValueError, match="read must be"):
        m.acquire(read=5)
    with pytest.raises(ValueError, match="unknown lock kind"):
        LockMap("M", "semaphore")
    with pytest.raises(TypeError, match="must be a str"):
        LockMap(3, "mutex")
    with pytest.raises(ValueError, match="must not be empty"):
        LockMap("", "mutex")
    with pytest.raises(TypeError, match="must be hashable"):
        LockMap("M", "mutex", key=["not", "hashable"])


def test_out_of_order_release_keeps_stack_and_revalidates():
    a, b, c = (LockMap(n, "mutex") for n in "ABC")
    a.acquire()
    b.acquire()
    c.acquire()
    b.release()
    assert [h.name for h in lockdep.held_locks()] == ["A", "C"]
    assert lockdep.graph().has_edge("A", "C")  # C re-taken on top of A, as the kernel does
    c.release()
    a.release()
    assert lockdep.held_locks() == [] and kinds() == []


def test_chain_cache_hit_skips_validation_and_graph_lock():
    from kvmlock.lockdep import core

    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    pair(a, 0, b, 0)
    before = lockdep.stats()

    class CountingLock:
        def __init__(self, inner):
            self.inner, self.n = inner, 0

        def __enter__(self):
            self.n += 1
            return self.inner.__enter__()

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    counting = CountingLock(core._state().lock)
    core._state().lock = counting
    for _ in range(100):
        pair(a, 0, b, 0)
    assert counting.n == 0
    assert lockdep.stats() == before
    c = LockMap("C", "mutex")
    pair(a, 0, c, 0)  # a new chain: validated under the graph lock
    assert counting.n >= 1


def test_disable_and_enable():
    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    lockdep.disable()
    pair(a, 0, b, 0)
    pair(b, 0, a, 0)
    assert kinds() == [] and lockdep.stats()["edges"] == 0
    a.acquire()
    lockdep.enable()
    a.release()  # taken while off: its release passes silently
    pair(a, 0, b, 0)
    pair(b, 0, a, 0)
    assert kinds() == ["circular"]


def test_reset_while_holding_then_release_is_silent():
    a = LockMap("A", "mutex")
    a.acquire()
    lockdep.reset()
    lockdep.set_mode("collect")
    a.release()
    assert kinds() == []
    a.release()  # but a second release is a real bad unlock
    assert kinds() == ["bad_unlock"]


def test_isolated_gives_fresh_state_and_restores():
    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    a.acquire()
    pair_outer_stack = [h.name for h in lockdep.held_locks()]
    with lockdep.isolated() as st:
        assert lockdep.held_locks() == [] and lockdep.get_mode() == "collect"
        pair(a, 0, b, 0)
        pair(b, 0, a, 0)
        assert [r.kind for r in lockdep.reports()] == ["circular"] == [r.kind for r in st.reports]
    assert [h.name for h in lockdep.held_locks()] == pair_outer_stack
    a.release()
    assert kinds() == [] and not lockdep.graph().has_edge("A", "B")


def test_sync_validates_without_holding():
    s = LockMap("srcu", "srcu")
    m = LockMap("L", "mutex")
    m.acquire()
    s.sync()
    assert [h.name for h in lockdep.held_locks()] == ["L"]
    m.release()
    assert lockdep.graph().has_edge("L", "srcu")
    s.acquire(read=2)
    s.acquire(read=2)  # nested read side of the same SRCU: fine
    m.acquire()
    assert kinds() == ["circular"]


def test_pseudo_lock_context_manager():
    section = LockMap("mmu_notifier_invalidate_range_start", "pseudo")
    m = LockMap("M", "mutex")
    with section:
        with m:
            pass
    with m:
        with section:
            pass
    assert kinds() == ["circular"]


def test_refused_edges_and_chains_are_exposed():
    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    pair(a, 0, b, 0)
    pair(b, 0, a, 0)
    g = lockdep.graph()
    assert [(e.src, e.dst) for e in g.refused] == [("B", "A")]
    assert lockdep.DepGraph.from_json(g.to_json()).refused == g.refused
    got = {tuple(h.name for h in c) for c in lockdep.chains()}
    assert got == {("A",), ("A", "B"), ("B",), ("B", "A")}


def test_out_of_order_release_never_raises_in_raise_mode(capsys):
    lockdep.set_mode("raise")
    a, b, c = (LockMap(n, "mutex") for n in "ABC")
    c.acquire()
    a.acquire()
    c.release()
    a.release()  # C -> A recorded
    a.acquire()
    c.acquire(trylock=True)  # trylock: no dependency, so A -> C is not checked here
    b.acquire()
    a.release()  # out of order: C and B are re-taken without A; C -> B is new, fine
    b.release()
    c.release()
    assert lockdep.held_locks() == []
    lockdep.set_mode("collect")


def test_lock_taken_during_validation_on_same_thread_does_not_hang(monkeypatch):
    # A finalizer run by the garbage collector in the middle of validation may take a lock.
    # It must not wait for the graph lock its own thread holds. Building a report runs under
    # the graph lock, so the side effect is hooked there.
    import threading

    from kvmlock.lockdep import validate

    inner = LockMap("taken.by.finalizer", "mutex")
    real_name = validate._task_name
    calls = []

    def name_with_side_effect():
        calls.append(1)
        inner.acquire()
        inner.release()
        lockdep.graph()
        return real_name()

    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    pair(a, 0, b, 0)
    monkeypatch.setattr(validate, "_task_name", name_with_side_effect)
    done = threading.Event()

    def run():
        pair(b, 0, a, 0)  # the inversion: its report is built under the graph lock
        done.set()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert done.wait(10), "validation hung on its own graph lock"
    monkeypatch.setattr(validate, "_task_name", real_name)
    assert calls and kinds() == ["circular"]


def test_nest_lock_allows_many_of_one_class_under_it():
    kvm_lock = LockMap("kvm->lock", "mutex")
    vcpus = [LockMap("vcpu->mutex", "mutex") for _ in range(3)]
    kvm_lock.acquire()
    for v in vcpus:
        v.acquire_nest(kvm_lock)
    for v in reversed(vcpus):
        v.release()
    kvm_lock.release()
    assert kinds() == []
    assert lockdep.graph().has_edge("kvm->lock", "vcpu->mutex")


def test_nest_lock_not_held_is_still_recursive_locking():
    kvm_lock = LockMap("kvm->lock", "mutex")
    v1, v2 = LockMap("vcpu->mutex", "mutex"), LockMap("vcpu->mutex", "mutex")
    v1.acquire_nest(kvm_lock)
    v2.acquire_nest(kvm_lock)
    assert kinds() == ["recursive"]
    with pytest.raises(TypeError, match="nest_lock must be a LockMap"):
        v1.acquire_nest("kvm->lock")


def test_reported_chain_names_the_kinds_that_make_it_strong():
    a, b, c = (LockMap(n, "rwlock") for n in "ABC")
    pair(a, 0, b, 2)  # A -(ER)-> B
    pair(b, 1, c, 0)  # B -(SN)-> C: would be weak after arriving at B as recursive reader
    pair(b, 0, c, 0)  # B -(EN)-> C: the strong one
    pair(c, 0, a, 0)
    (r,) = lockdep.reports()
    assert [(e.src, e.dst, e.kind) for e in r.chain] == [
        ("A", "B", "ER"), ("B", "C", "EN"), ("C", "A", "EN")]


def test_lock_fast_path_behaves_like_acquire():
    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    a.lock()  # first ever: no stack yet, then a chain miss
    b.lock()
    b.release()
    a.release()
    b.lock()
    a.lock()  # the inversion, found through the fast entry point too
    a.release()
    b.release()
    assert kinds() == ["circular"] and lockdep.held_locks() == []
    lockdep.disable()
    a.lock()
    lockdep.enable()
    a.release()  # taken while off: silent
    assert kinds() == ["circular"]


@pytest.mark.parametrize("back_on", ["enable", "reset"])
def test_validation_resumes_on_a_stack_that_took_locks_while_off(back_on):
    """While off, acquires land on a sink trie; once on again, a stack that sat there restarts
    and is validated (a sink that kept answering would silently switch this stack off)."""
    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    lockdep.disable()
    pair(a, 0, b, 0)
    a.acquire()
    assert lockdep.held_locks() == []  # nothing is tracked while off
    getattr(lockdep, back_on)()
    lockdep.set_mode("collect")
    a.release()  # taken while off: passes silently
    pair(a, 0, b, 0)
    pair(b, 0, a, 0)
    assert kinds() == ["circular"]


def test_switching_validation_off_in_one_world_leaves_another_on():
    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    lockdep.disable()
    with lockdep.isolated():
        pair(a, 0, b, 0)
        pair(b, 0, a, 0)
        assert kinds() == ["circular"]
    pair(a, 0, b, 0)
    pair(b, 0, a, 0)
    assert kinds() == [] and not lockdep.enabled()


def test_with_blocks_while_validation_is_off_somewhere():
    """While some world's validation is off, LockMap.lock/release look at the state first
    (an off with-block then skips the bookkeeping); the worlds still on validate as before,
    and once no state is off the methods test nothing again."""
    from kvmlock.sync import Mutex

    a, b = Mutex("off.A"), Mutex("off.B")
    fast = LockMap.lock
    a.lock()  # taken while on, released while off: silently
    lockdep.disable()
    assert LockMap.lock is not fast
    a.unlock()
    with a, b:
        pass
    with b, a:
        pass
    assert kinds() == [] and lockdep.held_locks() == []
    with lockdep.isolated():
        with a, b:
            pass
        with b, a:
            pass
        assert kinds() == ["circular"]
        with a:  # where a held lock was taken is still the caller's line
            (held,) = lockdep.held_locks()
            assert held.where.endswith(f"test_semantics.py:{sys._getframe().f_lineno - 2}")
    a.lock()
    lockdep.enable()
    assert LockMap.lock is fast
    a.unlock()  # taken while off: silently
    with b, a:
        pass
    assert kinds() == []
    with a, b:
        pass
    assert kinds() == ["circular"]
    lockdep.disable()
    lockdep.reset()  # the state that was off is gone with it
    import gc

    gc.collect()
    assert LockMap.lock is fast


def test_tables_read_while_off_are_empty_and_finite():
    a, b = LockMap("A", "mutex"), LockMap("B", "mutex")
    pair(a, 0, b, 0)
    lockdep.disable()
    pair(a, 0, b, 0)
    assert lockdep.chains() == [] and lockdep.graph().chains == []
    assert lockdep.graph().has_edge("A", "B")  # the graph itself is kept
