"""Splat dependencies judged against documents, explored as programs, and the command line."""

from __future__ import annotations

import json

import pytest
from splat_helpers import DOCS, FIXTURES, text

from kvmlock import spec
from kvmlock.splat import explore_splat, judge, read_log
from kvmlock.splat.cli import main

CURRENT, OLDER = DOCS / "current.rst", DOCS / "older.rst"


def _verdicts(name: str, doc) -> dict[tuple[str, str], str]:
    [sp] = read_log(text(name))
    return {(d.src, d.dst): d.verdict for d in judge(sp, spec.load(doc))}


def test_the_srcu_rule_reversal_moves_the_violation_to_the_other_link() -> None:
    new = _verdicts("xen_srcu_qp.eml", CURRENT)
    old = _verdicts("xen_srcu_qp.eml", OLDER)
    assert new == {("kvm->lock", "kvm->srcu"): "conforms", ("kvm->srcu", "kvm->lock"): "violated"}
    assert old == {("kvm->lock", "kvm->srcu"): "violated", ("kvm->srcu", "kvm->lock"): "conforms"}


def test_vcpu_mutex_outside_kvm_lock_is_a_violation_and_its_reverse_conforms() -> None:
    for doc in (CURRENT, OLDER):
        v = _verdicts("s390_tod_clock.dmesg", doc)
        assert v == {("kvm->lock", "vcpu->mutex"): "conforms",
                     ("vcpu->mutex", "kvm->lock"): "violated"}


def test_an_edge_no_rule_mentions_is_undocumented() -> None:
    v = _verdicts("nx_huge_pages.commit", CURRENT)
    assert v[("kvm->srcu", "cpu_hotplug_lock")] == "undocumented"
    assert v[("kvm_lock", "kvm->slots_lock")] == "violated"  # kvm_lock is a leaf
    assert v[("cpu_hotplug_lock", "kvm_lock")] == "conforms"
    assert v[("kvm->slots_lock", "kvm->srcu")] == "conforms"


def test_json_names_locks_as_the_document_does(capsys) -> None:
    rc = main([str(FIXTURES / "vendor_module_lock.commit"), "--json", "--doc", str(CURRENT)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert out["kind"] == "circular"
    assert out["acquiring"] == "kvm_lock"
    assert out["holding"] == ["cpus_read_lock()"]
    assert out["violations"] == ["kvm_lock -> cpus_read_lock()"]
    assert out["count"] == 1 and out["reports"][0]["kind"] == "circular"
    assert out["locks"]["acquiring"]["usage_decoded"]["hardirq"] == "irqs enabled"


def test_json_without_a_document_and_exit_codes(capsys, tmp_path) -> None:
    assert main([str(FIXTURES / "xen_srcu_qp.eml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["acquiring"] == "kvm->lock" and out["violations"] == []
    assert out["chain"][0]["sync"] is True
    assert main([str(FIXTURES / "max_lock_depth.nearmiss"), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["count"] == 0
    assert main([str(tmp_path / "missing.log")]) == 2
    assert "no such kernel log" in capsys.readouterr().err
    bad = tmp_path / "bad.rst"
    bad.write_text("just prose\n")
    assert main([str(FIXTURES / "xen_srcu_qp.eml"), "--doc", str(bad)]) == 2


def test_reads_standard_input(capsys, monkeypatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(text("gpc_bad_unlock.dmesg")))
    assert main(["-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "bad_unlock"


@pytest.mark.parametrize("name", ["s390_tod_clock.dmesg", "xen_srcu_qp.eml",
                                  "vendor_module_lock.commit", "nx_huge_pages.commit",
                                  "sev_recursive.eml"])
def test_explore_reproduces_each_deadlock(name: str) -> None:
    [sp] = read_log(text(name))
    out = explore_splat(sp, spec.load(CURRENT).declared_kinds())
    assert out.deadlock, out.explanation
    assert "CPU1" in out.table and "blocked" in out.table


def test_explore_explains_recursive_readers() -> None:
    [sp] = read_log(text("handmade_rwlock_readers.txt"))
    out = explore_splat(sp, {"kvm->mmu_lock": ("rwlock",)})
    assert not out.deadlock and out.complete
    assert "rwlock_t are recursive" in out.explanation
    # near miss: the same chain with kvm->mmu_lock a plain spinlock does deadlock
    assert explore_splat(sp, {"kvm->mmu_lock": ("spinlock",)}).deadlock


def test_explore_on_a_report_without_an_order() -> None:
    [sp] = read_log(text("gfn_to_memslot_rcu.syzbot"))
    out = explore_splat(sp)
    assert not out.deadlock and "no lock order" in out.explanation



@pytest.mark.parametrize("name", ["amd_iommu_hardirq.txt", "pvclock_irq_inversion.syzbot"])
def test_explore_reproduces_each_interrupt_deadlock(name: str) -> None:
    """Lockdep's unsafe scenario run as tasks: the irq-unsafe lock held with interrupts on,
    the irq-safe lock then the unsafe one on another CPU, an interrupt taking the safe one."""
    [sp] = read_log(text(name))
    out = explore_splat(sp)
    assert out.deadlock and out.complete, out.explanation
    assert "is interrupted by" in out.explanation and "<Interrupt>" in out.table
    [dep] = sp.dependencies()
    assert f"(interrupt taking {dep.src}) waits for: lock {dep.src}" in out.explanation
    # near miss: a document calling the unsafe lock a mutex makes the scenario impossible to
    # run (a handler cannot sleep); that is said, and the answer is incomplete, not "safe"
    out = explore_splat(sp, {dep.dst: ("mutex",)})
    assert not out.deadlock and not out.complete
    assert f"{dep.dst} would sleep in an interrupt handler" in out.explanation


def test_cli_text_and_explore(capsys) -> None:
    rc = main([str(FIXTURES / "xen_srcu_qp.eml"), "--doc", str(OLDER), "--explore"])
    got = capsys.readouterr().out
    assert rc == 1
    assert "kvm->lock -> kvm->srcu (synchronize)  [#1]  VIOLATED" in got
    assert "DEADLOCK reproduced" in got


def test_a_document_read_in_part_cannot_clear_a_splat(capsys) -> None:
    prose = str(DOCS / "prose.rst")
    assert main([str(FIXTURES / "s390_tod_clock.dmesg"), "--doc", prose, "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["violations"] == [] and out["complete"] is False
    assert out["document_incomplete"]


def test_names_follow_the_documents_spelling(tmp_path) -> None:
    from kvmlock.splat import spelling

    doc = spec.parse("Acquisition Orders\n------------------\n\n"
                     "- kvm->arch.mmu_lock is taken outside kvm->arch.tdp_mmu_pages_lock\n\n"
                     "Reference\n---------\n\n``kvm->mmu_lock``\n^^^^^^^^^^^^^^^^^\n\n"
                     ":Type: rwlock_t\n")
    spell = spelling(doc)
    assert spell("kvm->mmu_lock") == "kvm->mmu_lock"  # lockdep's own spelling, the doc uses it
    assert spell("kvm->arch.tdp_mmu_pages_lock") == "kvm->arch.tdp_mmu_pages_lock"
    assert spell("cpu_hotplug_lock") == "cpus_read_lock()"  # as locking.rst writes it
    assert spelling(spec.parse("Acquisition Orders\n------------------\n\n"
                               "- cpus_read_lock() is taken outside kvm_lock\n"))(
        "cpu_hotplug_lock") == "cpus_read_lock()"


def test_a_recursive_report_says_what_its_deadlock_assumes() -> None:
    """One class, two instances: the deadlock needs two tasks taking them in opposite orders,
    which the report alone cannot show; a circular report's deadlock assumes nothing."""
    [sp] = read_log(text("sev_recursive.eml"))
    out = explore_splat(sp)
    assert out.deadlock and "assumed: two instances of kvm->lock" in out.explanation
    assert "other_vm.kvm.lock" in out.table
    [circ] = read_log(text("s390_tod_clock.dmesg"))
    assert "assumed" not in explore_splat(circ).explanation
