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


# --------------------------------------------------------------------------- Protects fields


def _protects(text: str, lock: str) -> list[str]:
    entry = spec.parse(text).ref(lock)
    return entry.protects if entry is not None else []


def test_protects_fields_list_every_declaration_of_the_model_under_its_lock():
    from kvmlock.kvm.locks import model_protects

    declared = model_protects()
    assert {p.declared for p in declared} == {"guarded_by", "read side", "update side"}
    doc = model_spec()
    for p in declared:
        items = doc.ref(p.lock).protects
        assert any(i == p.item or i.startswith(p.item + ": ") for i in items), (p, items)
    # kvm->srcu protects the pointers' reads; slots_lock and kvm->lock their updates
    assert doc.ref("kvm->srcu").protects == ["kvm->arch.msr_filter", "kvm->memslots",
                                             "kvm->buses"]
    assert doc.ref("kvm->slots_lock").protects == ["kvm->memslots updates",
                                                   "kvm->buses updates"]


def test_every_guarded_field_of_the_model_is_found_by_the_declaration_walk():
    """A field declared on a class the walk never reaches would be missing from the render."""
    import importlib
    import inspect
    import pkgutil

    import kvmlock.kvm
    from kvmlock.kvm.locks import model_protects
    from kvmlock.sync import guarded_by

    fields = set()
    for mod in pkgutil.walk_packages(kvmlock.kvm.__path__, "kvmlock.kvm."):
        for _name, klass in inspect.getmembers(importlib.import_module(mod.name),
                                               inspect.isclass):
            if klass.__module__ == mod.name:
                fields |= {d.data for d in vars(klass).values() if isinstance(d, guarded_by)}
    assert len(fields) >= 9, fields
    assert fields <= {p.data for p in model_protects()}


def test_a_declaration_moved_to_another_lock_moves_its_protects_line(monkeypatch):
    from kvmlock.kvm.machine import Machine
    from kvmlock.sync import guarded_by

    before = render_model_doc()
    assert "vm_list" in _protects(before, "kvm_lock")
    moved = guarded_by("usage_lock")
    moved.__set_name__(Machine, "vm_list")
    monkeypatch.setattr(Machine, "vm_list", moved)
    after = render_model_doc()
    assert after != model_doc_text()
    assert "vm_list" not in _protects(after, "kvm_lock")
    assert {"kvm_usage_count", "vm_list"} <= set(_protects(after, "kvm_usage_lock"))


def test_a_declaration_removed_or_an_rcu_side_changed_shows_in_the_render(monkeypatch):
    from kvmlock.kvm import vm as vm_mod
    from kvmlock.kvm.machine import Machine
    from kvmlock.sync import RcuPointer

    monkeypatch.delattr(Machine, "vm_list")  # a plain attribute now: nothing declares it
    out = render_model_doc()
    assert out != model_doc_text()
    assert "vm_list" not in _protects(out, "kvm_lock")

    monkeypatch.undo()

    class Unlocked(RcuPointer):  # the bus published without naming its update side
        __slots__ = ()

        def __init__(self, value, name="", **kw):
            if name == "kvm->buses":
                kw.pop("update_side")
            super().__init__(value, name, **kw)

    monkeypatch.setattr(vm_mod, "RcuPointer", Unlocked)
    out = render_model_doc()
    assert _protects(out, "kvm->slots_lock") == ["kvm->memslots updates"]
    assert "kvm->buses" in _protects(out, "kvm->srcu")


def test_a_document_item_naming_declared_data_under_another_lock_is_not_kept():
    from kvmlock.spec.design import protects_of
    from kvmlock.spec.model import RefEntry

    declared = {"kvm_lock": ["vm_list"], "kvm->srcu": ["kvm->memslots"]}
    entry = RefEntry("kvm->irq_lock", "kvm->irq_lock", "mutex", ("mutex",),
                     protects=["vm_list", "interrupt routing", "kvm->memslots: the array",
                               "stale_field: gone", "the timekeeper"])
    assert protects_of(entry, declared) == ["interrupt routing", "the timekeeper"]
    mine = RefEntry("kvm_lock", "kvm_lock", "mutex", ("mutex",),
                    protects=["vm_list: every VM", "the set of VMs"])
    assert protects_of(mine, declared) == ["vm_list: every VM", "the set of VMs"]
