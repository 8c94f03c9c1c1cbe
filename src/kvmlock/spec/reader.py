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
from kvmlock.spec.sentences import ARCH_LEAD, Context, read_sentence, rule_like, split_sentences

_RULES_TITLE = re.compile(r"acquisition orders?|lock(?:ing)? orders?|ordering rules", re.I)
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
    for sec in tree.findall(nodes.section):
        title = _NUMBERING.sub("", _title(sec))
        if _REF_TITLE.search(title):
            ref_secs.append(sec)
        elif _RULES_TITLE.search(title) and not any(_inside(sec, r) for r in rules_secs):
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
    for sec in rules_secs:
        for rule in _walk(list(sec.children[1:]), ctx, spec):
            if rule.kind == "leaf" and rule.outer == "*":
                leaf_sentence = leaf_sentence or rule
                continue
            spec.rules.append(rule)
    spec.rules = _dedupe(spec.rules)
    known = set(spec.locks()) | set(known_classes())
    for u in spec.not_understood:
        u.names = rule_like(u.text, known)
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


def _title(sec: nodes.section) -> str:
    return sec[0].astext() if sec.children and isinstance(sec[0], nodes.title) else ""


def _inside(node: nodes.Node, ancestor: nodes.Node) -> bool:
    p = node.parent
    while p is not None:
        if p is ancestor:
            return True
        p = p.parent
    return False


def _line(node: nodes.Node) -> int:
    """The line a node starts on (docutils leaves it unset on some containers)."""
    n: nodes.Node | None = node
    while n is not None:
        if getattr(n, "line", None):
            return int(n.line)
        n = n.children[0] if isinstance(n, nodes.Element) and n.children else None
    p = node.parent
    while p is not None:
        if getattr(p, "line", None):
            return int(p.line)
        p = p.parent
    return 0


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
                _line(child),
                spec.source,
            )
        elif isinstance(child, nodes.field_list):
            raise SpecError(
                "a field list in the Reference section must follow a ``lock`` heading "
                "(is the heading's underline shorter than its title?)",
                _line(child),
                spec.source,
            )
    names = [e.name for e in spec.reference]
    for e in spec.reference:
        if names.count(e.name) > 1:
            spec.warnings.append(f"line {e.line}: {e.spelled} is declared more than once")


def _entry(sec: nodes.section, source: str, warnings: list[str]) -> RefEntry:
    spelled = _title(sec).strip()
    line = max(1, _line(sec[0]) - 1) if sec.children else 0  # docutils gives the underline
    fields: dict[str, tuple[nodes.field, nodes.field_body]] = {}
    for fl in sec.findall(nodes.field_list):
        for f in fl.children:
            if isinstance(f, nodes.field):
                fname = f[0].astext().strip().lower()
                if fname not in _KNOWN_FIELDS:
                    expected = ", ".join(f":{k.title()}:" for k in _KNOWN_FIELDS)
                    warnings.append(
                        f"line {_line(f)}: Reference entry ``{spelled}`` has a field "
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
            _line(tfield),
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




def _walk(children: list[nodes.Node], ctx: Context, spec: Spec) -> list[Rule]:
    """Rules in document order; a header sentence ("On x86:") scopes the siblings after it."""
    out: list[Rule] = []
    base = (ctx.arch, ctx.srcu)
    for child in children:
        if isinstance(child, nodes.paragraph):
            if _is_header(child):
                _header(child.astext(), ctx)
                continue
            ctx.arch, ctx.srcu = base  # a header scopes the list after it, not later prose
            out += _paragraph(child, ctx, spec)
        elif isinstance(child, nodes.bullet_list | nodes.enumerated_list):
            for item in child.children:
                out += _walk(list(item.children), ctx.copy(), spec)
        elif isinstance(child, nodes.section):
            sub = ctx.copy()
            _header(_title(child), sub)
            out += _walk(list(child.children[1:]), sub, spec)
        elif isinstance(child, nodes.block_quote | nodes.note | nodes.admonition):
            out += _walk(list(child.children), ctx.copy(), spec)
        elif isinstance(child, nodes.definition_list):
            for item in child.children:
                sub = ctx.copy()
                _header(item[0].astext(), sub)
                out += _walk(list(item[1].children) if len(item) > 1 else [], sub, spec)
        # literal blocks are code examples, comments and system messages carry no rules
    return out


def _is_header(par: nodes.paragraph) -> bool:
    """A one-sentence paragraph ending in a colon that states no rule ("On x86:")."""
    sentences = split_sentences(par.astext())
    if len(sentences) != 1 or not sentences[0][1].rstrip().endswith(":"):
        return False
    probe = Context(is_srcu=lambda n: False)
    return read_sentence(sentences[0][1], probe, 0) in (None, [])


def _header(text: str, ctx: Context) -> None:
    """A line that introduces a sub-list: sets (or clears) its arch and SRCU scope."""
    t = " ".join(text.split()).rstrip(":")
    m = ARCH_LEAD.match(t)
    ctx.arch = m.group(1).lower() if m else ""
    ctx.srcu = ctx.default_srcu if "srcu" in t.lower() else ""


def _paragraph(par: nodes.paragraph, ctx: Context, spec: Spec) -> list[Rule]:
    base = _line(par)
    out: list[Rule] = []
    for offset, sentence in split_sentences(par.astext()):
        line = base + offset
        got = read_sentence(sentence, ctx, line)
        if got is None and sentence.rstrip().endswith(":"):
            continue  # introduces what follows ("the cases are as follows:"), states nothing
        if got is None:
            spec.not_understood.append(Unread(" ".join(sentence.split()), line))
            continue
        out += got
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
