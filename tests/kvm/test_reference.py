"""The model's locking document cannot drift from the model: one source for every lock fact."""

import pytest

from kvmlock import spec
from kvmlock.kvm.locks import model_doc_text, model_locks
from kvmlock.spec.design import model_spec, render_model_doc


def test_the_shipped_document_is_what_render_writes_from_the_model():
    assert render_model_doc() == model_doc_text()


def test_every_lock_the_model_builds_is_documented_with_its_kind_and_nothing_else():
    built = model_locks()
    assert len(built) >= 18, built
    doc = model_spec()
    assert sorted(e.name for e in doc.reference) == sorted(built)
    for e in doc.reference:
        assert e.kinds == (built[e.name],), e.name
        assert e.protects and all(p for p in e.protects), f"{e.name}: say what it protects"
        assert e.comment, f"{e.name}: say why it is this kind of lock"


def test_render_catches_a_kind_the_model_changed_and_a_lock_it_added_or_dropped():
    built = model_locks()
    changed = {**built, "kvm->arch.tsc_write_lock": "spinlock"}
    out = render_model_doc(changed)
    assert out != model_doc_text()
    assert spec.parse(out).ref("kvm->arch.tsc_write_lock").kinds == ("spinlock",)
    added = render_model_doc({**built, "kvm->arch.config_lock": "mutex"})
    assert "``kvm->arch.config_lock``" in added and "not documented" in added
    dropped = dict(built)
    del dropped["kvm->arch.xen.xen_lock"]
    assert "xen_lock``\n" not in render_model_doc(dropped)


def test_the_model_document_has_no_contradiction_and_reads_completely():
    doc = model_spec()
    assert spec.lint(doc) == []
    assert doc.not_understood == []
    assert doc.has_leaf_rule


def test_kvm_lock_is_not_a_leaf_but_tsc_write_lock_is():
    doc = model_spec()
    leaves = {r.outer for r in doc.rules if r.kind == "leaf"}
    orders = {(r.outer, r.inner) for r in doc.rules if r.kind == "order"}
    assert "kvm_lock" not in leaves
    assert ("kvm_lock", "kvm->arch.tsc_write_lock") in orders
    assert "kvm->arch.tsc_write_lock" in leaves
    forbidden = {(r.outer, r.inner) for r in doc.rules if r.kind == "forbidden"}
    assert ("kvm_lock", "kvm->slots_lock") in forbidden


@pytest.mark.parametrize("name", ["kvm->lock", "vcpu->mutex", "kvm->srcu"])
def test_known_kinds_for_documents_without_a_reference_come_from_the_model_document(name):
    from kvmlock.spec.names import kind_of

    assert kind_of(name) == model_locks()[name]
