"""A one-line progress meter for long explorations, shown only on a terminal.

Piped or captured output (CI logs, pytest) stays clean: when stderr is not a TTY nothing is
written at all. On a terminal the line appears only once an exploration has run for a second.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, enabled: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.label = label
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.shown = False

    def tick(self, runs: int, distinct: int | None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last < 0.25 or now - self.t0 < 1.0:
            return
        self.last = now
        rate = runs / (now - self.t0)
        d = f", {distinct} distinct" if distinct is not None else ""
        self.stream.write(f"\r{self.label}: {runs} runs, {rate:,.0f}/s{d}   ")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()
