"""Named, runnable checks of KVM's locking design; ``kvmlock verify`` runs them all.

Importing this package registers every scenario in :data:`registry.SCENARIOS`. The MMU side
(fast page fault, access tracking, MMU notifier, memslots) and the platform side (SRCU rules,
acquisition orders and leaves, vendor modules, hardware enabling, posted interrupts, TSC) live
in one module each.
"""

from __future__ import annotations

import importlib
import warnings

from kvmlock.scenarios.registry import SCENARIOS, Scenario, scenario

MODULES = ("fast_pf", "access_track", "mmu_notifier", "memslots",
           "srcu_rules", "orders", "vendor", "hardware")

#: scenario modules that could not be imported (name -> error), reported by ``kvmlock verify``.
MISSING: dict[str, str] = {}

for _name in MODULES:
    try:
        importlib.import_module(f"kvmlock.scenarios.{_name}")
    except ImportError as _exc:
        MISSING[_name] = f"{type(_exc).__name__}: {_exc}"
        warnings.warn(f"kvmlock.scenarios.{_name} not loaded: {_exc}", stacklevel=1)

__all__ = ["MISSING", "MODULES", "SCENARIOS", "Scenario", "scenario"]
