"""Text out: the tables ``kvmlock spec`` prints, and the Reference section written from the model.

Rendering lives apart from reading and checking so the data (``Spec``, ``Conformance``) stays
usable by tools, and so the Reference writer can be diffed against a real document.
"""

from __future__ import annotations

import functools
import io
import textwrap
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table as _RichTable

from kvmlock.spec.check import ACCEPTED, HELD, NOT_EXERCISED, UNCHECKED, VIOLATED, Conformance
from kvmlock.spec.lint import Finding, undeclared
from kvmlock.spec.model import Spec, Unread
from kvmlock.spec.names import KIND_TYPES


def Table(**kw: Any) -> _RichTable:  # noqa: N802 - reads like the rich class it builds
    """Compact tables: they end up pasted into terminals, docs and CI logs."""
    return _RichTable(box=box.SIMPLE_HEAD, title_justify="left", **kw)


_STYLE = {HELD: "green", VIOLATED: "bold red", NOT_EXERCISED: "yellow", UNCHECKED: "cyan",
          ACCEPTED: "magenta"}


def _text(renderables: Iterable[Any], width: int, color: bool = False) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=color, color_system=None if not color
                  else "auto", highlight=False)
    for r in renderables:
        con.print(r)
    return buf.getvalue()


def _unread_table(title: str, unread: Iterable[Unread]) -> _RichTable:
    nu = Table(title=title)
    nu.add_column("line")
    nu.add_column("sentence", overflow="fold")
    for u in unread:
        nu.add_row(str(u.line), u.text)
    return nu


def spec_tables(spec: Spec) -> list[Any]:
    rules = Table(title=f"Rules read from {spec.source}")
    for col in ("line", "kind", "rule", "arch", "note"):
        rules.add_column(col, overflow="fold")
    for r in spec.rules:
        rules.add_row(str(r.line), r.kind, r.describe(), r.arch or "any", r.note)
    ref = Table(title="Reference")
    for col in ("line", "lock", "type", "lockdep kind", "arch", "protects"):
        ref.add_column(col, overflow="fold")
    for e in spec.reference:
        ref.add_row(str(e.line), e.name, e.type_text, " or ".join(e.kinds), e.arch,
                    "; ".join(e.protects))
    out: list[Any] = [rules, ref]
    if spec.not_understood:
        out.append(_unread_table(
            "Not understood (sentences in a rules section matching no rule form)",
            spec.not_understood,
        ))
    for why in spec.incomplete():
        out.append(f"incomplete: {why}")
    return out


def render_spec(spec: Spec, width: int = 120) -> str:
    """What ``kvmlock spec show`` prints, as plain text (for tools and tests)."""
    return _text(spec_tables(spec), width)


def conformance_tables(conf: Conformance) -> list[Any]:
    t = Table(title=f"Conformance to {conf.source}")
    for col in ("line", "rule", "status", "edge (offending, or the evidence)"):
        t.add_column(col, overflow="fold")
    t.add_column("where", no_wrap=True)  # file:line must stay copyable
    for r in conf.results:
        edge = " => ".join(e.show() for e in r.path) or r.detail
        where = "\n".join(e.where for e in r.path if e.where)
        t.add_row(str(r.rule.line), r.rule.describe(),
                  f"[{_STYLE[r.status]}]{r.status}[/]", edge, where)
    for p in conf.protects:
        t.add_row(str(p.entry.line), p.describe(), f"[{_STYLE[p.status]}]{p.status}[/]",
                  p.detail, "\n".join(p.where))
    types = Table(title="Types (Reference entry vs the run's lock)")
    for col in ("lock", "documented", "run", "status"):
        types.add_column(col)
    for tr in conf.types:
        types.add_row(tr.entry.name, tr.entry.type_text, tr.actual or "-",
                      f"[{_STYLE[tr.status]}]{tr.status}[/]")
    out: list[Any] = [t, types]
    if conf.undocumented:
        u = Table(title="Locks in the run that the document does not mention")
        u.add_column("lock")
        u.add_column("kind")
        for name, kind in conf.undocumented:
            u.add_row(name, kind)
        out.append(u)
    if conf.unmentioned:
        um = Table(title="Dependencies between documented locks that no rule mentions")
        um.add_column("dependency")
        for e in conf.unmentioned:
            um.add_row(e.show())
        out.append(um)
    accepted = [(f"line {r.rule.line}: {r.rule.describe()}", r.accepted)
                for r in conf.results if r.status == ACCEPTED]
    accepted += [(f"type of {t.entry.name}", t.accepted) for t in conf.types
                 if t.status == ACCEPTED]
    if accepted:
        a = Table(title="Accepted violations (known, with a reason; not failed on)")
        a.add_column("violation", overflow="fold")
        a.add_column("reason", overflow="fold")
        for what, why in accepted:
            a.add_row(what, why)
        out.append(a)
    if conf.not_understood:
        out.append(_unread_table("Sentences not understood (not checked)", conf.not_understood))
    c = conf.counts()
    bad_types = sum(1 for tr in conf.types if tr.status == VIOLATED)
    for why in conf.incomplete:
        out.append(f"incomplete: {why}")
    verdict = "OK" if conf.ok else ("VIOLATED" if conf.violations or bad_types else "INCOMPLETE")
    out.append(
        f"{verdict}: {c[HELD]} held, {c[VIOLATED]} violated, "
        f"{c[NOT_EXERCISED]} not exercised, {c[UNCHECKED]} unchecked, {c[ACCEPTED]} accepted; "
        f"{bad_types} type mismatch(es); {len(conf.undocumented)} undocumented lock(s); "
        f"{len(conf.not_understood)} sentence(s) not understood"
    )
    return out


def render_conformance(conf: Conformance, width: int = 120) -> str:
    """What ``kvmlock spec check`` prints, as plain text (``kvmlock verify --spec`` shows it)."""
    return _text(conformance_tables(conf), width)


def diff_tables(d: Any, reasons: bool = True) -> list[Any]:
    """``kvmlock spec diff``: one row per rule change, with what it means for a graph; and,
    unless ``reasons`` is false (the caller says them already), why the list may be short."""
    t = Table(title=f"Rule changes from {d.old.source} to {d.new.source}")
    for col in ("change", "old rule (line)", "new rule (line)", "what it means for a graph"):
        t.add_column(col, overflow="fold")
    graph = any(c.verdicts for c in d.changes)
    if graph:
        t.add_column("on the graph: old -> new")
    for c in d.changes:
        row = [c.kind, f"{c.old.describe()} ({c.old.line})" if c.old else "",
               f"{c.new.describe()} ({c.new.line})" if c.new else "", c.meaning]
        if graph:
            row.append(" -> ".join(c.verdicts) if c.verdicts else "")
        t.add_row(*row)
    out: list[Any] = [t, f"{len(d.changes)} rule change(s)"]
    out += [f"incomplete: {why}" for why in d.incomplete] if reasons else []
    return out


def lint_tables(spec: Spec, findings: list[Finding]) -> list[Any]:
    out: list[Any] = []
    if findings:
        t = Table(title=f"Contradictions in {spec.source}")
        for col in ("kind", "lines", "finding"):
            t.add_column(col, overflow="fold")
        for f in findings:
            t.add_row(f.kind, ", ".join(map(str, f.lines)), f.message)
        out.append(t)
    gaps = undeclared(spec)
    if gaps:
        out.append("Named in rules but without a Reference entry: " + ", ".join(gaps))
    for w in spec.warnings:
        out.append(f"reStructuredText warning: {w}")
    if spec.not_understood:
        out.append(f"{len(spec.not_understood)} sentence(s) not understood "
                   "(see `kvmlock spec show`)")
    out.append(f"{len(findings)} contradiction(s)" if findings else "no contradictions")
    return out


# --------------------------------------------------------------------------- Reference writer


def render_reference(locks: Iterable[Any] | None = None) -> str:
    """A Reference section in locking.rst's layout.

    ``locks`` defaults to the KVM model's: the Reference section of
    :func:`kvmlock.spec.design.render_model_doc` (kinds and the Protects items naming data
    from the code, the rest from the model's own document). Otherwise each item needs
    ``name``, ``type`` (a C type or a lockdep kind), ``arch``, ``protects`` (a string or a
    sequence) and ``comment``.
    """
    if locks is None:
        from kvmlock.spec.design import render_model_doc

        text = render_model_doc()
        body = text[text.index("``", text.index("Reference\n")):]
    else:
        body = "\n".join(line for d in locks
                          for line in _entry_lines(d.name, d.type, d.arch, d.protects, d.comment))
    return "Reference\n---------\n\n" + body


def reference_entries(entries: Iterable[Any], kinds: dict[str, str]) -> str:
    """Reference entries (``RefEntry``-like: name, arch, protects, comment), typed by ``kinds``."""
    out: list[str] = []
    for e in entries:
        out += _entry_lines(e.name, kinds[e.name], e.arch, e.protects, e.comment)
    return "\n".join(out)


def _entry_lines(name: str, typ: str, arch: str, protects: Any, comment: str) -> list[str]:
    head = f"``{name}``"
    lines = [head, "^" * len(head), ""]
    typ = typ if typ in KIND_TYPES.values() else KIND_TYPES.get(typ, typ)
    lines.append(f":Type:         {typ}")
    lines.append(f":Arch:         {arch or 'any'}")
    prot = [protects] if isinstance(protects, str) else list(protects)
    wrap = functools.partial(textwrap.wrap, width=63)
    if len(prot) == 1:
        w = wrap(" ".join(prot[0].split()))
        lines.append(f":Protects:     {w[0]}")
        lines += [" " * 15 + x for x in w[1:]]
    elif prot:
        for i, p in enumerate(prot):
            w = wrap(" ".join(p.split()), width=61)
            lines.append((":Protects:     - " if i == 0 else " " * 15 + "- ") + w[0])
            lines += [" " * 17 + x for x in w[1:]]
    if comment:
        w = wrap(" ".join(comment.split()))
        lines.append(f":Comment:      {w[0]}")
        lines += [" " * 15 + x for x in w[1:]]
    lines.append("")
    return lines
