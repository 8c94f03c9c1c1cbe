"""Order scenarios come from the model's document, and none of them can pass by construction."""

import re

import pytest

import kvmlock.scenarios  # noqa: F401  (registers every scenario)
from kvmlock import explore, lockdep
from kvmlock.kvm.mutants import Hazards, applied, hazards_of
from kvmlock.scenarios import orders, srcu_rules
from kvmlock.scenarios.orders import PATHS, check_graph
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.scenarios.verify import run_scenario
from kvmlock.spec.design import order_rules


def test_every_order_of_the_document_has_paths_and_both_variants():
    pairs = [(r.outer, r.inner) for r in order_rules()]
    assert len(pairs) >= 16 and len(set(pairs)) == len(pairs)
    assert set(PATHS) == set(pairs), set(PATHS) ^ set(pairs)
    for outer, inner in pairs:
        name = f"order.{orders._slug(outer)}.{orders._slug(inner)}"
        assert SCENARIOS[f"{name}.correct"].rule.startswith(f"{outer} is taken outside {inner}")
        assert SCENARIOS[f"{name}.broken"].variant == "broken"


def test_every_requires_rule_has_a_helper_that_asserts_it():
    from kvmlock.spec.design import model_spec

    inner = [r.inner for r in model_spec().rules if r.kind == "requires"]
    assert inner and set(inner) == set(orders.REQUIRES_PATHS)
    for name in inner:
        sc = SCENARIOS[f"order.mmu_lock.{orders._slug(name)}.without_mmu_lock"]
        assert sc.lockdep_kind == "not_held"


def _sequential_graph(pair, hazards):
    """The paths run one after the other (no race, so no deadlock), lockdep collecting."""
    with lockdep.isolated():
        tasks, after = PATHS[pair].build(hazards)
        for fn in tasks.values():
            fn()
        after()
        return lockdep.graph()


@pytest.mark.parametrize("pair", sorted(p for p, v in PATHS.items() if v.hazard))
def test_the_document_check_fails_when_the_path_inverts_its_order(pair):
    paths = PATHS[pair]
    # near miss: the correct paths conform and exercise the rule
    check_graph(_sequential_graph(pair, Hazards()), exercised=[("order", *pair)])
    # the same paths with the order inverted inside one of them: the document check alone
    # (no race, no cycle needed) names the rule
    inverted = _sequential_graph(pair, hazards_of({paths.hazard: True}))
    rule = re.escape(f"{pair[0]} is taken outside {pair[1]}")
    with pytest.raises(AssertionError, match=rule):
        check_graph(inverted)


def test_an_order_without_a_model_path_is_a_failing_scenario():
    orders._register("kvm->lock", "kvm->arch.config_lock", 99)
    try:
        out = run_scenario(SCENARIOS["order.vm_lock.config_lock.correct"])
        assert not out.met and "no model path takes them" in str(out.failure.message)
    finally:
        del SCENARIOS["order.vm_lock.config_lock.correct"]


@pytest.mark.parametrize("hazard", ["free_before_grace_period"])
def test_kvm_lock_srcu_scenario_fails_without_its_grace_period(hazard):
    def body():
        srcu_rules._vm_ioctls_vs_exits(hazards={hazard: True})
    res = explore.check(body, "dpor", max_runs=500, stop_on_first=True)
    assert res.failures and res.failures[0].kind == "assertion"
    assert "used after it was freed" in str(res.failures[0].message)


def test_kvm_lock_srcu_scenario_passes_with_its_grace_period():
    res = explore.check(srcu_rules._vm_ioctls_vs_exits, "dpor", max_runs=500)
    assert not res.failures and res.exhausted and res.runs > 1


@pytest.mark.parametrize("name, hazard, kind", [
    ("srcu.slots_arch_lock_in_reader.correct", "slots_arch_lock_across_sync", "assertion"),
    ("srcu.slots_arch_lock_in_reader.correct", "root_alloc_without_slots_arch_lock", "assertion"),
    ("srcu.vcpu_mutex_outside_reader.correct", "apic_access_delete_under_srcu", "deadlock"),
])
def test_srcu_correct_scenarios_fail_with_their_protection_removed(name, hazard, kind):
    with applied(hazard):
        out = run_scenario(SCENARIOS[name])
    assert not out.met and out.failure.kind == kind, out.result
