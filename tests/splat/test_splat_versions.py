"""Public KVM splats judged against every version of the locking document, old and new.

The project ships no copy of Linux's locking.rst. ``tests/spec/docs/versions`` restates four
releases of it in the project's own words: the newest (synchronize_srcu under kvm->lock), the
6.3-era one (kvm->lock inside the kvm->srcu read side), the 5.4-era one (``:Name:`` Reference) and
4.x's ``locking.txt``. Point ``KVMLOCK_LOCKING_DOCS`` at a directory holding real copies under the
same names (``newest.rst``, ``v6.3.rst``, ``v5.4.rst``, ``v4.txt``) and every test below runs on
them too, and checks that each restatement states exactly the rules of the real file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from splat_helpers import DOCS, FIXTURES, text

from kvmlock import spec
from kvmlock.splat import explore_splat, read_log
from kvmlock.splat.cli import main

VERSIONS = {"newest": "newest.rst", "6.3": "v6.3.rst", "5.4": "v5.4.rst", "4.x": "v4.txt"}
RESTATED = DOCS / "versions"
REAL = os.environ.get("KVMLOCK_LOCKING_DOCS")
SOURCES = [pytest.param("restated"),
           pytest.param("real", marks=pytest.mark.skipif(
               not REAL, reason="KVMLOCK_LOCKING_DOCS does not name real copies of locking.rst"))]

ALL = tuple(VERSIONS)
SRCU_NEW, SRCU_OLD = "kvm->srcu -> kvm->lock", "kvm->lock -> kvm->srcu"

# fixture -> kind, acquiring, every held lock, {versions: violations}; the names are the
# document's spelling (cpu_hotplug_lock is cpus_read_lock()).
EXPECTED: dict[str, tuple[str, str | None, list[str], dict[tuple[str, ...], list[str]]]] = {
    # vcpu->mutex inside kvm->lock is documented since the first release
    "s390_tod_clock.dmesg": ("circular", "kvm->lock", ["vcpu->mutex", "kvm->srcu"],
                             {ALL: ["vcpu->mutex -> kvm->lock"]}),
    # the SRCU rule: reversed between 6.3 and the newest; absent before
    "xen_srcu_qp.eml": ("circular", "kvm->lock", ["vcpu->mutex", "kvm->srcu"],
                        {("newest",): [SRCU_NEW], ("6.3",): [SRCU_OLD], ("5.4", "4.x"): []}),
    # kvm_lock is a leaf from 5.4 on; in 4.x it was a spinlock that nests kvm->mmu_lock
    "vendor_module_lock.commit": ("circular", "kvm_lock", ["cpus_read_lock()"],
                                  {("newest", "6.3", "5.4"): ["kvm_lock -> cpus_read_lock()"],
                                   ("4.x",): []}),
    "nx_huge_pages.commit": ("circular", "kvm->slots_lock", ["kvm_lock"],
                             {("newest", "6.3", "5.4"): ["kvm_lock -> kvm->slots_lock"],
                              ("4.x",): []}),
    # two VMs' kvm->lock: one class, so no order between instances to judge
    "sev_recursive.eml": ("recursive", "kvm->lock", ["kvm->lock"], {ALL: []}),
    "gpc_bad_unlock.dmesg": ("bad_unlock", "gpc->refresh_lock", ["vcpu->mutex", "kvm->srcu"],
                             {ALL: []}),
    "gfn_to_memslot_rcu.syzbot": ("suspicious_rcu", None, ["kvm->lock"], {ALL: []}),
    "arm64_invalid_wait.dmesg": ("invalid_wait", "mmu->fault_ranges_mutex",
                                 ["vcpu->mutex", "kvm->srcu", "kvm->mmu_lock", "rcu_read_lock"],
                                 {ALL: []}),
    "s390_invalid_wait_wrapped.eml": ("invalid_wait", "vcpu->arch.local_int.lock",
                                      ["vcpu->mutex", "kvm->srcu", "kvm->arch.float_int.lock"],
                                      {ALL: []}),
    "pvclock_irq_inversion.syzbot": ("irq_inversion", "kvm->arch.pvclock_gtod_sync_lock",
                                     ["rq->lock"], {ALL: []}),
}
CIRCULAR = ["s390_tod_clock.dmesg", "xen_srcu_qp.eml", "vendor_module_lock.commit",
            "nx_huge_pages.commit", "sev_recursive.eml"]


def _doc(source: str, version: str) -> Path:
    return (RESTATED if source == "restated" else Path(REAL or ".")) / VERSIONS[version]


def _violations(name: str, version: str) -> list[str]:
    [got] = [v for versions, v in EXPECTED[name][3].items() if version in versions]
    return got


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_kvm_splat_against_each_version(name: str, version: str, source: str,
                                            capsys) -> None:
    kind, acquiring, holding, _ = EXPECTED[name]
    rc = main([str(FIXTURES / name), "--json", "--doc", str(_doc(source, version))])
    out = json.loads(capsys.readouterr().out)
    assert (out["kind"], out["acquiring"], out["holding"]) == (kind, acquiring, holding)
    assert out["violations"] == _violations(name, version)
    assert out["complete"] is True and out["document_incomplete"] == []
    # memslots read without kvm->srcu: every version's Reference protects them with it
    rcu = out.get("protected_data", {}).get("verdict") == "violated"
    assert rcu == (kind == "suspicious_rcu")
    assert rc == (1 if out["violations"] or rcu else 0)


@pytest.mark.parametrize("source", SOURCES)
def test_the_srcu_reversal_between_real_versions(source: str, capsys) -> None:
    """synchronize_srcu under kvm->lock, and kvm->lock inside the read side: the newer rule is
    broken by the second, the older rule by the first; before 6.3 neither is documented."""
    [sp] = read_log(text("xen_srcu_qp.eml"))
    sync = next(lk for lk in sp.chain if lk.lock.sync)
    assert (sync.lock.name, sync.where.split("+")[0]) == ("kvm->srcu", "kvm_create_vm")
    verdicts = {}
    for version in VERSIONS:
        main([str(FIXTURES / "xen_srcu_qp.eml"), "--json", "--doc", str(_doc(source, version))])
        deps = json.loads(capsys.readouterr().out)["dependencies"]
        verdicts[version] = {d["edge"]: d["verdict"] for d in deps}
    assert verdicts["newest"] == {SRCU_OLD: "conforms", SRCU_NEW: "violated"}
    assert verdicts["6.3"] == {SRCU_OLD: "violated", SRCU_NEW: "conforms"}
    assert verdicts["5.4"] == verdicts["4.x"] == {SRCU_OLD: "undocumented",
                                                  SRCU_NEW: "undocumented"}
    old, new = spec.load(_doc(source, "6.3")), spec.load(_doc(source, "newest"))
    [reversal] = [c for c in spec.diff(old, new).changes if c.kind == "reversed"]
    assert (reversal.old.kind, reversal.new.kind) == ("srcu_read_ok", "srcu_sync_inside")
    assert "kvm->srcu(read) -> kvm->lock" in reversal.meaning


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("name", CIRCULAR)
def test_each_circular_splat_deadlocks_under_each_versions_kinds(name: str, version: str,
                                                                source: str) -> None:
    [sp] = read_log(text(name))
    out = explore_splat(sp, spec.load(_doc(source, version)).declared_kinds())
    assert out.deadlock and out.complete, out.explanation
    assert "CPU2" in out.table and "blocked" in out.table


@pytest.mark.parametrize("source", SOURCES)
def test_the_document_kinds_decide_whether_readers_deadlock(source: str) -> None:
    """Both uses of kvm->mmu_lock are read_lock: an rwlock_t from 6.3 on (no deadlock, and why),
    a plain spinlock_t before (the cycle deadlocks)."""
    [sp] = read_log(text("handmade_rwlock_readers.txt"))
    for version in VERSIONS:
        out = explore_splat(sp, spec.load(_doc(source, version)).declared_kinds())
        if version in ("newest", "6.3"):
            assert not out.deadlock and out.complete
            assert "readers of an rwlock_t are recursive" in out.explanation
        else:
            assert out.deadlock, version


@pytest.mark.skipif(not REAL, reason="KVMLOCK_LOCKING_DOCS does not name real copies")
@pytest.mark.parametrize("version", list(VERSIONS))
def test_each_restatement_states_the_real_documents_rules(version: str) -> None:
    real, restated = spec.load(_doc("real", version)), spec.load(_doc("restated", version))
    assert [(r.key, r.arch) for r in restated.rules] == [(r.key, r.arch) for r in real.rules]
    assert restated.declared_kinds() == real.declared_kinds()
    assert not real.incomplete() and not restated.incomplete()
