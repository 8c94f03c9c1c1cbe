"""The KVM model's own locking document, read once: the single source of the model's rules.

``kvmlock/kvm/locking.rst`` states the model's design in locking.rst's layout. Everything that
checks the model against a rule gets the rule from here: the order, leaf, SRCU and kind checks
every correct scenario runs on its own graph (:func:`kvmlock.spec.check` with
:func:`model_spec`), the order scenarios (one pair per order rule), and ``kvmlock spec check``
against another document, which is then a comparison of two documents plus the model's graph.

:func:`render_model_doc` rewrites the document's Reference section from the locks the model
really builds (their kinds come from the code; what a lock protects and why it is that kind
stay the document's prose), so a test can hold the two equal.
"""

from __future__ import annotations

import functools
import re

from kvmlock.spec.model import RefEntry, Rule, Spec
from kvmlock.spec.reader import parse

__all__ = ["model_doc_text", "model_locks", "model_spec", "order_rules", "render_model_doc"]

#: How the model's document is named in verdicts.
SOURCE = "kvmlock/kvm/locking.rst"


def model_doc_text() -> str:
    """The model's locking document, as shipped."""
    from kvmlock.kvm.locks import model_doc_text as text

    return text()


def model_locks() -> dict[str, str]:
    """``{class: lockdep kind}`` of every lock the model builds."""
    from kvmlock.kvm.locks import model_locks as built

    return built()


@functools.cache
def model_spec() -> Spec:
    """The model's locking document, read (once per process)."""
    return parse(model_doc_text(), source=SOURCE)


def order_rules(spec: Spec | None = None) -> list[Rule]:
    """The document's acquisition orders, one rule per (outer, inner) pair, in document order."""
    return [r for r in (spec or model_spec()).rules if r.kind == "order"]


_REF_HEADING = re.compile(r"^(?:\d+(?:\.\d+)*\.?\s+)?Reference\n-+\n", re.M)


def render_model_doc(built: dict[str, str] | None = None) -> str:
    """The model's document with its Reference section regenerated from the model's locks.

    Each lock the model builds gets an entry whose ``:Type:`` is the kind the code gives it;
    ``:Arch:``, ``:Protects:`` and ``:Comment:`` are carried over from the document's entry for
    it (a lock the document lacks gets a placeholder that says so). Entries keep the document's
    order; locks the document does not know come last, and entries for locks the model no
    longer builds are dropped -- so a diff against the shipped file shows every drift.
    """
    from kvmlock.spec.render import reference_entries

    text = model_doc_text()
    m = _REF_HEADING.search(text)
    if m is None:
        raise RuntimeError(f"{SOURCE} has no Reference section")
    built = model_locks() if built is None else built
    doc = model_spec()
    entries: list[RefEntry] = []
    for e in doc.reference:
        if e.name in built:
            entries.append(e)
    for name in built:
        if doc.ref(name) is None:
            entries.append(RefEntry(name, name, "", (built[name],), "any",
                                    ["(not documented: say what this lock protects)"]))
    return text[: m.end()] + "\n" + reference_entries(entries, built)
