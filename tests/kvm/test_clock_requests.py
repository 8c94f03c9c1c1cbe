"""KVM_REQ_CLOCK_UPDATE is raised with an atomic bit operation: two pvclock updates at once,
with a vCPU consuming its request between them, must not lose the last one."""

from kvmlock.kvm.mutants import applied
from kvmlock.kvm.tsc import TscSync
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import verify
from kvmlock.scenarios.registry import SCENARIOS


def test_a_load_store_request_loses_a_clock_update_another_update_raised():
    sc = SCENARIOS["kvmclock.set_clock_vs_masterclock.correct"]
    ok = verify.run_scenario(sc)
    assert ok.met and ok.exhausted, (ok.runs, ok.bound)
    with applied("clock_request_load_store"):
        out = verify.run_scenario(sc)
    assert not out.met and out.failure is not None
    assert "pvclock page(s) written from a stale clock" in str(out.failure.message)


def test_a_load_store_request_with_one_requester_loses_nothing():
    # The near miss: one pvclock update racing one vCPU's test-and-clear. The vCPU may clear
    # its bit between the requester's load and store, but the store only sets it again (an
    # extra, harmless update); nothing else writes the word, so no request is lost.
    sc = SCENARIOS["kvmclock.set_clock_vs_pending_update.correct"]
    with applied("clock_request_load_store"):
        out = verify.run_scenario(sc)
    assert out.met and out.exhausted, (out.runs, out.failure)


def test_sequential_updates_with_load_store_requests_leave_every_pvclock_current():
    vm = VM(None, nr_vcpus=2, hazards={"clock_request_load_store"})
    tsc = TscSync(vm)
    tsc.set_clock(9_000, 2_000)
    tsc.update_masterclock()
    for v in vm.vcpus:
        with v.mutex:
            tsc.serve_clock_requests(v)
    tsc.check_pvclocks()
