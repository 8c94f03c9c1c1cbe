"""``struct kvm``: one virtual machine and every per-VM lock of KVM's locking design.

Locks are named with the canonical class names (``"kvm->slots_lock"`` ...), so all VMs share
one lock class per field, as in the kernel, and lockdep's graph can be checked against
locking.rst. Building a VM takes no lock at all: the global side (``kvm_lock``, hardware
enabling) belongs to :class:`kvmlock.kvm.machine.Machine`, which publishes the VM afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmlock import runtime
from kvmlock.kvm.host import Host
from kvmlock.kvm.iobus import IoBus
from kvmlock.kvm.memslots import Memslots, MsrFilter, set_memory_region
from kvmlock.kvm.mmu.shadow import MMU
from kvmlock.kvm.mmu.tdp_mmu import check_roots
from kvmlock.kvm.mmu_notifier import KvmMmuNotifier
from kvmlock.kvm.mutants import Hazards, hazards_of, lock_kind, mutant, unless
from kvmlock.kvm.vcpu import VCPU
from kvmlock.sync import (
    SRCU,
    Atomic64,
    Mutex,
    RawSpinLock,
    RcuPointer,
    RCUWait,
    RWLock,
    RWSemaphore,
    SpinLock,
    data_racy,
    guarded_by,
    peek,
)

if TYPE_CHECKING:
    from kvmlock.kvm.machine import Machine

__all__ = ["Hazards", "VM"]

VCPU_PUBLISHED_AFTER_UNLOCK = mutant(
    "vcpu_published_after_unlock", removes="publishing the new vCPU in the vCPU array (its "
    "index read from the online count, then the slot filled) under kvm->lock (done after the "
    "unlock)",
    breaks="kvm->lock protects the VM-wide configuration VM ioctls change: a VM ioctl holding "
           "it sees every vCPU that was created with the old settings, and two creations "
           "never claim one index")
CREATE_VCPU_WITHOUT_KVM_LOCK = mutant(
    "create_vcpu_without_kvm_lock", removes="kvm->lock around KVM_CREATE_VCPU's count and "
    "publication of the new vCPU",
    breaks="kvm->lock protects the VM-wide configuration VM ioctls change (vCPU creation)")

SRCU_WAITS_ONE_EPOCH = mutant(
    "srcu_waits_one_epoch", removes="synchronize_srcu waiting out the readers of every earlier "
    "epoch: it waits only for those of the epoch its own flip closed",
    breaks="a grace period ends only after every reader that entered before it left, however "
           "many other grace periods run at the same time")


class _OneEpochSRCU(SRCU):
    """``srcu_waits_one_epoch``: a reader older than the last flip is forgotten."""

    __slots__ = ()

    def _waited_out(self, old: int) -> bool:
        return old not in self._readers


VM_LOCK_SPINLOCK = mutant(
    "vm_lock_spinlock", removes="the sleeping kind of kvm->lock (made a spinlock_t)",
    breaks="kvm->lock is a mutex: vcpu->mutex, slots_lock and synchronize_srcu nest inside it")
SLOTS_LOCK_SPINLOCK = mutant(
    "slots_lock_spinlock", removes="the sleeping kind of kvm->slots_lock (made a spinlock_t)",
    breaks="kvm->slots_lock is a mutex: a memslot update sleeps in synchronize_srcu under it")
MMU_LOCK_RWSEM = mutant(
    "mmu_lock_rwsem", removes="the spinning kind of kvm->mmu_lock (made an rw_semaphore)",
    breaks="kvm->mmu_lock is an rwlock_t: non-blockable invalidations take it")
TDP_PAGES_LOCK_MUTEX = mutant(
    "tdp_pages_lock_mutex", removes="the spinning kind of tdp_mmu_pages_lock (made a mutex)",
    breaks="tdp_mmu_pages_lock is a spinlock, taken with mmu_lock (an rwlock_t) held")
UNSYNC_LOCK_MUTEX = mutant(
    "unsync_lock_mutex", removes="the spinning kind of mmu_unsync_pages_lock (made a mutex)",
    breaks="mmu_unsync_pages_lock is a spinlock, taken with mmu_lock (an rwlock_t) held")
MN_INVALIDATE_LOCK_MUTEX = mutant(
    "mn_invalidate_lock_mutex", removes="the spinning kind of mn_invalidate_lock (made a mutex)",
    breaks="mn_invalidate_lock is a spinlock: non-blockable invalidations take it")
TSC_WRITE_LOCK_SPINLOCK_T = mutant(
    "tsc_write_lock_spinlock_t",
    removes="the raw kind of tsc_write_lock (made a spinlock_t, which sleeps on PREEMPT_RT)",
    breaks="tsc_write_lock is a raw spinlock, taken with interrupts off")
HV_LOCK_SPINLOCK = mutant(
    "hv_lock_spinlock", removes="the sleeping kind of hv_lock (made a spinlock_t)",
    breaks="hv_lock is a mutex: the reference TSC page is written into guest memory under it, "
           "a copy that may fault and sleep")
TSC_WRITE_LOCK_MUTEX = mutant(
    "tsc_write_lock_mutex", removes="the spinning kind of tsc_write_lock (made a mutex)",
    breaks="tsc_write_lock is a raw spinlock, taken with interrupts off")


class VM:
    """One VM. ``machine`` may be ``None`` for a VM used on its own (scenarios, tests).

    Options: ``nr_vcpus``; ``hazards`` -- the mutants (weakened protections, see
    :mod:`kvmlock.kvm.mutants`) this VM runs with, as names or a dict of on/off switches;
    ``nr_pages`` -- size of the guest address space in pages; ``host`` -- the
    :class:`~kvmlock.kvm.host.Host` whose memory backs the guest (default: a host with
    ``host_pages`` frames, ``nr_pages`` of address space); ``tdp`` -- two-dimensional paging
    (direct shadow pages) or shadow paging (indirect ones); ``tdp_mmu`` -- with ``tdp``, the
    TDP MMU (faults under read-mode ``mmu_lock``, pages freed after an RCU grace period) or,
    when False, the shadow MMU managing the direct pages (``tdp_mmu=N``: faults and zaps under
    write-mode ``mmu_lock``, its lockless walks fenced by the remote flush); ``ad_disabled``
    -- SPTEs without Accessed/Dirty bits, aged by access tracking; ``pml`` -- dirty logging
    by the CPU's Dirty bits (Page Modification Logging) instead of write-protection (needs
    A/D bits).
    """

    #: invalidations in flight that began on the current memslots; a memslot update waits for 0
    mn_active_invalidate_count = guarded_by("mn_invalidate_lock")
    #: the interrupt routing table, replaced by KVM_SET_GSI_ROUTING and KVM_CREATE_IRQCHIP
    irq_routing = guarded_by("irq_lock")
    #: the irqchip's ack notifiers (the PIT registers one)
    irq_ack_notifiers = guarded_by("irq_lock")
    #: how many times the Hyper-V clock notifier rewrote the reference TSC page
    hv_tsc_page_updates = guarded_by("tsc_write_lock")
    #: how many vCPUs KVM_CREATE_VCPU made: the next one's id
    created_vcpus = guarded_by("lock")
    #: whether KVM_CREATE_PIT2 made the PIT (``kvm->arch.vpit``): created once, then EEXIST
    vpit = guarded_by("lock")
    #: the VM-wide vCPU settings (a VM ioctl sets them on every vCPU): what a new vCPU starts
    #: with; each access is a step, so a write made outside kvm->lock can race a creation
    vcpu_defaults = guarded_by("lock", visible=True)
    #: event counters (``kvm->stat``)
    stats = data_racy(
        "event counters, as kvm->stat's plain u64 fields: bumped by whichever path counts "
        "(a remote TLB flush under read-mode mmu_lock or none, a memslot update, a sync), "
        "never read by the model to decide anything; checks read them after every task "
        "is joined")

    def __init__(
        self,
        machine: Machine | None = None,
        *,
        name: str = "vm0",
        nr_vcpus: int = 1,
        hazards: Hazards | dict[str, bool] | set[str] | None = None,
        nr_pages: int = 16,
        host: Host | None = None,
        host_pages: int | None = None,
        tdp: bool = True,
        tdp_mmu: bool = True,
        ad_disabled: bool = False,
        pml: bool = False,
        slot_zap_all: bool = False,
        **options: Any,
    ) -> None:
        if not isinstance(nr_vcpus, int) or isinstance(nr_vcpus, bool) or nr_vcpus < 0:
            raise ValueError(f"nr_vcpus must be a non-negative integer, got {nr_vcpus!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"VM name must be a non-empty string, got {name!r}")
        for flag, value in (("tdp", tdp), ("tdp_mmu", tdp_mmu)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        self.machine = machine
        self.name = name
        #: KVM_X86_QUIRK_SLOT_ZAP_ALL: deleting or moving a memslot fast-zaps every TDP root
        #: (the kernel's default) instead of zapping the slot's SPTEs (the model's default)
        self.slot_zap_all = bool(slot_zap_all)
        self.hazards = hazards_of(hazards)
        self.options = dict(options)

        # -- per-VM locks, named as the kernel's fields
        hz = self.hazards
        self.lock = lock_kind(hz, Mutex, (VM_LOCK_SPINLOCK, SpinLock))("kvm->lock")
        self.slots_lock = lock_kind(hz, Mutex, (SLOTS_LOCK_SPINLOCK, SpinLock))(
            "kvm->slots_lock")
        self.slots_arch_lock = Mutex("kvm->slots_arch_lock")
        self.irq_lock = Mutex("kvm->irq_lock")
        self.srcu = lock_kind(hz, SRCU, (SRCU_WAITS_ONE_EPOCH, _OneEpochSRCU))("kvm->srcu")
        self.mmu_lock = lock_kind(hz, RWLock, (MMU_LOCK_RWSEM, RWSemaphore))("kvm->mmu_lock")
        self.tdp_mmu_pages_lock = lock_kind(hz, SpinLock, (TDP_PAGES_LOCK_MUTEX, Mutex))(
            "kvm->arch.tdp_mmu_pages_lock")
        self.mmu_unsync_pages_lock = lock_kind(hz, SpinLock, (UNSYNC_LOCK_MUTEX, Mutex))(
            "kvm->arch.mmu_unsync_pages_lock")
        self.mn_invalidate_lock = lock_kind(hz, SpinLock, (MN_INVALIDATE_LOCK_MUTEX, Mutex))(
            "kvm->mn_invalidate_lock")
        self.tsc_write_lock = lock_kind(hz, RawSpinLock, (TSC_WRITE_LOCK_SPINLOCK_T, SpinLock),
                                        (TSC_WRITE_LOCK_MUTEX, Mutex))(
            "kvm->arch.tsc_write_lock")
        self.hv_lock = lock_kind(hz, Mutex, (HV_LOCK_SPINLOCK, SpinLock))(
            "kvm->arch.hyperv.hv_lock")
        self.xen_lock = Mutex("kvm->arch.xen.xen_lock")

        # -- memslot update vs MMU notifier (guarded by mn_invalidate_lock)
        self.mn_active_invalidate_count = 0  # guarded: see the class attribute
        self.mn_memslots_update_rcuwait = RCUWait("kvm->mn_memslots_update_rcuwait")

        # -- slow-path retry state (written under mmu_lock held for write)
        self.mmu_invalidate_seq = Atomic64(0, name="kvm->mmu_invalidate_seq")
        self.mmu_invalidate_in_progress = 0
        self.mmu_invalidate_range_start = 0
        self.mmu_invalidate_range_end = 0
        #: where a retried fault waits for the invalidation it ran into to end: the explorer's
        #: stand-in for time passing (a fault retried at once could spin for ever)
        self.invalidate_wq = runtime.active().waitq(self)

        # -- read by vCPUs inside kvm->srcu, replaced by VM ioctls (see ioctls.py)
        self.msr_filter = RcuPointer(MsrFilter(), name="kvm->arch.msr_filter",
                                     read_side=self.srcu, update_side=self.lock)
        self.irq_routing: tuple[str, ...] = ()  # guarded: see the class attribute
        #: irqchip_in_kernel(): set last by KVM_CREATE_IRQCHIP (under kvm->lock), read unlocked
        self.irqchip = Atomic64(0, name="kvm->arch.irqchip_mode")
        self.irq_ack_notifiers: list[str] = []  # guarded: see the class attribute
        self.vpit = False  # guarded: see the class attribute
        #: set once the first shadow root allocated every memslot's rmaps (slots_arch_lock)
        self.shadow_root_allocated = Atomic64(0, name="kvm->arch.shadow_root_allocated")
        self.hv_tsc_page_updates = 0  # guarded: see the class attribute
        #: set by Machine.destroy_vm once the VM is unpublished and gone (kvm_arch_free_vm)
        self.freed = False

        # -- memory: host, memslots (swapped under the protocol in memslots.py), MMU
        if host is None:
            host = Host(nr_pages if host_pages is None else host_pages, nr_pages)
        elif not isinstance(host, Host):
            raise TypeError(f"host must be a kvmlock.kvm.host.Host, got {type(host).__name__}")
        self.host = host
        self.memslots = RcuPointer(Memslots(), name="kvm->memslots", read_side=self.srcu,
                                   update_side=self.slots_lock)
        self.buses = RcuPointer(IoBus(), name="kvm->buses", read_side=self.srcu,
                                update_side=self.slots_lock)
        if pml and ad_disabled:
            raise ValueError("pml=True needs Accessed/Dirty bits: the CPU logs a page when it "
                             "sets Dirty, and ad_disabled SPTEs have none")
        self.mmu = MMU(self, nr_pages, tdp=bool(tdp), tdp_mmu=bool(tdp_mmu),
                       ad_disabled=bool(ad_disabled),
                       pml=bool(pml))
        self.notifier = KvmMmuNotifier(self)
        host.register(self.notifier)
        self.stats: dict[str, int] = {
            "tlb_flushes": 0, "harvests": 0, "invalidations": 0, "memslot_updates": 0,
            "fast_pf_wrong_gfn": 0, "emulated_writes": 0, "mmu_syncs": 0, "nx_recovered": 0,
            "fast_zaps": 0, "mmu_flooded": 0,
        }
        #: invariant violations the model itself noticed (see mmu/fast_pf.py)
        self.audit: list[str] = []

        #: the vCPU array (``kvm->vcpu_array``; its length is ``online_vcpus``)
        self.vcpus: list[VCPU] = [VCPU(self, i) for i in range(nr_vcpus)]
        self.created_vcpus = nr_vcpus  # guarded: see the class attribute
        self.vcpu_defaults: dict[str, int] = {}  # guarded: see the class attribute

    def create_vcpu(self) -> VCPU:
        """``KVM_CREATE_VCPU``: a new vCPU with the VM-wide settings, published under
        ``kvm->lock`` as the kernel does (the index read from the online count, the array slot
        filled, the count raised: visible steps, so two unserialised publications collide)."""
        late = VCPU_PUBLISHED_AFTER_UNLOCK in self.hazards
        with unless(CREATE_VCPU_WITHOUT_KVM_LOCK, self.hazards, self.lock):
            vcpu_id = self.created_vcpus
            self.created_vcpus = vcpu_id + 1
            vcpu = VCPU(self, vcpu_id, self.vcpu_defaults)
            if not late:
                self._publish(vcpu)
        if late:
            self._publish(vcpu)  # broken: kvm->lock already released
        return vcpu

    def _publish(self, vcpu: VCPU) -> None:
        rt = runtime.active()
        rt.point(self.vcpus, "read online_vcpus", False)
        idx = len(self.vcpus)
        rt.point(self.vcpus, "xa_insert vcpu_array", True)
        assert idx == len(self.vcpus), (
            f"KVM_CREATE_VCPU of vcpu{vcpu.id}: slot {idx} of the vCPU array is already taken "
            "(xa_insert fails): two creations read the same online_vcpus")
        self.vcpus.append(vcpu)

    def set_memory_region(self, slot_id: int, **kw: int) -> str:
        """``KVM_SET_USER_MEMORY_REGION`` (see :func:`kvmlock.kvm.memslots.set_memory_region`)."""
        change = set_memory_region(self, slot_id, **kw)
        self.stats["memslot_updates"] += 1
        return change

    def check(self) -> None:
        """Assert what must hold once the VM is quiet (every task joined).

        What the model noticed on its way (:attr:`audit`), shadow-page accounting, every SPTE
        against the host's page table (:meth:`~kvmlock.kvm.mmu.shadow.MMU.check_mappings`),
        and no invalidation left counted as active.
        """
        assert not self.audit, self.audit[0]
        self.mmu.check_pages()
        check_roots(self)
        self.mmu.check_mappings()
        assert self.mmu_invalidate_in_progress == 0, (
            f"mmu_invalidate_in_progress is {self.mmu_invalidate_in_progress} with no "
            "invalidation running: an update was lost")
        active = peek(self, "mn_active_invalidate_count")
        assert active == 0, (
            f"mn_active_invalidate_count is {active} with no invalidation running: an update "
            "was lost")

    def __repr__(self) -> str:
        return f"<VM {self.name} vcpus={len(self.vcpus)}>"
