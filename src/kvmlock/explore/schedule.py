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

    Candidates are cut at a preemption (the rest runs without preempting), or move one block
    of a task's consecutive operations to join that task's previous or next block (one
    context switch fewer), or drop a block (the task runs those operations later). A
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
        for cand in _candidates(best, best_pre):
            if used >= budget:
                break
            used += 1
            same, got, pre = trial(cand)
            if same and better(got, pre):
                best, best_pre = got, pre
                improved = True
                break
    return best, best_pre, used


def _candidates(best: list[int], pre: list[int]) -> list[list[int]]:
    out: list[list[int]] = [best[:i] for i in pre]
    bl = blocks(best)
    starts: list[int] = []
    pos = 0
    for _t, n in bl:
        starts.append(pos)
        pos += n

    def without(k: int) -> list[tuple[int, int]]:
        return bl[:k] + bl[k + 1:]

    def flat(bs: list[tuple[int, int]]) -> list[int]:
        return [t for t, n in bs for _ in range(n)]

    for k in range(len(bl) - 1, 0, -1):
        t, n = bl[k]
        prev = next((j for j in range(k - 1, -1, -1) if bl[j][0] == t), None)
        if prev is not None:  # run this block right after the task's previous one
            bs = without(k)
            bs.insert(prev + 1, (t, n))
            out.append(flat(bs))
        nxt = next((j for j in range(k + 1, len(bl)) if bl[j][0] == t), None)
        if nxt is not None:  # or just before its next one
            bs = without(k)
            bs.insert(nxt - 1, (t, n))
            out.append(flat(bs))
        out.append(best[:starts[k]] + best[starts[k] + n:])
    return out
