"""What a locking.rst-style document says, as data: rules, Reference entries, unread sentences.

Kept free of parsing and checking so the reader, the checker, the linter and the renderer share
one vocabulary, and a test can build a :class:`Spec` by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Rule kinds and what each one forbids in a dependency graph.
RULE_KINDS = {
    "order": "outer is taken outside inner: no path inner -> ... -> outer",
    "forbidden": "outer must not take inner: no path outer -> ... -> inner",
    "requires": "inner is never taken without holding outer",
    "srcu_sync_inside": (
        "synchronize_srcu(srcu) is called inside outer: outer must not be taken inside the "
        "srcu read side"
    ),
    "srcu_read_ok": (
        "inner may be taken inside the srcu read side: synchronize_srcu(srcu) must not be called "
        "while holding inner"
    ),
    "leaf": "no lock is taken inside outer",
    "type": "the lock is of the stated kind",
    "same_class": (
        "two locks of one class may nest, as the qualifier says which goes outside (a class "
        "graph folds them into one node, so this cannot be checked there)"
    ),
}


class SpecError(ValueError):
    """A document that cannot be read as a locking spec; names the line when there is one."""

    def __init__(self, message: str, line: int | None = None, source: str = "") -> None:
        where = f"{source or '<document>'}:{line}: " if line else (f"{source}: " if source else "")
        super().__init__(where + message)
        self.line = line
        self.source = source
        self.message = message


@dataclass(frozen=True)
class Rule:
    """One checkable statement. ``outer``/``inner`` are lockdep class names (after aliases)."""

    kind: str
    outer: str
    inner: str = ""
    srcu: str = ""
    types: tuple[str, ...] = ()  # for kind "type": the allowed lockdep kinds
    arch: str = ""  # "" = any; "x86" for rules under an "On x86:" sub-list
    note: str = ""  # qualifiers the sentence adds ("quite rare", "everything else")
    line: int = 0
    text: str = ""  # the sentence, as written
    #: for "X is taken inside Z": the sentence's subject (X), which a later "it" refers to
    note_subject: str = field(default="", compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity for de-duplication: two sentences can restate one rule."""
        return (self.kind, self.outer, self.inner, self.srcu)

    def describe(self) -> str:
        """The rule in one line of the project's own words."""
        k = self.kind
        if k == "order":
            implied = f" ({self.note})" if self.note.startswith("implied by") else ""
            return f"{self.outer} is taken outside {self.inner}{implied}"
        if k == "forbidden":
            return f"{self.outer} must not take {self.inner}"
        if k == "requires":
            return f"{self.inner} is only taken with {self.outer} held"
        if k == "srcu_sync_inside":
            return (f"synchronize_srcu({self.srcu}) is called under {self.outer}: "
                    f"{self.outer} is not taken inside the read side")
        if k == "srcu_read_ok":
            return (f"{self.inner} may be taken inside the {self.srcu} read side: "
                    f"synchronize_srcu is not called under it")
        if k == "leaf":
            return f"{self.outer} is a leaf"
        if k == "same_class":
            return f"{self.outer} may nest in itself ({self.note})"
        if k == "type":
            kinds = " or ".join(self.types)
            return f"{self.outer} is {'an' if kinds[0] in 'aeiour' else 'a'} {kinds}"
        return f"{k} {self.outer} {self.inner}"


    def breaks(self) -> str:
        """The dependency this rule makes a violation (what ``spec diff`` says a change means)."""
        k = self.kind
        if k == "order":
            return f"{self.inner} -> {self.outer} (taking {self.outer} while holding {self.inner})"
        if k == "forbidden":
            return f"{self.outer} -> {self.inner}"
        if k == "requires":
            return f"taking {self.inner} without holding {self.outer}"
        if k == "srcu_sync_inside":
            return f"{self.srcu}(read) -> {self.outer} ({self.outer} inside the read side)"
        if k == "srcu_read_ok":
            return f"{self.inner} -> {self.srcu}(synchronize) (synchronize_srcu under it)"
        if k == "leaf":
            return f"{self.outer} -> any lock"
        if k == "type":
            return f"{self.outer} built as anything but {' or '.join(self.types)}"
        return ""  # one class nested in itself: no edge of a class graph


@dataclass
class RefEntry:
    """One ``lock`` heading of the Reference section with its fields."""

    name: str  # lockdep class (after aliases)
    spelled: str  # as written in the heading
    type_text: str
    kinds: tuple[str, ...]
    arch: str = ""
    protects: list[str] = field(default_factory=list)
    comment: str = ""
    line: int = 0


@dataclass
class Unread:
    """A sentence of a rules section that matched no rule form; shown, never dropped.

    ``names`` are the locks that make it look like a rule (two or more, with an ordering word):
    a document with such a sentence cannot be called conforming, whatever the rest says.
    """

    text: str
    line: int
    names: list[str] = field(default_factory=list)
    #: where it is when not in a plain paragraph of a rules section ("in a comment", "in section
    #: 'Exceptions', not a rules section")
    where: str = ""
    #: text that is listed only when it looks like a rule (a code example, a table cell): most
    #: such text states nothing, but a rule in it must not be lost
    quiet: bool = False
    #: why it makes the verdict incomplete, when that is not "looks like a rule"
    reason: str = ""


@dataclass
class Spec:
    """A document, read: rules in document order, Reference entries, what could not be read."""

    rules: list[Rule] = field(default_factory=list)
    reference: list[RefEntry] = field(default_factory=list)
    not_understood: list[Unread] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    has_leaf_rule: bool = False

    def incomplete(self) -> list[str]:
        """Why a verdict on this document cannot be OK: no rules, or rule-like text not read."""
        out = []
        if not any(r.kind != "type" for r in self.rules):
            out.append("no rules were read: no rules section states a rule in a known form")
        for u in self.not_understood:
            if u.reason:
                out.append(f"line {u.line}: {u.reason}")
            elif u.names:
                where = f" ({u.where})" if u.where else ""
                out.append(f"line {u.line}: a sentence about {' and '.join(u.names[:3])}{where} "
                           "looks like a rule but was not understood")
        return out

    def ref(self, name: str) -> RefEntry | None:
        """The Reference entry of a lockdep class (any spelling the heading used)."""
        for e in self.reference:
            if e.name == name:
                return e
        return None

    def declared_kinds(self) -> dict[str, tuple[str, ...]]:
        """What the document itself says each lock is; it outranks the model's table."""
        return {e.name: e.kinds for e in self.reference}

    def locks(self) -> list[str]:
        """Every lock the document names, Reference first, in document order."""
        seen: dict[str, None] = {}
        for e in self.reference:
            seen.setdefault(e.name, None)
        for r in self.rules:
            for n in (r.outer, r.inner, r.srcu):
                if n:
                    seen.setdefault(n, None)
        return list(seen)
