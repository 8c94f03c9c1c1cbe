"""Protects items judged against a run's protected data: held, violated, not exercised."""

from __future__ import annotations

import json

from kvmlock import lockdep, spec
from kvmlock.spec.protects import ProtectsResult, short, words
from kvmlock.sync import SRCU, Mutex, RcuPointer, guarded_by

DOC = """\
Reference
---------

``big_lock``
^^^^^^^^^^^^
:Type:          mutex
:Arch:          any
:Protects:      - counter
                - the weather

``table_srcu``
^^^^^^^^^^^^^^
:Type:          srcu_struct
:Arch:          any
:Protects:      obj->table

``table_lock``
^^^^^^^^^^^^^^
:Type:          mutex
:Arch:          any
:Protects:      - obj->table updates
                - obj::{counter,other}
"""


class Obj:
    counter = guarded_by("big")

    def __init__(self) -> None:
        self.big = Mutex("big_lock")
        self.srcu = SRCU("table_srcu")
        self.upd = Mutex("table_lock")
        self.table = RcuPointer({}, name="obj->table")
        self.counter = 0


def run(*, unlocked_counter: bool = False, unlocked_update: bool = False,
        reader_outside: bool = False) -> lockdep.DepGraph:
    with lockdep.isolated():
        o = Obj()
        with o.big:
            o.counter += 1
        if unlocked_counter:
            o.counter += 1
        with o.upd:
            o.table.assign({1: 1})
        if unlocked_update:
            o.table.assign({2: 2})
        with o.srcu.read():
            o.table.srcu_dereference(o.srcu)
        if reader_outside:
            o.table.srcu_dereference(o.srcu)
        return lockdep.graph()


def results(graph) -> dict[tuple[str, str], ProtectsResult]:
    conf = spec.check(spec.parse(DOC, source="doc.rst"), graph)
    return {(r.entry.name, r.item): r for r in conf.protects}


def test_words_and_short_names():
    assert words("kvm_arch::{last_tsc_write,last_tsc_nsec}") == {
        "last_tsc_write", "last_tsc_nsec"}
    assert short("Machine.vm_list") == "vm_list" and short("kvm->buses") == "buse"
    assert "buse" in words("kvm->buses updates") and "memslot" in words("memslot updates")


def test_a_correct_run_holds_every_data_item_and_says_why_the_rest_is_not_exercised():
    r = results(run())
    assert r[("big_lock", "counter")].status == "held"
    assert r[("big_lock", "counter")].data == ["Obj.counter"]
    assert r[("table_srcu", "obj->table")].status == "held"
    assert r[("table_lock", "obj->table updates")].status == "held"
    assert "every publication of obj->table held it" in \
        r[("table_lock", "obj->table updates")].detail
    weather = r[("big_lock", "the weather")]
    assert weather.status == "not exercised" and "no guarded field" in weather.detail
    other = r[("table_lock", "obj::{counter,other}")]  # named, but guarded by another lock
    assert other.status == "not exercised"
    assert other.detail == "the run guards Obj.counter with big_lock"


def test_each_protection_removed_is_a_violation_with_its_site():
    r = results(run(unlocked_counter=True))
    bad = r[("big_lock", "counter")]
    assert bad.status == "violated" and "accessed without the lock" in bad.detail
    assert bad.where and all("test_spec_protects.py" in w for w in bad.where)
    r = results(run(unlocked_update=True))
    bad = r[("table_lock", "obj->table updates")]
    assert bad.status == "violated" and "published without table_lock" in bad.detail
    assert r[("table_srcu", "obj->table")].status == "held"
    r = results(run(reader_outside=True))
    assert r[("table_srcu", "obj->table")].status == "violated"
    conf = spec.check(spec.parse(DOC, source="doc.rst"), run(reader_outside=True))
    assert not conf.ok and conf.counts()["violated"] == 1
    assert "table_srcu protects obj->table" in conf.render(width=160)
    d = conf.to_dict()
    assert {p["status"] for p in d["protects"]} == {"held", "violated", "not exercised"}


def test_saved_and_merged_graphs_keep_the_records(tmp_path):
    g = run(unlocked_counter=True)
    again = lockdep.DepGraph.from_json(g.to_json())
    assert [p.name for p in again.protected] == [p.name for p in g.protected]
    path = tmp_path / "g.json"
    spec.save_graph(g, path)
    assert "protected" in json.loads(path.read_text())
    loaded = spec.load_graph(path)
    assert results(loaded)[("big_lock", "counter")].status == "violated"
    both = spec.merge(run(), run(unlocked_update=True))
    assert results(both)[("table_lock", "obj->table updates")].status == "violated"
    assert results(both)[("big_lock", "counter")].status == "held"


def test_a_pointer_published_but_never_read_says_so():
    with lockdep.isolated():
        o = Obj()
        with o.upd:
            o.table.assign({1: 1})
        g = lockdep.graph()
    r = results(g)[("table_srcu", "obj->table")]
    assert r.status == "not exercised"
    assert r.detail == "obj->table was published in the run but never read inside a read side"


def test_a_graph_without_records_says_so():
    r = results({"classes": {}, "edges": []})
    assert {x.status for x in r.values()} == {"not exercised"}
    assert {x.detail for x in r.values()} == {"the graph carries no protected-data records"}


def test_update_is_a_word_of_the_item_not_a_substring():
    """"updater" or "..._update_rcuwait" do not make an item about a pointer's publications."""
    doc = DOC.replace("- the weather", "- the obj->table updater's registration")
    conf = spec.check(spec.parse(doc, source="doc.rst"), run())
    r = {(x.entry.name, x.item): x for x in conf.protects}
    near = r[("big_lock", "the obj->table updater's registration")]
    assert near.status == "not exercised", near  # not judged by the table's publications
    assert near.detail == "obj->table is read under table_srcu; the item does not speak of its " \
        "updates"


def test_stated_reasons_replace_the_matchers_for_items_left_not_exercised():
    reasons = {("big_lock", "the weather"): "the program keeps no weather",
               ("big_lock", "counter"): "never used: the item is held"}
    conf = spec.check(spec.parse(DOC, source="doc.rst"), run(), reasons=reasons)
    r = {(x.entry.name, x.item): x for x in conf.protects}
    assert r[("big_lock", "the weather")].detail == "the program keeps no weather"
    assert r[("big_lock", "counter")].status == "held"
    assert r[("big_lock", "counter")].detail == "every access of Obj.counter held it"


def test_the_model_document_every_protects_item_has_a_status_and_a_reason():
    """`kvmlock spec check` on the model's own document and run: each Protects item is held,
    or not exercised for a reason the model states (kvm.locks.UNDECLARED), never for none."""
    from importlib import resources

    from kvmlock.kvm.locks import UNDECLARED, model_protects
    from kvmlock.spec.design import model_spec

    conf = spec.conformance(str(resources.files("kvmlock.kvm") / "locking.rst"))
    doc = model_spec()
    items = [(e.name, i) for e in doc.reference for i in e.protects]
    assert [(p.entry.name, p.item) for p in conf.protects] == items
    statuses = {(p.entry.name, p.item): p for p in conf.protects}
    assert {p.status for p in conf.protects} == {"held", "not exercised"}
    left = {k for k, p in statuses.items() if p.status == "not exercised"}
    assert left == set(UNDECLARED), "each item left not exercised needs a stated reason, and " \
        "each stated reason an item"
    for k in left:
        assert statuses[k].detail == UNDECLARED[k]
    # every declaration of the model is an item the run held
    declared = {(p.lock, p.item) for p in model_protects()}
    held = {(lock, item.split(": ")[0]) for (lock, item), p in statuses.items()
            if p.status == "held"}
    assert declared <= held, declared - held
