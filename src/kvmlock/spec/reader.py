"""Read a locking.rst-style document into a :class:`~kvmlock.spec.model.Spec` with docutils.

The document's meaning is in its structure: which section a sentence is in ("Acquisition
Orders" holds rules, "Reference" holds one ``lock`` heading per lock), which sub-list it is in
("For SRCU:", "On x86:"), and which lines continue a field. So the text goes through the real
reStructuredText parser and this module walks the node tree; only single sentences are left to
the regular expressions of :mod:`kvmlock.spec.sentences`.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import docutils.core
from docutils import nodes

from kvmlock.spec.blocks import Walker, line_of, title_of
from kvmlock.spec.inputs import read_text
from kvmlock.spec.layout import restore
from kvmlock.spec.model import RefEntry, Rule, Spec, SpecError, Unread
from kvmlock.spec.names import (
    NAME_RE,
    SPECIAL_KINDS,
    TYPE_KINDS,
    kind_of,
    known_classes,
    normalise,
    parse_type,
)
from kvmlock.spec.sentences import Context, read_sentence, rule_like, split_sentences

_RULES_TITLE = re.compile(
    r"acquisition orders?|lock(?:ing)? orders?|ordering rules|(?:lock|locking|mutex) nesting"
    r"|nesting (?:rules|orders?)|lock(?:ing)? hierarch|lock(?:ing)? rules", re.I)
_REF_TITLE = re.compile(r"^reference\b", re.I)
_NUMBERING = re.compile(r"^\s*\d+(?:\.\d+)*[.)]?\s+")
_KNOWN_FIELDS = ("type", "arch", "protects", "comment")
_NAME_TOKEN = re.compile(NAME_RE)


#: A locking document is a few hundred lines; anything this large is not one, and reading it
#: would only make the user wait for an answer that cannot be right.
MAX_BYTES = 4 * 1024 * 1024


def load(doc: str | os.PathLike[str], *, source: str | None = None) -> Spec:
    """Read a document given as a path or as its text.

    A string containing a newline is the document's text; any other string or path names a file.
    Raises :class:`SpecError` (a ``ValueError``) naming the line for a document that is not valid
    reStructuredText or whose Reference section is malformed, and for a file too large to be a
    locking document.
    """
    if isinstance(doc, os.PathLike) or (isinstance(doc, str) and "\n" not in doc):
        path = Path(doc)
        text = read_text(path, "locking document", MAX_BYTES)
        return parse(text, source=source or str(path))
    if isinstance(doc, str):
        return parse(doc, source=source or "<text>")
    raise TypeError(f"spec.load() takes a path or the document's text, not {type(doc).__name__}")


def parse(text: str, *, source: str = "<text>") -> Spec:
    """Read the document's text (see :func:`load`).

    The layout is repaired first (:mod:`kvmlock.spec.layout`: blame views, lost or tab
    indentation); line numbers in the result are those of ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"document text must be str, not {type(text).__name__}")
    if len(text) > MAX_BYTES:
        raise SpecError(f"the document is {len(text) // 1024} KiB; a locking document is at most "
                        f"{MAX_BYTES // 1024} KiB", None, source)
    fixed, numbers = restore(text)

    def orig(line: int | None) -> int | None:
        if not line:
            return line
        return numbers[line - 1] if 0 < line <= len(numbers) else line

    try:
        spec = _parse(fixed, source)
    except SpecError as exc:
        raise SpecError(exc.message, orig(exc.line), exc.source) from None
    for r in spec.rules:
        object.__setattr__(r, "line", orig(r.line) or 0)
    for e in spec.reference:
        e.line = orig(e.line) or 0
    for u in spec.not_understood:
        u.line = orig(u.line) or 0
    spec.warnings = [re.sub(r"^line (\d+)", lambda m: f"line {orig(int(m.group(1)))}", w)
                     for w in spec.warnings]
    return spec


def _parse(text: str, source: str) -> Spec:
    tree = _doctree(text, source)
    spec = Spec(source=source)
    rules_secs: list[nodes.section] = []
    ref_secs: list[nodes.section] = []
    titled: list[nodes.section] = []
    for sec in tree.findall(nodes.section):
        title = _NUMBERING.sub("", title_of(sec))
        if _REF_TITLE.search(title):
            ref_secs.append(sec)
        elif _RULES_TITLE.search(title):
            titled.append(sec)
    # a document's own title may say "lock rules" too: a section holding the Reference is the
    # whole document, not its rules
    for sec in titled:
        if any(_inside(r, sec) for r in ref_secs):
            continue
        if not any(_inside(sec, r) for r in rules_secs):
            rules_secs.append(sec)
    for msg in tree.findall(nodes.system_message):
        level, line = msg["level"], msg.get("line")
        body = msg.children[0].astext() if msg.children else msg.astext()
        read = any(_inside(msg, sec) for sec in rules_secs + ref_secs)
        if level >= 3 and (read or not (rules_secs or ref_secs)):
            raise SpecError(f"not valid reStructuredText: {body}", line, source)
        if level >= 2:
            spec.warnings.append(f"line {line}: {body}")
    if not rules_secs and not ref_secs:
        raise SpecError(
            "found neither an 'Acquisition Orders' section nor a 'Reference' section; "
            "is this a locking.rst-style document?",
            1,
            source,
        )
    for sec in ref_secs:
        _read_reference(sec, spec)

    declared = spec.declared_kinds()
    srcus = [e.name for e in spec.reference if e.kinds == ("srcu",)]

    def is_srcu(name: str) -> bool:
        return kind_of(name, declared) == "srcu"

    if not srcus:  # no Reference entry: the one SRCU the rules mention, if there is just one
        for sec in rules_secs:
            for m in _NAME_TOKEN.finditer(sec.astext()):
                n = normalise(m.group(0))
                if is_srcu(n) and n not in srcus:
                    srcus.append(n)
    ctx = Context(is_srcu=is_srcu, default_srcu=srcus[0] if len(srcus) == 1 else "")
    leaf_sentence: Rule | None = None
    walker = Walker(spec)
    for sec in rules_secs:
        walker.seen.add(id(sec[0]))
        for rule in walker.walk(list(sec.children[1:]), ctx):
            if rule.kind == "leaf" and rule.outer == "*":
                leaf_sentence = leaf_sentence or rule
                continue
            spec.rules.append(rule)
        walker.unvisited(sec)
    spec.rules = _dedupe(spec.rules)
    _rules_elsewhere(tree, rules_secs + ref_secs, ctx, spec)
    known = set(spec.locks()) | set(known_classes())
    for u in spec.not_understood:
        u.names = u.names or rule_like(u.text, known)
    spec.not_understood = [u for u in spec.not_understood if u.names or not u.quiet]
    if leaf_sentence is not None:
        spec.has_leaf_rule = True
        spec.rules += _leaves(spec, leaf_sentence)
    return spec


# --------------------------------------------------------------------------- docutils


def _doctree(text: str, source: str) -> nodes.document:
    settings = {
        "report_level": 5,  # nothing on stderr: every message is in the tree and handled here
        "halt_level": 5,
        "warning_stream": io.StringIO(),
        "file_insertion_enabled": False,
        "raw_enabled": False,
        "input_encoding": "unicode",
        "doctitle_xform": False,  # a lone heading would otherwise become the subtitle
    }
    try:
        return docutils.core.publish_doctree(
            text, source_path=source, settings_overrides=settings
        )
    except Exception as exc:  # docutils raises its own types for severe problems
        line = getattr(exc, "line", None)
        raise SpecError(f"not valid reStructuredText: {exc}", line, source) from None


def _inside(node: nodes.Node, ancestor: nodes.Node) -> bool:
    p = node.parent
    while p is not None:
        if p is ancestor:
            return True
        p = p.parent
    return False


# --------------------------------------------------------------------------- Reference


def _read_reference(sec: nodes.section, spec: Spec) -> None:
    for child in sec.children[1:]:
        if isinstance(child, nodes.section):
            spec.reference.append(_entry(child, spec.source, spec.warnings))
        elif isinstance(child, nodes.paragraph) and re.search(
            r"^([\^=~\-`'\"+*#:.])\1{2,}$", child.astext(), re.M
        ):
            raise SpecError(
                "this looks like a ``lock`` heading whose underline is shorter than its title",
                line_of(child),
                spec.source,
            )
        elif isinstance(child, nodes.field_list):
            raise SpecError(
                "a field list in the Reference section must follow a ``lock`` heading "
                "(is the heading's underline shorter than its title?)",
                line_of(child),
                spec.source,
            )
    names = [e.name for e in spec.reference]
    for e in spec.reference:
        if names.count(e.name) > 1:
            spec.warnings.append(f"line {e.line}: {e.spelled} is declared more than once")


def _entry(sec: nodes.section, source: str, warnings: list[str]) -> RefEntry:
    spelled = title_of(sec).strip()
    line = max(1, line_of(sec[0]) - 1) if sec.children else 0  # docutils gives the underline
    fields: dict[str, tuple[nodes.field, nodes.field_body]] = {}
    for fl in sec.findall(nodes.field_list):
        for f in fl.children:
            if isinstance(f, nodes.field):
                fname = f[0].astext().strip().lower()
                if fname not in _KNOWN_FIELDS:
                    expected = ", ".join(f":{k.title()}:" for k in _KNOWN_FIELDS)
                    warnings.append(
                        f"line {line_of(f)}: Reference entry ``{spelled}`` has a field "
                        f":{f[0].astext()}: that is not one of {expected}; ignored"
                    )
                    continue
                fields[fname] = (f, f[1])
    if "type" not in fields:
        raise SpecError(f"Reference entry ``{spelled}`` has no :Type: field", line, source)
    tfield, tbody = fields["type"]
    type_text = " ".join(tbody.astext().split())
    kinds = parse_type(type_text)
    if kinds is None:
        known = ", ".join(sorted({k for k in TYPE_KINDS if "_" in k or " " not in k}))
        raise SpecError(
            f"Reference entry ``{spelled}``: unknown lock type {type_text!r} (known: {known})",
            line_of(tfield),
            source,
        )
    protects: list[str] = []
    if "protects" in fields:
        body = fields["protects"][1]
        items = list(body.findall(nodes.list_item))
        if items:
            protects = [" ".join(i.astext().split()) for i in items]
        else:
            protects = [" ".join(body.astext().split()).lstrip("-").strip()]
    return RefEntry(
        name=normalise(spelled),
        spelled=spelled,
        type_text=type_text,
        kinds=kinds,
        arch=" ".join(fields["arch"][1].astext().split()) if "arch" in fields else "",
        protects=protects,
        comment=" ".join(fields["comment"][1].astext().split()) if "comment" in fields else "",
        line=line,
    )


# --------------------------------------------------------------------------- rules


def _rules_elsewhere(tree: nodes.document, read: list[nodes.section], ctx: Context,
                     spec: Spec) -> None:
    """A sentence outside the rules sections that reads as a rule: listed, never checked.

    The reader takes rules only from the sections titled as such; one stated in another section
    (an "Exceptions" or "Overview" section, or before the first heading) would otherwise be
    dropped without a word while the verdict says the document was read.
    """
    for par in tree.findall(nodes.paragraph):
        if any(par is s or _inside(par, s) for s in read):
            continue
        base = line_of(par)
        for offset, sentence in split_sentences(par.astext()):
            got = read_sentence(sentence, ctx.copy(), base + offset) or []
            names = [n for r in got if r.kind != "type" for n in (r.outer, r.inner, r.srcu)
                     if n and n != "*"]
            if names:
                sec = next((p for p in _ancestors(par) if isinstance(p, nodes.section)), None)
                where = f"in section '{title_of(sec)}', not a rules section" if sec else \
                    "outside every section"
                spec.not_understood.append(Unread(" ".join(sentence.split()), base + offset,
                                                  list(dict.fromkeys(names)), where=where))


def _ancestors(node: nodes.Node) -> list[nodes.Node]:
    out, p = [], node.parent
    while p is not None:
        out.append(p)
        p = p.parent
    return out


def _dedupe(rules: list[Rule]) -> list[Rule]:
    seen: set[tuple[str, str, str, str]] = set()
    out: list[Rule] = []
    for r in rules:
        if r.key not in seen:
            seen.add(r.key)
            out.append(r)
    return out


def _leaves(spec: Spec, sentence: Rule) -> list[Rule]:
    """Expand "everything else is a leaf" into one leaf rule per lock not named as outer."""
    declared = spec.declared_kinds()
    outer: set[str] = set()
    for r in spec.rules:
        if r.kind in ("order", "requires", "srcu_sync_inside"):
            outer.add(r.outer)
        elif r.kind == "srcu_read_ok":
            outer.add(r.srcu)
    explicit = {r.outer for r in spec.rules if r.kind == "leaf"}
    out: list[Rule] = []
    for name in spec.locks():
        if name in outer or name in explicit:
            continue
        if kind_of(name, declared) in SPECIAL_KINDS:
            continue
        out.append(Rule("leaf", name, note="everything else is a leaf", arch=sentence.arch,
                        line=sentence.line, text=sentence.text))
    return out
