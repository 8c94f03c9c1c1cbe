"""What an exploration reports: how much it covered, and each failure with its schedule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("deadlock", "assertion", "exception", "lockdep", "hang", "blocked")


@dataclass
class Failure:
    """One failing execution.

    ``schedule`` replays it exactly with :func:`kvmlock.explore.replay`; ``message`` says what
    went wrong (the blocked tasks and what they wait for, the exception, the lockdep report);
    ``trace_table()`` re-runs the schedule with source tracking on and draws the CPU table.
    """

    kind: str
    schedule: str
    message: str
    task: str = ""
    where: str = ""
    steps: int = 0
    preemptions: int = 0
    lockdep_reports: list[Any] = field(default_factory=list)
    exception: BaseException | None = None
    shrunk_from: tuple[int, int] | None = None  # (preemptions, steps) before shrinking
    _render: Callable[[bool], str] | None = field(default=None, repr=False, compare=False)
    _table: str | None = field(default=None, repr=False, compare=False)

    def trace_table(self, setup: bool = False) -> str:
        """The failing execution as a CPU table; ``setup=True`` also lists, step by step, what
        the first task did before it started the others (folded into one row otherwise)."""
        if self._render is None:
            return "(no trace available)\n"
        if setup:
            return self._render(True)
        if self._table is None:
            self._table = self._render(False)
        return self._table

    def summary(self) -> str:
        where = f" at {self.where}" if self.where else ""
        return (f"{self.kind}{where} -- schedule {self.schedule!r} "
                f"({self.steps} steps, {self.preemptions} preemptions)")

    def __str__(self) -> str:
        return f"{self.summary()}\n{self.message}\n{self.trace_table()}"


@dataclass
class Result:
    """The outcome of :func:`kvmlock.explore.check`.

    ``exhausted`` is True when every execution the strategy and its bounds allow was run (for
    dpor: one per Mazurkiewicz trace; with ``preemption_bound``: within that bound); sampling
    strategies never exhaust. ``runs`` counts complete executions; ``pruned`` counts runs cut
    short because they could only repeat an equivalent execution already explored.
    """

    strategy: str
    runs: int = 0
    exhausted: bool = False
    failures: list[Failure] = field(default_factory=list)
    pruned: int = 0
    distinct: int | None = None
    elapsed: float = 0.0
    # "exhausted" | "failure" | "max_runs" | "timeout" | "replay" | "done" (a sampling
    # strategy object planned no further execution)
    stopped: str = ""
    preemption_bound: int | None = None
    steps: int = 0
    note: str = ""  # why the exploration ran otherwise than asked (interrupts: dfs for dpor)
    workers: int = 1
    backend: str = "process"
    #: CPU seconds each worker spent exploring (parallel runs): unlike wall time, what the
    #: machine's other processes take does not count in it
    worker_cpu: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failure(self) -> Failure | None:
        return self.failures[0] if self.failures else None

    def kinds(self) -> set[str]:
        return {f.kind for f in self.failures}

    def rate(self) -> float:
        return self.runs / self.elapsed if self.elapsed > 0 else 0.0

    def headline(self) -> str:
        bound = (f" within preemption bound {self.preemption_bound}"
                 if self.preemption_bound is not None else "")
        cover = ("exhausted" + bound if self.exhausted
                 else f"not exhausted (stopped: {self.stopped})")
        extra = f", {self.pruned} pruned" if self.pruned else ""
        distinct = f", {self.distinct} distinct" if self.distinct is not None else ""
        verdict = "ok" if self.ok else f"{len(self.failures)} failure(s)"
        if self.stopped == "replay":
            return f"explore[replay]: {verdict}; 1 schedule replayed, {self.steps} steps"
        note = f" [{self.note}]" if self.note else ""
        if self.workers > 1 or self.backend != "process":
            on = " Ray" if self.backend == "ray" else ""
            note += f" [{self.workers}{on} workers]"
        return (f"explore[{self.strategy}]: {verdict}; {self.runs} runs{distinct}{extra}, "
                f"{cover}, {self.elapsed:.2f}s ({self.rate():,.0f} runs/s){note}")

    def __str__(self) -> str:
        out = [self.headline()]
        for f in self.failures:
            out.append(str(f))
        return "\n".join(out)
