"""``kvmlock splat``: read kernel lockdep reports; judge them against a document; explore them.

Exit codes are :data:`EXIT_STATUS` (shown by ``--help``); 2 means "no verdict to trust" as it
does for ``kvmlock spec`` (see :mod:`kvmlock.spec.cli` for why one status serves both causes).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from kvmlock import spec as _spec
from kvmlock.spec.inputs import decode, read_text
from kvmlock.splat.judge import judge, spelling
from kvmlock.splat.parse import read_log
from kvmlock.splat.program import explore_splat
from kvmlock.splat.rcu import judge_rcu, surroundings
from kvmlock.splat.render import render, to_dict

EXIT_STATUS = """\
exit status:
  0  every report read whole; nothing violates --doc; --explore found no deadlock
  1  a dependency violates --doc, or --explore reproduced a deadlock
  2  no verdict to trust: a report cut short, a document not read whole, an exploration that
     did not finish, a suspicious-RCU report that does not say what it read (--json:
     "complete": false, with "problems" and "document_incomplete"), or the input could not be
     used (one line on standard error; --json: "error")
  3  no lockdep report in the input"""

#: a kernel log larger than this is not a splat someone pasted; refuse instead of crawling
MAX_BYTES = 64 * 1024 * 1024


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmlock splat",
        description="Read lockdep reports from a kernel log, a mail or a commit message.",
        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", default="-", help="the log (default: standard input)")
    p.add_argument("--json", action="store_true", help="print the reading as JSON")
    p.add_argument("--doc", help="judge every dependency against this locking document")
    p.add_argument("--explore", action="store_true",
                   help="run the chain as a program under the explorer (lock kinds from --doc)")
    p.add_argument("--stacks", action="store_true", help="print each chain link's stack")
    return p


def _read(path: str) -> str:
    if path == "-":
        raw = getattr(sys.stdin, "buffer", None)  # a text stream (tests, embedding) has none
        data = raw.read(MAX_BYTES + 1) if raw else sys.stdin.read(MAX_BYTES + 1).encode()
        if len(data) > MAX_BYTES:
            raise _spec.SpecError(f"standard input is over {MAX_BYTES // 2**20} MiB; cut the "
                                  "log around the report")
        return decode(data, "standard input", "kernel log", lenient=True)
    return read_text(path, "kernel log", MAX_BYTES, lenient=True,
                     why_limit="cut the log around the report")


#: a dependency-chain link of a report, "-> #1 (&kvm->srcu){.+.+}-{0:0}:"
_LINK = re.compile(r"-> #\d+ \(\S+\)\{")


def _why_none(text: str) -> str:
    """What the user may have pasted instead of a report."""
    if not text.strip():
        return " (it is empty)"
    if _LINK.search(text):
        return (" (it holds dependency-chain links without the report's headline and locks, as "
                "a commit message quoting part of a report does; give the whole report)")
    return ""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        text = _read(args.file)
        doc = _spec.load(args.doc) if args.doc else None
    except (ValueError, OSError, _spec.SpecError) as exc:
        if args.json:
            print(json.dumps({"complete": False, "error": str(exc)}, indent=1))
        print("kvmlock splat: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    splats = read_log(text)
    spell = spelling(doc)
    source = "standard input" if args.file == "-" else args.file
    if not splats:
        if args.json:
            print(json.dumps({"count": 0, "reports": [], "kind": None, "acquiring": None,
                              "holding": [], "violations": []}, indent=1))
        print(f"kvmlock splat: no lockdep report found in {source}{_why_none(text)}",
              file=sys.stderr)
        return 3
    failed = False
    objs, texts = [], []
    declared = doc.declared_kinds() if doc else {}
    around = surroundings(text)
    # what the document failed to say matters for the lock-order facts a report states
    ordered = any(sp.dependencies() for sp in splats)
    unread = doc.incomplete() if doc is not None and ordered else []
    for sp, lines in zip(splats, around, strict=True):
        deps = judge(sp, doc) if doc else sp.dependencies()
        outcome = explore_splat(sp, declared, spell=spell) if args.explore else None
        rcu = judge_rcu(sp, lines, doc) if sp.kind == "suspicious_rcu" else None
        if rcu is not None and rcu.data is None and doc is not None:
            sp.problems.append("the report does not say which protected pointer it read (no "
                               "accessor in it or around it), so it was not judged")
        failed |= any(d.verdict == "violated" for d in deps)
        failed |= bool(outcome and outcome.deadlock)
        failed |= bool(rcu and rcu.verdict == "violated")
        obj = to_dict(sp, deps, spell, outcome)
        txt = render(sp, deps, spell, outcome, stacks=args.stacks, judged=doc is not None)
        if rcu is not None:
            obj["protected_data"] = rcu.to_dict()
            txt += "\n" + rcu.render(spell)
        # one verdict for words, JSON and exit status: a report read whole, judged against a
        # document read whole, and (with --explore) explored to the end
        obj["document_incomplete"] = unread
        obj["complete"] = not sp.problems and not unread and (outcome is None or outcome.complete)
        objs.append(obj)
        texts.append(txt)
    complete = all(obj["complete"] for obj in objs)
    if args.json:
        top = dict(objs[0])
        top.update({"count": len(objs), "reports": objs, "complete": complete,
                    "violations": list(dict.fromkeys(v for o in objs for v in o["violations"]))})
        if doc is not None:
            top["document"] = doc.source
        print(json.dumps(top, indent=1))
    else:
        head = f"{len(splats)} report(s) in {source}"
        if doc is not None:
            head += f", judged against {doc.source}"
        print(head + "\n")
        print("\n\n".join(texts))
        for why in unread:
            print(f"document incomplete: {why}")
    if failed:
        return 1
    return 0 if complete else 2
