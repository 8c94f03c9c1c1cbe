"""The KVM model's own locking document, read once: the single source of the model's rules.

``kvmlock/kvm/locking.rst`` states the model's design in locking.rst's layout. Everything that
checks the model against a rule gets the rule from here: the order, leaf, SRCU and kind checks
every correct scenario runs on its own graph (:func:`kvmlock.spec.check` with
:func:`model_spec`), the order scenarios (one pair per order rule), and ``kvmlock spec check``
against another document, which is then a comparison of two documents plus the model's graph.

:func:`render_model_doc` rewrites the document's Reference section from the locks the model
really builds: their kinds come from the code, and so does every Protects item that names
data -- each ``guarded_by`` field, ``Guarded`` cell and RCU pointer's read and update side is
listed under the lock its declaration names. Protects items that name no declared data (a
code path, state the model keeps unguarded) and why a lock is that kind stay the document's
prose. A test holds the shipped document equal to the render.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from kvmlock.spec.model import RefEntry, Rule, Spec
from kvmlock.spec.reader import parse

__all__ = ["model_doc_text", "model_locks", "model_protects", "model_spec", "model_undeclared",
           "order_rules", "protects_of", "render_model_doc"]

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


def model_protects() -> dict[str, list[str]]:
    """``{lock class: [Protects items]}`` the model's protected-data declarations state."""
    from kvmlock.kvm.locks import model_protects as declared

    out: dict[str, list[str]] = {}
    for p in declared():
        out.setdefault(p.lock, []).append(p.item)
    return out


def _names(item: str, datum: str) -> bool:
    """``item`` is the document's line for ``datum``: the datum's name alone, or followed by
    ``": "`` and what it is (``"page_list: the TDP MMU's pages"``)."""
    return item == datum or item.startswith(datum + ": ")


def model_undeclared() -> dict[tuple[str, str], str]:
    """Why the model declares no data for some Protects items: ``{(lock, item): reason}``."""
    from kvmlock.kvm.locks import UNDECLARED

    return dict(UNDECLARED)


def protects_of(entry: RefEntry, declared: dict[str, list[str]]) -> list[str]:
    """The Protects items of ``entry`` as the model states them.

    First the data declared under its lock, in declaration order, each as the datum's name
    (followed by the document's own description of it, when the document has ``name: what it
    is`` under this lock); then the document's items that name no declared data. A document
    item naming declared data is never kept where the declarations do not put it, and an item
    that names a datum no declaration names (a bare ``name`` or ``name: what it is``) is
    dropped, so data moved to another lock, renamed or no longer declared differs from the
    shipped file.
    """
    data = [d for items in declared.values() for d in items]
    mine = [next((p for p in entry.protects if _names(p, d)), d)
            for d in declared.get(entry.name, ())]
    rest = [p for p in entry.protects
            if not any(_names(p, d) for d in data) and not _DATUM.fullmatch(p.split(": ")[0])]
    return [*mine, *rest]


#: An item that names a datum as code does (``vm_list``, ``kvm->memslots updates``): the model
#: must declare it, or the render drops it. Prose ("the set of online CPUs") is kept as written.
_DATUM = re.compile(r"(?=\S*(?:_|->|\.|::))[A-Za-z_]\w*(?:(?:->|\.|::)[A-Za-z_]\w*)*(?: updates)?")


@functools.cache
def model_spec() -> Spec:
    """The model's locking document, read (once per process)."""
    return parse(model_doc_text(), source=SOURCE)


def order_rules(spec: Spec | None = None) -> list[Rule]:
    """The document's acquisition orders, one rule per (outer, inner) pair, in document order."""
    return [r for r in (spec or model_spec()).rules if r.kind == "order"]


_REF_HEADING = re.compile(r"^(?:\d+(?:\.\d+)*\.?\s+)?Reference\n-+\n", re.M)


def render_model_doc(built: dict[str, str] | None = None,
                     declared: dict[str, list[str]] | None = None) -> str:
    """The model's document with its Reference section regenerated from the model's locks.

    Each lock the model builds gets an entry whose ``:Type:`` is the kind the code gives it
    and whose ``:Protects:`` lists the data declared under it (:func:`protects_of`);
    ``:Arch:``, ``:Comment:`` and the Protects items that name no declared data are carried
    over from the document's entry for it (a lock the document lacks gets a placeholder that
    says so). Entries keep the document's order; locks the document does not know come last,
    and entries for locks the model no longer builds are dropped -- so a diff against the
    shipped file shows every drift. ``built`` and ``declared`` default to what the model
    builds and declares (:func:`model_locks`, :func:`model_protects`).
    """
    from kvmlock.spec.render import reference_entries

    text = model_doc_text()
    m = _REF_HEADING.search(text)
    if m is None:
        raise RuntimeError(f"{SOURCE} has no Reference section")
    built = model_locks() if built is None else built
    declared = model_protects() if declared is None else declared
    doc = model_spec()
    entries: list[RefEntry] = []
    for e in doc.reference:
        if e.name in built:
            entries.append(dataclasses.replace(e, protects=protects_of(e, declared)))
    for name in built:
        if doc.ref(name) is None:
            entries.append(RefEntry(name, name, "", (built[name],), "any",
                                    declared.get(name) or
                                    ["(not documented: say what this lock protects)"]))
    return text[: m.end()] + "\n" + reference_entries(entries, built)
