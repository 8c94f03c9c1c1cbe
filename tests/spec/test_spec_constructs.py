"""A rule written in any reStructuredText construct of a rules section is read, or listed unread.

The catalogue below puts one order (vcpu->mutex outside kvm->lock) into every block-level
construct docutils can produce, and ``test_catalogue_covers_every_docutils_block`` fails when
docutils gains a block the catalogue lacks, so a new construct cannot slip by unnoticed.
"""

from __future__ import annotations

import pytest
from docutils import nodes

from kvmlock import spec
from kvmlock.spec.blocks import Walker, diagram
from kvmlock.spec.model import Spec
from kvmlock.spec.reader import _doctree
from kvmlock.spec.sentences import Context

HEAD = ("Acquisition orders\n------------------\n\n"
        "- kvm->slots_lock must be acquired before kvm->lock.\n\n")
RULE = "vcpu->mutex is taken outside kvm->lock"
SENTENCE = "vcpu->mutex must be acquired before kvm->lock."

#: construct -> (its text in a rules section, the docutils node it makes)
CATALOGUE: dict[str, tuple[str, type[nodes.Node]]] = {
    "paragraph": (f"{SENTENCE}\n", nodes.paragraph),
    "bullet list": (f"* {SENTENCE}\n", nodes.bullet_list),
    "enumerated list": (f"1. {SENTENCE}\n", nodes.enumerated_list),
    "definition list": ("vcpu->mutex\n    must be acquired before kvm->lock.\n",
                        nodes.definition_list),
    "definition list, colon": ("vcpu->mutex\n    outside kvm->lock\n", nodes.definition_list),
    "field list": (f":Order: {SENTENCE}\n", nodes.field_list),
    "field named for the lock": (":vcpu->mutex: outside kvm->lock\n", nodes.field_list),
    "option list": (f"-o  {SENTENCE}\n", nodes.option_list),
    "line block": ("| vcpu->mutex must be acquired\n| before kvm->lock.\n", nodes.line_block),
    "block quote": (f"Orders:\n\n    {SENTENCE}\n\n    -- the maintainers\n",
                    nodes.block_quote),
    "literal block diagram": ("The order is::\n\n  vcpu->mutex -> kvm->lock\n",
                              nodes.literal_block),
    "literal block tree": ("The order is::\n\n  vcpu->mutex\n    `-> kvm->lock\n",
                           nodes.literal_block),
    "literal block prose": (f"As code::\n\n  /* {SENTENCE} */\n", nodes.literal_block),
    "doctest block": (">>> vcpu->mutex -> kvm->lock\n", nodes.doctest_block),
    "math block": (".. math::\n\n   vcpu->mutex -> kvm->lock\n", nodes.math_block),
    "comment": (f".. {SENTENCE}\n", nodes.comment),
    "substitution definition": (f".. |order| replace:: {SENTENCE}\n",
                                nodes.substitution_definition),
    "raw (disabled)": (f".. raw:: html\n\n   {SENTENCE}\n", nodes.system_message),
    "footnote": (f".. [#] {SENTENCE}\n", nodes.footnote),
    "citation": (f".. [ORD] {SENTENCE}\n", nodes.citation),
    "figure caption": (f".. figure:: order.png\n\n   {SENTENCE}\n", nodes.figure),
    "figure legend": (f".. figure:: order.png\n\n   The order.\n\n   {SENTENCE}\n", nodes.figure),
    "rubric": (f".. rubric:: {SENTENCE}\n", nodes.rubric),
    "compound": (f".. compound::\n\n   {SENTENCE}\n", nodes.compound),
    "container": (f".. container:: rules\n\n   {SENTENCE}\n", nodes.container),
    "topic": (f".. topic:: Orders\n\n   {SENTENCE}\n", nodes.topic),
    "sidebar": (f".. sidebar:: Orders\n\n   {SENTENCE}\n", nodes.sidebar),
    "generic admonition title": (".. admonition:: vcpu->mutex goes before kvm->lock\n\n"
                                 "   Mind it.\n", nodes.admonition),
    "sub-section": (f"Details\n^^^^^^^\n\n{SENTENCE}\n", nodes.section),
    "sub-section title": ("vcpu->mutex goes before kvm->lock\n"
                          "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n\nMind it.\n", nodes.section),
    "transition": (f"One.\n\n----------\n\n{SENTENCE}\n", nodes.transition),
    "grid table cell": ("+" + "-" * 50 + "+\n" + f"| {SENTENCE:<48} |\n" + "+" + "-" * 50
                        + "+\n", nodes.table),
    "simple table row": ("=========== =========\nouter       inner\n=========== =========\n"
                         "vcpu->mutex kvm->lock\n=========== =========\n", nodes.table),
    "csv table": (".. csv-table:: Orders\n   :header: outer, inner\n\n   vcpu->mutex, kvm->lock\n",
                  nodes.table),
    "list table": (".. list-table::\n\n   * - outer\n     - inner\n   * - vcpu->mutex\n"
                   "     - kvm->lock\n", nodes.table),
    "table title": (".. table:: vcpu->mutex goes before kvm->lock\n\n   ===  ===\n   a    b\n"
                    "   ===  ===\n", nodes.table),
    "target then rule": (f".. _order:\n\n{SENTENCE}\n", nodes.target),
    "image then rule": (f".. image:: order.png\n\n{SENTENCE}\n", nodes.image),
}
for _name in ("attention", "caution", "danger", "error", "hint", "important", "note", "tip",
              "warning"):
    CATALOGUE[_name] = (f".. {_name}::\n\n   {SENTENCE}\n", getattr(nodes, _name))

#: block classes no catalogue entry makes: ``pending`` exists only while docutils' transforms
#: run, ``reference`` is inline (inside a paragraph), and ``raw`` is disabled (docutils keeps
#: its source in a system message: the "raw (disabled)" entry)
NO_TEXT = {nodes.pending, nodes.reference, nodes.raw}


def _blocks() -> set[type[nodes.Node]]:
    return {c for c in vars(nodes).values()
            if isinstance(c, type) and issubclass(c, nodes.Body | nodes.Structural)
            and c not in (nodes.Body, nodes.Structural) and c.__name__[0].islower()}


def test_catalogue_covers_every_docutils_block() -> None:
    covered = {cls for _, cls in CATALOGUE.values()} | NO_TEXT
    assert _blocks() - covered == set(), "add these constructs to the catalogue"


@pytest.mark.parametrize("construct", list(CATALOGUE))
def test_each_construct_is_read_or_listed(construct: str) -> None:
    text, cls = CATALOGUE[construct]
    doc = spec.load(HEAD + text)
    assert any(isinstance(n, cls) for n in _doctree(HEAD + text, "<t>").findall(cls))
    read = {r.describe() for r in doc.rules}
    unread = [u for u in doc.not_understood if u.names]
    assert RULE in read or any({"vcpu->mutex", "kvm->lock"} <= set(u.names) for u in unread) \
        or any(u.names and "vcpu->mutex" in u.text and "kvm->lock" in u.text for u in unread), \
        (read, doc.not_understood)
    if RULE not in read:
        assert doc.incomplete()
    # the walker handled it itself: the last pass found nothing left over
    assert not any(u.where.endswith(" no reader handled") for u in doc.not_understood)
    assert "must is taken" not in " ".join(read)


READ_AS_RULES = ["paragraph", "bullet list", "enumerated list", "definition list",
                 "definition list, colon", "field list", "field named for the lock",
                 "option list", "line block", "block quote", "literal block diagram",
                 "literal block tree", "math block", "footnote", "citation", "compound",
                 "container", "topic", "sidebar", "sub-section", "grid table cell", "note"]


@pytest.mark.parametrize("construct", READ_AS_RULES)
def test_clear_constructs_are_read(construct: str) -> None:
    doc = spec.load(HEAD + CATALOGUE[construct][0])
    assert RULE in {r.describe() for r in doc.rules}
    assert not doc.incomplete()


@pytest.mark.parametrize("construct", ["comment", "substitution definition", "raw (disabled)",
                                       "simple table row", "literal block prose"])
def test_hidden_or_unclear_constructs_are_listed_not_read(construct: str) -> None:
    doc = spec.load(HEAD + CATALOGUE[construct][0])
    assert RULE not in {r.describe() for r in doc.rules}
    assert doc.incomplete()


@pytest.mark.parametrize("text", [
    ".. SPDX-License-Identifier: GPL-2.0\n",
    "The following is broken::\n\n  srcu_read_lock(&kvm->srcu);\n  mutex_lock(&kvm->lock);\n",
    "=========== =========\nlock        kind\n=========== =========\n"
    "vcpu->mutex mutex\n=========== =========\n",
    ".. note::\n\n   Locks are documented below.\n",
    "| Nothing here.\n",
], ids=["comment", "code", "table", "note", "line-block"])
def test_near_misses_stay_complete(text: str) -> None:
    # text in the same constructs that states no order: nothing listed, the verdict complete
    doc = spec.load(HEAD + text)
    assert not doc.incomplete(), doc.incomplete()


def test_included_file_makes_the_verdict_incomplete() -> None:
    doc = spec.load(HEAD + ".. include:: more-orders.rst\n")
    assert any("more-orders.rst" in why for why in doc.incomplete())


def test_last_pass_catches_what_the_walker_skips() -> None:
    # the safety net on its own: a walker that reads nothing leaves every piece of text to it
    tree = _doctree(HEAD + CATALOGUE["definition list"][0], "<t>")
    sec = next(iter(tree.findall(nodes.section)))
    w = Walker(Spec())
    w.unvisited(sec)
    texts = " ".join(u.text for u in w.missed)
    assert "vcpu->mutex" in texts and "kvm->slots_lock" in texts
    # and once every block was walked, it finds nothing
    w2 = Walker(Spec())
    w2.seen.add(id(sec[0]))
    w2.walk(list(sec.children[1:]), Context(is_srcu=lambda n: False))
    w2.unvisited(sec)
    assert w2.missed == []


def test_diagram_lines() -> None:
    ctx = Context(is_srcu=lambda n: False)
    rules, rest = diagram("kvm->lock -> vcpu->mutex\n  |-> kvm->slots_lock\n"
                          "mutex_lock(&kvm->lock);\nkvm_lock", ctx, 10)
    assert [(r.outer, r.inner, r.line) for r in rules] == [
        ("kvm->lock", "vcpu->mutex", 10), ("kvm->lock", "kvm->slots_lock", 11)]
    assert rest == [(12, "mutex_lock(&kvm->lock);"), (13, "kvm_lock")]


def test_a_tree_hangs_each_branch_from_the_lock_drawn_above_it() -> None:
    tree = ("kvm->lock\n"
            "  |-> vcpu->mutex\n"
            "  |     `-> kvm->slots_lock -> kvm->irq_lock\n"
            "  |\n"
            "  `-> kvm->mmu_lock\n")
    rules, rest = diagram(tree, Context(is_srcu=lambda n: False), 1)
    assert [(r.outer, r.inner) for r in rules] == [
        ("kvm->lock", "vcpu->mutex"), ("vcpu->mutex", "kvm->slots_lock"),
        ("kvm->slots_lock", "kvm->irq_lock"), ("kvm->lock", "kvm->mmu_lock")]
    assert rest == []
    # near miss: a branch with nothing drawn above it is not read as an order
    rules, rest = diagram("  `-> kvm->mmu_lock", Context(is_srcu=lambda n: False), 1)
    assert rules == [] and rest == [(1, "`-> kvm->mmu_lock")]


# --------------------------------------------------------------------------- outside the rules


def test_a_rule_in_another_section_is_listed_not_dropped() -> None:
    doc = spec.load(HEAD + "Exceptions\n----------\n\n"
                    "Fast paths are lockless.  vcpu->mutex is taken outside kvm->lock.\n")
    assert RULE not in {r.describe() for r in doc.rules}
    [why] = doc.incomplete()
    assert "in section 'Exceptions', not a rules section" in why


def test_prose_and_reference_comments_outside_the_rules_stay_complete() -> None:
    # near miss: an "Exception" section of prose, and a Reference comment stating an order (as
    # the kernel's vendor_module_lock entry does): neither is a rule the reader skipped
    doc = spec.load(HEAD + "Exception\n---------\n\nThe fast page fault runs outside the "
                    "mmu_lock and uses cmpxchg.\n\nReference\n---------\n\n``kvm_lock``\n"
                    "^^^^^^^^^^^^\n\n:Type: mutex\n:Comment: cpu_hotplug_lock is taken outside "
                    "of kvm_lock.\n")
    assert not doc.incomplete(), doc.incomplete()


def test_a_title_saying_lock_rules_over_the_reference_is_not_the_rules_section() -> None:
    text = ("Lock rules of my VMM\n====================\n\n" + HEAD.replace("-" * 18, "-" * 18)
            + "Reference\n---------\n\n``kvm->lock``\n^^^^^^^^^^^^^\n\n:Type: mutex\n"
            ":Comment: Taken by ioctls.\n")
    doc = spec.load(text)
    assert [r.describe() for r in doc.rules] == ["kvm->slots_lock is taken outside kvm->lock"]
    assert doc.not_understood == [] and not doc.incomplete()


def test_other_rules_section_titles_are_read() -> None:
    doc = spec.load("Lock nesting\n------------\n\n- " + SENTENCE + "\n")
    assert RULE in {r.describe() for r in doc.rules}


def test_a_pronoun_without_antecedent_counts_as_a_lock() -> None:
    doc = spec.load("Acquisition orders\n------------------\n\nIt must be acquired before "
                    "kvm->lock.\n")
    assert any("kvm->lock" in why for why in doc.incomplete())
    # near miss: "it" in a sentence naming no lock states no order
    ok = spec.load(HEAD + "It is held for a long time.\n")
    assert not ok.incomplete()
