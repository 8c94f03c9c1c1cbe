"""A failing execution as a CPU0 | CPU1 | ... table, one row per visible operation.

This is the shape locking.rst uses to explain races: time runs down, each task has its column,
and every row says what the task did and on which line of the user's code.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Rows shown from the start and the end of a very long execution.
HEAD, TAIL = 40, 160


def setup_length(rows: Sequence[tuple[int, str, str, tuple[str, str]]]) -> int:
    """How many leading rows the first task ran before it started any other task.

    Those steps build the objects the race is about; no other task exists yet, so nothing can
    interleave with them. locking.rst's tables begin where the tasks do, and so does ours.
    """
    for step, (tid, kind, _label, _where) in enumerate(rows):
        if tid != 0 or kind == "spawn":
            return step
    return 0


def render(names: Sequence[str], rows: Sequence[tuple[int, str, str, tuple[str, str]]],
           final: Sequence[tuple[int, str]] = (), title: str = "", width: int = 120,
           setup: bool = False, merge: dict[int, int] | None = None) -> str:
    """Plain-text table. ``rows`` are ``(task, kind, object, (file:line, source))``;
    ``final`` adds a last row of per-task notes (what a deadlocked task waits for, an error).
    Unless ``setup`` is true, the single-task prefix before the first spawn is one row.
    ``merge`` maps an interrupt's task to the task it interrupts: its rows go in that CPU's
    column, marked as the handler's, as locking.rst draws an ``<Interrupt>``."""
    merge = merge or {}

    def home(tid: int) -> int:
        seen = set()
        while tid in merge and tid not in seen:
            seen.add(tid)
            tid = merge[tid]
        return tid

    shown = [tid for tid in range(len(names)) if tid not in merge]
    col = {tid: i for i, tid in enumerate(shown)}
    col.update({tid: col[home(tid)] for tid in merge if home(tid) in col})
    table = Table(title=title or None, show_lines=False, expand=False, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    for tid in shown:
        table.add_column(f"CPU{tid} ({names[tid]})", overflow="fold")
    ncols = len(shown)
    first = 0 if setup else setup_length(rows)
    if first:
        table.add_row(f"0-{first - 1}", *([f"({first} setup steps before the first spawn)"]
                                          + [""] * (ncols - 1)))
    keep = set(range(first, len(rows)))
    if len(rows) - first > HEAD + TAIL + 1:  # a runaway execution: its start and how it ends
        keep = set(range(first, first + HEAD)) | set(range(len(rows) - TAIL, len(rows)))
    for step, (tid, kind, label, (where, src)) in enumerate(rows):
        if step not in keep:
            if step == first + HEAD:
                table.add_row("...", *([f"({len(rows) - HEAD - TAIL - first} steps not shown)"]
                                       + [""] * (ncols - 1)))
            continue
        cells: list[Text | str] = [""] * ncols
        if tid in merge:
            text = (f"<Interrupt> {names[tid]}" if kind == "irq"
                    else f"  {names[tid]}: {kind} {label}".rstrip())
        else:
            text = f"{kind} {label}".strip()
        t = Text(text)
        if where:
            t.append(f"\n  {src}" if src else "")
            t.append(f"  [{where}]", style="dim")
        cells[col[tid]] = t
        table.add_row(str(step), *cells)
    if final:
        notes: list[list[str]] = [[] for _ in range(ncols)]
        for tid, note in final:
            notes[col[tid]].append(note if tid not in merge else f"{names[tid]}: {note}")
        table.add_row("", *(Text("\n".join(n), style="bold") for n in notes))
    buf = io.StringIO()
    console = Console(file=buf, width=max(60, width), color_system=None, force_terminal=False,
                      legacy_windows=False)
    console.print(table)
    return buf.getvalue().rstrip() + "\n"
