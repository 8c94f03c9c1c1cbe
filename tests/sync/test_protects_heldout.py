"""A held-out set of RCU and guarded-data cases, each with the verdict the kernel would give.

Written apart from the implementation's own tests, from the kernel's rules only: a protected
pointer may be read inside its read side (``rcu_read_lock`` for ``rcu_dereference``, the named
SRCU for ``srcu_dereference``) or where the update-side condition holds (usually
``lockdep.is_held(lock)``); anywhere else the read is "suspicious RCU usage". Guarded data needs
its lock (held exclusively to write), or the declared read side to read. ``lockdep.is_held``
answers for the calling task only. Every case is a small program and the exact list of report
kinds it must produce, so a missed report and a false alarm both fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import kvmlock
from kvmlock import explore, lockdep
from kvmlock.sync import (
    SRCU,
    Guarded,
    Mutex,
    RcuPointer,
    RWLock,
    guarded_by,
    rcu_read_lock,
    rcu_read_unlock,
)

SUS, UNG = "suspicious_rcu", "unguarded"


def world() -> tuple[SRCU, SRCU, Mutex, Mutex, RcuPointer]:
    """kvm->srcu, another SRCU, the update-side lock, an unrelated lock, the pointer."""
    return (SRCU("h.srcu"), SRCU("h.other_srcu"), Mutex("h.slots_lock"), Mutex("h.other"),
            RcuPointer({"gen": 0}, name="h->memslots"))


# ----------------------------------------------------------------------------- RCU pointers


def srcu_outside():
    srcu, _o, _l, _x, p = world()
    p.srcu_dereference(srcu)


def srcu_inside():
    srcu, _o, _l, _x, p = world()
    idx = srcu.read_lock()
    p.srcu_dereference(srcu)
    srcu.read_unlock(idx)


def srcu_after_unlock():
    srcu, _o, _l, _x, p = world()
    with srcu.read():
        pass
    p.srcu_dereference(srcu)


def srcu_wrong_srcu():
    srcu, other, _l, _x, p = world()
    with other.read():
        p.srcu_dereference(srcu)


def srcu_inside_rcu_read_lock_only():
    srcu, _o, _l, _x, p = world()
    with rcu_read_lock():
        p.srcu_dereference(srcu)


def check_update_side_held():
    srcu, _o, lock, _x, p = world()
    with lock:
        p.srcu_dereference_check(srcu, lockdep.is_held(lock))


def check_update_side_not_held():
    srcu, _o, lock, _x, p = world()
    p.srcu_dereference_check(srcu, lockdep.is_held(lock))


def check_wrong_lock_held():
    srcu, _o, lock, other, p = world()
    with other:
        p.srcu_dereference_check(srcu, lockdep.is_held(lock))


def check_read_side_makes_cond_irrelevant():
    srcu, _o, lock, _x, p = world()
    with srcu.read():
        p.srcu_dereference_check(srcu, lockdep.is_held(lock))


def check_lazy_cond():
    srcu, _o, lock, _x, p = world()
    with lock:
        p.srcu_dereference_check(srcu, lambda: lockdep.is_held(lock))
    p.srcu_dereference_check(srcu, lambda: lockdep.is_held(lock))  # reported


def check_cond_rwlock_read_held():
    srcu, _o, _l, _x, p = world()
    rw = RWLock("h.rw")
    with rw.read():
        p.srcu_dereference_check(srcu, lockdep.is_held(rw))


def rcu_inside():
    *_, p = world()
    rcu_read_lock()
    p.rcu_dereference()
    rcu_read_unlock()


def rcu_outside():
    *_, p = world()
    p.rcu_dereference()


def rcu_nested_still_inside():
    *_, p = world()
    rcu_read_lock()
    rcu_read_lock()
    rcu_read_unlock()
    p.rcu_dereference()  # one level still held
    rcu_read_unlock()


def rcu_inside_srcu_only():
    srcu, *_, p = world()
    with srcu.read():
        p.rcu_dereference()


def protected_true():
    _s, _o, lock, _x, p = world()
    with lock:
        p.dereference_protected(lockdep.is_held(lock))


def protected_false_even_inside_read_side():
    srcu, _o, lock, _x, p = world()
    with srcu.read(), rcu_read_lock():
        p.dereference_protected(lockdep.is_held(lock))


def assign_then_read_under_both():
    srcu, _o, lock, _x, p = world()
    with lock:
        old = p.srcu_dereference_check(srcu, lockdep.is_held(lock))
        p.assign({"gen": old["gen"] + 1})
    srcu.synchronize()
    with srcu.read():
        assert p.srcu_dereference(srcu) == {"gen": 1}


def assign_without_declared_update_side():
    srcu, _o, lock, _x, _p = world()
    p = RcuPointer(0, name="h->buses", read_side=srcu, update_side=lock)
    with lock:
        p.assign(1)
    p.assign(2)  # reported: the declared update side is not held


def same_site_once_two_sites_twice():
    srcu, *_, p = world()
    for _ in range(5):
        p.srcu_dereference(srcu)  # one site, reported once
    p.srcu_dereference(srcu)  # a second site


# ----------------------------------------------------------------------------- guarded data


class Kvm:
    usage_count = guarded_by("usage_lock")
    vm_list = guarded_by("kvm_lock", read_side="srcu")
    created = guarded_by("kvm_lock", writes_only=True)
    mode = guarded_by("rw")

    def __init__(self) -> None:
        self.usage_lock = Mutex("h.kvm_usage_lock")
        self.kvm_lock = Mutex("h.kvm_lock")
        self.srcu = SRCU("h.vm_srcu")
        self.rw = RWLock("h.mode_lock")
        self.usage_count = 0  # the first assignment is not an access
        self.vm_list = []
        self.created = 0
        self.mode = "off"


def guarded_under_lock():
    k = Kvm()
    with k.usage_lock:
        k.usage_count += 1


def guarded_without_lock():
    k = Kvm()
    k.usage_count += 1  # a read and a write: two reports


def guarded_other_lock():
    k = Kvm()
    with k.kvm_lock:
        k.usage_count = 1


def guarded_read_side_reads():
    k = Kvm()
    with k.srcu.read():
        len(k.vm_list)


def guarded_read_side_cannot_write():
    k = Kvm()
    with k.srcu.read():
        k.vm_list = ["vm0"]


def guarded_rw_read_held():
    k = Kvm()
    with k.rw.read():
        assert k.mode == "off"
        k.mode = "on"  # a write needs it exclusively


def guarded_writes_only():
    k = Kvm()
    assert k.created == 0  # reads are free
    with k.kvm_lock:
        k.created = 1
    k.created = 2


def cell_with_rcu_read_side():
    lock = Mutex("h.cell_lock")
    cell = Guarded(0, lock, read_side="rcu_read_lock", name="h.cell")
    with rcu_read_lock():
        cell.get()
        cell.set(1)  # reported: readers may not write
    with lock:
        cell.value = 2
    cell.get()  # reported


CASES: dict[str, tuple[Callable[[], None], list[str]]] = {
    "srcu_dereference outside the read side": (srcu_outside, [SUS]),
    "srcu_dereference inside the read side": (srcu_inside, []),
    "srcu_dereference after the read side ended": (srcu_after_unlock, [SUS]),
    "srcu_dereference inside another SRCU's read side": (srcu_wrong_srcu, [SUS]),
    "srcu_dereference inside rcu_read_lock only": (srcu_inside_rcu_read_lock_only, [SUS]),
    "srcu_dereference_check, update-side lock held": (check_update_side_held, []),
    "srcu_dereference_check, update-side lock not held": (check_update_side_not_held, [SUS]),
    "srcu_dereference_check, another lock held": (check_wrong_lock_held, [SUS]),
    "srcu_dereference_check inside the read side": (check_read_side_makes_cond_irrelevant, []),
    "srcu_dereference_check, callable cond": (check_lazy_cond, [SUS]),
    "srcu_dereference_check, rwlock read-held": (check_cond_rwlock_read_held, []),
    "rcu_dereference inside rcu_read_lock": (rcu_inside, []),
    "rcu_dereference outside rcu_read_lock": (rcu_outside, [SUS]),
    "rcu_dereference inside a nested rcu_read_lock": (rcu_nested_still_inside, []),
    "rcu_dereference inside an SRCU read side only": (rcu_inside_srcu_only, [SUS]),
    "dereference_protected, condition true": (protected_true, []),
    "dereference_protected, condition false": (protected_false_even_inside_read_side, [SUS]),
    "assign, then reads on both sides": (assign_then_read_under_both, []),
    "assign without the declared update side": (assign_without_declared_update_side, [UNG]),
    "one report per call site": (same_site_once_two_sites_twice, [SUS, SUS]),
    "guarded field under its lock": (guarded_under_lock, []),
    "guarded field without its lock": (guarded_without_lock, [UNG, UNG]),
    "guarded field under another lock": (guarded_other_lock, [UNG]),
    "guarded field read under its read side": (guarded_read_side_reads, []),
    "guarded field written under its read side": (guarded_read_side_cannot_write, [UNG]),
    "guarded field, rwlock held for read": (guarded_rw_read_held, [UNG]),
    "guarded field, writes only": (guarded_writes_only, [UNG]),
    "Guarded cell with an RCU read side": (cell_with_rcu_read_side, [UNG, UNG]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_heldout_case(case):
    program, expected = CASES[case]
    program()
    assert [r.kind for r in lockdep.reports()] == expected


def test_heldout_set_has_cases_of_both_verdicts_for_both_kinds():
    verdicts = {(kind in exp, exp == []) for _p, exp in CASES.values() for kind in (SUS, UNG)}
    assert verdicts >= {(True, False), (False, True)}
    assert sum(1 for _p, e in CASES.values() if SUS in e) >= 8
    assert sum(1 for _p, e in CASES.values() if UNG in e) >= 6
    assert sum(1 for _p, e in CASES.values() if not e) >= 10


# ------------------------------------------------------------------------ the report itself


def test_suspicious_rcu_reads_like_the_kernels_with_the_locks_held():
    srcu, _o, lock, other, p = world()
    with other:
        p.srcu_dereference_check(srcu, lockdep.is_held(lock))
    (r,) = lockdep.reports()
    text = str(r)
    lines = text.splitlines()
    assert "WARNING: suspicious RCU usage" in lines
    (site,) = [ln for ln in lines if "suspicious srcu_dereference_check() usage!" in ln]
    assert "test_protects_heldout.py:" in site  # file:line of the read, not of kvmlock
    assert "other info that might help us debug this:" in lines
    assert any("1 lock held by" in ln for ln in lines)
    assert any("h.other" in ln for ln in lines)
    assert (r.kind, r.data) == (SUS, "h->memslots")


# ------------------------------------------------------------------------ other tasks' locks


def test_is_held_answers_for_the_calling_task_only():
    srcu, _o, lock, _x, p = world()
    k = Kvm()
    holding, done = threading.Event(), threading.Event()

    def holder():
        with lock, k.usage_lock:
            holding.set()
            done.wait(10)

    def reader():
        holding.wait(10)
        assert not lockdep.is_held(lock)
        p.srcu_dereference_check(srcu, lockdep.is_held(lock))
        k.usage_count  # noqa: B018 - the read under test
        done.set()

    t1 = kvmlock.spawn(holder, name="holder")
    t2 = kvmlock.spawn(reader, name="reader")
    t1.join()
    t2.join()
    assert [(r.kind, r.task) for r in lockdep.reports()] == [(SUS, "reader"), (UNG, "reader")]


# ------------------------------------------------------------------------ under the explorer


def _explored(read_side: bool):
    def body():
        srcu, _o, lock, _x, p = world()

        def vcpu():
            if read_side:
                with srcu.read():
                    p.srcu_dereference(srcu)
            else:
                p.srcu_dereference(srcu)

        def updater():
            with lock:
                p.assign(p.srcu_dereference_check(srcu, lockdep.is_held(lock)))
            srcu.synchronize()

        kvmlock.spawn(vcpu, name="vcpu")
        kvmlock.spawn(updater, name="updater")

    return body


def test_explorer_finds_the_suspicious_read_and_passes_the_correct_one():
    bad = explore.check(_explored(False), strategy="dpor")
    assert bad.failure is not None
    assert [(r.kind, r.task) for r in bad.failure.lockdep_reports] == [(SUS, "vcpu")]
    good = explore.check(_explored(True), strategy="dpor")
    assert good.ok and good.exhausted


def _threading_counter(locked: bool):
    def body():
        class Box:
            n = guarded_by("lock")

            def __init__(self):
                self.lock = threading.Lock()  # a plain lock, seen through the explorer
                self.n = 0

        b = Box()

        def inc():
            if locked:
                with b.lock:
                    b.n += 1
            else:
                b.n += 1

        ts = [threading.Thread(target=inc, name=f"t{i}") for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return body


def test_explorer_guards_data_behind_a_plain_threading_lock():
    good = explore.check(_threading_counter(True), strategy="dpor")
    assert good.ok and good.exhausted
    bad = explore.check(_threading_counter(False), strategy="dpor")
    assert bad.failure is not None
    assert {r.kind for r in bad.failure.lockdep_reports} == {UNG}
