"""Every registered scenario meets its expectation when explored (what `kvmlock verify` runs)."""

import pytest

import kvmlock.scenarios  # noqa: F401  (registers every scenario)
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.scenarios.verify import run_scenario

#: The MMU-side scenarios are explored by tests/kvm/test_scenarios_mmu.py, with stricter
#: assertions (exhausted, more than one interleaving, a DFS cross-check); exploring them a second
#: time here would only double the suite's longest searches.
MMU_SIDE = ("fast_pf.", "access_track.", "mmu_notifier.", "memslots.", "tdp_mmu.")


@pytest.mark.parametrize("name", sorted(n for n in SCENARIOS if not n.startswith(MMU_SIDE)))
def test_scenario_meets_its_expectation(name):
    sc = SCENARIOS[name]
    out = run_scenario(sc, timeout=60)
    detail = ""
    if out.failure is not None:
        detail = f"\n{out.failure.summary()}\n{out.failure.message}"
    assert out.met, f"{name}: {out.result} ({out.bound}){detail}{out.error}"
    if sc.variant == "correct":
        assert out.failure is None
        assert out.runs >= 1
    else:
        assert out.failure.kind == sc.expect
        assert out.failure.schedule, "a caught failure must come with a replayable schedule"


def test_every_rule_of_the_platform_side_has_both_variants():
    families = {}
    for name, sc in SCENARIOS.items():
        if name.split(".")[0] in ("order", "srcu", "vendor", "hardware", "posted_intr", "tsc"):
            families.setdefault(name.split(".")[0], set()).add(sc.variant)
    assert set(families) == {"order", "srcu", "vendor", "hardware", "posted_intr", "tsc"}
    for fam, variants in families.items():
        assert variants == {"correct", "broken"}, fam


def test_every_scenario_states_its_rule_and_invariant_and_lockdep_kind():
    for name, sc in SCENARIOS.items():
        assert sc.rule.strip(), f"{name}: no rule"
        assert sc.invariant.strip(), f"{name}: no invariant stated"
        if sc.expect == "lockdep":
            assert sc.lockdep_kind, f"{name}: a lockdep expectation must name the report kind"
        assert (sc.variant == "correct") == (sc.expect == "pass"), name
