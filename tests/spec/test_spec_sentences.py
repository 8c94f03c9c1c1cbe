"""Every rule sentence form the document has used, read into the right rules."""

from __future__ import annotations

import pytest
from spec_helpers import rules_doc

from kvmlock import spec


def kinds(doc: spec.Spec, kind: str) -> list[tuple[str, str, str]]:
    return [(r.outer, r.inner, r.srcu) for r in doc.rules if r.kind == kind]


def test_taken_outside() -> None:
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex"))
    assert kinds(d, "order") == [("kvm->lock", "vcpu->mutex", "")]
    assert not d.not_understood


def test_taken_outside_two_locks() -> None:
    d = spec.parse(rules_doc("kvm->lock is taken outside kvm->slots_lock and kvm->irq_lock"))
    assert kinds(d, "order") == [("kvm->lock", "kvm->slots_lock", ""),
                                 ("kvm->lock", "kvm->irq_lock", "")]


def test_taken_outside_with_rarity_note() -> None:
    d = spec.parse(rules_doc(
        "kvm->slots_lock is taken outside kvm->irq_lock, though acquiring\n"
        "  them together is quite rare."
    ))
    [r] = d.rules
    assert (r.kind, r.outer, r.inner) == ("order", "kvm->slots_lock", "kvm->irq_lock")
    assert "rare" in r.note


def test_taken_inside_and_cannot_be_taken_without() -> None:
    d = spec.parse(rules_doc(
        "kvm->arch.tdp_mmu_pages_lock and kvm->arch.mmu_unsync_pages_lock are taken\n"
        "  inside kvm->arch.mmu_lock, and cannot be taken without already holding\n"
        "  kvm->arch.mmu_lock (usually for read)."
    ))
    assert kinds(d, "order") == [("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock", ""),
                                 ("kvm->mmu_lock", "kvm->arch.mmu_unsync_pages_lock", "")]
    assert kinds(d, "requires") == [("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock", ""),
                                    ("kvm->mmu_lock", "kvm->arch.mmu_unsync_pages_lock", "")]


def test_critical_sections_must_also_take() -> None:
    d = spec.parse(rules_doc(
        "kvm->arch.mmu_lock is an rwlock; critical sections for\n"
        "  kvm->arch.tdp_mmu_pages_lock must also take kvm->arch.mmu_lock"
    ))
    assert kinds(d, "type") == [("kvm->mmu_lock", "", "")]
    assert d.rules[0].types == ("rwlock",)
    assert kinds(d, "requires") == [("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock", "")]


def test_must_not_take_either() -> None:
    d = spec.parse(rules_doc(
        "Memslot updates hold kvm->slots_lock and kvm->slots_arch_lock while they wait,\n"
        "  so MMU notifiers must not take either kvm->slots_lock or kvm->slots_arch_lock."
    ))
    assert kinds(d, "forbidden") == [
        ("mmu_notifier_invalidate_range_start", "kvm->slots_lock", ""),
        ("mmu_notifier_invalidate_range_start", "kvm->slots_arch_lock", ""),
    ]
    assert not d.not_understood


def test_synchronize_srcu_inside_critical_sections_for_list() -> None:
    d = spec.parse(rules_doc(
        "``synchronize_srcu(&kvm->srcu)`` is called inside critical sections\n"
        "  for kvm->lock, vcpu->mutex and kvm->slots_lock.  These locks _cannot_\n"
        "  be taken inside a kvm->srcu read-side critical section; that is, the\n"
        "  following is broken::\n\n      srcu_read_lock(&kvm->srcu);\n"
    ))
    assert kinds(d, "srcu_sync_inside") == [("kvm->lock", "", "kvm->srcu"),
                                            ("vcpu->mutex", "", "kvm->srcu"),
                                            ("kvm->slots_lock", "", "kvm->srcu")]
    assert not d.not_understood


def test_synchronize_srcu_inside_the_critical_section_older_form() -> None:
    d = spec.parse(rules_doc(
        "``synchronize_srcu(&kvm->srcu)`` is called _inside_\n"
        "  the kvm->slots_lock critical section, therefore kvm->slots_lock\n"
        "  cannot be taken inside a kvm->srcu read-side critical section."
    ))
    assert kinds(d, "srcu_sync_inside") == [("kvm->slots_lock", "", "kvm->srcu")]


def test_taken_inside_srcu_therefore_no_synchronize() -> None:
    d = spec.parse(rules_doc(
        "kvm->lock is taken inside kvm->srcu, therefore\n"
        "  ``synchronize_srcu(&kvm->srcu)`` cannot be called inside\n"
        "  a kvm->lock critical section."
    ))
    assert kinds(d, "srcu_read_ok") == [("kvm->srcu", "kvm->lock", "kvm->srcu")]
    assert not kinds(d, "order")  # an SRCU is not a lock to order against


def test_released_before_synchronize_two_sentence_form() -> None:
    # the first sentence names no SRCU: the only one the rules mention is meant
    d = spec.parse(rules_doc(
        "kvm->slots_arch_lock instead is released before the call to\n"
        "  ``synchronize_srcu()``.  It _can_ therefore be taken inside a\n"
        "  kvm->srcu read-side critical section, for example while handling an exit."
    ))
    assert kinds(d, "srcu_read_ok") == [("kvm->srcu", "kvm->slots_arch_lock", "kvm->srcu")]
    assert not d.not_understood


def test_released_before_synchronize_one_sentence_form() -> None:
    d = spec.parse(rules_doc(
        "Instead, kvm->slots_arch_lock is released before the call\n"
        "  to ``synchronize_srcu()`` and _can_ be taken inside a\n"
        "  kvm->srcu read-side critical section."
    ))
    assert kinds(d, "srcu_read_ok") == [("kvm->srcu", "kvm->slots_arch_lock", "kvm->srcu")]


@pytest.mark.parametrize("prose", [
    "Everything else is a leaf: no other lock is taken inside the critical\nsections.\n",
    "All other locks are leaves.\n", "Every other lock is a leaf.\n",
])
def test_everything_else_is_a_leaf(prose: str) -> None:
    d = spec.parse(rules_doc(
        "kvm->lock is taken outside vcpu->mutex",
        prose=prose,
        reference="``kvm_lock``\n^^^^^^^^^^^^\n\n:Type: mutex\n",
    ))
    leaves = sorted(r.outer for r in d.rules if r.kind == "leaf")
    # kvm->lock is on the outer side of a rule; vcpu->mutex and kvm_lock are not
    assert leaves == ["kvm_lock", "vcpu->mutex"]
    assert d.has_leaf_rule


def test_explicit_leaf_and_type() -> None:
    d = spec.parse(rules_doc("kvm->mn_invalidate_lock is a leaf",
                             "kvm->arch.tsc_write_lock is a raw_spinlock_t"))
    assert kinds(d, "leaf") == [("kvm->mn_invalidate_lock", "", "")]
    assert [r.types for r in d.rules if r.kind == "type"] == [("raw_spinlock",)]


def test_arch_sub_list_scopes_only_its_list() -> None:
    d = spec.parse(
        "T\n=\n\nAcquisition Orders\n------------------\n\n"
        "- kvm->lock is taken outside vcpu->mutex\n\nOn x86:\n\n"
        "- vcpu->mutex is taken outside kvm->arch.hyperv.hv_lock\n\n"
        "kvm->lock is taken outside kvm->irq_lock.\n"
    )
    arch = {(r.outer, r.inner): r.arch for r in d.rules}
    assert arch == {("kvm->lock", "vcpu->mutex"): "",
                    ("vcpu->mutex", "kvm->arch.hyperv.hv_lock"): "x86",
                    ("kvm->lock", "kvm->irq_lock"): ""}


def test_unknown_sentence_is_listed_with_its_line() -> None:
    text = rules_doc(
        "kvm->lock is taken outside vcpu->mutex",
        "Prefer call_srcu when the wait cannot be moved after kvm->lock is dropped.",
    )
    d = spec.parse(text)
    [u] = d.not_understood
    assert u.text.startswith("Prefer call_srcu")
    assert text.splitlines()[u.line - 1].startswith("- Prefer call_srcu")
    assert len(d.rules) == 1


def test_half_understood_sentence_is_not_silently_taken() -> None:
    # the rule clause is fine, but the second clause after ';' is not a rule form
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex; the reverse hangs"))
    assert not d.rules
    assert len(d.not_understood) == 1


def test_prose_outside_rules_sections_is_not_read() -> None:
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex") +
                   "\nNotes\n-----\n\nThis sentence is commentary, not a rule.\n")
    assert not d.not_understood


@pytest.mark.parametrize(
    "spelled, canonical",
    [
        ("cpus_read_lock()", "cpu_hotplug_lock"),
        ("kvm->arch.mmu_lock", "kvm->mmu_lock"),
        ("kvm_arch::tsc_write_lock", "kvm->arch.tsc_write_lock"),
        ("&kvm->srcu", "kvm->srcu"),
        ("MMU notifiers", "mmu_notifier_invalidate_range_start"),
        ("blocked_vcpu_on_cpu_lock", "wakeup_vcpus_on_cpu_lock"),
        ("kvm_vcpu::mutex", "vcpu->mutex"),
        ("kvm->lock", "kvm->lock"),
    ],
)
def test_alias_table(spelled: str, canonical: str) -> None:
    assert spec.normalise(spelled) == canonical


def test_bare_synchronize_srcu_means_the_srcu_the_document_named() -> None:
    d = spec.parse(rules_doc(
        "``synchronize_srcu(&dev->srcu)`` is called inside critical sections for dev->lock.",
        "dev->cfg_lock instead is released before the call to ``synchronize_srcu()``.",
    ))
    assert kinds(d, "srcu_read_ok") == [("dev->srcu", "dev->cfg_lock", "dev->srcu")]


def test_bare_synchronize_srcu_with_no_srcu_in_sight_is_not_understood() -> None:
    d = spec.parse(rules_doc(
        "dev->cfg_lock instead is released before the call to ``synchronize_srcu()``."))
    assert not d.rules and len(d.not_understood) == 1


@pytest.mark.parametrize("sentence", [
    "kvm->irq_lock is acquired after kvm->slots_lock, though few paths hold both",
    "kvm->irq_lock nests inside kvm->slots_lock, because both guard routing state",
    "kvm->irq_lock is taken under kvm->slots_lock, e.g. when routes change",
])
def test_any_order_form_with_a_remark_after_it(sentence: str) -> None:
    d = spec.parse(rules_doc(sentence))
    [r] = d.rules
    assert (r.kind, r.outer, r.inner) == ("order", "kvm->slots_lock", "kvm->irq_lock")
    assert r.note and not d.not_understood


def test_a_remark_that_names_a_lock_is_not_dropped() -> None:
    """Near miss: the trailing clause could add a condition about another lock, so the
    sentence stays unread (and the verdict incomplete) rather than half read."""
    d = spec.parse(rules_doc(
        "kvm->irq_lock is acquired after kvm->slots_lock, but never while holding kvm->lock"))
    assert d.rules == [] and d.incomplete()
