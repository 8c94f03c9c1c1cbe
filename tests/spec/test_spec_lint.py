"""Contradictions inside a document, each one found, and none in a consistent document."""

from __future__ import annotations

from pathlib import Path

from spec_helpers import rules_doc

from kvmlock import spec


def test_contradictions_are_found_with_their_lines(docs: Path) -> None:
    d = spec.load(docs / "contradictory.rst")
    found = {f.kind: f for f in spec.lint(d)}
    lines = (docs / "contradictory.rst").read_text().splitlines()

    cycle = found["cycle"]
    assert "cpu_hotplug_lock" in cycle.message and "kvm_usage_lock" in cycle.message
    assert any("kvm_usage_lock is taken outside" in lines[n - 1] for n in cycle.lines)

    leaf = found["leaf"]
    assert "kvm->irq_lock is declared a leaf" in leaf.message
    assert "kvm->arch.xen.xen_lock" in leaf.message

    srcu = found["srcu"]
    assert "kvm->lock" in srcu.message and "read side" in srcu.message
    assert sorted(found) == ["cycle", "leaf", "srcu"]


def test_cycle_through_srcu_is_found() -> None:
    # a reader takes kvm->slots_arch_lock, which is taken outside kvm->lock, under which
    # synchronize_srcu runs: read side -> slots_arch_lock -> kvm->lock -> synchronize
    d = spec.parse(rules_doc(
        "kvm->slots_arch_lock is taken outside kvm->lock",
        "``synchronize_srcu(&kvm->srcu)`` is called inside critical sections for kvm->lock.",
        "kvm->slots_arch_lock can be taken inside a kvm->srcu read-side critical section.",
    ))
    [f] = spec.lint(d)
    assert f.kind == "cycle" and "kvm->srcu" in f.message


def test_forbidden_against_order_and_type_against_reference() -> None:
    d = spec.parse(rules_doc(
        "MMU notifiers are taken outside kvm->slots_lock",
        "MMU notifiers must not take kvm->slots_lock",
        "kvm->mmu_lock is a mutex",
        reference="``kvm->mmu_lock``\n^^^^^^^^^^^^^^^^^\n\n:Type: rwlock_t\n",
    ))
    assert sorted(f.kind for f in spec.lint(d)) == ["forbidden", "type"]


def test_older_srcu_rule_contradicts_the_orders(docs: Path) -> None:
    # The older rule let kvm->lock be taken inside the read side while synchronize_srcu runs
    # under kvm->slots_lock, which nests inside kvm->lock: read side -> kvm->lock ->
    # kvm->slots_lock -> synchronize_srcu waits for that read side. The rewrite of the rule
    # (synchronize_srcu under kvm->lock, kvm->lock never inside the read side) removes it.
    [f] = spec.lint(spec.load(docs / "older.rst"))
    assert f.kind == "cycle"
    assert f.nodes == {"kvm->lock", "kvm->slots_lock", "kvm->srcu"}


def test_consistent_documents_have_no_contradictions(docs: Path) -> None:
    assert spec.lint(spec.load(docs / "current.rst")) == []
    # a near miss: the same two locks ordered twice the same way is no cycle
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex",
                             "kvm->lock is taken outside vcpu->mutex and kvm->irq_lock"))
    assert spec.lint(d) == []


def test_near_misses_of_each_lint_check() -> None:
    d = spec.parse(rules_doc(
        "kvm->irq_lock is a leaf",
        "kvm->lock is taken outside kvm->irq_lock",  # nests the leaf, does not nest in it
        "MMU notifiers must not take kvm->slots_lock",
        "kvm->slots_lock is taken outside kvm->slots_arch_lock",  # unrelated to the notifier
        "``synchronize_srcu(&kvm->srcu)`` is called inside critical sections for kvm->lock.",
        "kvm->slots_arch_lock can be taken inside a kvm->srcu read-side critical section.",
        "kvm->mmu_lock is an rwlock",
        reference="``kvm->mmu_lock``\n^^^^^^^^^^^^^^^^^\n\n:Type: spinlock_t or rwlock_t\n",
    ))
    assert spec.lint(d) == []
