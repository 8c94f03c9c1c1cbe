"""The MMU-side scenarios under the explorer: correct variants explore clean and exhaustively
(within their preemption bound), broken ones are caught for the expected reason."""

import pytest

from kvmlock import explore
from kvmlock.scenarios import SCENARIOS
from kvmlock.scenarios.verify import run_scenario

MINE = ("fast_pf.", "access_track.", "mmu_notifier.", "memslots.", "tdp_mmu.")
NAMES = sorted(n for n in SCENARIOS if n.startswith(MINE))


def test_every_hazard_has_both_variants():
    rules = {}
    for n in NAMES:
        rules.setdefault(n.split(".")[0], set()).add(SCENARIOS[n].variant)
    assert rules == {k: {"correct", "broken"} for k in
                     ("fast_pf", "access_track", "mmu_notifier", "memslots", "tdp_mmu")}
    assert len([n for n in NAMES if n.startswith("fast_pf.")]) == 9


@pytest.mark.parametrize("name", NAMES)
def test_scenario_meets_its_expectation(name):
    sc = SCENARIOS[name]
    out = run_scenario(sc, timeout=60)  # the path `kvmlock verify` takes
    assert out.met, f"{name}: {out.result} ({out.bound}){out.error}"
    if sc.expect == "pass":
        assert out.failure is None, out.failure and out.failure.trace_table()
        assert out.exhausted, f"{name}: {out.runs} runs did not exhaust the bounded space"
        assert out.runs > 1, "a race scenario with a single interleaving explores nothing"
    else:
        assert out.failure is not None, f"{name}: not caught in {out.runs} runs"
        assert out.failure.kind == sc.expect, out.failure
        assert out.failure.schedule, "a caught failure must come with a replayable schedule"
        if sc.lockdep_kind:
            kinds = {r.kind for r in out.failure.lockdep_reports}
            assert sc.lockdep_kind in kinds, out.failure.message


@pytest.mark.parametrize("name", ["fast_pf.dirty_bit", "fast_pf.tlb_flush", "access_track",
                                  "memslots.delete"])
def test_bounded_dfs_agrees_with_dpor(name):
    """A second, independent search: plain DFS up to 2 preemptions must agree with DPOR --
    clean on the correct variant, a failure of the same kind on the broken one."""
    correct = SCENARIOS[f"{name}.correct"]
    broken = next(SCENARIOS[n] for n in NAMES if n.startswith(name + ".") and
                  SCENARIOS[n].variant == "broken")
    ok = explore.check(correct.body, strategy="dfs", preemption_bound=2, max_runs=20000)
    assert ok.ok and ok.exhausted, ok.failure
    bad = explore.check(broken.body, strategy="dfs", preemption_bound=2, max_runs=20000)
    assert not bad.ok and bad.failure.kind == broken.expect


def test_a_flush_that_reads_the_vcpu_mode_first_loses_a_write_only_when_entry_races_it():
    from kvmlock.kvm.guest import guest_write
    from kvmlock.kvm.mutants import applied
    from kvmlock.kvm.vm import VM

    # near miss: a vCPU that stays outside guest mode is flushed all the same
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, hazards={"flush_reads_mode_first"})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    guest_write(vm.vcpus[0], 0, 1)
    assert vm.vcpus[0].tlb
    vm.vcpus[0].flush_tlb()
    assert not vm.vcpus[0].tlb
    sc = SCENARIOS["fast_pf.tlb_flush.correct"]
    assert run_scenario(sc).met
    with applied("flush_reads_mode_first"):
        out = run_scenario(sc)
    assert out.failure is not None and "dirty log lost a write" in str(out.failure.message)
