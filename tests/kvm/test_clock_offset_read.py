"""The VM's clock offset is read by a vCPU's clock update without a lock, as the kernel does.

``kvm_guest_time_update`` reads ``kvmclock_offset`` with no lock held: what makes that correct
is the writer, which changes it only inside a pvclock update (under ``tsc_write_lock``) and
raises KVM_REQ_CLOCK_UPDATE on every vCPU after the write, so a vCPU that read the old value
reads again before it enters the guest. The model states that rule; these tests hold it to
both halves: no report for the kernel's lockless read, and the protection that remains (the
request after the write, the request consumed before the read) caught by its consequence.
"""

from __future__ import annotations

from kvmlock import lockdep
from kvmlock.kvm.mutants import applied
from kvmlock.kvm.tsc import TscSync
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import verify
from kvmlock.scenarios.registry import SCENARIOS


def found() -> list[tuple[str, str, str]]:
    return [(r.kind, r.data, r.lock or "") for r in lockdep.reports()]


def test_a_lockless_read_is_quiet_and_a_write_without_tsc_write_lock_is_reported():
    vm = VM(None, nr_vcpus=1)
    tsc = TscSync(vm)
    tsc.set_clock(9_000, 2_000)
    (v0,) = vm.vcpus
    with v0.mutex:
        tsc.serve_clock_requests(v0)  # reads the offset with no lock, as the kernel does
    assert tsc.kvmclock_offset == 7_000  # a plain read from outside any lock, too
    tsc.check_pvclocks()
    assert found() == []
    tsc.kvmclock_offset = 1  # a write outside a pvclock update
    assert found() == [("unguarded", "TscSync.kvmclock_offset", "kvm->arch.tsc_write_lock")]


def test_the_clock_scenarios_pass_with_the_lockless_read():
    # The near miss of the checks below: the kernel's design, explored in full, no report.
    for name in ("kvmclock.set_clock_vs_pending_update.correct",
                 "kvmclock.set_clock_vs_masterclock.correct",
                 "kvmclock.set_clock_vs_tsc_page.correct"):
        out = verify.run_scenario(SCENARIOS[name])
        assert out.met and out.exhausted and out.failure is None, (name, out.runs, out.failure)


def test_a_request_raised_before_the_write_leaves_a_stale_pvclock():
    # Without a lock on the read side, only the request's order protects the reader: raised
    # before the clock moves, it is consumed by a read of the old clock and never comes back.
    with applied("clock_request_before_update"):
        out = verify.run_scenario(SCENARIOS["kvmclock.set_clock_vs_pending_update.correct"])
    assert not out.met and out.failure is not None
    assert "pvclock page(s) written from a stale clock" in str(out.failure.message)
    assert out.failure.kind != "lockdep"


def test_a_request_cleared_after_the_read_leaves_a_stale_pvclock():
    # The reader's half: the request consumed after the read erases one the update raised
    # after its write, while the vCPU had already read the old clock.
    with applied("clock_request_cleared_after_service"):
        out = verify.run_scenario(SCENARIOS["kvmclock.set_clock_vs_pending_update.correct"])
    assert not out.met and out.failure is not None
    assert "pvclock page(s) written from a stale clock" in str(out.failure.message)
