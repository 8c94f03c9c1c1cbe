"""The catalogue of named scenarios that ``kvmlock verify`` runs.

A scenario is one rule or hazard of KVM's locking design in one variant: ``correct`` (the design
as documented, which must explore clean) or ``broken`` (a variant the document or its history
describes, which the tools must catch). Its body is called afresh for every explored execution,
builds its own model objects, spawns tasks and checks its invariant with plain ``assert``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmlock.kvm.machine import checked_at_end

VARIANTS = ("correct", "broken")
#: What a run of the scenario must end with: "pass" (no failure, space explored as bounded) or
#: the kind of failure the explorer must report.
EXPECTS = ("pass", "deadlock", "assertion", "lockdep", "exception", "hang")


@dataclass
class Scenario:
    name: str  # dotted: "<rule>.<variant-detail>", e.g. "fast_pf.aba.broken"
    rule: str  # the rule or hazard in one line, in the project's words
    variant: str  # "correct" | "broken"
    expect: str  # one of EXPECTS
    body: Callable[[], None]
    invariant: str = ""  # the DESIGN.md invariant the body asserts, in words
    strategy: str = "dpor"
    options: dict[str, Any] = field(default_factory=dict)  # passed to explore.check()
    lockdep_kind: str | None = None  # for expect="lockdep": the Report.kind that must appear
    tags: tuple[str, ...] = ()
    #: mutants (see kvmlock.kvm.mutants) this correct scenario is written to catch: tried
    #: first by ``kvmlock verify --mutants``, and each must make it fail
    catches: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"scenario {self.name}: variant must be one of {VARIANTS}")
        if self.expect not in EXPECTS:
            raise ValueError(f"scenario {self.name}: expect must be one of {EXPECTS}")


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str,
    *,
    rule: str,
    variant: str,
    expect: str,
    invariant: str = "",
    strategy: str = "dpor",
    lockdep_kind: str | None = None,
    tags: tuple[str, ...] = (),
    catches: tuple[str, ...] = (),
    **options: Any,
) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register the decorated body as a scenario; ``options`` go to ``explore.check``.

    A scenario is bounded by executions and steps only: a wall-clock bound would make its
    verdict depend on the machine's load (a correct row exhausts on a quiet machine and stops
    short on a busy one; a broken row is caught on one and missed on the other).

    Every :class:`~kvmlock.kvm.machine.Machine` the body builds is checked once it returns
    (the hardware invariant, :func:`~kvmlock.kvm.machine.checked_at_end`), whatever else the
    body checks.
    """
    if "timeout" in options:
        raise ValueError(f"scenario {name!r}: bound it by max_runs/max_steps, not timeout "
                         "(a verdict must not depend on the machine's speed)")

    def register(body: Callable[[], None]) -> Callable[[], None]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(
            name, rule, variant, expect, checked_at_end(body), invariant, strategy, dict(options),
            lockdep_kind, tags, tuple(catches),
        )
        return body

    return register


def pair(
    name: str,
    *,
    rule: str,
    broken_rule: str,
    broken_expect: str,
    invariant: str = "",
    catches: tuple[str, ...] = (),
    lockdep_kind: str | None = None,
    **options: Any,
) -> Callable[[Callable[[bool], None]], Callable[[bool], None]]:
    """Register ``body(broken)`` as ``name.correct`` (``body(False)``, must pass) and
    ``name.broken`` (``body(True)``, must end with ``broken_expect``).

    Most rules are one body run twice, once as designed and once with the protection
    switched off; declaring both rows in one place keeps their invariant and bounds equal.
    """

    def register(body: Callable[[bool], None]) -> Callable[[bool], None]:
        scenario(f"{name}.correct", rule=rule, variant="correct", expect="pass",
                 invariant=invariant, catches=catches, **options)(
            functools.partial(body, False))
        scenario(f"{name}.broken", rule=broken_rule, variant="broken", expect=broken_expect,
                 invariant=invariant, lockdep_kind=lockdep_kind, **options)(
            functools.partial(body, True))
        return body

    return register
