"""Each rule kind: a small kvmlock.sync program that breaks it is caught, the fixed one is not.

The programs run on real threads inside ``lockdep.isolated()``; the checker reads the graph
lockdep recorded (``spec.snapshot()`` adds the chain cache: held-together locks, and the edges
lockdep refused because they closed a cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from spec_helpers import rules_doc

from kvmlock import lockdep, spawn, spec
from kvmlock.spec.graphview import snapshot
from kvmlock.sync import SRCU, Mutex, RWLock, SpinLock, rcu_read_lock

DOC = spec.parse(rules_doc(
    "kvm->lock is taken outside vcpu->mutex",
    "Memslot updates wait with kvm->slots_lock held, so MMU notifiers must not take\n"
    "  kvm->slots_lock.",
    "kvm->arch.tdp_mmu_pages_lock is taken inside kvm->arch.mmu_lock, and cannot be\n"
    "  taken without already holding kvm->arch.mmu_lock.",
    "``synchronize_srcu(&kvm->srcu)`` is called inside critical sections for\n"
    "  kvm->slots_lock.",
    "kvm->slots_arch_lock instead is released before the call to\n"
    "  ``synchronize_srcu()``.  It can therefore be taken inside a kvm->srcu\n"
    "  read-side critical section.",
    "kvm->mn_invalidate_lock is a leaf",
    "kvm->arch.mmu_lock is an rwlock",
    reference="``kvm_lock``\n^^^^^^^^^^^^\n\n:Type: mutex\n",
), source="rules.rst")


class Locks:
    """The program's locks, built inside the isolated lockdep state."""

    def __init__(self, mmu_kind: type = RWLock, kvm_lock_kind: type = Mutex) -> None:
        self.kvm_lock_ = Mutex("kvm->lock")
        self.vcpu_mutex = Mutex("vcpu->mutex")
        self.slots_lock = Mutex("kvm->slots_lock")
        self.slots_arch_lock = Mutex("kvm->slots_arch_lock")
        self.srcu = SRCU("kvm->srcu")
        self.mmu_lock = mmu_kind("kvm->mmu_lock")
        self.tdp = SpinLock("kvm->arch.tdp_mmu_pages_lock")
        self.mn_invalidate_lock = SpinLock("kvm->mn_invalidate_lock")
        self.notifier = lockdep.LockMap("mmu_notifier_invalidate_range_start", "pseudo")
        self.global_kvm_lock = kvm_lock_kind("kvm_lock")
        self.irq_lock = Mutex("kvm->irq_lock")


def run(*bodies: Callable[[Locks], None], **kinds: type) -> spec.GraphView:
    """Run each body on its own thread, one after another; return the graph they left."""
    with lockdep.isolated():
        locks = Locks(**kinds)
        for body in bodies:
            spawn(body, locks).join()
        return snapshot()


def result(graph: spec.GraphView, kind: str, outer: str = "") -> spec.RuleResult:
    conf = spec.check(DOC, graph)
    [r] = [r for r in conf.results
           if r.rule.kind == kind and (not outer or outer in (r.rule.outer, r.rule.inner))]
    return r


# --------------------------------------------------------------------------- order


def test_order_broken_is_caught_with_the_users_line() -> None:
    def body(k: Locks) -> None:
        with k.vcpu_mutex:
            with k.kvm_lock_:
                pass

    r = result(run(body), "order", "vcpu->mutex")
    assert r.status == "violated"
    assert [(e.src, e.dst) for e in r.path] == [("vcpu->mutex", "kvm->lock")]
    assert "test_spec_check.py:" in r.where


def test_order_fixed_is_held() -> None:
    def body(k: Locks) -> None:
        with k.kvm_lock_:
            with k.vcpu_mutex:
                pass

    r = result(run(body), "order", "vcpu->mutex")
    assert r.status == "held" and r.path[0].src == "kvm->lock"


def test_order_broken_through_a_third_lock() -> None:
    def one(k: Locks) -> None:
        with k.vcpu_mutex:
            with k.irq_lock:
                pass

    def two(k: Locks) -> None:
        with k.irq_lock:
            with k.kvm_lock_:
                pass

    r = result(run(one, two), "order", "vcpu->mutex")
    assert r.status == "violated"
    assert [(e.src, e.dst) for e in r.path] == [("vcpu->mutex", "kvm->irq_lock"),
                                                ("kvm->irq_lock", "kvm->lock")]


def test_path_through_two_rwlock_readers_is_not_a_dependency() -> None:
    # vcpu->mutex -> mmu_lock(read) and mmu_lock(read) -> kvm->lock: readers of an rwlock_t
    # never wait for each other, so this is no path from vcpu->mutex to kvm->lock
    def one(k: Locks) -> None:
        with k.vcpu_mutex:
            with k.mmu_lock.read():
                pass

    def two(k: Locks) -> None:
        with k.mmu_lock.read():
            with k.kvm_lock_:
                pass

    assert result(run(one, two), "order", "vcpu->mutex").status == "not exercised"

    def one_writer(k: Locks) -> None:
        with k.vcpu_mutex:
            with k.mmu_lock.write():
                pass

    assert result(run(one_writer, two), "order", "vcpu->mutex").status == "violated"


# --------------------------------------------------------------------------- must not take


def test_forbidden_broken_is_caught() -> None:
    def body(k: Locks) -> None:
        with k.notifier:
            with k.slots_lock:
                pass

    r = result(run(body), "forbidden")
    assert r.status == "violated"
    assert r.path[0].src == "mmu_notifier_invalidate_range_start"


def test_forbidden_fixed_is_held() -> None:
    def body(k: Locks) -> None:
        with k.notifier:
            with k.mmu_lock.write():
                pass

    assert result(run(body), "forbidden").status == "held"


# --------------------------------------------------------------------------- requires


def test_requires_broken_is_caught() -> None:
    def body(k: Locks) -> None:
        with k.tdp:  # without mmu_lock
            pass

    r = result(run(body), "requires")
    assert r.status == "violated" and "holding nothing" in r.detail


def test_requires_fixed_is_held() -> None:
    def body(k: Locks) -> None:
        with k.mmu_lock.read():
            with k.tdp:
                pass

    assert result(run(body), "requires").status == "held"


def test_requires_without_chains_is_unchecked_not_passed() -> None:
    def body(k: Locks) -> None:
        with k.tdp:
            pass

    g = run(body)
    g.chains = None  # a graph saved without chains
    assert result(g, "requires").status == "unchecked"


# --------------------------------------------------------------------------- SRCU


def test_srcu_sync_inside_broken_is_caught() -> None:
    def sync_under_slots_lock(k: Locks) -> None:
        with k.slots_lock:
            k.srcu.synchronize()

    def slots_lock_in_read_side(k: Locks) -> None:
        with k.srcu.read():
            with k.slots_lock:
                pass

    r = result(run(sync_under_slots_lock, slots_lock_in_read_side), "srcu_sync_inside")
    assert r.status == "violated"
    assert (r.path[0].src, r.path[0].src_read, r.path[0].dst) == ("kvm->srcu", 2,
                                                                   "kvm->slots_lock")


def test_srcu_sync_inside_fixed_is_held() -> None:
    def sync_under_slots_lock(k: Locks) -> None:
        with k.slots_lock:
            k.srcu.synchronize()

    def reader(k: Locks) -> None:
        with k.srcu.read():
            with k.slots_arch_lock:
                pass

    r = result(run(sync_under_slots_lock, reader), "srcu_sync_inside")
    assert r.status == "held"
    assert (r.path[-1].dst, r.path[-1].dst_read) == ("kvm->srcu", 0)


def test_srcu_read_ok_broken_is_caught() -> None:
    def sync_under_arch_lock(k: Locks) -> None:
        with k.slots_arch_lock:
            k.srcu.synchronize()

    r = result(run(sync_under_arch_lock), "srcu_read_ok")
    assert r.status == "violated"
    assert [(e.src, e.dst, e.dst_read) for e in r.path] == [
        ("kvm->slots_arch_lock", "kvm->srcu", 0)]


def test_srcu_read_ok_fixed_is_held() -> None:
    def arch_lock_in_read_side(k: Locks) -> None:
        with k.srcu.read():
            with k.slots_arch_lock:
                pass

    def sync_after_release(k: Locks) -> None:
        with k.slots_arch_lock:
            pass
        k.srcu.synchronize()

    r = result(run(arch_lock_in_read_side, sync_after_release), "srcu_read_ok")
    assert r.status == "held"


# --------------------------------------------------------------------------- leaf


def test_leaf_broken_is_caught() -> None:
    def body(k: Locks) -> None:
        with k.mn_invalidate_lock:
            with k.tdp:
                pass

    r = result(run(body), "leaf")
    assert r.status == "violated" and r.path[0].dst == "kvm->arch.tdp_mmu_pages_lock"


def test_leaf_fixed_is_held() -> None:
    def body(k: Locks) -> None:
        with k.tdp:
            with k.mn_invalidate_lock:
                pass

    assert result(run(body), "leaf").status == "held"


# --------------------------------------------------------------------------- types


def test_type_sentence_broken_and_fixed() -> None:
    def body(k: Locks) -> None:
        with k.mmu_lock:
            pass

    r = result(run(body, mmu_kind=Mutex), "type")
    assert r.status == "violated" and "mutex" in r.detail

    def reader(k: Locks) -> None:
        with k.mmu_lock.read():
            pass

    assert result(run(reader), "type").status == "held"


def test_reference_types_are_checked() -> None:
    def body(k: Locks) -> None:
        with k.global_kvm_lock:
            pass

    bad = spec.check(DOC, run(body, kvm_lock_kind=SpinLock))
    [t] = bad.types
    assert (t.entry.name, t.actual, t.status) == ("kvm_lock", "spinlock", "violated")
    assert not bad.ok
    good = spec.check(DOC, run(body))
    assert good.types[0].status == "held"


# --------------------------------------------------------------------------- whole verdicts


def test_undocumented_locks_are_listed() -> None:
    def body(k: Locks) -> None:
        private = Mutex("driver->private_lock")
        with k.kvm_lock_:
            with private:
                pass

    conf = spec.check(DOC, run(body))
    assert ("driver->private_lock", "mutex") in conf.undocumented


def test_the_rcu_read_side_is_no_undocumented_lock() -> None:
    """rcu_read_lock is every RCU reader's pseudo-lock, not the program's: taken under a
    documented lock it is not listed, while a lock of the program's taken beside it is."""
    def body(k: Locks) -> None:
        private = Mutex("driver->private_lock")
        with k.kvm_lock_, rcu_read_lock():
            with private:
                pass

    conf = spec.check(DOC, run(body))
    assert [n for n, _ in conf.undocumented] == ["driver->private_lock"]


def test_empty_run_exercises_nothing_and_cannot_pass_what_it_cannot_check() -> None:
    conf = spec.check(DOC, lockdep.DepGraph())
    assert {r.status for r in conf.results} <= {"not exercised", "unchecked"}
    # no violation, but the "requires" rules need held-lock chains this graph lacks
    assert not conf.violations and not conf.complete and not conf.ok
    assert any("could not be checked" in why for why in conf.incomplete)
    # with chains every rule can be checked, but an empty run checks none of them: not OK
    with_chains = spec.check(DOC, spec.view({"classes": {}, "edges": [], "chains": []}))
    assert not with_chains.violations and not with_chains.ok
    assert [why for why in with_chains.incomplete if "was exercised" in why]
    # near miss: a run that exercises one rule and breaks none is OK
    one = spec.check(DOC, spec.view({"classes": {"kvm->lock": "mutex", "vcpu->mutex": "mutex"},
                                     "edges": [["kvm->lock", "vcpu->mutex"]], "chains": []}))
    assert one.ok and one.complete, one.incomplete


def test_nested_subclass_is_not_a_self_dependency() -> None:
    other = Mutex  # two vCPUs' mutexes nested on purpose with a subclass annotation

    def body(k: Locks) -> None:
        second = other("vcpu->mutex")
        with k.kvm_lock_:
            with k.vcpu_mutex:
                with second.nested(1):
                    pass

    conf = spec.check(DOC, run(body))
    assert conf.ok
    assert all(e.src != e.dst for r in conf.results for e in r.path)


def test_saved_graph_round_trip(tmp_path: Path) -> None:
    def body(k: Locks) -> None:
        with k.vcpu_mutex:
            with k.kvm_lock_:
                pass

    g = run(body)
    spec.save_graph(g, tmp_path / "g.json")
    again = spec.load_graph(tmp_path / "g.json")
    assert again.edges == g.edges and again.chains == g.chains
    assert result(again, "order", "vcpu->mutex").status == "violated"


def test_lockdep_depgraph_json_is_accepted(tmp_path: Path) -> None:
    with lockdep.isolated():
        a, b = Mutex("kvm->lock"), Mutex("vcpu->mutex")
        with b:
            with a:
                pass
        text = lockdep.graph().to_json()
    (tmp_path / "dep.json").write_text(text)
    assert result(spec.load_graph(tmp_path / "dep.json"), "order", "vcpu->mutex").status == \
        "violated"


@pytest.mark.parametrize("bad, message", [
    ("[1, 2]", "'classes' and 'edges'"),
    ('{"classes": {}, "edges": [{"src": "a"}]}', "edge #0"),
    ("not json", "not a saved dependency graph"),
])
def test_bad_saved_graph_is_a_clear_error(tmp_path: Path, bad: str, message: str) -> None:
    p = tmp_path / "g.json"
    p.write_text(bad)
    with pytest.raises(spec.SpecError, match=message):
        spec.load_graph(p)


def test_check_rejects_wrong_arguments() -> None:
    with pytest.raises(TypeError, match="Spec from spec.load"):
        spec.check("doc.rst", lockdep.DepGraph())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DepGraph"):
        spec.check(DOC, 42)


def test_arch_filter_skips_other_architectures_rules() -> None:
    doc = spec.parse(
        "T\n=\n\nAcquisition Orders\n------------------\n\n"
        "- kvm->lock is taken outside vcpu->mutex\n\nOn x86:\n\n"
        "- vcpu->mutex is taken outside kvm->arch.hyperv.hv_lock\n"
    )

    def body(k: Locks, general: bool = True) -> None:
        hv = Mutex("kvm->arch.hyperv.hv_lock")
        with hv:
            with k.vcpu_mutex:
                pass
        if general:
            with k.kvm_lock_:
                with k.vcpu_mutex:
                    pass

    g = run(body)
    assert not spec.check(doc, g).ok
    assert not spec.check(doc, g, arch="x86").ok
    only_general = spec.check(doc, g, arch="arm64")
    assert only_general.ok and [r.rule.arch for r in only_general.results] == [""]
    # without the general rule's nesting the arm64 check has nothing left to check: not OK
    idle = spec.check(doc, run(lambda k: body(k, general=False)), arch="arm64")
    assert not idle.ok and not idle.violations and not idle.complete


def test_an_order_implied_by_a_chain_is_checked_only_when_broken() -> None:
    doc = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex",
                               "vcpu->mutex is taken outside kvm->arch.hyperv.hv_lock"),
                     source="chain.rst")
    from kvmlock.spec.check import implied_orders

    [implied] = implied_orders(doc)
    assert (implied.outer, implied.inner) == ("kvm->lock", "kvm->arch.hyperv.hv_lock")
    assert "implied by lines" in implied.describe()
    with lockdep.isolated():
        hv, kvm = Mutex("kvm->arch.hyperv.hv_lock"), Mutex("kvm->lock")
        with hv, kvm:  # never through vcpu->mutex: only the chain forbids it
            pass
        bad = spec.check(doc, snapshot())
    [v] = bad.violations
    assert v.rule.key == implied.key and [(e.src, e.dst) for e in v.path] == [
        ("kvm->arch.hyperv.hv_lock", "kvm->lock")]
    with lockdep.isolated():
        hv, kvm = Mutex("kvm->arch.hyperv.hv_lock"), Mutex("kvm->lock")
        with kvm, hv:  # the chain's own direction: nothing extra is reported
            pass
        good = spec.check(doc, snapshot())
    assert good.violations == [] and all(r.rule.key != implied.key for r in good.results)
