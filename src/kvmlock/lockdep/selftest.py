"""``kvmlock selftest``: lockdep checks itself, in the manner of the kernel's locking self-test.

Every cell is a short single-threaded sequence of real kvmlock.sync operations, run in a fresh
private lockdep state. Lockdep judges the *order* of operations, not their timing, so one task
taking A then B and later B then A is the ABBA inversion even though it never hangs. Each cell
states what must happen -- a report of one kind, or silence -- and has a near-miss twin (the
same locks in a consistent order, or with the annotation that makes it legal) that must stay
silent. The command prints the table and exits non-zero when any cell is wrong.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from kvmlock import lockdep
from kvmlock.lockdep.selftest_cases import (
    CASES,
    IRQ_COLUMNS,
    IRQ_ROWS,
    KINDS,
    PATTERNS,
    Case,
)

__all__ = ["CASES", "Case", "check", "judge", "main", "run_case"]


def run_case(fn: Callable[[], None]) -> list[lockdep.Report]:
    """Run ``fn`` in a fresh lockdep state; the first report stops it (raise mode), so a
    sequence that would really deadlock is stopped before it blocks."""
    with lockdep.isolated("raise"):
        try:
            fn()
        except lockdep.LockdepError:
            pass
        return lockdep.reports()


def judge(reports: list[lockdep.Report], expect: str | None) -> bool:
    """Right when silence was expected and nothing came, or the expected kind came."""
    kinds = {r.kind for r in reports}
    return not kinds if expect is None else expect in kinds


def check(case: Case) -> tuple[bool, bool, list[lockdep.Report], list[lockdep.Report]]:
    got = run_case(case.run)
    near = run_case(case.near_miss) if case.near_miss else []
    return judge(got, case.expect), judge(near, None), got, near


def main(argv: list[str] | None = None) -> int:
    """Print the self-test table; exit status 1 if any cell is wrong."""
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(
        prog="kvmlock selftest",
        description="lockdep's locking self-test: patterns x lock kinds, each with a near-miss")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the splat of a wrong cell")
    args = ap.parse_args(argv)

    console = Console(width=None if Console().is_terminal else 110)
    results = {c.id: check(c) for c in CASES}
    wrong = [c for c in CASES if not (results[c.id][0] and results[c.id][1])]

    def cell(c: Case) -> str:
        ok, near_ok, _, _ = results[c.id]
        return "[green]ok[/]" if ok and near_ok else "[bold red]FAIL[/]"

    grid = Table(title="lockdep self-test: lock patterns x lock kinds (case + near-miss)")
    grid.add_column("pattern")
    cols = [k.column for k in KINDS]
    for col in cols:
        grid.add_column(col, justify="center")
    rows = ["AA", *PATTERNS]
    for row in rows:
        by_col = {c.column: c for c in CASES if c.row == row}
        grid.add_row(row, *(cell(by_col[col]) for col in cols))
    console.print(grid)

    irq_grid = Table(title="lockdep self-test: interrupt usage (hard/soft IRQ, write/read "
                     "in the handler; near-miss: the interrupt off)")
    irq_grid.add_column("pattern")
    irq_grid.add_column("expect")
    for col in IRQ_COLUMNS:
        irq_grid.add_column(col.column, justify="center")
    for row, _steps, expect, _why in IRQ_ROWS:
        by_col = {c.column: c for c in CASES if c.row == row}
        irq_grid.add_row(row, expect, *(cell(by_col[col.column]) for col in IRQ_COLUMNS))
        rows.append(row)
    console.print(irq_grid)

    other = Table(title="lockdep self-test: read/write mixes, SRCU, other reports")
    for name in ("case", "lock", "expect", "result", "why"):
        other.add_column(name)
    for c in CASES:
        if c.row in rows:
            continue
        other.add_row(c.row, c.column, c.expect or "silent", cell(c), c.why)
    console.print(other)

    total = len(CASES)
    if wrong:
        console.print(f"[bold red]{len(wrong)} of {total} cells wrong:[/] "
                      + ", ".join(c.id for c in wrong))
        if args.verbose:
            for c in wrong:
                _, _, got, near = results[c.id]
                console.print(f"--- {c.id}: expected {c.expect or 'silence'}; got "
                              f"{[r.kind for r in got]}, near-miss {[r.kind for r in near]}")
                for r in got + near:
                    console.print(str(r), markup=False, highlight=False)
        return 1
    console.print(f"[green]all {total} cells right[/] (each with its near-miss silent)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
