"""The slow TDP fault logs its gfn where it installs the writable SPTE, under mmu_lock: a
harvest, which takes mmu_lock for write, sees both the bit and the SPTE or neither."""

import pytest

from kvmlock import explore
from kvmlock.kvm.guest import guest_write
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu.dirty_log import MigrationCopy
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import SCENARIOS
from kvmlock.scenarios.fast_pf import _assert_log_complete
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.verify import run_scenario

MUTANT = "slow_pf_marks_dirty_before_lock"
ROWS = ("dirty_log.first_write_vs_harvest", "dirty_log.pml_first_write_vs_harvest")


def _logged_vm(pml: bool, broken: bool):
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, pml=pml, hazards={MUTANT: broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    return vm, vm.vcpus[0], MigrationCopy(vm, 0)


@pytest.mark.parametrize("row", ROWS)
def test_the_rows_name_the_mutant_and_meet_their_expectation(row):
    correct, broken = SCENARIOS[f"{row}.correct"], SCENARIOS[f"{row}.broken"]
    assert MUTANT in correct.catches
    ok = run_scenario(correct, timeout=60)
    assert ok.met and ok.failure is None and ok.exhausted and ok.runs > 1, ok.result
    bad = run_scenario(broken, timeout=60)
    assert bad.met and bad.failure is not None, bad.result
    assert bad.failure.kind == "assertion"
    assert "dirty log lost a write: gfn 0 holds 3 but the migrated copy has 0" in \
        bad.failure.message


@pytest.mark.parametrize("pml", [False, True])
def test_must_catch_a_harvest_between_the_early_mark_and_the_install(pml):
    # the explorer must find the one order that loses the write: mark, harvest, install

    def body():
        vm, v, mig = _logged_vm(pml, True)
        together(lambda: guest_write(v, 0, 3), mig.round, names=["vcpu0", "harvest"])
        _assert_log_complete(mig)

    res = explore.check(body, strategy="dpor", max_runs=20000)
    assert not res.ok and res.failure.kind == "assertion", res.failure
    assert "gfn 0 holds 3 but the migrated copy has 0" in res.failure.message


@pytest.mark.parametrize("pml", [False, True])
@pytest.mark.parametrize("harvest_first", [False, True])
def test_near_miss_the_early_mark_is_harmless_without_a_harvest_in_between(pml, harvest_first):
    # the mutant's mark is still made: only a harvest between it and the install loses it
    vm, v, mig = _logged_vm(pml, True)
    if harvest_first:
        mig.round()
    guest_write(v, 0, 3)
    if not harvest_first:
        mig.round()
    vm.check()
    _assert_log_complete(mig)
    assert mig.dest[0] == 3
