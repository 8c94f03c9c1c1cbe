"""TSC synchronisation, posted-interrupt wakeups, Hyper-V and Xen locks, on real threads."""

import threading

import pytest

from kvmlock import explore, lockdep
from kvmlock.kvm.hyperv import HyperV
from kvmlock.kvm.machine import Machine, checked_at_end
from kvmlock.kvm.mutants import applied
from kvmlock.kvm.posted_intr import PostedVcpu, post_interrupt, wakeup_handler
from kvmlock.kvm.tsc import TscSync
from kvmlock.kvm.vm import VM
from kvmlock.kvm.xen import Xen
from kvmlock.scenarios import verify
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.sync import peek


def edges() -> set[tuple[str, str]]:
    return {(e.src, e.dst) for e in lockdep.graph().edges}


# ---------------------------------------------------------------- TSC

def test_tsc_writes_close_in_time_join_one_generation_far_ones_open_a_new_one():
    vm = VM(None, nr_vcpus=3)
    tsc = TscSync(vm)
    v0, v1, v2 = vm.vcpus
    with v0.mutex:
        a = tsc.write(v0, 1_000_000, 1_000_000)
    with v1.mutex:
        b = tsc.write(v1, 1_000_500, 1_000_000 + 507)  # 7 ticks off: synchronising
    with v2.mutex:
        c = tsc.write(v2, 99_000_000_000, 2_000_000)  # far away: a new generation
    assert a.generation == b.generation == 1 and a.offset == b.offset
    assert c.generation == 2 and c.offset != a.offset
    tsc.check()
    assert ("vcpu->mutex", "kvm->arch.tsc_write_lock") in edges()
    assert lockdep.reports() == []


def test_tsc_check_catches_split_generation_but_not_a_matched_one():
    vm = VM(None, nr_vcpus=2)
    tsc = TscSync(vm)
    with vm.vcpus[0].mutex:
        tsc.write(vm.vcpus[0], 10, 10)
    tsc.check()
    tsc.vcpus[1] = type(tsc.vcpus[0])(offset=tsc.vcpus[0].offset + 5, generation=1)
    with pytest.raises(AssertionError, match="different offsets"):
        tsc.check()


def test_tsc_write_without_vcpu_mutex_is_reported_and_bad_values_rejected():
    vm = VM(None, nr_vcpus=1)
    tsc = TscSync(vm)
    tsc.write(vm.vcpus[0], 5, 5)
    assert [r.kind for r in lockdep.reports()] == ["not_held"]
    with pytest.raises(ValueError, match="non-negative integers"):
        tsc.write(vm.vcpus[0], -1, 5)
    with pytest.raises(TypeError, match="tsc_write_lock"):
        TscSync(object())


# ---------------------------------------------------------------- posted interrupts

def test_posted_interrupt_wakes_a_halted_vcpu_on_threads():
    m = Machine(2)
    vm = VM(m, nr_vcpus=1)
    for _ in range(30):
        pv = PostedVcpu(m, vm.vcpus[0], cpu=1)
        t = threading.Thread(target=pv.block)
        t.start()
        post_interrupt(pv, 9)
        t.join(5)
        assert not t.is_alive(), "the halted vCPU was never woken"
        assert pv.delivered == {9}
        assert peek(m.cpus[1], "wakeup_vcpus_on_cpu") == []
    assert lockdep.reports() == []


def test_wakeup_handler_wakes_only_vcpus_with_an_outstanding_notification():
    m = Machine(1)
    vm = VM(m, nr_vcpus=2)
    a, b = PostedVcpu(m, vm.vcpus[0]), PostedVcpu(m, vm.vcpus[1])
    with m.cpus[0].wakeup_lock:
        m.cpus[0].wakeup_vcpus_on_cpu.extend([a, b])
    a.pir.fetch_or(1 << 4)
    a.control.fetch_or(1)  # ON
    assert wakeup_handler(m, 0) == 1
    assert a.kicks == 1 and b.kicks == 0


def _running_vcpu(hazards=None):
    """A vCPU that never halts takes its posted vectors at VM entry; the body checks nothing:
    the machine's end-of-run check judges what became of the two vectors."""
    m = Machine(2, hazards=hazards)
    pv = PostedVcpu(m, VM(m, nr_vcpus=1).vcpus[0], cpu=1)
    together(lambda: (pv.enter_guest(), pv.enter_guest()),
             lambda: (post_interrupt(pv, 3), post_interrupt(pv, 7)),
             names=["vcpu0 (running)", "IOMMU"])


def test_the_end_of_a_body_names_a_posted_vector_the_pir_harvest_erased():
    res = explore.check(checked_at_end(_running_vcpu), max_runs=500)
    assert res.ok and res.exhausted, res.failure  # near miss: the PIR taken with xchg
    res = explore.check(checked_at_end(lambda: _running_vcpu({"pi_pir_load_store"})),
                        max_runs=500)
    assert not res.ok and res.failure.kind == "assertion"
    assert "vector 7 posted to vcpu0 is lost: neither delivered nor pending in its PIR" in \
        res.failure.message, res.failure.message


def test_the_end_of_a_body_names_a_vector_another_poster_erased():
    def two_posters(hazards=None):
        m = Machine(2, hazards=hazards)
        pv = PostedVcpu(m, VM(m, nr_vcpus=2).vcpus[0], cpu=1)
        together(lambda: post_interrupt(pv, 3), lambda: post_interrupt(pv, 7),
                 names=["IOMMU", "vcpu1 (IPI)"])

    res = explore.check(checked_at_end(two_posters), max_runs=500)
    assert res.ok and res.exhausted, res.failure  # near miss: each PIR bit set atomically
    res = explore.check(checked_at_end(lambda: two_posters({"pi_pir_set_load_store"})),
                        max_runs=500)
    assert not res.ok and res.failure.kind == "assertion"
    assert "is lost: neither delivered nor pending in its PIR" in res.failure.message


def test_check_delivered_passes_a_pending_vector_and_names_a_stranded_one():
    m = Machine(1)
    pv = PostedVcpu(m, VM(m, nr_vcpus=1).vcpus[0])
    post_interrupt(pv, 3)
    pv.check_delivered()  # near miss: pending in the PIR with ON set, the next entry takes it
    pv.control.fetch_and(~1 & (1 << 64) - 1)  # ON cleared with the vector left in the PIR
    with pytest.raises(AssertionError, match="vector 3 posted to vcpu0 is stranded in its PIR "
                                             "with ON clear"):
        m.check_quiet()
    pv.enter_guest()  # ON clear: the entry looks at nothing
    with pytest.raises(AssertionError, match="stranded"):
        pv.check_delivered()
    post_interrupt(pv, 5)  # a later posting sets ON again: both are taken at the next entry
    pv.enter_guest()
    assert pv.delivered == {3, 5}
    m.check_quiet()


def test_a_halted_vcpu_that_slept_through_a_posting_is_named_in_the_deadlock():
    def halt_and_post(hazards=None):
        m = Machine(2, hazards=hazards)
        pv = PostedVcpu(m, VM(m, nr_vcpus=1).vcpus[0], cpu=1)
        together(pv.block, lambda: post_interrupt(pv, 3), names=["vcpu0 (halt)", "IOMMU"])

    res = explore.check(checked_at_end(halt_and_post), max_runs=500)
    assert res.ok and res.exhausted, res.failure  # near miss: ON set with one atomic step
    res = explore.check(checked_at_end(lambda: halt_and_post({"pi_on_load_store"})),
                        max_runs=500)
    assert not res.ok and res.failure.kind == "deadlock"
    msg = res.failure.message
    assert "vector 3 posted to vcpu0 is pending in its PIR with ON set, but the wake-up" in msg
    assert "its switch to the wakeup vector was undone" in msg, msg


def test_posted_interrupt_bad_input():
    m = Machine(1)
    vm = VM(m, nr_vcpus=1)
    with pytest.raises(ValueError, match="no CPU 3"):
        PostedVcpu(m, vm.vcpus[0], cpu=3)
    pv = PostedVcpu(m, vm.vcpus[0])
    with pytest.raises(ValueError, match="0..63"):
        post_interrupt(pv, 64)


# ---------------------------------------------------------------- Hyper-V and Xen

def test_hyperv_partition_msrs_go_under_hv_lock_inside_vcpu_mutex():
    vm = VM(None, nr_vcpus=1)
    hv = HyperV(vm)
    v = vm.vcpus[0]
    with v.mutex:
        hv.set_msr(v, "HV_X64_MSR_HYPERCALL", 3)
        hv.set_msr(v, "HV_X64_MSR_SCONTROL", 1)  # per vCPU: no hv_lock
        assert hv.get_msr(v, "HV_X64_MSR_HYPERCALL") == 3
    assert edges() == {("vcpu->mutex", "kvm->arch.hyperv.hv_lock")}
    assert lockdep.reports() == []
    with pytest.raises(ValueError, match="not a Hyper-V MSR"):
        hv.set_msr(v, "IA32_TSC", 1)


def test_set_clock_asks_hyperv_before_the_pvclock_update_and_moves_the_clock_inside_it():
    vm = VM(None, nr_vcpus=1)
    hv, tsc = HyperV(vm), TscSync(vm)
    v = vm.vcpus[0]
    with v.mutex:
        hv.set_msr(v, "HV_X64_MSR_REFERENCE_TSC", 1)
    # the MSR write asks the vCPU for a master-clock update; it rewrites no page itself
    assert peek(hv, "partition")["tsc_page_status"] == "guest changed"
    asked = {i for i, r in hv.masterclock_requests.items() if r}
    assert asked == {0} and peek(vm, "hv_tsc_page_updates") == 0
    with hv.lock:
        hv.partition["tsc_page_status"] = "set"  # as the vCPU's update leaves it
    tsc.set_clock(9_000, 2_000, hv=hv)
    assert peek(tsc, "kvmclock_offset") == 7_000
    assert peek(hv, "partition")["tsc_page_status"] == "host changed"
    assert lockdep.reports() == []
    assert ("kvm->arch.tsc_write_lock", "kvm->arch.hyperv.hv_lock") not in edges()
    with pytest.raises(ValueError, match="KVM_SET_CLOCK needs integers"):
        tsc.set_clock(1, -1)


def test_clock_update_rewrites_the_tsc_page_only_if_marked_changed():
    vm = VM(None, nr_vcpus=1)
    hv, tsc, v = HyperV(vm), TscSync(vm), vm.vcpus[0]
    with v.mutex:
        hv.set_msr(v, "HV_X64_MSR_REFERENCE_TSC", 1)
        tsc.serve_clock_requests(v, hv)  # master-clock update, then the page written
    hv.check_tsc_page(0)
    tsc.set_clock(9_000, 2_000, hv=hv)
    with pytest.raises(AssertionError, match="status 'host changed'"):
        hv.check_tsc_page(7_000)  # marked, not rewritten yet: the vCPU has not entered
    with v.mutex:
        tsc.serve_clock_requests(v, hv)
    hv.check_tsc_page(7_000)
    with pytest.raises(AssertionError, match="written from clock offset 7000"):
        hv.check_tsc_page(6_000)
    # near miss: with the mark after the requests, a vCPU that serves them only after
    # KVM_SET_CLOCK returned still rewrites the page
    vm = VM(None, nr_vcpus=1, hazards={"hv_tsc_page_marked_after_clock_update"})
    hv, tsc, v = HyperV(vm), TscSync(vm), vm.vcpus[0]
    with v.mutex:
        hv.set_msr(v, "HV_X64_MSR_REFERENCE_TSC", 1)
        tsc.serve_clock_requests(v, hv)
    tsc.set_clock(9_000, 2_000, hv=hv)
    with v.mutex:
        tsc.serve_clock_requests(v, hv)
    hv.check_tsc_page(7_000)
    # the race the scenario explores is what catches it: the request served before the mark
    sc = SCENARIOS["kvmclock.set_clock_vs_tsc_page.correct"]
    ok = verify.run_scenario(sc)
    # two vCPUs entering around the change: which one serves the raised update, and whether
    # it is served during the change or after it, are all explored (one vCPU gave 2 runs)
    assert ok.met and ok.exhausted and ok.runs >= 10, (ok.runs, ok.bound)
    with applied("hv_tsc_page_marked_after_clock_update"):
        out = verify.run_scenario(sc)
    assert out.failure is not None and "status 'host changed'" in str(out.failure.message)
    assert "reference TSC page is stale" in str(out.failure.message)


def test_hyperv_tsc_mutants_nest_a_lock_inside_a_leaf():
    vm = VM(None, nr_vcpus=1, hazards={"set_clock_hv_request_under_tsc_lock"})
    TscSync(vm).set_clock(9_000, 2_000, hv=HyperV(vm))
    assert {r.kind for r in lockdep.reports()} >= {"sleep_in_atomic"}
    lockdep.reset()
    vm = VM(None, nr_vcpus=1, hazards={"hv_ref_tsc_update_under_hv_lock"})
    hv = HyperV(vm)
    with vm.vcpus[0].mutex:
        hv.set_msr(vm.vcpus[0], "HV_X64_MSR_REFERENCE_TSC", 1)
    assert ("kvm->arch.hyperv.hv_lock", "kvm->arch.tsc_write_lock") in edges()
    assert peek(vm, "hv_tsc_page_updates") == 1 and not any(hv.masterclock_requests.values())


def test_xen_vm_attr_takes_only_xen_lock_vcpu_attr_nests_it_in_vcpu_mutex():
    vm = VM(None, nr_vcpus=1)
    xen = Xen(vm)
    xen.hvm_set_attr("shared_info", 1)
    assert edges() == set()
    with vm.vcpus[0].mutex:
        xen.vcpu_set_attr(vm.vcpus[0], "runstate", 2)
    assert edges() == {("vcpu->mutex", "kvm->arch.xen.xen_lock")}
    with pytest.raises(ValueError, match="unknown Xen attribute 'runstate'"):
        xen.hvm_set_attr("runstate", 1)
    assert lockdep.reports() == []


def test_tsc_page_written_only_where_the_guest_has_it_now():
    # The page's rewrite checks, as it writes, that the MSR still names the address (and the
    # enable bit) its status was read with: a page the guest moved or disabled is not written.
    vm = VM(None, nr_vcpus=1)
    hv, tsc, v = HyperV(vm), TscSync(vm), vm.vcpus[0]
    with v.mutex:
        hv.set_msr(v, "HV_X64_MSR_REFERENCE_TSC", 1)
    with hv.lock:
        hv._write_tsc_page(1, 0)  # the address the MSR names: written
    hv.check_tsc_page(0)
    for later in (3, 0):  # moved, then disabled, after the status was read
        with v.mutex:
            hv.set_msr(v, "HV_X64_MSR_REFERENCE_TSC", later)
        with hv.lock, pytest.raises(AssertionError, match="no longer gives for the page"):
            hv._write_tsc_page(1, 0)
    with v.mutex:  # the clock update itself tests and writes in one section: nothing to write
        tsc.serve_clock_requests(v, hv)
    hv.check_tsc_page(0)
