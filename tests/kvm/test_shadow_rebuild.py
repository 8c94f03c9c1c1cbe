"""Shadow pages zapped and built again: the zap commits under mmu_lock, a rebuild holds
mmu_lock for write, write-protects and flushes, and the fault re-checks the guest entry after.
Each new row fails by its consequence when its protection is weakened, and each weakening is
harmless where nothing races the window it opens (the near misses)."""

import pytest

import kvmlock
from kvmlock import explore
from kvmlock.kvm.guest import guest_read, guest_write, set_gpte, write_gpte
from kvmlock.kvm.mutants import applied
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import verify
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.sync import peek

CAUGHT = [
    ("shadow.zap_all_flush.correct", "shadow_zap_all_commit_after_unlock",
     "which the host has freed"),
    ("shadow.first_stores_vs_zap.correct", "gpte_fault_read_lock", "built and linked twice"),
    ("shadow.rebuild_vs_store.correct", "shadow_rebuild_no_flush",
     "the guest maps that page to gfn 2"),
    ("shadow.rebuild_vs_store.correct", "gpte_recheck_before_rebuild",
     "the guest maps that page to gfn 2"),
]


@pytest.mark.parametrize(("row", "mutant", "signature"), CAUGHT)
def test_each_row_passes_and_fails_by_consequence_with_its_mutant(row, mutant, signature):
    sc = SCENARIOS[row]
    ok = verify.run_scenario(sc)
    assert ok.met and ok.exhausted, (ok.runs, ok.failure)
    with applied(mutant):
        out = verify.run_scenario(sc)
    assert not out.met and out.failure is not None and out.failure.kind == "assertion"
    assert signature in str(out.failure.message)


def _shadow_vm(hazard: str) -> VM:
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False, hazards={hazard})
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    set_gpte(vm, 0, 1)
    return vm


def test_a_late_commit_with_no_swap_out_in_the_window_loses_nothing():
    # The near miss: the commit after write_unlock still flushes before the zap returns; a
    # swap-out that comes after it finds no SPTE and no TLB entry left to matter.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, tdp_mmu=False,
            hazards={"shadow_zap_all_commit_after_unlock"})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)
    assert vm.mmu.zap_all() == 1
    vm.host.swap_out(0)
    assert guest_read(v0, 0) == 1
    vm.check()


def test_read_mode_first_stores_to_a_shadowed_table_are_harmless_without_a_zap():
    # The near miss: with the page present the two read-mode faults only mark it unsync
    # (under mmu_unsync_pages_lock) and open the table, which is idempotent.
    def body() -> None:
        vm = _shadow_vm("gpte_fault_read_lock")
        v0, v1 = vm.vcpus
        guest_read(v0, 0)
        t0 = kvmlock.spawn(lambda: write_gpte(v0, 0, 2), name="vcpu0")
        t1 = kvmlock.spawn(lambda: write_gpte(v1, 1, 3), name="vcpu1")
        t0.join()
        t1.join()
        vm.check()
        assert vm.mmu.pages[0].unsync and peek(vm.mmu, "unsync_count") == 1

    res = explore.check(body, max_runs=5000)
    assert res.ok and res.exhausted, res.failure


def test_a_rebuild_without_its_flush_is_harmless_when_no_vcpu_stores_meanwhile():
    # The near miss: the fault builds the page again with no flush, but no vCPU was storing
    # to the table; the next store finds it write-protected, exits and makes it unsync.
    vm = _shadow_vm("shadow_rebuild_no_flush")
    v0, v1 = vm.vcpus
    guest_read(v0, 0)
    vm.mmu.zap_all()
    assert guest_read(v1, 0) == 0 and vm.mmu.pages[0] is not None
    write_gpte(v0, 0, 2)
    assert vm.mmu.pages[0].unsync
    vm.check()


def test_a_recheck_before_the_rebuild_still_sees_a_change_made_under_mmu_lock():
    # The near miss: the guest's re-pointing with INVLPG (set_gpte) holds mmu_lock, so a
    # re-check anywhere under the fault's mmu_lock sees it; only a store through a mapping
    # of the unshadowed table slips between the early re-check and the write-protection.
    with applied("gpte_recheck_before_rebuild"):
        out = verify.run_scenario(SCENARIOS["shadow.gpte_race.correct"])
    assert out.met and out.exhausted, (out.runs, out.failure)
