"""The model's hazard switches: each one re-enables one bug, or removes one protection.

Every switch is off in the correct model. A *broken* scenario turns one on and the tools must
catch it; a correct scenario that runs the path a switch weakens must fail with it on. The
switches sit here, one dataclass for the whole model (a machine passes its own to the VMs it
creates), and each is read by the one place in the code it weakens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Hazards", "as_hazards"]


@dataclass(frozen=True)
class Hazards:
    """Switches that re-enable a bug the design documents, one per hazard.

    Every switch is off in the correct model; a *broken* scenario turns one on and the tools
    must catch it.
    """

    #: fast page fault also fixes SPTEs of indirect shadow pages (gfn->pfn ABA loses a gfn).
    fast_pf_indirect: bool = False
    #: the old volatility rule: a read-only, Accessed SPTE is updated with a plain store even
    #: when the fast path may make it writable meanwhile (a Dirty bit set by hardware is lost).
    nonatomic_volatile_clear: bool = False
    #: ``mmu_spte_update`` does not ask for a TLB flush when it removes the W bit.
    skip_tlb_flush_on_wrprot: bool = False
    #: memslot updates are fenced from MMU notifiers by an rwsem held from invalidate start to
    #: end, instead of the open-coded count + rcuwait.
    notifier_uses_rwsem: bool = False
    #: the MMU notifier takes ``kvm->slots_lock`` (forbidden: memslot updaters wait for it).
    notifier_takes_slots_lock: bool = False
    #: aging an A/D-disabled writable SPTE forgets to pass its dirty state to the page.
    access_track_drops_dirty: bool = False
    #: a memslot update swaps the array without waiting for active MMU-notifier invalidations.
    swap_without_waiting: bool = False
    #: deleting a memslot zaps its SPTEs before the SRCU grace period that retires the slot.
    delete_zaps_before_sync: bool = False
    #: TDP faults (mmu_lock held only for read) link new shadow pages without
    #: ``tdp_mmu_pages_lock``: two faults can both build the same page.
    tdp_link_without_pages_lock: bool = False

    # -- acquisition orders, each inverted in one real path (the rule of locking.rst it breaks
    #    is named; a correct scenario running that path must fail with the switch on)
    #: cpus_read_lock outside kvm_lock: the cpufreq notifier takes the hotplug lock inside it.
    cpufreq_hotplug_inside_kvm_lock: bool = False
    #: kvm_usage_lock outside cpus_read_lock: enabling takes kvm_usage_lock inside the hotplug lock.
    usage_lock_inside_hotplug: bool = False
    #: vendor_module_lock outside cpus_read_lock: vendor init takes it inside the hotplug lock.
    vendor_lock_inside_hotplug: bool = False
    #: kvm_lock outside tsc_write_lock: a TSC write walks vm_list under the raw tsc_write_lock.
    tsc_write_walks_vm_list: bool = False
    #: kvm->lock outside vcpu->mutex: a vCPU ioctl takes kvm->lock inside its vcpu->mutex.
    vcpu_ioctl_takes_kvm_lock: bool = False
    #: kvm->lock outside kvm->slots_lock: KVM_IOEVENTFD takes kvm->lock under slots_lock.
    ioeventfd_takes_kvm_lock: bool = False
    #: kvm->lock outside kvm->irq_lock: KVM_SET_GSI_ROUTING takes kvm->lock under irq_lock.
    routing_takes_kvm_lock: bool = False
    #: kvm->slots_lock outside kvm->irq_lock: the PIT registers its device under irq_lock.
    pit_slots_lock_inside_irq_lock: bool = False
    #: vcpu->mutex outside kvm->slots_lock: a memslot create locks the vCPUs under slots_lock.
    memslot_update_locks_vcpus: bool = False
    #: vcpu->mutex outside slots_arch_lock: a memslot create locks the vCPUs under it.
    memslot_commit_locks_vcpus: bool = False
    #: slots_lock outside slots_arch_lock: the first shadow root takes slots_lock under it.
    root_alloc_takes_slots_lock: bool = False
    #: slots_arch_lock outside mn_invalidate_lock: invalidate_range_start takes slots_arch_lock
    #: while it holds mn_invalidate_lock.
    notifier_takes_slots_arch_lock: bool = False
    #: vcpu->mutex outside hv_lock: KVM_HYPERV_EVENTFD locks every vCPU under hv_lock.
    hv_lock_locks_vcpus: bool = False
    #: vcpu->mutex outside xen_lock: a VM-wide Xen attribute write locks every vCPU.
    xen_lock_locks_vcpus: bool = False

    # -- SRCU rules and what SRCU protects
    #: memslot updates release slots_arch_lock after synchronize_srcu instead of before.
    slots_arch_lock_across_sync: bool = False
    #: the first shadow root allocates rmaps without slots_arch_lock (racing a memslot create).
    root_alloc_without_slots_arch_lock: bool = False
    #: KVM_RUN deletes the APIC-access memslot without leaving its kvm->srcu read side.
    apic_access_delete_under_srcu: bool = False
    #: an old memslots array, I/O bus or MSR filter is freed before the SRCU grace period.
    free_before_grace_period: bool = False

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def as_hazards(value: Hazards | dict[str, bool] | None) -> Hazards:
    if value is None:
        return Hazards()
    if isinstance(value, Hazards):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(Hazards.names()))
        if unknown:
            raise ValueError(f"unknown hazard(s) {unknown}; known: {Hazards.names()}")
        return Hazards(**value)
    raise TypeError(f"hazards must be a Hazards, a dict or None, got {type(value).__name__}")
