"""The rule sentences of a locking.rst-style document, recognised one sentence at a time.

The document states its rules in a handful of recurring English forms, and they drifted between
kernel releases (the SRCU rule was even turned around). Each form below is one regular
expression over a single, already extracted sentence; the document's structure (sections, lists,
literal blocks) is handled by :mod:`kvmlock.spec.reader` with docutils, never here.

A sentence may be two clauses joined by ", therefore" or ", so": the second clause is the rule,
the first its justification (it is read as a rule too when it is one). Clauses joined by ";" must
each be understood. "It", "they" and "these locks" refer to the locks of the previous rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kvmlock.spec.model import Rule
from kvmlock.spec.names import NAME_RE, looks_like_name, normalise, parse_type

_I = re.IGNORECASE
_NOT = r"(?:cannot|can ?not|must not|must never|may not|should not)"
_A = r"(?:an? |the )?"

_ORDER = re.compile(
    r"^(?P<x>.+?) (?:is|are|can|can be|may be) (?:always )?taken outside(?: of)? (?P<ys>.+?)"
    r"(?:, (?P<note>(?:though|although|but|because|since|when|e\.g\.|for example)(?=\s).*))?$",
    _I,
)
_INSIDE = re.compile(
    r"^(?P<xs>.+?) (?:is|are) (?:always )?taken inside(?: of)? (?P<z>.+?)"
    rf"(?:,? and {_NOT} be taken without (?:already )?holding (?P<z2>.+?))?$",
    _I,
)
_MUST_ALSO = re.compile(
    r"^(?:the )?critical sections? (?:for|of) (?P<xs>.+?) must (?:also )?take (?P<z>.+?)$", _I
)
_MUST_NOT_TAKE = re.compile(rf"^(?P<x>.+?) {_NOT} take (?:either )?(?P<ys>.+?)$", _I)
_NOT_INSIDE = re.compile(
    rf"^(?P<xs>.+?) {_NOT} be taken inside {_A}(?P<y>.+?)(?P<rs> read-side)?"
    r"(?: critical sections?)?$",
    _I,
)
_SYNC_INSIDE = re.compile(
    r"^synchronize_srcu\((?P<s>[^)]*)\) is (?:always )?called inside "
    rf"(?:{_A}critical sections? (?:for|of) (?P<as>.+?)|{_A}(?P<a>.+?) critical sections?)$",
    _I,
)
_NO_SYNC = re.compile(
    rf"^synchronize_srcu\((?P<s>[^)]*)\) {_NOT} be called (?:inside|under|while holding) "
    rf"{_A}(?P<x>.+?)(?: critical sections?)?$",
    _I,
)
_RELEASED = re.compile(
    r"^(?:instead,? )?(?P<y>.+?) (?:instead )?is released before the call to "
    r"synchronize_srcu\((?P<s>[^)]*)\)"
    r"(?:,? and (?:therefore )?can (?:therefore )?be taken inside an? (?P<s2>.+?) "
    r"read-side critical section(?:, .*)?)?$",
    _I,
)
_READ_OK = re.compile(
    r"^(?P<y>.+?) can (?:therefore |thus )?be taken inside an? (?P<s>.+?) read-side critical "
    r"section(?:, (?:for example|e\.g\.|such as)\b.*)?$",
    _I,
)
_LEAF_REST = re.compile(
    r"^(?:everything|every lock) else is a leaf"
    r"(?:: no other lock is taken inside (?:the|their|its) critical sections?)?$"
    r"|^no other lock is taken inside (?:the|their) critical sections?$"
    r"|^(?:all )?other locks are leaves$|^every other lock is a leaf$",
    _I,
)
_LEAF = re.compile(
    r"^(?P<x>.+?) is a leaf(?: lock)?"
    r"(?:: no (?:other )?lock is taken inside (?:it|its critical sections?))?$",
    _I,
)
_TYPE = re.compile(
    r"^(?P<x>.+?) is an? (?P<t>rwlock_t|rwlock|mutex|spinlock_t|spinlock|raw spinlock|"
    r"raw_spinlock_t|rw_semaphore|srcu_struct|srcu)$",
    _I,
)
_EXAMPLE = re.compile(
    r"^(?:that is, |for example, |i\.e\., )?the following (?:is|would be) "
    r"(?:broken|wrong|correct|fine|ok|allowed|a deadlock)$",
    _I,
)
_TAKE = r"(?:acquired|taken|locked|grabbed)"
_BEFORE = re.compile(
    rf"^(?P<x>.+?) (?:(?:must|should|has to|needs to) )?(?:always )?(?:be |is |are )?{_TAKE} "
    r"(?P<when>before|after) (?P<ys>.+?)$",
    _I,
)
_NESTS = re.compile(
    r"^(?P<xs>.+?) (?:(?:always )?nests?|(?:is|are) (?:always )?nested) (?:inside|within|under|in)"
    r" (?P<z>.+?)$",
    _I,
)
_UNDER = re.compile(
    rf"^(?P<xs>.+?) (?:is|are) (?:always |only )?{_TAKE} (?:under|while holding|with) "
    r"(?P<z>.+?)(?: held)?$",
    _I,
)
_NOT_UNDER = re.compile(
    rf"^(?P<xs>.+?) {_NOT} be {_TAKE} (?:under|while holding|with) (?P<y>.+?)(?: held)?$", _I
)
_TAKING = re.compile(
    r"^taking (?P<x>.+?) outside(?: of)? (?P<y>.+?) is (?P<how>problematic, despite that being "
    r"the official ordering|allowed|fine|correct|forbidden|not allowed|broken|wrong)"
    r"(?:, (?:as|because|since)\b.*)?$",
    _I,
)
_ARROW = re.compile(r"\s+-+>\s+")
#: "On x86:" heads a sub-list, "On x86, ..." leads a sentence: rules for that architecture only
ARCH_LEAD = re.compile(r"^(?:on|for) (x86|arm64|s390|powerpc|riscv|mips|loongarch)\b", re.I)
_LEAD = re.compile(r"^(?P<lead>(?:when|if|while|for|on) [^,]{1,60}), (?P<rest>\S.*)$", _I)
_TAIL = re.compile(
    r"^(?P<head>.+?), (?P<note>(?:(?:though|although|but|because|since|as|when|while|unless|"
    r"even|for example)\b|e\.g\.).*)$",
    _I,
)
#: "kvm->lock: outside vcpu->mutex", a lock and what is said of it
_LABEL = re.compile(rf"^(?P<x>{NAME_RE}):\s+(?P<rest>\S.*)$")
_QUALIFIED = re.compile(r"^(?P<n>\S+) (?P<q>(?:for|of|in|on) .+)$", _I)
_PRONOUNS = {"it", "they", "these locks", "this lock", "these", "both", "both locks"}


@dataclass
class Context:
    """What the surrounding document tells a sentence: arch sub-list, SRCU sub-list, pronouns."""

    is_srcu: Callable[[str], bool]
    default_srcu: str = ""
    arch: str = ""
    srcu: str = ""
    last: list[str] = field(default_factory=list)
    #: the lock a definition list's term or a field's name names: its body's sentences may
    #: leave it out ("vcpu->mutex" over "must be acquired before kvm->lock")
    subject: str = ""
    #: SRCUs named so far anywhere in the document (shared by every copy of the context), so a
    #: bare "synchronize_srcu()" in a later item means the one the document was talking about
    named_srcu: list[str] = field(default_factory=list)

    def copy(self) -> Context:
        return replace(self, last=list(self.last))


# --------------------------------------------------------------------------- text


def clean(text: str) -> str:
    """One line, the document's ``_emphasis_`` underscores dropped, asides in parentheses cut."""
    t = " ".join(text.split())
    t = re.sub(r"(?<![\w>.:])_(\w+?)_(?!\w)", r"\1", t)
    t = re.sub(r"(?<![\w>.:])\*(\w+?)\*(?!\w)", r"\1", t)
    t = re.sub(r" \([^()]*\)", "", t)  # " (typically with read_lock ...)"; keeps "f()" calls
    return t.strip()


_ABBREV = re.compile(r"\b(e\.g|i\.e|etc|vs|cf)\.", _I)


def split_sentences(text: str) -> list[tuple[int, str]]:
    """Sentences of a paragraph with the line offset (within the paragraph) each starts on."""
    guarded = _ABBREV.sub(lambda m: m.group(0).replace(".", "\x00"), text)
    out: list[tuple[int, str]] = []
    pos = 0
    for m in re.finditer(r"[.!?](?=\s+|$)", guarded):
        chunk = guarded[pos : m.end()]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            out.append((guarded.count("\n", 0, pos + lead), chunk.strip().replace("\x00", ".")))
        pos = m.end()
    rest = guarded[pos:]
    if rest.strip():
        lead = len(rest) - len(rest.lstrip())
        out.append((guarded.count("\n", 0, pos + lead), rest.strip().replace("\x00", ".")))
    return out


def _names(text: str, ctx: Context) -> list[str] | None:
    """A list of lock names ("A, B and C", "either A or B"), normalised; None if not names."""
    t = text.strip().strip(",")
    if t.lower() in _PRONOUNS:
        return list(ctx.last) or None
    t = re.sub(r"^(?:either|both|the locks?) ", "", t, flags=_I)
    parts = [p for p in re.split(r",\s*(?:and\s+|or\s+)?|\s+and\s+|\s+or\s+", t) if p.strip()]
    if not parts or not all(looks_like_name(p) for p in parts):
        return None
    return [normalise(p) for p in parts]


def _name(text: str, ctx: Context) -> str | None:
    got = _names(text, ctx)
    return got[0] if got and len(got) == 1 else None


def _srcu(arg: str | None, ctx: Context) -> str | None:
    """The SRCU a clause is about: named in it, else the sub-list's, else the last one named."""
    if arg and arg.strip():
        n = _name(arg, ctx)
        if not n or not ctx.is_srcu(n):
            return None
        if n in ctx.named_srcu:
            ctx.named_srcu.remove(n)
        ctx.named_srcu.append(n)
        return n
    return ctx.srcu or (ctx.named_srcu[-1] if ctx.named_srcu else "") or ctx.default_srcu or None


# --------------------------------------------------------------------------- one clause


def _clause(c: str, ctx: Context) -> list[Rule] | None:
    """The rules one clause states, [] for a recognised non-rule, None if not understood."""
    if _EXAMPLE.match(c):
        return []
    if _LEAF_REST.match(c):
        return [Rule("leaf", "*", note="everything else is a leaf")]
    if m := _SYNC_INSIDE.match(c):
        s = _srcu(m["s"], ctx)
        locks = _names(m["as"] or m["a"], ctx)
        if not s or not locks:
            return None
        return [Rule("srcu_sync_inside", a, srcu=s) for a in locks]
    if m := _NO_SYNC.match(c):
        s, x = _srcu(m["s"], ctx), _name(m["x"], ctx)
        return [Rule("srcu_read_ok", s, inner=x, srcu=s)] if s and x else None
    if m := _RELEASED.match(c):
        s = _srcu(m["s"] or m["s2"], ctx)
        y = _name(m["y"], ctx)
        return [Rule("srcu_read_ok", s, inner=y, srcu=s)] if s and y else None
    if m := _READ_OK.match(c):
        s, y = _srcu(m["s"], ctx), _name(m["y"], ctx)
        return [Rule("srcu_read_ok", s, inner=y, srcu=s)] if s and y else None
    if len(parts := _ARROW.split(c)) > 1:
        names = [_name(p, ctx) for p in parts]
        if not all(names):
            return None
        return [Rule("order", a, inner=b) for a, b in zip(names, names[1:], strict=False)]
    if m := _TAKING.match(c):
        x, y = _name(m["x"], ctx), _name(m["y"], ctx)
        if not x or not y:
            return None
        if re.match(r"forbidden|not allowed|broken|wrong", m["how"], _I):
            return [Rule("forbidden", x, inner=y)]
        return [Rule("order", x, inner=y, note=m["how"].split(",")[0])]
    if m := _BEFORE.match(c):
        x, ys = _name(m["x"], ctx), _names(m["ys"], ctx)
        if not x or not ys:
            return None
        if m["when"].lower() == "after":
            return [Rule("order", y, inner=x, note_subject=x) for y in ys]
        return [Rule("order", x, inner=y) for y in ys]
    if m := _ORDER.match(c):
        x, ys = _name(m["x"], ctx), _names(m["ys"], ctx)
        if not x and not ys and (same := _same_class(m["x"], m["ys"], ctx)):
            return [same]
        if not x or not ys:
            return None
        note = (m["note"] or "").strip()
        return [Rule("order", x, inner=y, note=note) for y in ys]
    if m := _NESTS.match(c) or _UNDER.match(c):
        xs, z = _names(m["xs"], ctx), _name(m["z"], ctx)
        if not xs or not z:
            return None
        if ctx.is_srcu(z):
            return [Rule("srcu_read_ok", z, inner=x, srcu=z) for x in xs]
        return [Rule("order", z, inner=x, note_subject=x) for x in xs]
    if m := _NOT_UNDER.match(c):
        xs, y = _names(m["xs"], ctx), _name(m["y"], ctx)
        if not xs or not y:
            return None
        return [Rule("forbidden", y, inner=x) for x in xs]
    if m := _INSIDE.match(c):
        xs, z = _names(m["xs"], ctx), _name(m["z"], ctx)
        if not xs or not z:
            return None
        if ctx.is_srcu(z):
            return [Rule("srcu_read_ok", z, inner=x, srcu=z) for x in xs]
        rules = [Rule("order", z, inner=x, note_subject=x) for x in xs]
        if m["z2"] is not None:
            if _name(m["z2"], ctx) != z:
                return None
            rules += [Rule("requires", z, inner=x) for x in xs]
        return rules
    if m := _MUST_ALSO.match(c):
        xs, z = _names(m["xs"], ctx), _name(m["z"], ctx)
        if not xs or not z:
            return None
        return [Rule("order", z, inner=x, note_subject=x) for x in xs] + [
            Rule("requires", z, inner=x) for x in xs
        ]
    if m := _NOT_INSIDE.match(c):
        xs, y = _names(m["xs"], ctx), _name(m["y"], ctx)
        if not xs or not y:
            return None
        if m["rs"] or ctx.is_srcu(y):
            if not ctx.is_srcu(y):
                return None
            return [Rule("srcu_sync_inside", x, srcu=y) for x in xs]
        return [Rule("forbidden", y, inner=x) for x in xs]
    if m := _MUST_NOT_TAKE.match(c):
        x, ys = _name(m["x"], ctx), _names(m["ys"], ctx)
        if not x or not ys:
            return None
        return [Rule("forbidden", x, inner=y) for y in ys]
    if m := _LEAF.match(c):
        x = _name(m["x"], ctx)
        return [Rule("leaf", x)] if x else None
    if m := _TYPE.match(c):
        x = _name(m["x"], ctx)
        kinds = parse_type(m["t"])
        return [Rule("type", x, types=kinds)] if x and kinds else None
    return None


def with_subject(x: str, rest: str, ctx: Context) -> list[Rule] | None:
    """What ``rest`` says of the lock ``x`` when it leaves ``x`` out: "must be acquired before
    Y" (a definition of the term ``x``) or "outside Y" (after "x:")."""
    for text in (f"{x} {rest}", f"{x} is taken {rest}"):
        got = _clause(text, ctx)
        if got is not None:
            return got
    return None


def _same_class(x: str, y: str, ctx: Context) -> Rule | None:
    """"vcpu->mutex for plane 0 can be taken outside vcpu->mutex for another plane": one class
    nested in itself, the qualifiers saying which instance goes outside."""
    mx, my = _QUALIFIED.match(x.strip()), _QUALIFIED.match(y.strip())
    if not mx or not my:
        return None
    a, b = _name(mx["n"], ctx), _name(my["n"], ctx)
    if not a or a != b:
        return None
    return Rule("same_class", a, inner=a, note=f"{mx['q']} outside {my['q']}")


_ORDERING = re.compile(
    r"\b(?:before|after|outside|inside|nest(?:s|ed|ing)?|under|hold(?:s|ing)?|held|"
    r"tak(?:e|es|en|ing)|acquir(?:e|es|ed|ing)|grab(?:s|bed|bing)?|order(?:s|ed|ing)?|then|"
    r"within|first|while|outer|inner)\b|\s-+>\s",
    _I,
)
_LOCKISH = re.compile(r"(?:_lock|->lock|mutex|->srcu|\.srcu|_sem|rwsem|spinlock|rwlock)$")


def rule_like(sentence: str, known: set[str]) -> list[str]:
    """The lock names that make a sentence look like a rule (two of them and an ordering word),
    or [] if it does not; such a sentence must be read, or the verdict is incomplete."""
    text = clean(sentence)
    if not _ORDERING.search(text):
        return []
    names = lock_names(text, known)
    if len(names) == 1 and (m := _PRONOUN_LEAD.match(text)):
        names.insert(0, m.group(1).lower())  # "It must be taken before kvm->lock"
    return names if len(names) >= 2 else []


_PRONOUN_LEAD = re.compile(r"^(it|they|these locks|this lock|both locks|both)\b", _I)


def lock_names(text: str, known: set[str]) -> list[str]:
    """The words of ``text`` that name locks: known ones, struct members, ``*_lock``-like."""
    names: list[str] = []
    for m in re.finditer(NAME_RE, text.replace("`", "")):
        word = m.group(0)
        n = normalise(word)
        member = "->" in word or "::" in word  # a struct member: what locks usually are
        if n in known or member or _LOCKISH.search(n) or n != word.lstrip("&").rstrip("()"):
            if n not in names:
                names.append(n)
    return names


def _subjects(rules: list[Rule]) -> list[str]:
    """The locks a later "it"/"these locks" refers to: the grammatical subjects of the clause."""
    out: list[str] = []
    for r in rules:
        if r.kind in ("srcu_read_ok", "requires"):
            n = r.inner
        elif r.kind == "order":
            n = r.note_subject or r.outer
        else:
            n = r.outer
        if n and n != "*" and n not in out:
            out.append(n)
    return out


def read_sentence(sentence: str, ctx: Context, line: int) -> list[Rule] | None:
    """Rules stated by one sentence (``[]``: a recognised non-rule), or None if not understood.

    Updates ``ctx.last`` so the next sentence can say "it".
    """
    text = clean(sentence).rstrip(".").rstrip(":").strip()
    if not text:
        return []
    rules: list[Rule] = []
    for part in [p for p in re.split(r";\s+", text) if p.strip()]:
        pieces = re.split(r", (?:therefore|so|thus|hence),? (?=\S)", part, maxsplit=1)
        if len(pieces) == 2:
            first = _clause(pieces[0], ctx)
            if first:
                ctx.last = _subjects(first) or ctx.last
            second = _clause(pieces[1], ctx)
            if second is None:
                return None
            got = (first or []) + second
        else:
            one = _clause(part, ctx)
            if one is None and (tail := _TAIL.match(part)) and not lock_names(tail["note"], set()):
                # "X is acquired after Y, though few paths hold both": the rule, and a remark
                # that names no lock (one that does could add a condition; it stays unread)
                one = _clause(tail["head"], ctx)
                one = one and [replace(r, note=r.note or tail["note"]) for r in one]
            if one is None and (lab := _LABEL.match(part)) and looks_like_name(lab["x"]):
                one = with_subject(normalise(lab["x"]), lab["rest"], ctx)
            if one is None and (lead := _LEAD.match(part)):
                one = _clause(lead["rest"], ctx)
                if one:
                    arch = m.group(1).lower() if (m := ARCH_LEAD.match(lead["lead"])) else ""
                    one = [replace(r, note=r.note or lead["lead"], arch=r.arch or arch)
                           for r in one]
            if one is None:
                return None
            got = one
        if got:
            ctx.last = _subjects(got) or ctx.last
        rules += got
    return [replace(r, arch=r.arch or ctx.arch, line=line, text=" ".join(sentence.split()))
            for r in rules]
