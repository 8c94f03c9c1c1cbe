"""The mutation catalogue: each mutant is caught by the scenario written for it, the correct
model passes that scenario, and `kvmlock verify --mutants` reports and exits honestly."""

import json

import pytest

import kvmlock.scenarios  # noqa: F401 - registers the scenarios and imports the whole model
from kvmlock.kvm.machine import Machine
from kvmlock.kvm.mutants import CATALOGUE, Hazards, applied, hazards_of, mutant
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import mutation, verify
from kvmlock.scenarios.registry import SCENARIOS, Scenario

PAIRS = sorted((m, s.name) for s in SCENARIOS.values() for m in s.catches)


def test_every_mutant_has_a_scenario_written_for_it():
    hinted = {m for m, _ in PAIRS}
    applicable = {n for n, m in CATALOGUE.items() if not m.pending}
    assert applicable - hinted == set(), "mutants no scenario names in catches="
    assert hinted <= set(CATALOGUE), f"scenarios name unknown mutants: {hinted - set(CATALOGUE)}"
    for m in CATALOGUE.values():
        assert m.removes and m.breaks and m.where.startswith("kvmlock/kvm/"), m


@pytest.mark.parametrize(("name", "scenario"), PAIRS)
def test_scenario_catches_its_mutant(name, scenario):
    sc = SCENARIOS[scenario]
    assert sc.variant == "correct" and sc.expect == "pass"
    if CATALOGUE[name].pending:
        pytest.skip(CATALOGUE[name].pending)
    with applied(name):
        out = verify.run_scenario(sc, timeout=60)
    assert out.failure is not None, f"{scenario} does not catch {name}: {out.result}"
    assert out.failure.schedule, "a caught mutant comes with a replayable schedule"


def test_hazards_are_names_and_switches():
    vm = VM(hazards={"fast_pf_plain_store": True, "tdp_plain_store": False})
    assert isinstance(vm.hazards, Hazards)
    assert vm.hazards == {"fast_pf_plain_store"}
    assert CATALOGUE["fast_pf_plain_store"] in vm.hazards
    assert vm.hazards.fast_pf_plain_store and not vm.hazards.tdp_plain_store
    with pytest.raises(AttributeError):
        _ = vm.hazards.no_such_switch
    with pytest.raises(ValueError, match="unknown hazard"):
        VM(hazards={"no_such_bug": True})
    with pytest.raises(ValueError, match="unknown hazard"):
        hazards_of(["no_such_bug"])
    with pytest.raises(TypeError):
        hazards_of("fast_pf_plain_store")


def test_applied_reaches_objects_built_inside_only():
    with applied("usage_without_lock", "tdp_plain_store"):
        m = Machine(2)
        vm = VM(m)
    assert "usage_without_lock" in m.hazards and "tdp_plain_store" in vm.hazards
    assert VM().hazards == set() and Machine(2).hazards == set()
    with pytest.raises(ValueError, match="unknown mutant"):
        with applied("no_such_mutant"):
            pass


@pytest.fixture
def temp_mutant():
    made = []

    def make(name, **kw):
        kw.setdefault("removes", "nothing (test-only)")
        kw.setdefault("breaks", "test-only")
        made.append(name)
        return mutant(name, **kw)

    yield make
    for n in made:
        CATALOGUE.pop(n, None)


def test_declaration_rules(temp_mutant):
    m = temp_mutant("test_only_dup")
    assert m.where.endswith(".py:" + m.where.rsplit(":", 1)[1])
    with pytest.raises(ValueError, match="declared twice"):
        mutant("test_only_dup", removes="x", breaks="y")
    with pytest.raises(ValueError, match="identifier"):
        mutant("not a name", removes="x", breaks="y")


def test_pending_mutant_is_listed_never_applied_never_caught(temp_mutant):
    temp_mutant("test_only_pending", pending="waits for something")
    with pytest.raises(ValueError, match="cannot be applied yet"):
        with applied("test_only_pending"):
            pass
    v = mutation.hunt(CATALOGUE["test_only_pending"])
    assert v.status == "pending" and not v.caught and "waits for" in v.how
    assert "1 pending" in mutation.summary([v], 0.0)


def test_cli_a_pending_mutant_makes_the_verdict_incomplete(temp_mutant, capsys):
    temp_mutant("test_only_pending", pending="waits for something")
    assert verify.main(["--mutants", "test_only_pending"]) == 2
    out = capsys.readouterr().out
    assert "incomplete: 1 protection(s) declared but not shown necessary" in out
    assert "test_only_pending" in out
    # the near-miss: a caught mutant alone is a complete verdict
    assert verify.main(["--mutants", "tdp_plain_store"]) == 0
    assert "incomplete" not in capsys.readouterr().out


def test_cli_exit_status_missed_and_caught(temp_mutant, capsys):
    temp_mutant("test_only_unused")  # weakens nothing: every scenario still passes
    assert verify.main(["--mutants", "test_only_unused", "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert "MISSED" in out and "0/1 mutants caught" in out
    assert verify.main(["--mutants", "--json", "tdp_plain_store"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec[0]["status"] == "caught" and rec[0]["scenario"] == "tdp_mmu.install_race.correct"
    assert rec[0]["how"].startswith("assertion")


def test_cli_list_and_bad_name(capsys):
    assert verify.main(["--mutants", "--list"]) == 0
    out = capsys.readouterr().out
    assert "fast_pf_plain_store" in out and "kvmlock/kvm/mmu/fast_pf.py:" in out
    assert verify.main(["--mutants", "no_such_mutant"]) == 2
    assert "no mutant named 'no_such_mutant'" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "scenario"), [
    ("usage_without_lock", "hardware.two_creators.kvm_lock.correct"),
    ("mn_count_without_lock", "mmu_notifier.two_invalidations_vs_update.correct"),
    ("shadow_fault_read_lock", "shadow.rmap_race.correct"),
])
def test_missing_lock_is_a_lost_update_even_without_lockdep(name, scenario):
    """Counters and lists change in visible steps: with lockdep off, the consequence itself
    (an update lost) is what the scenario sees."""
    sc = SCENARIOS[scenario]
    with applied(name):
        out = verify.run_scenario(
            Scenario(sc.name, sc.rule, sc.variant, sc.expect, sc.body, sc.invariant,
                     sc.strategy, {**sc.options, "lockdep": False}), timeout=60)
    assert out.failure is not None and out.failure.kind in ("assertion", "deadlock"), out.result
