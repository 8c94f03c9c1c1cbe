"""No correct scenario can pass by construction: each one names the protections it exists to
show (``catches=``), every one of those mutants makes it fail (tests/scenarios/test_mutants.py
runs each pair), and every order rule of the model's document is inverted by a mutant inside
a real path."""

import pytest

import kvmlock.scenarios  # noqa: F401 - registers every scenario
from kvmlock.kvm.mutants import CATALOGUE, applied
from kvmlock.scenarios import orders
from kvmlock.scenarios.orders import PATHS
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.scenarios.verify import run_scenario
from kvmlock.spec.design import order_rules

CORRECT = sorted(n for n, s in SCENARIOS.items() if s.variant == "correct")


@pytest.mark.parametrize("name", CORRECT)
def test_every_correct_scenario_names_a_mutant_it_must_catch(name):
    sc = SCENARIOS[name]
    applicable = [m for m in sc.catches if m in CATALOGUE and not CATALOGUE[m].pending]
    assert applicable, (f"{name} names no applicable mutant in catches=: nothing shows it can "
                        "fail, so its pass says nothing")


@pytest.mark.parametrize("rule", order_rules(), ids=lambda r: f"{r.outer}>{r.inner}")
def test_every_order_rule_is_broken_by_a_mutant_of_a_real_path(rule):
    paths = PATHS[(rule.outer, rule.inner)]
    assert paths.hazard in CATALOGUE, f"{paths.hazard!r} is not a mutant of the catalogue"
    where = CATALOGUE[paths.hazard].where
    assert where.startswith("kvmlock/kvm/"), f"{paths.hazard} is declared outside the model"
    name = f"order.{orders._slug(rule.outer)}.{orders._slug(rule.inner)}"
    assert paths.hazard in SCENARIOS[f"{name}.correct"].catches
    # the broken variant is the same paths with that mutant: it fails as its expectation says
    out = run_scenario(SCENARIOS[f"{name}.broken"])
    assert out.met, f"{name}.broken: {out.result}"


def test_the_audit_fails_on_a_correct_scenario_without_a_mutant():
    """Near miss the other way: a scenario registered without catches= is what the audit
    reports (the registry does not make catches= mandatory by itself)."""
    from kvmlock.scenarios.registry import scenario

    scenario("audit.selftest.correct", variant="correct", expect="pass", rule="x")(lambda: None)
    try:
        with pytest.raises(AssertionError, match="names no applicable mutant"):
            test_every_correct_scenario_names_a_mutant_it_must_catch("audit.selftest.correct")
    finally:
        del SCENARIOS["audit.selftest.correct"]


@pytest.mark.parametrize(("scenario", "mutant", "kind"), [
    ("order.vcpu_mutex_planes.correct", "plane_mutex_unannotated", ("lockdep",)),
    ("order.vcpu_mutex_planes.correct", "plane_ioctl_locks_own_first", ("deadlock",)),
    # lockdep's cycle, or the document check's inverted order when no schedule closed it
    ("order.mmu_lock.tdp_mmu_pages_lock.correct", "pages_lock_outside_mmu_lock",
     ("lockdep", "assertion")),
    ("order.mmu_lock.mmu_unsync_pages_lock.correct", "sync_takes_unsync_lock_first",
     ("lockdep", "assertion")),
])
def test_nesting_pairs_of_one_class_or_under_mmu_lock_fail_through_their_real_paths(
        scenario, mutant, kind):
    """The planes' inversion behind one annotation is invisible to lockdep (same subclass
    order both ways): only the explorer's deadlock shows it."""
    with applied(mutant):
        out = run_scenario(SCENARIOS[scenario], timeout=60)
    assert out.failure is not None and out.failure.kind in kind, out.result


#: every rule of the model's document that is not an acquisition order -> a mutant that breaks
#: it inside a real path (each is named in some correct scenario's catches=, so
#: test_mutants.py runs it and requires the failure)
RULE_MUTANTS = {
    ("forbidden", "kvm_lock", "kvm->slots_lock"): "nx_walk_holds_kvm_lock",
    ("forbidden", "mmu_notifier_invalidate_range_start", "kvm->slots_lock"):
        "notifier_takes_slots_lock",
    ("forbidden", "mmu_notifier_invalidate_range_start", "kvm->slots_arch_lock"):
        "notifier_takes_slots_arch_lock",
    ("srcu_sync_inside", "kvm->lock", ""): "msr_exit_takes_kvm_lock",
    ("srcu_sync_inside", "vcpu->mutex", ""): "run_srcu_before_vcpu_mutex",
    ("srcu_sync_inside", "kvm->slots_lock", ""): "root_alloc_takes_slots_lock",
    ("srcu_read_ok", "kvm->srcu", "kvm->slots_arch_lock"): "slots_arch_lock_across_sync",
    ("type", "kvm->mmu_lock", ""): "mmu_lock_rwsem",
    ("leaf", "tk_core.lock", ""): "gtod_notifier_takes_kvm_lock",
    ("leaf", "kvm->irq_lock", ""): "pit_slots_lock_inside_irq_lock",
    ("leaf", "kvm->arch.tdp_mmu_pages_lock", ""): "pages_lock_outside_mmu_lock",
    ("leaf", "kvm->arch.mmu_unsync_pages_lock", ""): "sync_takes_unsync_lock_first",
    ("leaf", "kvm->mn_invalidate_lock", ""): "notifier_takes_slots_arch_lock",
    ("leaf", "kvm->arch.tsc_write_lock", ""): "set_clock_hv_request_under_tsc_lock",
    ("leaf", "kvm->arch.hyperv.hv_lock", ""): "hv_ref_tsc_update_under_hv_lock",
    ("leaf", "kvm->arch.xen.xen_lock", ""): "xen_lock_locks_vcpus",
    ("leaf", "wakeup_vcpus_on_cpu_lock", ""): "pi_load_nests_wakeup_locks",
    ("requires", "kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock"): "unlink_page_at_free",
    ("requires", "kvm->mmu_lock", "kvm->arch.mmu_unsync_pages_lock"): "unsync_before_mmu_lock",
}


def _rule_key(rule):
    return (rule.kind, rule.outer, rule.inner)


def test_every_other_rule_of_the_document_is_broken_by_a_caught_mutant():
    from kvmlock.spec.design import model_spec

    rules = {_rule_key(r) for r in model_spec().rules if r.kind != "order"}
    assert rules == set(RULE_MUTANTS), rules ^ set(RULE_MUTANTS)
    named = {m for s in SCENARIOS.values() if s.variant == "correct" for m in s.catches}
    for rule, name in RULE_MUTANTS.items():
        assert name in CATALOGUE and name in named, (rule, name)
        assert CATALOGUE[name].where.startswith("kvmlock/kvm/"), (rule, name)
