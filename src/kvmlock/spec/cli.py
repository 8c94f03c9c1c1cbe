"""``kvmlock spec``: show, lint, check and diff locking.rst-style documents; render the Reference.

Exit codes are :data:`EXIT_STATUS` (shown by ``--help``). 2 stands for both "incomplete" and "the
input could not be used" on purpose: either way there is no verdict to trust, which is what a
gate needs to know, and 2 is what argparse already returns for a bad command line; ``--json``
tells them apart (``"error"`` for unusable input, ``"incomplete"`` reasons otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from kvmlock import spec as _spec
from kvmlock.spec.accept import apply as _accept
from kvmlock.spec.accept import load_waivers
from kvmlock.spec.design import model_undeclared, render_model_doc
from kvmlock.spec.diff import diff as _diff
from kvmlock.spec.render import (
    conformance_tables,
    diff_tables,
    lint_tables,
    spec_tables,
)

OK, FAILED, INCOMPLETE = 0, 1, 2

EXIT_STATUS = """\
exit status:
  0  OK: the whole document was read, the graph exercised its rules, nothing is violated
  1  a rule is violated (or, for lint, a contradiction found)
  2  no verdict to trust: the verdict is incomplete (rules or rule-like sentences not read, a
     rule that could not be decided, a graph that exercised no rule; --json: "complete": false
     and the "incomplete" reasons), or the input could not be used (one line on standard
     error; --json: "error")"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmlock spec",
        description="Read a locking.rst-style document and check a lock graph against it.",
        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print the rules and the Reference table read from DOC")
    s.add_argument("doc")
    s = sub.add_parser("lint", help="report contradictions inside DOC")
    s.add_argument("doc")
    s = sub.add_parser(
        "check", help="check the KVM model's run, a saved graph or a kernel's dump against DOC"
    )
    s.add_argument("doc")
    s.add_argument("--graph", help="a saved dependency graph (JSON) instead of running the model")
    s.add_argument("--proc-lockdep", metavar="FILE",
                   help="a /proc/lockdep dump: check a running kernel's graph")
    s.add_argument("--chains", metavar="FILE",
                   help="with --proc-lockdep: the matching /proc/lockdep_chains dump")
    s.add_argument("--accept", metavar="FILE",
                   help="known violations, one 'A -> B: reason' a line; fail only on new ones")
    s.add_argument("--save-graph", metavar="FILE", help="also save the graph that was checked")
    s.add_argument("--arch", help="only rules for this architecture (plus general ones)")
    s.add_argument("--json", action="store_true", help="print the verdict as JSON")
    s = sub.add_parser("diff", help="the rule changes between two versions of a document")
    s.add_argument("old")
    s.add_argument("new")
    s.add_argument("--graph", help="also show how each change's verdict moves on this graph")
    s.add_argument("--json", action="store_true", help="print the changes as JSON")
    s = sub.add_parser("render", help="write the model's locking document, its Reference "
                                      "section regenerated from the locks the model builds and "
                                      "the data it declares each one protects")
    s.add_argument("-o", "--output", help="file to write (default: standard output)")
    return p


def _graph(args: argparse.Namespace) -> Any:
    if args.proc_lockdep:
        from kvmlock.spec.procfs import load_proc

        return load_proc(args.proc_lockdep, args.chains)
    if args.chains:
        raise _spec.SpecError("--chains goes with --proc-lockdep")
    return _spec.load_graph(args.graph) if args.graph else _spec.model_graph()


def _check(args: argparse.Namespace, con: Console) -> int:
    doc = _spec.load(args.doc)
    waivers = load_waivers(args.accept) if args.accept else []
    graph = _graph(args)
    if args.save_graph:
        _spec.save_graph(graph, args.save_graph)
    # the model's own run: its own document is the other half of the comparison, and the
    # model says why it declares no data for some Protects items
    model = not (args.graph or args.proc_lockdep)
    conf = _spec.check(doc, graph, arch=args.arch,
                       reasons=model_undeclared() if model else None)
    unused = _accept(conf, waivers) if waivers else []
    if args.proc_lockdep:
        from kvmlock.spec.edges import UNDOCUMENTED, judge_edge

        g = _spec.view(graph)
        documented = set(doc.locks())
        conf.unmentioned = [e for e in g.edges if e.src in documented and e.dst in documented
                            and judge_edge(doc, e)[0] == UNDOCUMENTED]
    d = _diff(doc, _spec.model_spec(), graph) if model else None
    if args.json:
        out = conf.to_dict()
        out["unused_accepts"] = [{"line": w.line, "what": w.what} for w in unused]
        if d is not None:
            out["model_document"] = d.to_dict()
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    else:
        if d is not None:
            con.print(f"Rules that differ from {doc.source} to the model's own document "
                      f"({d.new.source}), with each one's verdict on the model's run:")
            for t in diff_tables(d, reasons=False):
                con.print(t)
        for t in conformance_tables(conf):
            con.print(t)
        for w in unused:
            con.print(f"stale accept: line {w.line} of {args.accept} ({w.what}) matches no "
                      "violation any more; remove it, or it will hide the next one")
    if conf.violations or any(t.status == "violated" for t in conf.types):
        return FAILED
    return OK if conf.ok else INCOMPLETE


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    # a pipe or a file gets wide tables (rich would fold them to 80 columns) unless COLUMNS says
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    con = Console(highlight=False, width=width)
    try:
        if args.cmd == "render":
            text = render_model_doc()
            if args.output:
                Path(args.output).write_text(text, encoding="utf-8")
                con.print(f"wrote {args.output}")
            else:
                sys.stdout.write(text)
            return OK
        if args.cmd == "check":
            return _check(args, con)
        if args.cmd == "diff":
            d = _diff(_spec.load(args.old), _spec.load(args.new),
                      _spec.load_graph(args.graph) if args.graph else None)
            if args.json:
                sys.stdout.write(json.dumps(d.to_dict(), indent=1) + "\n")
            else:
                for t in diff_tables(d):
                    con.print(t)
            return INCOMPLETE if d.incomplete else OK
        doc = _spec.load(args.doc)
        if args.cmd == "show":
            for t in spec_tables(doc):
                con.print(t)
            return OK if not doc.incomplete() else INCOMPLETE
        findings = _spec.lint(doc)
        for t in lint_tables(doc, findings):
            con.print(t)
        return FAILED if findings else (OK if not doc.incomplete() else INCOMPLETE)
    except (_spec.SpecError, _spec.ModelUnavailable, RuntimeError, ValueError) as exc:
        if getattr(args, "json", False):
            sys.stdout.write(json.dumps({"ok": False, "complete": False, "error": str(exc)},
                                        indent=1) + "\n")
        # one line, whatever the terminal's width or the message's own line breaks
        print("kvmlock spec: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return INCOMPLETE
