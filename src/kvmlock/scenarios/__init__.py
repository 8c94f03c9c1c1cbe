"""Named, runnable checks of KVM's locking design; ``kvmlock verify`` runs them all.

Importing this package registers every scenario in :data:`registry.SCENARIOS`. The MMU side
(fast page fault, access tracking, MMU notifier, memslots) and the platform side (SRCU rules,
acquisition orders and leaves, vendor modules, hardware enabling, posted interrupts, TSC) live
in one module each; so do the races on the data the Reference says each lock protects.
"""

from __future__ import annotations

from kvmlock.scenarios import (  # noqa: F401  (imported to register their scenarios)
    access_track,
    fast_pf,
    fast_zap,
    hardware,
    interrupts,
    irqchip,
    memslots,
    mmu_notifier,
    nx_recovery,
    orders,
    pml,
    protected,
    shadow,
    srcu_rules,
    vendor,
)
from kvmlock.scenarios.registry import SCENARIOS, Scenario, scenario

__all__ = ["SCENARIOS", "Scenario", "scenario"]
