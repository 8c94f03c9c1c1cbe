"""Remote TLB flushes: the guarantee the write-protect and zap paths rely on.

``flush_remote_tlbs`` returns only when no vCPU can still use a translation cached before the
call (see :meth:`kvmlock.kvm.vcpu.VCPU.flush_tlb`). It spins rather than sleeps, so it may be
called with ``mmu_lock`` held, as the kernel does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmlock.kvm.vm import VM

__all__ = ["flush_remote_tlbs"]


def flush_remote_tlbs(vm: VM) -> None:
    """``kvm_flush_remote_tlbs``: every vCPU drops its cached translations."""
    vm.stats["tlb_flushes"] += 1
    for vcpu in vm.vcpus:
        vcpu.flush_tlb()
