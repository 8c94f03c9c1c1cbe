"""The scenarios with more actors exist for races that need them: each catches a mutant that
the smaller scenarios of the same protocol miss. (That each passes without it, within the bound
it prints, is tests/scenarios/test_scenarios.py's; that nothing else in the catalogue catches
these mutants is what `kvmlock verify --mutants` shows by naming the scenario that did.)"""

import pytest

import kvmlock.scenarios  # noqa: F401 - registers every scenario
from kvmlock.kvm.mutants import applied
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.scenarios.verify import run_scenario

#: (the scenario with more actors, the mutant only it catches, its smaller siblings)
SCALE = [
    # two vCPUs fast-fault one SPTE while zap_all frees its page: one walker ending must not
    # end the other's protection
    # (order.mmu_lock.tdp_mmu_pages_lock.correct catches it too, now that the walk's read of
    # the parent entry is a visible step: two vCPUs there fault beside zap_all too)
    ("fast_pf.zap_all_race.correct", "lockless_walk_one_flag",
     ("tdp_mmu.install_race.correct",)),
    # two VM creators: the second must not return before the first one's enabling is done
    ("hardware.two_creators.usage_lock.correct", "enable_after_usage_unlock",
     ("hardware.usage_lock.correct", "order.kvm_usage_lock.cpu_hotplug_lock.correct")),
    # a harvest racing two writers: a load + store(0) loses the write between them
    ("dirty_log.harvest_two_writers.correct", "harvest_load_store",
     ("dirty_log.harvest_flush_any.correct", "dirty_log.enable.correct")),
    # two invalidations racing a memslot update: the swap re-checks the count after each wake
    ("mmu_notifier.two_invalidations_vs_update.correct", "swap_recheck_once",
     ("mmu_notifier.memslot_update.correct",)),
    # two discards of one page and a vCPU reading it: the second invalidation must not find
    # the SPTE gone before the first one's flush
    ("mmu_notifier.flush_under_mmu_lock.correct", "notifier_flush_after_unlock",
     ("page_fault.vs_invalidate.correct", "mmu_notifier.memslot_update.correct",
      "memslots.delete_vs_reclaim.correct")),
]


@pytest.mark.parametrize(("big", "mutant", "smaller"), SCALE, ids=[s[1] for s in SCALE])
def test_the_larger_scenario_catches_what_the_smaller_ones_miss(big, mutant, smaller):
    assert mutant in SCENARIOS[big].catches
    with applied(mutant):
        out = run_scenario(SCENARIOS[big], timeout=60)
        assert out.failure is not None, f"{big} misses {mutant}: {out.result}"
        for name in smaller:
            small = run_scenario(SCENARIOS[name], timeout=60)
            assert small.failure is None, f"{name} already catches {mutant}: {small.result}"
