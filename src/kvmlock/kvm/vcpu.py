"""A virtual CPU: its mutex, its TLB and the "guest mode" handshake a TLB flush relies on.

A remote TLB flush in KVM is an IPI that every vCPU running guest code must acknowledge; the
flush is complete only when no vCPU can still be using a translation it had cached. The model
keeps that promise with :meth:`VCPU.enter_guest` / :meth:`VCPU.exit_guest` and
:meth:`VCPU.flush_tlb`: a flush waits until the vCPU is outside guest mode, then empties the
TLB. A guest access (TLB lookup plus the memory access itself) happens entirely inside guest
mode, so it is either finished before the flush completes or sees the emptied TLB.

This is hardware, not a lock: it never appears in lockdep's graph and never sleeps (the flush
spins, as the kernel's does, so it may be issued with ``mmu_lock`` held).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from kvmlock import runtime
from kvmlock.kvm.mutants import mutant
from kvmlock.sync import Mutex, guarded_by

if TYPE_CHECKING:
    from kvmlock.kvm.mmu.shadow import ShadowPage
    from kvmlock.kvm.vm import VM

__all__ = ["VCPU", "TlbEntry"]


FLUSH_NO_WAIT = mutant(
    "flush_no_wait", removes="the remote flush's wait for each vCPU to leave guest mode",
    breaks="kvm_flush_remote_tlbs returns only when no vCPU can use an old translation")
FLUSH_READS_MODE_FIRST = mutant(
    "flush_reads_mode_first", removes="the order of a remote flush against VM entry: the "
    "vCPU's mode read first, and a vCPU seen outside guest mode flushed with no wait, as a "
    "step of its own (the request published after the mode was read)",
    breaks="kvm_make_all_cpus_request publishes the request before it reads vcpu->mode, and "
           "VM entry sets IN_GUEST_MODE before it checks requests: a vCPU entering between "
           "the two is never left with an old translation")
ENTRY_CHECKS_REQUESTS_FIRST = mutant(
    "entry_checks_requests_first", removes="the order of VM entry against requests: the vCPU "
    "checks for pending requests before it marks itself in guest mode, as a step of its own",
    breaks="vcpu_enter_guest sets IN_GUEST_MODE before it checks requests, so a request made "
           "meanwhile either sees the vCPU in guest mode and waits for it, or cancels the "
           "entry (the fast zap relies on it: no vCPU enters with an invalidated root)")


class TlbEntry:
    """One cached translation: guest page ``va`` -> host ``pfn``, writable or not.

    ``hva`` is the host page the frame belonged to when the translation was cached (None when
    no memslot named it): a frame that changes owner while cached is a use after free.
    ``gfn`` is the guest frame it translates to (what the write-tracking check looks at).
    ``dirty`` is the SPTE's Dirty bit as cached: the CPU writes through an entry that has it
    without touching the SPTE, and walks the SPTE to set Dirty only when the entry lacks it --
    so Dirty cleared in the SPTE stays unseen until the entry is flushed.
    """

    __slots__ = ("pfn", "writable", "hva", "gfn", "dirty")

    def __init__(self, pfn: int, writable: bool, hva: int | None = None,
                 gfn: int | None = None, dirty: bool = True) -> None:
        self.pfn = pfn
        self.writable = writable
        self.hva = hva
        self.gfn = gfn
        self.dirty = dirty

    def __repr__(self) -> str:
        return (f"TlbEntry(pfn={self.pfn}, {'rw' if self.writable else 'ro'}"
                f"{', dirty' if self.dirty else ''})")


class VCPU:
    """``struct kvm_vcpu``: ``mutex`` serialises its ioctls; ``tlb`` is its private cache."""

    #: vCPU state set by ioctls (the model's stand-in for registers and CPUID)
    config = guarded_by("mutex")

    def __init__(self, vm: VM, vcpu_id: int, config: dict[str, int] | None = None) -> None:
        if not isinstance(vcpu_id, int) or vcpu_id < 0:
            raise ValueError(f"vCPU id must be a non-negative integer, got {vcpu_id!r}")
        self.vm = vm
        self.id = vcpu_id
        self.name = f"vcpu{vcpu_id}"  # how traces name this CPU's guest-mode steps
        self.mutex = Mutex("vcpu->mutex")
        #: guest page -> cached translation. Read only in guest mode, emptied only outside it.
        self.tlb: dict[int, TlbEntry] = {}
        #: the CPU's paging-structure cache: gfn of a guest page table -> the upper-level shadow
        #: page that shadows it, as a walk found it. Later walks start from it without reading
        #: the entry above; like the TLB it is emptied only by a flush, outside guest mode.
        self.walk_cache: dict[int, ShadowPage] = {}
        #: what it starts with: the VM-wide settings at its creation (guarded: see the class)
        self.config: dict[str, int] = dict(config or {})
        #: the index of the vCPU's kvm->srcu read side while it runs (KVM_RUN), else None
        self.srcu_idx: int | None = None
        self.in_guest = False
        #: inside a lockless walk of shadow pages (the TDP MMU's RCU read side)
        self.reading_spt = False
        #: ``vcpu->mode == READING_SHADOW_PAGE_TABLES``: a lockless walk of the shadow MMU's
        #: pages, interrupts off, which a remote flush waits for as it waits for guest mode
        self.reading_shadow = False
        #: PML: the gfns the CPU logged in guest mode, drained into the dirty bitmap at exit
        self.pml_buffer: list[int] = []
        #: pending requests (``vcpu->requests``), checked by VM entry in its own step
        self.requests: set[str] = set()
        #: the TDP root it walks (``vcpu->arch.mmu->root``): a reference to the VM's root taken
        #: at creation (see :mod:`kvmlock.kvm.mmu.tdp_mmu`); None with shadow paging
        mmu = getattr(vm, "mmu", None)
        self.root = mmu.root if mmu is not None else None
        if self.root is not None:
            self.root.refcount += 1
        self._cpu = runtime.active().waitq(self)
        #: counters for the workload's throughput report.
        self.stats: dict[str, int] = {
            "fast_pf": 0, "slow_pf": 0, "spurious_pf": 0, "retry_pf": 0,
            "reads": 0, "writes": 0, "tlb_hits": 0, "ioctls": 0,
        }

    # -------------------------------------------------------------- guest mode

    def enter_guest(self) -> bool:
        """VM entry: from here until :meth:`exit_guest` the vCPU may use its TLB.

        The vCPU marks itself in guest mode and checks its requests in one step; with one
        pending the entry is cancelled (False) and the caller serves it first."""
        cpu = self._cpu
        if ENTRY_CHECKS_REQUESTS_FIRST in self.vm.hazards:
            with cpu:
                cpu.point("kvm_request_pending", False)
                pending = bool(self.requests)
            if pending:
                return False
            with cpu:  # broken: a request made in between finds the vCPU outside guest mode
                cpu.point("vm_entry")
                self.in_guest = True
            return True
        with cpu:
            cpu.point("vm_entry")
            if self.requests:
                return False
            self.in_guest = True
        return True

    def make_request(self, req: str, wait: bool = True) -> None:
        """``kvm_make_request`` with a kick (``KVM_REQUEST_WAIT``): post ``req`` once the vCPU
        is out of guest mode -- it cannot re-enter without seeing it. ``wait=False`` posts it
        at once (the kick not waited for)."""
        cpu = self._cpu
        with cpu:
            if wait:
                cpu.wait_for(self._outside_guest, f"kvm_make_request {req}")
            else:
                cpu.point(f"kvm_make_request {req}")
            self.requests.add(req)

    def take_request(self, req: str) -> bool:
        """``kvm_check_request``: test and clear ``req``, outside guest mode.

        The test is part of the visible step: other tasks post requests, so what the vCPU
        decides from this read depends on their order against it."""
        cpu = self._cpu
        with cpu:
            cpu.point(f"kvm_check_request {req}")
            if req not in self.requests:
                return False
            self.requests.discard(req)
        return True

    def flush_tlb_current(self) -> None:
        """The vCPU flushes its own TLB, outside guest mode (``kvm_mmu_load``)."""
        cpu = self._cpu
        with cpu:
            cpu.point("flush_tlb_current")
            self.drop_translations()

    def drop_translations(self) -> None:
        """Empty the TLB and the paging-structure cache (the caller is outside guest mode)."""
        self.tlb.clear()
        self.walk_cache.clear()

    def exit_guest(self) -> None:
        """VM exit: acknowledges any pending flush."""
        cpu = self._cpu
        with cpu:
            cpu.point("vm_exit")
            self.in_guest = False
            cpu.notify_all()

    def _outside_guest(self) -> bool:
        return not self.in_guest and not self.reading_shadow

    def _not_walking(self) -> bool:
        return not self.reading_spt

    @contextmanager
    def lockless_walk(self) -> Iterator[None]:
        """``kvm_tdp_mmu_walk_lockless_begin/end``: the vCPU walks shadow pages without
        ``mmu_lock`` inside an RCU read side, and a shadow page is freed only after a grace
        period (:meth:`wait_lockless_walk`), so no page it may still use is freed under it."""
        cpu = self._cpu
        with cpu:
            cpu.point("walk_shadow_page_lockless_begin")
            self.reading_spt = True
        try:
            yield
        finally:
            with cpu:
                cpu.point("walk_shadow_page_lockless_end")
                self.reading_spt = False
                cpu.notify_all()

    @contextmanager
    def shadow_lockless_walk(self) -> Iterator[None]:
        """``walk_shadow_page_lockless_begin/end`` on the shadow MMU: interrupts off and the
        mode set to ``READING_SHADOW_PAGE_TABLES``. The shadow MMU frees a zapped page only
        after a remote flush, whose IPI this vCPU acknowledges only once the walk is over
        (:meth:`flush_tlb` waits for it as for guest mode): no grace period of its own."""
        cpu = self._cpu
        with cpu:
            cpu.point("walk_shadow_page_lockless_begin")
            self.reading_shadow = True
        try:
            yield
        finally:
            with cpu:
                cpu.point("walk_shadow_page_lockless_end")
                self.reading_shadow = False
                cpu.notify_all()

    def wait_lockless_walk(self) -> None:
        """The grace period, as this vCPU sees it: wait until it is in no lockless walk."""
        cpu = self._cpu
        with cpu:
            cpu.wait_for(self._not_walking, "synchronize_rcu")

    def flush_tlb(self) -> None:
        """Remote flush of this vCPU: wait for it to leave guest mode, then drop its TLB."""
        cpu = self._cpu
        if FLUSH_READS_MODE_FIRST in self.vm.hazards:
            with cpu:
                cpu.point("read vcpu->mode", False)
                outside = self._outside_guest()
            if outside:  # broken: the vCPU may enter, and use its TLB, before the flush
                with cpu:
                    cpu.point("tlb_flush")
                    self.drop_translations()
                return
        with cpu:
            if FLUSH_NO_WAIT in self.vm.hazards:
                cpu.point("tlb_flush")
            else:
                cpu.wait_for(self._outside_guest, "tlb_flush")
            self.drop_translations()

    def __repr__(self) -> str:
        return f"<VCPU {self.vm.name}/{self.id}>"
