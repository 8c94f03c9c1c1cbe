"""``kvmlock verify``: explore every scenario and say whether each met its expectation.

A *correct* scenario must explore clean: no deadlock, no failed invariant, no lockdep report,
over the whole schedule space or over the bound it declares (the bound is printed, so a bounded
"pass" is never mistaken for a proof). A *broken* scenario must be *caught*, and caught for the
right reason: the failure's kind must be the one the scenario expects (and, for lockdep, the
report kind too) -- a broken variant that fails some other way is itself a failed expectation.

:func:`collect_graph` is the other job: run every correct scenario once on real threads (plus a
short real-thread workload when the model provides one) under one isolated lockdep, and return
the dependency graph -- what ``kvmlock spec`` checks a document against.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import difflib
import fnmatch
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmlock import lockdep
from kvmlock.explore import gcpace
from kvmlock.lockdep import state as _ld_state
from kvmlock.scenarios.registry import SCENARIOS, Scenario

__all__ = ["AuditOutcome", "Outcome", "audit_scenarios", "audit_selection", "collect_graph",
           "main", "run_scenario", "select"]

#: bounds applied when a scenario does not set its own (keeps `kvmlock verify` to minutes).
#: They count executions and steps, never seconds: a verdict must not depend on how loaded the
#: machine is. A time limit is only the user's (``--timeout``), and a row it cuts short is
#: reported incomplete.
DEFAULT_OPTIONS: dict[str, Any] = {"max_runs": 1000, "max_steps": 5000}

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the code ``--audit`` traces: the model and its scenarios
AUDIT_PATHS: tuple[str, ...] = (os.path.join(_PKG, "kvm"), os.path.join(_PKG, "scenarios"))
#: executions audited per scenario (the first ones of its DPOR search)
AUDIT_RUNS = 20


@dataclass
class Outcome:
    """What one scenario's exploration came to."""

    scenario: Scenario
    met: bool
    result: str  # short human verdict: "pass", "caught: lockdep circular", "MISSED", ...
    runs: int = 0
    exhausted: bool = False
    seconds: float = 0.0
    bound: str = ""
    failure: Any = None  # the explorer's failure object (first one), if any
    failures: list[Any] = field(default_factory=list)
    error: str = ""
    strategy: str = ""
    timed_out: bool = False  # stopped by the wall-clock limit before its own bound

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def complete(self) -> bool:
        """Whether the verdict reached the row's own bound: a pass cut short by the clock is
        not evidence of the same weight on a loaded machine and a quiet one."""
        return not (self.met and self.timed_out and self.failure is None)

    def to_dict(self) -> dict[str, Any]:
        """A plain record for tools (``kvmlock verify --json``)."""
        sc = self.scenario
        f = self.failure
        return {
            "name": sc.name, "rule": sc.rule, "variant": sc.variant, "expect": sc.expect,
            "lockdep_kind": sc.lockdep_kind, "invariant": sc.invariant,
            "strategy": self.strategy or sc.strategy, "met": self.met, "result": self.result,
            "executions": self.runs, "exhausted": self.exhausted, "complete": self.complete,
            "seconds": round(self.seconds, 4), "bound": self.bound, "error": self.error,
            "failure": None if f is None else {
                "kind": getattr(f, "kind", None), "schedule": getattr(f, "schedule", None),
                "message": str(getattr(f, "message", "")),
                "lockdep_kinds": sorted(_failure_lockdep_kinds(f)),
            },
        }


def _failure_lockdep_kinds(f: Any) -> set[str]:
    """The kinds of the lockdep reports a failure carries (a "lockdep" failure has one at least)."""
    return {r.kind for r in f.lockdep_reports}


def _matches(sc: Scenario, f: Any) -> bool:
    if f.kind != sc.expect:
        return False
    if sc.expect == "lockdep" and sc.lockdep_kind:
        return sc.lockdep_kind in _failure_lockdep_kinds(f)
    return True


def _describe(f: Any) -> str:
    kind = getattr(f, "kind", "?")
    extra = sorted(_failure_lockdep_kinds(f)) if kind == "lockdep" else []
    return f"{kind} {' '.join(extra)}".strip()


def _bound(opts: dict[str, Any], res: Any) -> str:
    """How far the exploration went, in a few words: the bound is part of the verdict."""
    pb = opts.get("preemption_bound")
    within = f", pb<={pb}" if pb is not None else ""
    stopped = getattr(res, "stopped", "") if res is not None else ""
    if res is not None and getattr(res, "exhausted", False):
        return "exhaustive" + within
    if stopped == "failure":
        return "first failure"
    if stopped == "max_runs":
        return f"max_runs={opts.get('max_runs')}{within}"
    if stopped == "timeout":
        return f"timeout={opts.get('timeout')}s{within}"
    return f"{stopped or 'not exhausted'}{within}"


def bounded(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Passing rows whose exploration stopped at the row's own bound of executions before the
    schedule space was exhausted: each is a pass *within that bound*, not over every
    schedule."""
    return [o for o in outcomes
            if o.met and o.failure is None and o.scenario.expect == "pass"
            and not o.exhausted and not o.timed_out and not o.error]


def preemption_bounded(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Passing rows explored exhaustively only among schedules with a bounded number of
    preemptions: every order within the bound was tried, orders beyond it were not."""
    return [o for o in outcomes
            if o.met and o.failure is None and o.scenario.expect == "pass"
            and o.exhausted and "pb<=" in o.bound]


def summary(outcomes: Sequence[Outcome], seconds: float) -> str:
    """The closing line: expectations met, and which passes stopped at their declared bound.

    A declared bound is part of the row's expectation, so it does not change the exit status;
    it is named so that "met" is never read as "every schedule explored". That holds for a
    preemption bound too: its rows are counted, and named in the table's bound column.
    """
    bad = sum(not o.met for o in outcomes)
    text = f"{len(outcomes) - bad}/{len(outcomes)} expectations met in {seconds:.1f}s"
    cap = bounded(outcomes)
    if cap:
        rows = ", ".join(f"{o.name} ({o.bound})" for o in cap)
        text += (f"; {len(cap)} passing row(s) bounded by their own run limit, not "
                 f"exhausted: {rows}")
    pb = preemption_bounded(outcomes)
    if pb:
        text += (f"; {len(pb)} passing row(s) exhaustive only up to a preemption bound "
                 f"(pb<=N in the bound column)")
    return text


@contextlib.contextmanager
def _wait_types() -> Iterator[None]:
    """The model is checked as PREEMPT_RT would run it: lockdep's wait-context check is on (a
    spinlock_t or sleeping lock under a raw spinlock, in a hard-IRQ handler or with interrupts
    disabled by hand is reported)."""
    was = _ld_state.OPTIONS["raw_nesting"]
    lockdep.prove_raw_nesting(True)
    try:
        yield
    finally:
        lockdep.prove_raw_nesting(was)


def run_scenario(sc: Scenario, *, timeout: float | None = None,
                 strategy: str | None = None, workers: int = 1,
                 backend: str = "process") -> Outcome:
    """Explore ``sc`` with its strategy and bounds; judge the result against its expectation.

    ``strategy`` overrides the scenario's own (e.g. "dfs" to cross-check a DPOR verdict);
    ``timeout`` caps the seconds spent on it. ``workers``/``backend`` split its exploration
    (see ``explore.check``); a search that cannot be split (sampling, or DPOR under a
    preemption bound) runs in this process.
    """
    from kvmlock import explore

    opts = {**DEFAULT_OPTIONS, **sc.options}
    if timeout is not None:
        opts["timeout"] = timeout
    strat = strategy or sc.strategy
    if strat in ("pct", "random"):
        opts.pop("preemption_bound", None)
    opts.setdefault("stop_on_first", True)
    opts.setdefault("progress", False)
    if strat == "dfs" or (strat == "dpor" and opts.get("preemption_bound") is None):
        opts.update(workers=workers, backend=backend)
    t0 = time.perf_counter()
    try:
        with _wait_types():
            res = explore.check(sc.body, strategy=strat, **opts)
    except Exception as exc:  # a crash of the explorer on this body is a failed expectation
        return Outcome(sc, False, "ERROR", seconds=time.perf_counter() - t0,
                       bound=_bound(opts, None), error=f"{type(exc).__name__}: {exc}",
                       strategy=strat)
    out = _judge(sc, res, opts, time.perf_counter() - t0)
    out.strategy = strat
    return out


def _judge(sc: Scenario, res: Any, opts: dict[str, Any], secs: float) -> Outcome:
    failures = list(getattr(res, "failures", []) or [])
    runs = int(getattr(res, "runs", 0))
    exhausted = bool(getattr(res, "exhausted", False))
    bound = _bound(opts, res)
    timed_out = not exhausted and getattr(res, "stopped", "") == "timeout"
    if sc.expect == "pass":
        if failures:
            f = failures[0]
            return Outcome(sc, False, f"FAILED: {_describe(f)}", runs, exhausted, secs, bound,
                           f, failures)
        verdict = "pass" if exhausted else "pass (time limit)" if timed_out else "pass (bounded)"
        return Outcome(sc, True, verdict, runs, exhausted, secs, bound, timed_out=timed_out)
    hit = next((f for f in failures if _matches(sc, f)), None)
    if hit is not None:
        return Outcome(sc, True, f"caught: {_describe(hit)}", runs, exhausted, secs, bound,
                       hit, failures)
    wanted = " ".join(x for x in (sc.expect, sc.lockdep_kind) if x)
    if failures:
        return Outcome(sc, False, f"WRONG FAILURE: {_describe(failures[0])} (expected {wanted})",
                       runs, exhausted, secs, bound, failures[0], failures)
    return Outcome(sc, False, f"MISSED: no {wanted} found", runs, exhausted, secs, bound,
                   timed_out=timed_out)


def select(names: Iterable[str]) -> list[Scenario]:
    """Scenarios by exact name, dotted prefix (``srcu`` -> ``srcu.*``) or glob pattern.

    An unknown name is a :class:`ValueError` listing the closest registered names.
    """
    names = list(names)
    if not names:
        return list(SCENARIOS.values())
    chosen: dict[str, Scenario] = {}
    for n in names:
        if not isinstance(n, str) or not n:
            raise ValueError(f"scenario name must be a non-empty string, got {n!r}")
        hits = [s for k, s in SCENARIOS.items()
                if k == n or k.startswith(n + ".") or fnmatch.fnmatchcase(k, n)]
        if not hits:
            close = difflib.get_close_matches(n, list(SCENARIOS), n=5, cutoff=0.4)
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise ValueError(f"no scenario named {n!r}{hint} "
                             f"(`kvmlock verify --list` shows all {len(SCENARIOS)})")
        for s in hits:
            chosen.setdefault(s.name, s)
    return list(chosen.values())


def _run_on_thread(sc: Scenario, limit: float) -> None:
    """Run a scenario body on a real thread; a body that does not finish is an error, not a hang."""
    box: list[BaseException] = []

    def run() -> None:
        try:
            sc.body()
        except BaseException as exc:  # handed back to the caller below
            box.append(exc)

    # in the caller's (isolated) lockdep world: a thread's own context starts empty
    t = threading.Thread(target=contextvars.copy_context().run, args=(run,), name=sc.name,
                         daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        raise RuntimeError(f"correct scenario {sc.name} did not finish within {limit:g}s on "
                           f"real threads (left running as a daemon thread)")
    if box:
        exc = box[0]
        raise RuntimeError(f"correct scenario {sc.name} failed on real threads: "
                           f"{type(exc).__name__}: {exc}") from exc


def collect_graph(*, workload_seconds: float = 0.5, limit: float = 30.0) -> lockdep.DepGraph:
    """Run each correct scenario once on real threads (and a short workload); return the graph.

    One isolated lockdep sees everything, so the graph holds every dependency the correct
    model makes. A correct body that fails (or does not finish within ``limit`` seconds) on
    threads raises RuntimeError: the graph of a model that does not work would be a graph of
    the wrong thing.
    """
    with lockdep.isolated():
        for sc in SCENARIOS.values():
            if sc.variant == "correct" and sc.expect == "pass":
                _run_on_thread(sc, limit)
        try:
            from kvmlock.kvm.workload import run_workload
        except ImportError:
            run_workload = None
        if run_workload is not None and workload_seconds > 0:
            run_workload(vcpus=2, seconds=workload_seconds, quiet=True)
        return lockdep.graph()


# ---------------------------------------------------------------------- output

@dataclass
class AuditOutcome:
    """The race audit of one scenario (see ``kvmlock.explore.audit``)."""

    scenario: Scenario
    audit: Any  # explore.audit.Audit
    seconds: float = 0.0
    error: str = ""

    @property
    def verdict(self) -> str:
        """What the audit came to; "clean in sample" only ever covers the executions it ran."""
        return "error" if self.error else "findings" if self.audit.findings else \
            "clean in sample"

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "verdict": self.verdict,
                "coverage": f"a sample of {self.audit.runs} execution(s), the first of the "
                            f"row's DPOR search: not every execution",
                "proof": False, "runs": self.audit.runs,
                "accesses": self.audit.accesses, "seconds": round(self.seconds, 3),
                "findings": [f.to_dict() for f in self.audit.findings],
                "excused": [{"location": k[0], "why": k[1], "accesses": n}
                            for k, n in sorted(self.audit.excused.items())],
                "error": self.error}


def audit_selection(names: Iterable[str]) -> list[Scenario]:
    """The correct scenarios among ``names`` (all of them when none is named): a broken
    variant is expected to fail, so whether its search could be exhaustive does not matter."""
    chosen = [s for s in select(names) if s.expect == "pass"]
    if not chosen:
        raise ValueError("no correct scenario in that selection: the audit checks the rows "
                         "whose pass rests on an exhausted search")
    return chosen


def audit_scenarios(chosen: Sequence[Scenario], runs: int = AUDIT_RUNS) -> list[AuditOutcome]:
    """Audit each scenario's first ``runs`` DPOR executions for plain accesses of shared
    data that no visible operation orders (the model's and the scenarios' code traced)."""
    from kvmlock.explore.audit import Audit, audit

    outs = []
    for sc in chosen:
        t0 = time.perf_counter()
        try:
            with _wait_types():
                res = audit(sc.body, AUDIT_PATHS, runs=runs,
                            max_steps=sc.options.get("max_steps", DEFAULT_OPTIONS["max_steps"]))
        except Exception as exc:  # a crash on this body leaves its audit undone: said so
            outs.append(AuditOutcome(sc, Audit(), time.perf_counter() - t0,
                                     f"{type(exc).__name__}: {exc}"))
            continue
        outs.append(AuditOutcome(sc, res, time.perf_counter() - t0))
    return outs


def _audit_main(args: argparse.Namespace, console: Any) -> int:
    """``--audit``: 1 when some scenario has an unordered conflicting pair of plain accesses,
    2 when none has but some audit could not run."""
    try:
        chosen = audit_selection(args.names)
    except ValueError as exc:
        console.print(f"kvmlock verify: {exc}", highlight=False, markup=False)
        return 2
    t0 = time.perf_counter()
    outs = audit_scenarios(chosen, args.audit_runs)
    found = [o for o in outs if o.audit.findings]
    broken = [o for o in outs if o.error]
    if args.json:
        print(json.dumps([o.to_dict() for o in outs], indent=2))
        return 1 if found else 2 if broken else 0
    distinct: set[tuple] = set()
    excused: dict[tuple[str, str], int] = {}
    for o in outs:
        if o.error:
            console.print(f"{o.scenario.name}: audit ERROR: {o.error}", highlight=False,
                          markup=False)
        if o.audit.findings:
            console.print(f"{o.scenario.name}: {len(o.audit.findings)} unordered pair(s) of "
                          f"plain accesses", highlight=False, markup=False)
            for f in o.audit.findings:
                console.print(f"  {f}", highlight=False, markup=False, soft_wrap=True)
                distinct.add(f.key())
        for k, n in o.audit.excused.items():
            excused[k] = excused.get(k, 0) + n
    if args.verbose_audit and excused:
        console.print("excused (declared benign where the data is):", highlight=False,
                      markup=False)
        for (loc, why), n in sorted(excused.items()):
            console.print(f"  {loc}: {n} access(es): {why}", highlight=False, markup=False,
                          soft_wrap=True)
    runs = sum(o.audit.runs for o in outs)
    accesses = sum(o.audit.accesses for o in outs)
    console.print(f"audit: {len(outs)} correct scenario(s), {runs} executions (the first "
                  f"{args.audit_runs} of each row's DPOR search at most), {accesses} plain "
                  f"accesses traced, {len(found)} scenario(s) with findings ({len(distinct)} "
                  f"distinct), {sum(excused.values())} access(es) to {len(excused)} declared "
                  f"benign location(s) excused, in {time.perf_counter() - t0:.1f}s",
                  highlight=False, markup=False)
    if broken:
        console.print(f"incomplete: {len(broken)} audit(s) could not run", highlight=False,
                      markup=False)
    # a race that only an execution left unrun shows is missed: never worded as a proof
    if found:
        console.print(f"verdict: {len(distinct)} unordered pair(s) found in a sample of "
                      f"{runs} executions; a sample, so more may hide in executions not run",
                      highlight=False, markup=False)
    else:
        console.print(f"verdict: no unordered pair in a sample of {runs} executions"
                      f"{' (some audits did not run)' if broken else ''}: a sample of "
                      f"executions, not a proof", highlight=False, markup=False)
    return 1 if found else 2 if broken else 0


def _table(outcomes: Sequence[Outcome], width: int = 150) -> Any:
    from rich import box
    from rich.table import Table

    narrow = width < 120  # an ordinary terminal: no vertical rules, so every column fits
    t = Table(title="kvmlock verify", title_justify="left", show_lines=False,
              caption="pb<=N: every schedule with at most N preemptions was explored",
              caption_justify="left", box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD,
              pad_edge=not narrow, collapse_padding=narrow)
    widest = max((len(o.name) for o in outcomes), default=20)
    # The rule column takes what is left and never shrinks below a readable width; the
    # free-text columns fold, so a narrow terminal wraps cells instead of dropping a column.
    floor = 30 if not narrow else 22 if width >= 95 else 14
    t.add_column("rule", overflow="fold", min_width=min(widest, floor))
    for col, kw in (("variant", {"no_wrap": True}), ("strategy", {"no_wrap": True}),
                    ("executions", {"justify": "right", "no_wrap": True}),
                    ("time", {"justify": "right", "no_wrap": True}),
                    ("result", {"overflow": "fold"}), ("bound", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for o in outcomes:
        colour = "green" if o.met else "bold red"
        t.add_row(f"[bold]{o.name}[/]\n[dim]{o.scenario.rule}[/]", o.scenario.variant,
                  o.strategy or o.scenario.strategy, str(o.runs), f"{o.seconds:.2f}s",
                  f"[{colour}]{o.result}[/]", o.bound)
    return t


def _trace(o: Outcome, console: Any) -> None:
    f = o.failure
    if f is None:
        return
    console.rule(f"{o.name}: {o.result}")
    console.print(f"rule: {o.scenario.rule}", highlight=False)
    if o.scenario.invariant:
        console.print(f"invariant: {o.scenario.invariant}", highlight=False)
    schedule = getattr(f, "schedule", None)
    if schedule is not None:
        console.print(f"schedule: {schedule}", highlight=False)
    table = getattr(f, "trace_table", None)
    if callable(table):
        console.print(table(), highlight=False, markup=False)
    message = getattr(f, "message", "")
    if message:
        console.print(str(message), highlight=False, markup=False)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmlock verify",
        description="Explore every scenario of the KVM locking model: correct variants must "
                    "explore clean, broken variants must be caught for the right reason.",
        epilog="exit status: 0 every expectation met; 1 some expectation not met (or a mutant "
               "missed); 2 bad input, or a verdict left incomplete by --timeout")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="scenario names, dotted prefixes (srcu, order.leaves) or globs")
    p.add_argument("--trace", action="store_true",
                   help="print each caught or failing scenario's interleaving and report")
    p.add_argument("--spec", metavar="DOC",
                   help="also check the model's lock graph against a locking.rst-style DOC")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--timeout", type=_seconds, default=None,
                   help="seconds allowed per scenario (default: none, each scenario stops at "
                        "its own bound of executions; a passing row cut short by the time "
                        "limit makes the verdict incomplete)")
    p.add_argument("--strategy", choices=("dpor", "dfs", "pct", "random"), default=None,
                   help="explore every chosen scenario with this strategy instead of its own")
    p.add_argument("--json", action="store_true",
                   help="print one JSON record per scenario instead of the table")
    p.add_argument("-j", "--jobs", type=_jobs, default=None, metavar="N",
                   help="split each exhaustive exploration across N worker processes")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the workers as actors of the Ray cluster at ADDRESS ('auto': the "
                        "one started on this node; none given: a local instance); -j sets "
                        "how many (default: the cluster's CPUs)")
    p.add_argument("--audit", action="store_true",
                   help="race audit instead of verification: run each correct scenario a few "
                        "times tracing the model's plain data accesses, and report conflicting "
                        "pairs that no visible operation orders (the search cannot reorder "
                        "them, so its 'exhausted' would not be a proof); a sample of executions, "
                        "not a proof itself; NAMEs select scenarios")
    p.add_argument("--audit-runs", type=_runs, default=AUDIT_RUNS, metavar="N",
                   help=f"executions audited per scenario (default {AUDIT_RUNS})")
    p.add_argument("--verbose-audit", action="store_true",
                   help="with --audit, also list the accesses excused as declared benign")
    p.add_argument("--mutants", action="store_true",
                   help="apply each mutant of the model (one weakened protection) in turn and "
                        "require a correct scenario to fail; NAMEs then select mutants")
    return p


def _runs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--audit-runs wants a positive number, got {text!r}")
    return int(text)


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"-j wants a positive number of workers, got {text!r}")
    return n


def _mutants_main(args: argparse.Namespace, console: Any) -> int:
    """``--mutants``: the catalogue's table; 1 when a mutant is missed by every scenario, 2
    when none is but a pending one could not be applied (its protection is not shown needed)."""
    from kvmlock.scenarios import mutation

    try:
        chosen = mutation.select_mutants(args.names)
    except ValueError as exc:
        console.print(f"kvmlock verify: {exc}", highlight=False, markup=False)
        return 2
    if args.list:
        for m in chosen:
            state = f"pending: {m.pending}" if m.pending else m.where
            print(f"{m.name:32} {m.removes}  [{state}]")
        return 0
    t0 = time.perf_counter()
    verdicts = mutation.hunt_all(chosen, timeout=args.timeout)
    missed = [v for v in verdicts if v.status == "MISSED"]
    if args.json:
        print(json.dumps([v.to_dict() for v in verdicts], indent=2))
    else:
        console.print(mutation.table(verdicts, console.width))
        console.print(mutation.summary(verdicts, time.perf_counter() - t0), highlight=False)
    pending = [v.mutant.name for v in verdicts if v.status == "pending"]
    if pending and not missed and not args.json:
        console.print(f"incomplete: {len(pending)} protection(s) declared but not shown "
                      f"necessary (pending): {', '.join(pending)}", highlight=False)
    return 1 if missed else 2 if pending else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kvmlock verify``; 0 when every expectation is met."""
    from rich.console import Console

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=max(console.width, 150))  # logs and CI: do not squeeze
    with gcpace.settled():
        return _main(args, console)


def _main(args: argparse.Namespace, console: Any) -> int:
    if args.mutants:
        return _mutants_main(args, console)
    if args.audit:
        return _audit_main(args, console)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:55} {s.variant:8} expect={s.expect:10} {s.rule}")
        return 0
    try:
        chosen = select(args.names)
    except ValueError as exc:
        console.print(f"kvmlock verify: {exc}", highlight=False, markup=False)
        return 2
    workers, backend = args.jobs or 1, "process"
    if args.ray is not None:
        from kvmlock.explore import ray_backend

        try:
            ray = ray_backend.connect(args.ray or None)
        except Exception as exc:  # noqa: BLE001 - no Ray, or no cluster at that address
            console.print(f"kvmlock verify --ray: {type(exc).__name__}: {exc}",
                          highlight=False, markup=False)
            return 2
        workers, backend = args.jobs or int(ray.cluster_resources().get("CPU", 1)), "ray"
    t0 = time.perf_counter()
    outcomes = []
    with contextlib.ExitStack() as keep:
        if backend == "ray":  # (one set of actors for all the scenarios: see ray_backend)
            keep.enter_context(ray_backend.reuse_actors())
        for sc in chosen:
            outcomes.append(run_scenario(sc, timeout=args.timeout, strategy=args.strategy,
                                         workers=workers, backend=backend))
    bad = [o for o in outcomes if not o.met]
    cut = [o for o in outcomes if not o.complete]
    status = 1 if bad else 2 if cut else 0
    if args.json:
        print(json.dumps([o.to_dict() for o in outcomes], indent=2))
        return status
    console.print(_table(outcomes, console.width))
    for o in bad:
        if o.error:
            console.print(f"[bold red]{o.name}[/]: {o.error}", highlight=False)
    if args.trace:
        for o in outcomes:
            if o.failure is not None:
                _trace(o, console)
    console.print(summary(outcomes, time.perf_counter() - t0), highlight=False, markup=False)
    if cut:
        console.print(f"incomplete: {len(cut)} passing row(s) stopped at --timeout before their "
                      f"own bound ({', '.join(o.name for o in cut)}); re-run without --timeout "
                      "for a complete verdict", highlight=False, markup=False)
    if args.spec:
        try:
            from kvmlock.spec import conformance

            conf = conformance(args.spec)
        except (OSError, ValueError, RuntimeError) as exc:
            console.print(f"kvmlock verify --spec: {exc}", highlight=False, markup=False)
            return 2
        console.print(conf.render(), highlight=False, markup=False)
        if not conf.ok:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
