"""Reading whole documents: both SRCU rule versions, Reference fields, malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_helpers import rules_doc

from kvmlock import spec


def by_kind(doc: spec.Spec, kind: str) -> set[tuple[str, str, str]]:
    return {(r.outer, r.inner, r.srcu) for r in doc.rules if r.kind == kind}


def test_current_document_srcu_rules(docs: Path) -> None:
    d = spec.load(docs / "current.rst")
    assert by_kind(d, "srcu_sync_inside") == {
        ("kvm->lock", "", "kvm->srcu"), ("vcpu->mutex", "", "kvm->srcu"),
        ("kvm->slots_lock", "", "kvm->srcu"),
    }
    assert by_kind(d, "srcu_read_ok") == {("kvm->srcu", "kvm->slots_arch_lock", "kvm->srcu")}
    assert not d.not_understood
    assert not spec.lint(d)


def test_older_document_srcu_rules(docs: Path) -> None:
    d = spec.load(docs / "older.rst")
    assert by_kind(d, "srcu_sync_inside") == {("kvm->slots_lock", "", "kvm->srcu")}
    assert by_kind(d, "srcu_read_ok") == {
        ("kvm->srcu", "kvm->slots_arch_lock", "kvm->srcu"),
        ("kvm->srcu", "kvm->lock", "kvm->srcu"),
    }
    # the advice sentence about call_srcu is no rule form: it is listed, with its line
    [u] = d.not_understood
    assert "call_srcu" in u.text
    assert "call_srcu" in (docs / "older.rst").read_text().splitlines()[u.line - 1] or \
        "call_srcu" in (docs / "older.rst").read_text().splitlines()[u.line]


def test_reference_fields_multiline_and_bullets(docs: Path) -> None:
    d = spec.load(docs / "current.rst")
    usage = d.ref("kvm_usage_lock")
    assert usage is not None
    assert usage.protects == ["kvm_usage_count", "turning virtualization on and off"]
    assert usage.comment == ("Lets the enable path take cpus_read_lock() while the usage count "
                             "is stable.")
    arch_lock = d.ref("kvm->slots_arch_lock")
    assert arch_lock is not None and arch_lock.arch.startswith("any")
    assert arch_lock.protects == [
        "memslot fields private to the architecture, written while kvm->srcu readers may be "
        "running."
    ]
    tsc = d.ref("kvm->arch.tsc_write_lock")  # spelled kvm_arch::tsc_write_lock in the heading
    assert tsc is not None and tsc.spelled == "kvm_arch::tsc_write_lock"
    assert tsc.kinds == ("raw_spinlock",)
    mmu = d.ref("kvm->mmu_lock")
    assert mmu is not None and mmu.kinds == ("spinlock", "rwlock")
    assert d.ref("kvm->srcu").kinds == ("srcu",)  # "srcu lock"
    vendor = d.ref("vendor_module_lock")
    assert vendor is not None and vendor.comment.endswith("take under cpus_read_lock().")


def test_older_name_maps_to_current_class(docs: Path) -> None:
    d = spec.load(docs / "older.rst")
    e = d.ref("wakeup_vcpus_on_cpu_lock")
    assert e is not None and e.spelled == "blocked_vcpu_on_cpu_lock"


# --------------------------------------------------------------------------- malformed


def _error(text: str) -> spec.SpecError:
    with pytest.raises(spec.SpecError) as info:
        spec.parse(text)
    return info.value


def test_bad_rst_names_its_line() -> None:
    text = rules_doc("kvm->lock is taken outside vcpu->mutex") + "\n.. no-such-directive:: x\n"
    err = _error(text)
    assert err.line == text.splitlines().index(".. no-such-directive:: x") + 1
    assert "not valid reStructuredText" in str(err) and "no-such-directive" in str(err)


def test_reference_entry_without_type() -> None:
    ref = "``kvm_lock``\n^^^^^^^^^^^^\n\n:Arch: any\n:Protects: vm_list\n"
    text = rules_doc("kvm->lock is taken outside vcpu->mutex", reference=ref)
    err = _error(text)
    assert "``kvm_lock`` has no :Type: field" in str(err)
    assert text.splitlines()[err.line - 1] == "``kvm_lock``"


def test_reference_entry_with_unknown_type() -> None:
    ref = "``kvm_lock``\n^^^^^^^^^^^^\n\n:Arch: any\n:Type: semaphore_t\n"
    text = rules_doc("kvm->lock is taken outside vcpu->mutex", reference=ref)
    err = _error(text)
    assert "unknown lock type 'semaphore_t'" in str(err)
    assert text.splitlines()[err.line - 1] == ":Type: semaphore_t"


def test_field_list_under_a_broken_heading() -> None:
    ref = "``kvm_lock``\n^^^\n:Type: mutex\n"  # underline too short: not a heading at all
    err = _error(rules_doc("kvm->lock is taken outside vcpu->mutex", reference=ref))
    assert err.line is not None and "heading" in str(err)


def test_not_a_locking_document() -> None:
    err = _error("Title\n=====\n\nJust some text.\n")
    assert err.line == 1 and "Acquisition Orders" in str(err)


def test_unknown_field_is_a_warning_not_silence() -> None:
    ref = "``kvm_lock``\n^^^^^^^^^^^^\n\n:Type: mutex\n:Owner: nobody\n"
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex", reference=ref))
    assert any(":Owner:" in w for w in d.warnings)


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(spec.SpecError, match="no such locking document"):
        spec.load(tmp_path / "missing.rst")
    with pytest.raises(TypeError, match="path or the document's text"):
        spec.load(42)  # type: ignore[arg-type]
    bad = tmp_path / "bad.rst"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(spec.SpecError, match="binary data"):
        spec.load(bad)
    bad.write_bytes(b"- caf\xe9 is a leaf\n")
    with pytest.raises(spec.SpecError, match="not UTF-8 text"):
        spec.load(bad)
