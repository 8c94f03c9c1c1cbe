"""Every block of a rules section, read as rules or listed as unread: none is skipped.

A rule can be written in any reStructuredText construct: a bullet, a definition list (the term
``vcpu->mutex`` over "must be acquired before kvm->lock."), a field (``:Order: A -> B``), a line
block, a literal block holding an arrow diagram, a table, a note. :class:`Walker` reads each
construct whose meaning is clear and hands the text of any other (a code example, a comment, a
table row) to the rule-likeness test of :func:`~kvmlock.spec.sentences.rule_like`, so a statement
with two lock names and an ordering word is a rule or is listed as not understood; the verdict
is then incomplete. A last pass (:meth:`Walker.unvisited`) checks that every piece of text in the
section went through one of the two, so a construct the walker does not know cannot slip by
either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from docutils import nodes

from kvmlock.spec.model import Rule, Spec, Unread
from kvmlock.spec.names import looks_like_name, normalise
from kvmlock.spec.sentences import (
    ARCH_LEAD,
    Context,
    clean,
    read_sentence,
    split_sentences,
)

#: blocks whose text is program text or hidden: read only as diagrams, else rule-like test only
_CODE = (nodes.literal_block, nodes.doctest_block, nodes.math_block)
#: an arrow in a diagram: "A -> B", "A --> B", "A => B", "A → B"
_ARROW = re.compile(r"\s+(?:-+>|=+>|→)\s+")
#: one line of a diagram: indentation and the rails of outer branches ("|   "), a branch from
#: the line above ("`-> "), then names and arrows
_DIAGRAM_LINE = re.compile(
    r"^(?P<indent>\s*(?:[|│]\s+)*)(?P<branch>[|`+\\│├└]*[-─=]*(?:>|→)\s+)?(?P<body>.*?)\s*$")
_CONNECTOR = re.compile(r"^[\s|│:]*$")
#: lists whose items are a label and a body: the label's node types, then the body's
_Kinds = tuple[type[nodes.Element], ...]
_LABELLED: dict[type[nodes.Element], tuple[_Kinds, type[nodes.Element]]] = {
    nodes.definition_list: ((nodes.term, nodes.classifier), nodes.definition),
    nodes.field_list: ((nodes.field_name,), nodes.field_body),
    nodes.option_list: ((nodes.option_group,), nodes.description),
}


def line_of(node: nodes.Node) -> int:
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


def title_of(sec: nodes.Element) -> str:
    return sec[0].astext() if sec.children and isinstance(sec[0], nodes.title) else ""


def construct(node: nodes.Node) -> str:
    """The construct a piece of text is in, as the verdict names it ("in a comment")."""
    name = node.tagname.replace("_", " ")
    return f"in {'an' if name[0] in 'aeiou' else 'a'} {name}"


def header(text: str, ctx: Context) -> None:
    """A line that introduces a sub-list: sets (or clears) its arch and SRCU scope."""
    t = " ".join(text.split()).rstrip(":")
    m = ARCH_LEAD.match(t)
    ctx.arch = m.group(1).lower() if m else ""
    ctx.srcu = ctx.default_srcu if "srcu" in t.lower() else ""


def header_says(par: nodes.paragraph) -> list[Rule] | None | bool:
    """For a one-sentence paragraph ending in a colon that states no rule ("On x86:"), what
    reading it as a sentence gives (``[]`` or None); False for any other paragraph."""
    sentences = split_sentences(par.astext())
    if len(sentences) != 1 or not sentences[0][1].rstrip().endswith(":"):
        return False
    probe = Context(is_srcu=lambda n: False)
    got = read_sentence(sentences[0][1], probe, 0)
    return got if got in (None, []) else False


@dataclass
class Walker:
    """Reads the blocks of the rules sections into rules; what it cannot read goes to
    ``spec.not_understood`` (loud for prose, quiet for code and the like)."""

    spec: Spec
    #: ids of the nodes whose text was read or tested (see :meth:`unvisited`)
    seen: set[int] = field(default_factory=set)
    #: text :meth:`unvisited` found that no handler took: a gap in the walker (tests watch it)
    missed: list[Unread] = field(default_factory=list)
    _quiet: int = 0

    # ------------------------------------------------------------------ text

    def unread(self, text: str, line: int, where: str = "", quiet: bool = False) -> None:
        self.spec.not_understood.append(
            Unread(" ".join(text.split()), line, where=where, quiet=quiet or self._quiet > 0))

    def sentences(self, text: str, line: int, ctx: Context, where: str = "",
                  quiet: bool = False) -> list[Rule]:
        """The rules of a run of sentences; each one not understood is listed."""
        out: list[Rule] = []
        for offset, sentence in split_sentences(text):
            at = line + offset
            got = read_sentence(sentence, ctx, at)
            if got is None and ctx.subject:
                got = read_sentence(f"{ctx.subject}: {clean(sentence)}", ctx, at)
            if got is None:
                # a sentence ending in ":" introduces what follows ("the cases are:"); it is
                # listed only if it looks like a rule itself
                said = f"{ctx.subject}: {sentence}" if ctx.subject else sentence
                self.unread(said, at, where, quiet or sentence.rstrip().endswith(":"))
                continue
            out += got
        return out

    def listed(self, text: str, line: int, where: str) -> None:
        """Text that is never read as rules (a comment, program text): each of its sentences
        is listed if it looks like a rule."""
        for offset, sentence in split_sentences(text):
            self.unread(sentence, line + offset, where, quiet=True)

    def text_node(self, node: nodes.Element, ctx: Context, where: str = "",
                  quiet: bool = False) -> list[Rule]:
        self.seen.add(id(node))
        return self.sentences(node.astext(), line_of(node), ctx, where, quiet)

    # ------------------------------------------------------------------ blocks

    def walk(self, children: list[nodes.Node], ctx: Context) -> list[Rule]:
        """Rules in document order; a header sentence ("On x86:") scopes the siblings after it."""
        out: list[Rule] = []
        base = (ctx.arch, ctx.srcu)
        for child in children:
            if isinstance(child, nodes.paragraph):
                if (said := header_says(child)) is not False:
                    self.seen.add(id(child))
                    if said is None:  # listed only if the header itself looks like a rule
                        self.unread(child.astext(), line_of(child), quiet=True)
                    header(child.astext(), ctx)
                    continue
                ctx.arch, ctx.srcu = base  # a header scopes the list after it, not later prose
                out += self.text_node(child, ctx)
            else:
                out += self.block(child, ctx)
        return out

    def block(self, node: nodes.Node, ctx: Context) -> list[Rule]:
        """Any block but a paragraph: each construct's own reading, else its parts."""
        if isinstance(node, nodes.system_message):
            return self.not_run(node)
        if isinstance(node, nodes.Text):
            return []  # stray text outside any block: :meth:`unvisited` tests it
        if isinstance(node, nodes.section):
            return self.label(node[0], list(node.children[1:]), ctx.copy())
        if isinstance(node, nodes.bullet_list | nodes.enumerated_list):
            out = []
            for item in node.children:
                out += self.walk(list(item.children), ctx.copy())
            return out
        if isinstance(node, tuple(_LABELLED)):
            label, body = _LABELLED[type(node)]
            out = []
            for item in node.children:
                heads = [c for c in item.children if isinstance(c, label)]
                parts = [c for c in item.children if isinstance(c, body)]
                out += self.label(heads[0] if heads else item, parts, ctx.copy(), heads[1:])
            return out
        if isinstance(node, nodes.line_block):
            self.seen.add(id(node))
            lines = list(node.findall(nodes.line))
            self.seen.update(id(n) for n in lines)
            return self.sentences("\n".join(n.astext() for n in lines), line_of(node), ctx,
                                  construct(node))
        if isinstance(node, _CODE):
            return self.code(node, ctx)
        if isinstance(node, nodes.comment | nodes.substitution_definition):
            # hidden from the reader of the document: never a rule, but a rule-like one is listed
            self.seen.add(id(node))
            self.listed(node.astext(), line_of(node), construct(node))
            return []
        if isinstance(node, nodes.table):
            return self.table(node, ctx)
        if isinstance(node, nodes.title):  # of an admonition, a topic, a sidebar
            return self.label(node, [], ctx)
        if isinstance(node, nodes.TextElement):  # titles, rubrics, captions, attributions
            return self.text_node(node, ctx, construct(node), quiet=True)
        if isinstance(node, nodes.Element):  # block quotes, admonitions, containers, topics
            return self.walk(list(node.children), ctx.copy())
        return []

    def not_run(self, msg: nodes.system_message) -> list[Rule]:
        """A directive docutils did not run here (``raw``, ``include``): its source is kept in
        the message. An included file is never read, so whatever it says is unchecked."""
        self.seen.add(id(msg))
        for block in (c for c in msg.children if isinstance(c, nodes.literal_block)):
            source = block.astext()
            if m := re.match(r"\.\.\s+include::\s*(\S+)", source):
                self.spec.not_understood.append(Unread(
                    source, line_of(msg), [m.group(1)], where="in an include directive",
                    reason=f"the included file {m.group(1)} is not read, so no rule in it "
                           "was checked"))
            else:
                self.unread(source, line_of(msg), "in a directive that was not run", quiet=True)
        return []

    def label(self, head: nodes.Element, body: list[nodes.Node], ctx: Context,
              more: list[nodes.Element] | None = None) -> list[Rule]:
        """A labelled block (section, definition, field, option): the label is a lock the body
        speaks of, a rule itself, or a header scoping the body ("On x86", "For SRCU")."""
        self.seen.update(id(n) for n in [head, *(more or [])])
        text = " ".join([head.astext(), *(m.astext() for m in more or [])])
        t = clean(text).rstrip(":").strip()
        out: list[Rule] = []
        if looks_like_name(t) and not isinstance(head, nodes.title):
            ctx.subject = normalise(t)
            ctx.last = [ctx.subject]  # "it" in the body is the lock the label names
        else:
            ctx.subject = ""
            got = read_sentence(t, ctx.copy(), line_of(head))
            if got:
                out += got
            elif got is None:
                self.unread(t, line_of(head), construct(head), quiet=True)
            header(t, ctx)
        parts: list[nodes.Node] = []
        for child in body:
            wrapper = isinstance(child, nodes.definition | nodes.field_body | nodes.description)
            parts += list(child.children) if wrapper else [child]
        return out + self.walk(parts, ctx)

    def code(self, node: nodes.Element, ctx: Context) -> list[Rule]:
        """A literal block: an arrow diagram is read; the rest is tested for rule-like text."""
        self.seen.add(id(node))
        start = line_of(node)
        rules, rest = diagram(node.astext(), ctx, start)
        if rest:
            # the lines that are not a diagram, as one text: a diagram drawn over several lines
            # that the reader cannot follow still has its arrows and names together
            self.listed("\n".join(text for _, text in rest), rest[0][0], construct(node))
        return rules

    def table(self, node: nodes.table, ctx: Context) -> list[Rule]:
        """Each cell is read as text; a row whose cells state nothing alone (``kvm->lock`` under
        "outer", ``vcpu->mutex`` under "inner") is tested as a whole, with its header."""
        out: list[Rule] = []
        for title in (c for c in node.children if isinstance(c, nodes.title)):
            out += self.text_node(title, ctx, "in a table title", quiet=True)
        rows = list(node.findall(nodes.row))
        heads = [r for r in rows if isinstance(r.parent, nodes.thead)] or rows[:1]
        head = [" ".join(e.astext().split()) for r in heads for e in r.children]
        for row in rows:
            before = (len(out), len(self.spec.not_understood))
            self._quiet += 1
            try:
                for entry in row.children:
                    out += self.walk(list(entry.children), ctx.copy())
            finally:
                self._quiet -= 1
            new = self.spec.not_understood[before[1]:]
            if len(out) == before[0] and new and row not in heads:
                cells = [" ".join(e.astext().split()) for e in row.children]
                pairs = [f"{h}: {c}" if h else c
                         for h, c in zip(head + [""] * len(cells), cells, strict=False)]
                self.unread("; ".join(pairs), line_of(row), "in a table row", quiet=True)
        return out

    # ------------------------------------------------------------------ the last pass

    def unvisited(self, section: nodes.Element) -> None:
        """Text in ``section`` that no handler read or tested: tested now, and recorded."""
        owners: dict[int, nodes.Element] = {}
        for text in section.findall(nodes.Text):
            owner, covered, p = None, False, text.parent
            while p is not None and not covered:
                if isinstance(p, nodes.system_message):
                    covered = True
                    break
                if id(p) in self.seen:
                    covered = True
                owner = owner or (p if isinstance(p, nodes.TextElement) else None)
                if p is section:
                    break
                p = p.parent
            if not covered and owner is not None:
                owners.setdefault(id(owner), owner)
        for owner in owners.values():
            self.seen.add(id(owner))
            before = len(self.spec.not_understood)
            self.unread(owner.astext(), line_of(owner), f"{construct(owner)} no reader handled",
                        quiet=True)
            self.missed += self.spec.not_understood[before:]


def diagram(text: str, ctx: Context, start: int) -> tuple[list[Rule], list[tuple[int, str]]]:
    """An arrow diagram's orders, and the lines that are not part of one (with their lines).

    ``A -> B -> C`` on one line is two orders. A line that starts with an arrow (``-> B``,
    ``|-> B``, ``` `-> B```) is a branch: it hangs from the lock drawn above it, the rightmost
    one that starts at or left of the branch, on the nearest line that has one. Every name must
    be a lock name, or the line is not a diagram line.
    """
    rules: list[Rule] = []
    rest: list[tuple[int, str]] = []
    drawn: list[list[tuple[int, str]]] = []  # per diagram line: (column, lock) of its names
    lone: dict[str, tuple[int, str]] = {}  # a line naming one lock: a diagram's root, or not
    for offset, raw in enumerate(text.split("\n")):
        line, raw = start + offset, raw.expandtabs(8)
        if _CONNECTOR.match(raw):
            continue
        m = _DIAGRAM_LINE.match(raw)
        body = m["body"] if m else ""
        parts = _ARROW.split(body) if body else []
        names = [normalise(p) if looks_like_name(p) else "" for p in parts]
        parent = ""
        if m and m["branch"]:
            col = len(m["indent"])
            parent = next((max(left)[1] for row in reversed(drawn)
                           if (left := [(c, n) for c, n in row if c <= col])), "")
        if not m or not names or not all(names) or (m["branch"] and not parent):
            rest.append((line, raw.strip()))
            continue
        chain = ([parent] if parent else []) + names
        lone.pop(parent, None)
        if len(chain) == 1:
            lone[chain[0]] = (line, raw.strip())
        rules += [Rule("order", a, inner=b, arch=ctx.arch, line=line, text=raw.strip())
                  for a, b in zip(chain, chain[1:], strict=False)]
        at = m.start("body")
        cols = []
        for p, n in zip(parts, names, strict=True):
            at = raw.index(p, at)
            cols.append((at, n))
            at += len(p)
        drawn.append(cols)
    return rules, sorted(rest + list(lone.values()))
