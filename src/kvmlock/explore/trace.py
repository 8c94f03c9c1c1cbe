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


def render(names: Sequence[str], rows: Sequence[tuple[int, str, str, tuple[str, str]]],
           final: Sequence[tuple[int, str]] = (), title: str = "", width: int = 120) -> str:
    """Plain-text table. ``rows`` are ``(task, kind, object, (file:line, source))``;
    ``final`` adds a last row of per-task notes (what a deadlocked task waits for, an error)."""
    table = Table(title=title or None, show_lines=False, expand=False, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    for tid, name in enumerate(names):
        table.add_column(f"CPU{tid} ({name})", overflow="fold")
    ncols = len(names)
    keep = set(range(len(rows)))
    if len(rows) > HEAD + TAIL + 1:  # a runaway execution: its start and how it ends
        keep = set(range(HEAD)) | set(range(len(rows) - TAIL, len(rows)))
    for step, (tid, kind, label, (where, src)) in enumerate(rows):
        if step not in keep:
            if step == HEAD:
                table.add_row("...", *([f"({len(rows) - HEAD - TAIL} steps not shown)"]
                                       + [""] * (ncols - 1)))
            continue
        cells: list[Text | str] = [""] * ncols
        t = Text(f"{kind} {label}".strip())
        if where:
            t.append(f"\n  {src}" if src else "")
            t.append(f"  [{where}]", style="dim")
        cells[tid] = t
        table.add_row(str(step), *cells)
    if final:
        cells = [""] * ncols
        for tid, note in final:
            cells[tid] = Text(note, style="bold")
        table.add_row("", *cells)
    buf = io.StringIO()
    console = Console(file=buf, width=max(60, width), color_system=None, force_terminal=False,
                      legacy_windows=False)
    console.print(table)
    return buf.getvalue().rstrip() + "\n"
