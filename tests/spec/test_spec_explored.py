"""Graphs from explored runs: each execution's snapshot, merged, checked like a thread run."""

from __future__ import annotations

from spec_helpers import rules_doc

from kvmlock import explore, spawn, spec
from kvmlock.sync import SRCU, Mutex

DOC = spec.parse(rules_doc(
    "``synchronize_srcu(&kvm->srcu)`` is called inside critical sections for kvm->lock.",
    "kvm->lock is taken outside vcpu->mutex",
))


def explored_graph(reader_takes_kvm_lock: bool) -> spec.GraphView:
    graphs: list[spec.GraphView] = []

    def body() -> None:
        kvm_lock, vcpu_mutex, srcu = Mutex("kvm->lock"), Mutex("vcpu->mutex"), SRCU("kvm->srcu")

        def ioctl() -> None:
            with kvm_lock:
                with vcpu_mutex:
                    pass
                srcu.synchronize()

        def vcpu_exit() -> None:
            with srcu.read():
                if reader_takes_kvm_lock:
                    with kvm_lock:
                        pass
                else:
                    with vcpu_mutex:
                        pass

        tasks = [spawn(ioctl), spawn(vcpu_exit)]
        for t in tasks:
            t.join()
        graphs.append(spec.snapshot())  # inside the execution's own lockdep state

    # lockdep may also report the broken variant itself; the spec verdict is what is tested
    explore.check(body, "dpor", max_runs=20, lockdep=False, stop_on_first=False)
    assert graphs, "the explorer ran no execution"
    return spec.merge(*graphs)


def test_explored_broken_program_is_caught() -> None:
    conf = spec.check(DOC, explored_graph(reader_takes_kvm_lock=True))
    [bad] = conf.violations
    assert (bad.rule.kind, bad.rule.outer) == ("srcu_sync_inside", "kvm->lock")
    assert bad.path[0].src == "kvm->srcu" and bad.path[0].src_read == 2


def test_explored_fixed_program_conforms() -> None:
    # vcpu->mutex inside the read side is no breach of this document: only kvm->lock is named
    conf = spec.check(DOC, explored_graph(reader_takes_kvm_lock=False))
    assert conf.ok
    assert {r.status for r in conf.results} == {"held"}


def test_merge_drops_chains_it_cannot_vouch_for() -> None:
    a = spec.GraphView({"a": "mutex"}, [spec.Edge("a", "b")], [("a",), ("a", "b")])
    b = spec.GraphView({"b": "mutex"}, [spec.Edge("a", "b", where="x.py:1")], None)
    m = spec.merge(a, b)
    assert m.classes == {"a": "mutex", "b": "mutex"} and len(m.edges) == 1
    assert m.chains is None
    assert spec.merge(a, a).chains == [("a",), ("a", "b")]
