"""Kernel "suspicious RCU usage" reports: which data they read, judged against Protects."""

from __future__ import annotations

import json

from splat_helpers import DOCS, FIXTURES, text

from kvmlock import lockdep, spec
from kvmlock.splat import read_log
from kvmlock.splat.cli import main
from kvmlock.splat.rcu import judge_rcu, surroundings
from kvmlock.sync import SRCU, Mutex, RcuPointer

CURRENT = DOCS / "current.rst"
UPDATES_DOC = """\
Reference
---------

``kvm->srcu``
^^^^^^^^^^^^^
:Type:          srcu_struct
:Arch:          any
:Protects:      - kvm->memslots
                - kvm->buses

``kvm->slots_lock``
^^^^^^^^^^^^^^^^^^^
:Type:          mutex
:Arch:          any
:Protects:      - memslot updates
                - kvm->buses updates
"""


def _judged(name: str, doc: spec.Spec | None):
    t = text(name)
    (sp,) = read_log(t)
    (around,) = surroundings(t)
    return sp, judge_rcu(sp, around, doc)


def test_memslots_read_under_kvm_lock_breaks_the_document(capsys):
    sp, v = _judged("gfn_to_memslot_rcu.syzbot", spec.load(CURRENT))
    assert sp.kind == "suspicious_rcu"
    assert (v.data, v.accessor, v.verdict) == ("kvm->memslots", "gfn_to_memslot", "violated")
    assert v.held == ["kvm->lock"] and v.protected_by == ["kvm->srcu"]
    assert main([str(FIXTURES / "gfn_to_memslot_rcu.syzbot"), "--doc", str(CURRENT),
                 "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "suspicious_rcu"
    assert out["protected_data"]["verdict"] == "violated"


def test_update_side_lock_held_conforms_to_the_document(tmp_path, capsys):
    doc = tmp_path / "doc.rst"
    doc.write_text(UPDATES_DOC)
    _sp, v = _judged("handmade_buses_slots_lock.txt", spec.load(doc))
    assert (v.data, v.accessor, v.verdict) == ("kvm->buses", "kvm_get_bus", "conforms")
    assert v.protected_by == ["kvm->srcu", "kvm->slots_lock"]
    assert main([str(FIXTURES / "handmade_buses_slots_lock.txt"), "--doc", str(doc)]) == 0
    assert "CONFORMS: kvm->buses was read holding kvm->slots_lock" in capsys.readouterr().out
    # the same access against a document that gives slots_lock no say over the buses
    _sp, v = _judged("handmade_buses_slots_lock.txt", spec.load(CURRENT))
    assert v.verdict == "violated" and v.protected_by == ["kvm->srcu"]


def test_unknown_data_or_no_document_is_never_a_verdict():
    lockdep.set_mode("collect")
    srcu, p = SRCU("kvm->srcu"), RcuPointer(0, name="some->pointer")
    with Mutex("kvm->lock"):
        p.srcu_dereference(srcu)
    (r,) = lockdep.reports()
    # kvmlock's own report reads back as the same kind, with the same held locks
    (sp,) = read_log(str(r))
    assert sp.kind == "suspicious_rcu" and [h.name for h in sp.holding] == ["kvm->lock"]
    (around,) = surroundings(str(r))
    v = judge_rcu(sp, around, spec.load(CURRENT))
    assert v.data is None and v.verdict == "unjudged" and "unknown" in v.detail
    _sp, v = _judged("gfn_to_memslot_rcu.syzbot", None)
    assert v.verdict == "unjudged" and v.data == "kvm->memslots"


def test_the_models_own_document_judges_a_kernel_memslots_read_without_kvm_srcu():
    """The shipped document's Protects lines, written from the model's declarations, judge a
    kernel report: kvm->memslots read holding kvm->lock (not kvm->srcu, nor slots_lock)."""
    from kvmlock.spec.design import model_spec

    _sp, v = _judged("gfn_to_memslot_rcu.syzbot", model_spec())
    assert (v.data, v.verdict) == ("kvm->memslots", "violated")
    assert sorted(v.protected_by) == ["kvm->slots_lock", "kvm->srcu"]
    _sp, v = _judged("handmade_buses_slots_lock.txt", model_spec())
    assert (v.data, v.verdict) == ("kvm->buses", "conforms")
