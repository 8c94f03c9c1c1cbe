"""Schedules as short strings, and the shrinking of failing ones.

A schedule is the task id chosen at each visible operation. Written out, runs of one task are
compressed: ``"0x5 1x3 0 2x4"`` means task 0 for five operations, task 1 for three, and so on.
Because only visible operations are counted, a schedule means the same thing on every Python
version.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_TOKEN = re.compile(r"^(\d+)(?:x(\d+))?$")


def encode(choices: Sequence[int]) -> str:
    out: list[str] = []
    i = 0
    n = len(choices)
    while i < n:
        t = choices[i]
        j = i + 1
        while j < n and choices[j] == t:
            j += 1
        out.append(str(t) if j - i == 1 else f"{t}x{j - i}")
        i = j
    return " ".join(out)


def decode(schedule: str | Sequence[int]) -> list[int]:
    """Parse a schedule string (or pass a list of task ids through, checked)."""
    if isinstance(schedule, str):
        out: list[int] = []
        for tok in schedule.replace(",", " ").split():
            m = _TOKEN.match(tok)
            if not m:
                raise ValueError(
                    f"bad schedule token {tok!r}: expected TASK or TASKxCOUNT, e.g. '0x3 1 2x2'"
                )
            count = int(m.group(2) or 1)
            if count < 1:
                raise ValueError(f"bad schedule token {tok!r}: the count must be at least 1")
            out.extend([int(m.group(1))] * count)
        return out
    if isinstance(schedule, (list, tuple)):
        for t in schedule:
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                raise ValueError(f"schedule entries must be task ids (ints >= 0), got {t!r}")
        return list(schedule)
    raise TypeError(f"a schedule is a string like '0x3 1 2' or a list of task ids, "
                    f"got {type(schedule).__name__}")


def blocks(choices: Sequence[int]) -> list[tuple[int, int]]:
    """``[(task, length), ...]``: the runs of one task each."""
    out: list[tuple[int, int]] = []
    for t in choices:
        if out and out[-1][0] == t:
            out[-1] = (t, out[-1][1] + 1)
        else:
            out.append((t, 1))
    return out


# A trial runs a candidate schedule leniently and returns (fails the same way?, the choices it
# really made, the steps where it preempted).
Trial = Callable[[list[int]], tuple[bool, list[int], list[int]]]


def shrink(choices: list[int], preempt_steps: list[int], trial: Trial,
           budget: int = 200) -> tuple[list[int], list[int], int]:
    """Minimise a failing schedule: fewer preemptions first, then fewer steps.

    Candidates are cut at a preemption (the rest runs without preempting) or have one block of
    a task's consecutive operations removed (that task runs those operations later). A
    candidate is kept only if running it fails the same way, and what is returned is the
    schedule that run actually made -- so the result always reproduces the failure. Returns
    ``(choices, preempt_steps, trials used)``.
    """
    best, best_pre = list(choices), list(preempt_steps)
    used = 0

    def better(c: list[int], p: list[int]) -> bool:
        return (len(p), len(c)) < (len(best_pre), len(best))

    improved = True
    while improved and used < budget:
        improved = False
        cands: list[list[int]] = [best[:i] for i in best_pre]
        bl = blocks(best)
        pos = 0
        starts = []
        for _t, n in bl:
            starts.append((pos, n))
            pos += n
        for start, n in reversed(starts[1:]):
            cands.append(best[:start] + best[start + n:])
        for cand in cands:
            if used >= budget:
                break
            used += 1
            same, got, pre = trial(cand)
            if same and better(got, pre):
                best, best_pre = got, pre
                improved = True
                break
    return best, best_pre, used
