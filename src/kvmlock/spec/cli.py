"""``kvmlock spec``: show, lint and check locking.rst-style documents, render the Reference.

Exit codes: 0 fine, 1 a violation or a contradiction was found, 2 the input could not be used
(missing file, malformed document, no model to run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from kvmlock import spec as _spec
from kvmlock.spec.render import conformance_tables, lint_tables, render_reference, spec_tables


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmlock spec",
        description="Read a locking.rst-style document and check a lock graph against it.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print the rules and the Reference table read from DOC")
    s.add_argument("doc")
    s = sub.add_parser("lint", help="report contradictions inside DOC")
    s.add_argument("doc")
    s = sub.add_parser(
        "check", help="check the KVM model's run (or a saved graph) against DOC"
    )
    s.add_argument("doc")
    s.add_argument("--graph", help="a saved dependency graph (JSON) instead of running the model")
    s.add_argument("--save-graph", metavar="FILE", help="also save the graph that was checked")
    s.add_argument("--arch", help="only rules for this architecture (plus general ones)")
    s.add_argument("--json", action="store_true", help="print the verdict as JSON")
    s = sub.add_parser("render", help="write the Reference section from the model's locks")
    s.add_argument("-o", "--output", help="file to write (default: standard output)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    # a pipe or a file gets wide tables (rich would fold them to 80 columns) unless COLUMNS says
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    con = Console(highlight=False, width=width)
    try:
        if args.cmd == "render":
            text = render_reference()
            if args.output:
                Path(args.output).write_text(text, encoding="utf-8")
                con.print(f"wrote {args.output}")
            else:
                sys.stdout.write(text)
            return 0
        doc = _spec.load(args.doc)
        if args.cmd == "show":
            for t in spec_tables(doc):
                con.print(t)
            return 0
        if args.cmd == "lint":
            findings = _spec.lint(doc)
            for t in lint_tables(doc, findings):
                con.print(t)
            return 1 if findings else 0
        graph = _spec.load_graph(args.graph) if args.graph else _spec.model_graph()
        if args.save_graph:
            _spec.save_graph(graph, args.save_graph)
        conf = _spec.check(doc, graph, arch=args.arch)
        if args.json:
            sys.stdout.write(json.dumps(conf.to_dict(), indent=1) + "\n")
        else:
            for t in conformance_tables(conf):
                con.print(t)
        return 0 if conf.ok else 1
    except (_spec.SpecError, _spec.ModelUnavailable, RuntimeError) as exc:
        Console(stderr=True, highlight=False).print(f"kvmlock spec: error: {exc}", markup=False)
        return 2
