"""What a lock protects: RCU/SRCU-protected pointers and guarded data, each access checked.

Every report kind has cases it must catch and near misses it must leave silent: inside the
read side, with the update-side lock held, a true ``dereference_protected`` condition, and a
guarded field read under its lock or its read side.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from kvmlock import explore, lockdep, spawn
from kvmlock.sync import (
    RCU,
    SRCU,
    Guarded,
    Mutex,
    RcuPointer,
    RWLock,
    changed_in_place,
    guarded_by,
    rcu_read_lock,
    rcu_read_unlock,
)


def next_line() -> str:
    """``file:line`` of the line after the caller's: where the access under test is."""
    f = sys._getframe(1)
    return f"test_protects.py:{f.f_lineno + 1}"


def kinds() -> list[str]:
    return [r.kind for r in lockdep.reports()]


# ------------------------------------------------------------------------- RCU pointers


def test_srcu_dereference_outside_the_read_side_is_suspicious():
    srcu, p = SRCU("t.srcu"), RcuPointer({"slots": 1}, name="t->memslots")
    site = next_line()
    assert p.srcu_dereference(srcu) == {"slots": 1}  # reported, the program goes on
    (r,) = lockdep.reports()
    assert (r.kind, r.data, r.lock, r.what) == (
        "suspicious_rcu", "t->memslots", "t.srcu", "srcu_dereference_check()")
    assert r.where.endswith(site)
    text = str(r)
    assert "WARNING: suspicious RCU usage" in text
    assert f"{site} suspicious srcu_dereference_check() usage!" in text
    assert "other info that might help us debug this:" in text
    assert "no locks held by" in text


def test_srcu_dereference_inside_the_read_side_is_silent():
    srcu, p = SRCU("t.srcu"), RcuPointer(1, name="t->memslots")
    idx = srcu.read_lock()
    p.srcu_dereference(srcu)
    p.srcu_dereference_check(srcu, False)
    srcu.read_unlock(idx)
    with srcu.read():
        p.srcu_dereference(srcu)
    assert lockdep.reports() == []


def test_another_srcu_read_side_does_not_count():
    mine, other = SRCU("t.srcu"), SRCU("t.other_srcu")
    p = RcuPointer(1, name="t->memslots")
    with other.read():
        p.srcu_dereference(mine)
    (r,) = lockdep.reports()
    assert r.lock == "t.srcu" and [h.name for h in r.held_locks] == ["t.other_srcu"]


def test_update_side_lock_allows_srcu_dereference_check():
    srcu, slots_lock, other = SRCU("t.srcu"), Mutex("t.slots_lock"), Mutex("t.other")
    p = RcuPointer(1, name="t->memslots")
    with slots_lock:
        p.srcu_dereference_check(srcu, lockdep.is_held(slots_lock))
        p.srcu_dereference_check(srcu, lambda: lockdep.is_held(slots_lock))
    assert lockdep.reports() == []
    with other:  # holding some other lock is not the update side
        p.srcu_dereference_check(srcu, lockdep.is_held(slots_lock))
    (r,) = lockdep.reports()
    assert r.kind == "suspicious_rcu"
    assert [h.name for h in r.held_locks] == ["t.other"]
    assert "1 lock held by" in str(r) and "(t.other)" in str(r)


def test_an_rcu_instances_read_side_is_rcu_read_lock():
    """An ``RCU`` reader holds what ``rcu_read_lock()`` does (and a near miss: after leaving,
    the same read is suspicious again)."""
    rcu, p = RCU("t.rcu"), RcuPointer("v", name="t->gp")
    with rcu.read():
        assert lockdep.rcu_read_lock_held()
        assert p.rcu_dereference() == "v"
    assert lockdep.reports() == []
    assert not lockdep.rcu_read_lock_held()
    p.rcu_dereference()
    (r,) = lockdep.reports()
    assert r.kind == "suspicious_rcu"


def test_rcu_dereference_needs_rcu_read_lock():
    p = RcuPointer("v", name="t->gp")
    with rcu_read_lock():
        assert p.rcu_dereference() == "v"
    rcu_read_lock()
    rcu_read_lock()  # nests
    p.rcu_dereference()
    rcu_read_unlock()
    p.rcu_dereference()
    rcu_read_unlock()
    assert lockdep.reports() == []
    assert not lockdep.rcu_read_lock_held()
    p.rcu_dereference()
    (r,) = lockdep.reports()
    assert (r.kind, r.lock, r.what) == (
        "suspicious_rcu", "rcu_read_lock", "rcu_dereference_check()")


def test_rcu_read_lock_shows_among_held_locks():
    srcu, p = SRCU("t.srcu"), RcuPointer(1, name="t->memslots")
    with rcu_read_lock():
        assert lockdep.rcu_read_lock_held()
        p.srcu_dereference(srcu)  # the RCU read side is not the SRCU one
    (r,) = lockdep.reports()
    assert [h.name for h in r.held_locks] == ["rcu_read_lock"]


def test_rcu_dereference_check_condition():
    lock, p = Mutex("t.lock"), RcuPointer(1, name="t->gp")
    with lock:
        p.rcu_dereference_check(lockdep.is_held(lock))
    assert lockdep.reports() == []
    p.rcu_dereference_check(lambda: lockdep.is_held(lock))
    assert kinds() == ["suspicious_rcu"]


def test_dereference_protected():
    lock, p = Mutex("t.lock"), RcuPointer(1, name="t->gp")
    with lock:
        assert p.dereference_protected(lockdep.is_held(lock)) == 1
    p.dereference_protected(True)
    assert lockdep.reports() == []
    with rcu_read_lock():  # the read side is no excuse on the update side
        p.dereference_protected(lockdep.is_held(lock))
    (r,) = lockdep.reports()
    assert (r.kind, r.what, r.lock) == ("suspicious_rcu", "rcu_dereference_protected()", None)


def test_assign_publishes_and_one_report_per_site():
    srcu, p = SRCU("t.srcu"), RcuPointer(1, name="t->gp")
    p.assign(2)
    for _ in range(3):
        assert p.srcu_dereference(srcu) == 2  # one site: one report
    p.srcu_dereference(srcu)  # another site: another
    assert kinds() == ["suspicious_rcu", "suspicious_rcu"]
    assert p.access_pointer() == 2


def test_suspicious_rcu_as_json_and_raise_mode():
    srcu, p = SRCU("t.srcu"), RcuPointer(1, name="t->gp")
    lockdep.set_mode("raise")
    with pytest.raises(lockdep.LockdepError) as exc:
        p.srcu_dereference(srcu)
    d = json.loads(exc.value.report.to_json())
    assert d["kind"] == "suspicious_rcu" and d["data"] == "t->gp"
    assert d["title"] == "WARNING: suspicious RCU usage"


def test_validation_off_checks_nothing():
    srcu, p = SRCU("t.srcu"), RcuPointer(1, name="t->gp")
    lockdep.disable()
    try:
        p.srcu_dereference(srcu)
        p.dereference_protected(False)
        assert lockdep.is_held(Mutex("t.x"))  # as the kernel answers once debug_locks is off
    finally:
        lockdep.enable()
    assert lockdep.reports() == []


def test_is_held():
    m, rw = Mutex("t.m"), RWLock("t.rw")
    assert not lockdep.is_held(m)
    with m:
        assert lockdep.is_held(m)
    with rw.read():
        assert lockdep.is_held(rw)
    plain = threading.RLock()  # not instrumented: the RLock itself knows its owner
    with plain:
        assert lockdep.is_held(plain)
    assert not lockdep.is_held(plain)
    with pytest.raises(TypeError, match="is not a lock"):
        lockdep.is_held(object())


def test_bad_pointer_name():
    with pytest.raises(TypeError, match="non-empty string"):
        RcuPointer(1, name="")


def test_declared_update_side_is_checked_at_every_publication():
    srcu, lock = SRCU("t.srcu"), RWLock("t.update")
    p = RcuPointer(1, name="t->table", read_side=srcu, update_side=lock)
    with lock.write():
        p.assign(2)  # near miss: the update side held
    assert lockdep.reports() == []
    with lock.read():
        p.assign(3)  # held for read only: other updaters run beside it
    site = next_line()
    p.assign(4)
    r1, r2 = lockdep.reports()
    assert (r1.kind, r1.data, r1.lock, r1.what, r1.held_read) == (
        "unguarded", "t->table", "t.update", "write", 2)
    assert (r2.kind, r2.held_read) == ("unguarded", 0) and r2.where.endswith(site)
    assert "writes t->table at:" in str(r2) and "protected by (t.update)" in str(r2)
    with srcu.read():
        assert p.srcu_dereference(srcu) == 4
    assert len(lockdep.reports()) == 2
    undeclared = RcuPointer(1, name="t->free")  # nothing declared: publishing is unchecked
    undeclared.assign(2)
    assert len(lockdep.reports()) == 2


def test_bad_pointer_declarations():
    with pytest.raises(TypeError, match="read_side must be an SRCU"):
        RcuPointer(1, name="t->p", read_side=object())
    with pytest.raises(TypeError, match="is not a lock"):
        RcuPointer(1, name="t->p", update_side="t.lock")
    assert RcuPointer(1, name="t->p", read_side="rcu_read_lock").read_side is not None


# ------------------------------------------------------------------------- guarded data


class Account:
    balance = guarded_by("lock")
    owner = guarded_by("lock", read_side="srcu")
    limit = guarded_by("lock", writes_only=True)
    rate = guarded_by("rw")
    news = guarded_by("lock", read_side="rcu_read_lock")

    def __init__(self) -> None:
        self.lock = Mutex("acct.lock")
        self.srcu = SRCU("acct.srcu")
        self.rw = RWLock("acct.rw")
        self.balance = 0  # the first assignment initialises: not checked
        self.owner = "ann"
        self.limit = 10
        self.rate = 1
        self.news = ""


def test_guarded_field_without_its_lock_is_reported():
    a = Account()
    assert lockdep.reports() == []
    site = next_line()
    a.balance += 5
    reads, writes = lockdep.reports()
    assert (reads.kind, reads.data, reads.lock, reads.what) == (
        "unguarded", "Account.balance", "acct.lock", "read")
    assert writes.what == "write"
    assert reads.where.endswith(site)
    text = str(writes)
    assert "WARNING: lock-protected data accessed without its lock" in text
    assert "writes Account.balance at:" in text and "protected by (acct.lock)" in text
    assert "but the task does not hold it." in text


def test_guarded_field_under_its_lock_is_silent():
    a = Account()
    with a.lock:
        a.balance += 5
        a.owner = "bob"
        a.limit = 20
        assert a.owner == "bob" and a.limit == 20
    assert a.limit == 20  # writes_only: reads are free
    assert lockdep.reports() == []


def test_read_side_allows_reads_only():
    a = Account()
    with a.srcu.read():
        assert a.owner == "ann"
    with rcu_read_lock():
        assert a.news == ""
    assert lockdep.reports() == []
    with a.srcu.read():
        a.owner = "eve"
    (r,) = lockdep.reports()
    assert (r.what, r.lock) == ("write", "acct.lock")
    with rcu_read_lock():
        a.balance  # noqa: B018 - the read is the test; the RCU read side does not guard it
    assert kinds() == ["unguarded", "unguarded"]


def test_other_lock_or_other_read_side_does_not_guard():
    a, other = Account(), Mutex("acct.other")
    with other:
        a.balance  # noqa: B018
    a.owner  # noqa: B018 - no read side, no lock
    first, second = lockdep.reports()
    assert [h.name for h in first.held_locks] == ["acct.other"]
    assert second.held == "acct.srcu" and "(or for reading, inside (acct.srcu))" in str(second)


def test_write_needs_the_lock_exclusively():
    a = Account()
    with a.rw.read():
        assert a.rate == 1
    assert lockdep.reports() == []
    with a.rw.write():
        a.rate = 2
    assert lockdep.reports() == []
    with a.rw.read():
        a.rate = 3
    (r,) = lockdep.reports()
    assert r.what == "write" and r.held_read == 2
    assert "only for read" in str(r)


def test_a_change_in_place_is_checked_as_a_write():
    a = Account()
    with a.lock:
        a.limit = [1]
    a.limit.append(2)  # a read of the field: free (writes_only)
    with a.rw.write():  # another lock does not guard it
        changed_in_place(a, "limit")
    (r,) = lockdep.reports()
    assert (r.data, r.what, r.lock) == ("Account.limit", "write", "acct.lock")
    with a.lock:
        a.limit.append(3)
        changed_in_place(a, "limit")
    assert len(lockdep.reports()) == 1
    assert a.limit == [1, 2, 3]  # nothing was stored
    with pytest.raises(TypeError, match="changed_in_place: Account.lock is not a guarded_by"):
        changed_in_place(a, "lock")


def test_guarded_cell():
    lock, srcu = Mutex("cell.lock"), SRCU("cell.srcu")
    count = Guarded(0, lock, name="usage_count")
    published = Guarded("x", lock, read_side=srcu, name="published")
    with lock:
        count.value += 1
        count.set(count.get() + 1)
    with srcu.read():
        assert published.get() == "x"
    assert lockdep.reports() == []
    count.value += 1
    assert [(r.data, r.what) for r in lockdep.reports()] == [
        ("usage_count", "read"), ("usage_count", "write")]
    assert count.get() == 3  # a report never changes what the program does
    unnamed = Guarded(0, lock)
    assert "test_protects.py" in unnamed.name


def test_guarded_declaration_errors():
    with pytest.raises(TypeError, match="name the lock attribute"):
        guarded_by(Mutex("x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="writes_only"):
        guarded_by("lock", read_side="srcu", writes_only=True)
    with pytest.raises(TypeError, match="is not a lock"):
        Guarded(0, "lock")
    with pytest.raises((TypeError, RuntimeError)) as exc:  # 3.11 wraps __set_name__ errors
        class Slotted:
            __slots__ = ("lock",)
            x = guarded_by("lock")
    assert "no __dict__" in str(exc.value.__cause__ or exc.value)


def test_guarded_field_in_threads():
    a = Account()

    def deposit(n: int, locked: bool) -> None:
        for _ in range(n):
            if locked:
                with a.lock:
                    a.balance += 1
            else:
                a.balance += 1

    ts = [threading.Thread(target=deposit, args=(100, True)) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with a.lock:
        assert a.balance == 300
    assert lockdep.reports() == []
    t = threading.Thread(target=deposit, args=(1, False), name="rogue")
    t.start()
    t.join()
    assert {r.task for r in lockdep.reports()} == {"rogue"}


# ------------------------------------------------------------------------- under the explorer


def _memslots_program(fault_under_srcu: bool):
    def body() -> None:
        srcu, slots_lock = SRCU("x.srcu"), Mutex("x.slots_lock")
        p = RcuPointer(0, name="x->memslots")

        def fault() -> None:
            if fault_under_srcu:
                with srcu.read():
                    p.srcu_dereference(srcu)
            else:
                p.srcu_dereference(srcu)

        def update() -> None:
            with slots_lock:
                old = p.srcu_dereference_check(srcu, lockdep.is_held(slots_lock))
                p.assign(old + 1)
            srcu.synchronize()

        spawn(fault, name="vcpu")
        spawn(update, name="updater")

    return body


def test_explorer_finds_a_fault_outside_the_read_side():
    res = explore.check(_memslots_program(False), strategy="dpor")
    assert res.failure is not None and res.failure.kind == "lockdep"
    assert [r.kind for r in res.failure.lockdep_reports] == ["suspicious_rcu"]
    assert res.failure.lockdep_reports[0].task == "vcpu"


def test_explorer_clean_when_the_fault_is_inside_the_read_side():
    res = explore.check(_memslots_program(True), strategy="dpor")
    assert res.ok and res.exhausted and res.runs > 1


def _counter_program(locked: bool, visible: bool = False):
    def body() -> None:
        class Box:
            n = guarded_by("lock", visible=visible)

            def __init__(self) -> None:
                self.lock = Mutex("box.lock")
                self.n = 0

        b = Box()

        def inc() -> None:
            if locked:
                with b.lock:
                    b.n += 1
            else:
                b.n += 1

        a, c = spawn(inc, name="a"), spawn(inc, name="b")
        a.join()
        c.join()
        assert b.__dict__["n"] == 2, "an increment was lost"

    return body


def test_explorer_unguarded_and_clean():
    bad = explore.check(_counter_program(False), strategy="dpor")
    assert bad.failure is not None and bad.failure.kind == "lockdep"
    assert {r.kind for r in bad.failure.lockdep_reports} == {"unguarded"}
    good = explore.check(_counter_program(True), strategy="dpor")
    assert good.ok and good.exhausted


def test_visible_guarded_field_makes_its_lost_update_a_schedule():
    # lockdep set aside: the consequence itself, an increment lost between a read and a write
    bad = explore.check(_counter_program(False, True), strategy="dpor", lockdep=False)
    assert bad.failure is not None and bad.failure.kind == "assertion"
    assert "an increment was lost" in str(bad.failure.message)
    # near misses: the same accesses under the lock, and an invisible field, whose read and
    # write run as one step of the task (so no schedule splits them)
    good = explore.check(_counter_program(True, True), strategy="dpor", lockdep=False)
    assert good.ok and good.exhausted
    plain = explore.check(_counter_program(False, False), strategy="dpor",
                          lockdep=False)
    assert plain.ok and plain.exhausted


# ------------------------------------------------------------------------- kvmlock lockdep

PROGRAM = """
import threading
from kvmlock.sync import Guarded, guarded_by


class Shop:
    stock = guarded_by("lock")

    def __init__(self):
        self.lock = threading.Lock()
        self.stock = 10


shop = Shop()
sold = Guarded(0, threading.RLock(), name="sold")


def sell():
    with shop.lock:
        shop.stock -= 1
    with sold.lock:
        sold.value += 1


def peek():
    {peek}


for fn in (sell, peek):
    t = threading.Thread(target=fn, name=fn.__name__)
    t.start()
    t.join()
print("done")
"""


def run_script(tmp_path, peek: str):
    script = tmp_path / "shop.py"
    script.write_text(textwrap.dedent(PROGRAM.format(peek=peek)))
    return subprocess.run(
        [sys.executable, "-m", "kvmlock.cli", "lockdep", "--json", str(tmp_path / "r.json"),
         str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )


def test_plain_threading_locks_guard_data_under_kvmlock_lockdep(tmp_path):
    p = run_script(tmp_path, "return shop.stock")
    assert p.returncode == 1 and "done" in p.stdout
    assert "peek reads Shop.stock at: shop.py:26" in p.stderr
    assert "protected by (Shop.lock)" in p.stderr
    reports = json.loads((tmp_path / "r.json").read_text())
    assert [(r["kind"], r["data"]) for r in reports] == [("unguarded", "Shop.stock")]


def test_plain_threading_locks_held_stay_silent(tmp_path):
    p = run_script(tmp_path, "with shop.lock:\n        return shop.stock")
    assert p.returncode == 0, p.stderr
    assert "0 report(s)" in p.stderr
