"""kvmlock.lockdep: a lock-dependency validator with the semantics of Linux lockdep.

Minimal first cut: the API sync depends on, tracking held locks per task. Validation lands next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kvmlock import runtime as _rt


class LockdepError(RuntimeError):
    """Raised in "raise" mode; carries the :class:`Report`."""

    def __init__(self, report: Report) -> None:
        super().__init__(str(report))
        self.report = report


@dataclass
class Report:
    kind: str
    title: str = ""
    lock: str | None = None
    held: str | None = None
    task: str = ""
    chain: list[Any] = field(default_factory=list)
    held_locks: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"WARNING: {self.title}"


@dataclass
class DepGraph:
    classes: dict[str, str] = field(default_factory=dict)
    edges: list[Any] = field(default_factory=list)


_reports: list[Report] = []
_mode = "warn"


class LockMap:
    def __init__(self, name: str, kind: str, key: object | None = None) -> None:
        self.name = name
        self.kind = kind
        self.key = name if key is None else key

    def _held(self) -> list:
        t = _rt.current_task()
        if t.lockdep is None:
            t.lockdep = []
        return t.lockdep

    def acquire(self, subclass: int = 0, read: int = 0, trylock: bool = False) -> None:
        self._held().append((self, subclass, read))

    def release(self) -> None:
        held = self._held()
        for i in range(len(held) - 1, -1, -1):
            if held[i][0] is self:
                del held[i]
                return

    def sync(self) -> None:
        return None

    def assert_held(self) -> None:
        return None

    def __enter__(self) -> LockMap:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def might_sleep(what: str) -> None:
    return None


def task_exit() -> None:
    t = _rt.current_task()
    t.lockdep = None


def reports() -> list[Report]:
    return list(_reports)


def reset() -> None:
    _reports.clear()


def set_mode(mode: str) -> None:
    global _mode
    _mode = mode


def configure(**limits: int) -> None:
    return None


def enable() -> None:
    return None


def disable() -> None:
    return None


def graph() -> DepGraph:
    return DepGraph()


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    yield


_rt.task_exit_hooks.append(task_exit)
