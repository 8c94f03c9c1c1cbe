"""What a strategy is: a chooser for one execution at a time, and a plan for the next one."""

from __future__ import annotations

from kvmlock.explore.runtime import ReplayMismatch, SimRuntime, Task


class Strategy:
    """Decides every scheduling point of an execution and which execution comes next.

    ``begin`` prepares the next execution (False when the space is exhausted) and may set
    ``rt.prefix``, the task ids of steps it already knows (they skip ``choose``), ``choose`` is
    called at every state of it, ``end`` sees the finished runtime. ``exhaustive`` strategies
    can prove the absence of failures (within their bounds); sampling ones cannot.
    """

    name = "base"
    exhaustive = False

    def begin(self, rt: SimRuntime) -> bool:
        raise NotImplementedError

    def choose(self, enabled: list[Task], cur: Task) -> Task | None:
        raise NotImplementedError

    def end(self, rt: SimRuntime) -> None:
        return None

    def distinct(self) -> int | None:
        """How many different executions were seen, when the strategy can tell cheaply."""
        return None


def default_choice(enabled: list[Task], cur: Task) -> Task:
    """Keep running the task that stopped if it can go on (no preemption), else the lowest id."""
    return cur if cur in enabled else enabled[0]


class Replay(Strategy):
    """Follow a fixed schedule, then continue without preemptions.

    ``strict`` makes a schedule that names a task which cannot run an error (a replayed
    failure must be exact); lenient mode falls back to the default choice, which is what
    shrinking wants when it tries edited schedules.
    """

    name = "replay"
    exhaustive = True

    def __init__(self, schedule: list[int], strict: bool = True) -> None:
        self.schedule = schedule
        self.strict = strict
        self.step = 0
        self._done = False

    def begin(self, rt: SimRuntime) -> bool:
        if self._done:
            return False
        self._done = True
        self.step = 0
        return True

    def choose(self, enabled: list[Task], cur: Task) -> Task:
        n = self.step
        self.step = n + 1
        if n < len(self.schedule):
            want = self.schedule[n]
            for t in enabled:
                if t.tid == want:
                    return t
            if self.strict:
                raise ReplayMismatch(
                    f"schedule step {n}: task {want} cannot run here (runnable tasks: "
                    f"{', '.join(str(t.tid) for t in enabled)}); the schedule does not belong "
                    f"to this body, or the body is not deterministic"
                )
        return default_choice(enabled, cur)
