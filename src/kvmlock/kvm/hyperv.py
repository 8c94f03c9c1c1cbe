"""Hyper-V emulation's partition-wide state, guarded by ``kvm->arch.hyperv.hv_lock``.

Some Hyper-V MSRs belong to a vCPU (its SynIC, its timers) and some to the whole partition
(guest OS id, hypercall page, reference TSC page). A write to a partition-wide MSR comes from
one vCPU -- a guest WRMSR exit during KVM_RUN, or KVM_SET_MSRS from userspace -- so it runs
with that vCPU's ``vcpu->mutex`` held, and it must not race with the same write from another
vCPU: ``hv_lock`` serialises them. That is the documented order ``vcpu->mutex`` outside
``hv_lock``; nothing is taken inside ``hv_lock``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kvmlock import irq, lockdep
from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import guarded_by, peek

__all__ = ["PARTITION_MSRS", "HyperV"]

HV_LOCK_LOCKS_VCPUS = mutant(
    "hv_lock_locks_vcpus",
    removes="(adds) every vcpu->mutex taken under hv_lock by KVM_HYPERV_EVENTFD",
    breaks="vcpu->mutex is taken outside kvm->arch.hyperv.hv_lock")

HV_MSR_WITHOUT_HV_LOCK = mutant(
    "hv_msr_without_hv_lock", removes="hv_lock around a partition-wide Hyper-V MSR write",
    breaks="kvm->arch.hyperv.hv_lock protects the partition-wide Hyper-V state")

HV_MSR_READ_WITHOUT_HV_LOCK = mutant(
    "hv_msr_read_without_hv_lock", removes="hv_lock around a partition-wide Hyper-V MSR read",
    breaks="kvm->arch.hyperv.hv_lock protects the partition-wide Hyper-V state")

HV_EVENTFD_WITHOUT_HV_LOCK = mutant(
    "hv_eventfd_without_hv_lock", removes="hv_lock around KVM_HYPERV_EVENTFD's binding",
    breaks="kvm->arch.hyperv.hv_lock protects the eventfd bindings")

HV_TSC_PAGE_TESTED_APART = mutant(
    "hv_tsc_page_tested_apart", removes="kvm_hv_setup_tsc_page's test of the page's status and "
    "address and its rewrite in one hv_lock section (the lock dropped and taken again between)",
    breaks="kvm->arch.hyperv.hv_lock protects the reference TSC page: a guest moving its page "
           "in between leaves KVM writing guest memory at the address the guest gave up")
HV_TSC_PAGE_MARKED_APART = mutant(
    "hv_tsc_page_marked_apart", removes="kvm_hv_request_tsc_page_update's test of the page's "
    "status and its mark 'host changed' in one hv_lock section (the lock dropped and taken "
    "again between)",
    breaks="kvm->arch.hyperv.hv_lock protects the reference TSC page: a guest disabling its "
           "page in between gets it marked for a rewrite into memory it gave up")
HV_REF_TSC_UPDATE_UNDER_HV_LOCK = mutant(
    "hv_ref_tsc_update_under_hv_lock", removes="(adds) the reference-TSC MSR write rewriting "
    "the TSC page itself, under hv_lock (the pvclock update's tsc_write_lock inside it), "
    "instead of requesting a master-clock update the vCPU makes on its next entry",
    breaks="kvm->arch.hyperv.hv_lock is a leaf")

#: the reference TSC page's state (kvm_hv's hv_tsc_page_status, simplified), kept with the
#: partition-wide state under this key
TSC_PAGE_STATUS = "tsc_page_status"
TSC_PAGE_UNSET, TSC_PAGE_GUEST_CHANGED, TSC_PAGE_SET, TSC_PAGE_HOST_CHANGED = (
    "unset", "guest changed", "set", "host changed")
#: what the reference TSC page tells the guest: the VM clock offset it was last written from
TSC_PAGE_CLOCK = "tsc_page_clock"

#: Partition-wide Hyper-V MSRs (names as in the TLFS); everything else is per vCPU here.
PARTITION_MSRS = frozenset({
    "HV_X64_MSR_GUEST_OS_ID", "HV_X64_MSR_HYPERCALL", "HV_X64_MSR_REFERENCE_TSC",
    "HV_X64_MSR_TSC_EMULATION_CONTROL", "HV_X64_MSR_CRASH_CTL",
})


class HyperV:
    """The Hyper-V state of one VM; ``vm.hv_lock`` is the VM's own lock object."""

    #: the partition-wide MSRs' values
    partition = guarded_by("lock")
    #: the connection ids KVM_HYPERV_EVENTFD bound
    eventfds = guarded_by("lock")

    def __init__(self, vm: Any) -> None:
        lock = getattr(vm, "hv_lock", None)
        if lock is None:
            raise TypeError(f"HyperV needs a VM with an hv_lock, got {vm!r}")
        self.vm = vm
        self.lock = lock
        self.partition: dict[str, int] = {}
        self.per_vcpu: dict[tuple[int, str], int] = {}
        self.eventfds: set[int] = set()
        #: vCPU id -> a master-clock update asked of it (KVM_REQ_MASTERCLOCK_UPDATE, a bit
        #: of that vCPU's own requests): only the vCPU itself sets its entry (a WRMSR) and
        #: serves it, each under its vcpu->mutex, so one vCPU's entry never races another's
        self.masterclock_requests: defaultdict[int, bool] = defaultdict(bool)

    def set_msr(self, vcpu: Any, msr: str, value: int) -> None:
        """WRMSR from ``vcpu`` (its mutex held). Partition-wide MSRs go under ``hv_lock``."""
        if not isinstance(msr, str) or not msr.startswith("HV_X64_MSR_"):
            raise ValueError(f"not a Hyper-V MSR name: {msr!r}")
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{msr}: value must be a non-negative integer, got {value!r}")
        vcpu.mutex.assert_held()
        if msr in PARTITION_MSRS:
            with unless(HV_MSR_WITHOUT_HV_LOCK, self.vm.hazards, self.lock):
                self.partition[msr] = value
                if msr == "HV_X64_MSR_REFERENCE_TSC":
                    self._reference_tsc_changed(vcpu, value)
        else:
            self.per_vcpu[(vcpu.id, msr)] = value

    def _reference_tsc_changed(self, vcpu: Any, value: int) -> None:
        """The guest moved or enabled its reference TSC page (hv_lock held): the page is
        rewritten by the next master-clock update, which the vCPU is asked to make on its way
        back into the guest (``KVM_REQ_MASTERCLOCK_UPDATE``) -- not here, because that update
        takes the raw ``tsc_write_lock`` and ``hv_lock`` is a leaf."""
        self.partition[TSC_PAGE_STATUS] = TSC_PAGE_GUEST_CHANGED if value & 1 else TSC_PAGE_UNSET
        if HV_REF_TSC_UPDATE_UNDER_HV_LOCK in self.vm.hazards:
            with irq.local_irq_save(), self.vm.tsc_write_lock:  # broken: inside hv_lock
                self.vm.hv_tsc_page_updates += 1
            self.partition[TSC_PAGE_STATUS] = TSC_PAGE_SET
            return
        self.masterclock_requests[vcpu.id] = True  # kvm_make_request() to the vCPU itself

    def request_tsc_page_update(self) -> None:
        """``kvm_hv_request_tsc_page_update``: the host clock changed (``KVM_SET_CLOCK``), so
        a page the guest set up must be rewritten; under ``hv_lock``, before the pvclock
        update begins (that one holds the raw ``tsc_write_lock``, where a mutex may not be
        taken)."""
        if HV_TSC_PAGE_MARKED_APART in self.vm.hazards:
            with self.lock:
                is_set = self.partition.get(TSC_PAGE_STATUS) == TSC_PAGE_SET
            if is_set:
                with self.lock:  # broken: the guest may have disabled the page meanwhile
                    self.partition[TSC_PAGE_STATUS] = TSC_PAGE_HOST_CHANGED
            return
        with self.lock:
            if self.partition.get(TSC_PAGE_STATUS) == TSC_PAGE_SET:
                self.partition[TSC_PAGE_STATUS] = TSC_PAGE_HOST_CHANGED

    def setup_tsc_page(self, clock_offset: int) -> None:
        """``kvm_hv_setup_tsc_page``, from a vCPU's clock update: the page is rewritten from
        the VM's clock (``clock_offset``) only if the guest or the host marked it changed --
        a page marked 'set' is taken to be current and left alone."""
        apart = HV_TSC_PAGE_TESTED_APART in self.vm.hazards
        with self.lock:
            changed = self.partition.get(TSC_PAGE_STATUS) in (TSC_PAGE_GUEST_CHANGED,
                                                              TSC_PAGE_HOST_CHANGED)
            at = self.partition.get("HV_X64_MSR_REFERENCE_TSC", 0)
            if changed and not apart:
                self._write_tsc_page(at, clock_offset)
        if changed and apart:
            with self.lock:  # broken: the guest may have moved the page meanwhile
                self._write_tsc_page(at, clock_offset)

    def _write_tsc_page(self, at: int, clock_offset: int) -> None:
        """Write the page (``hv_lock`` held) at ``at``, the MSR value its status was read with.

        The page is guest memory, at the address the MSR names while its enable bit is set:
        written at an address the guest has since given up (moved the page, or disabled it),
        it is a stray write into memory the guest may have reused -- checked here, where the
        write happens."""
        # kvm_write_guest: a copy to user memory, which may fault the page in and sleep
        lockdep.might_sleep("kvm_write_guest")
        now = self.partition.get("HV_X64_MSR_REFERENCE_TSC", 0)
        assert at == now and now & 1, (
            f"KVM wrote the reference TSC page for MSR value {at:#x}, but the guest's MSR is "
            f"{now:#x} now: a write into guest memory the guest no longer gives for the page")
        self.partition[TSC_PAGE_CLOCK] = clock_offset
        self.partition[TSC_PAGE_STATUS] = TSC_PAGE_SET

    def check_tsc_page(self, clock_offset: int) -> None:
        """Invariant, once every vCPU has served its clock requests: an enabled reference TSC
        page is current ('set') and shows the VM's clock, ``clock_offset``."""
        part = peek(self, "partition")
        status = part.get(TSC_PAGE_STATUS, TSC_PAGE_UNSET)
        if status == TSC_PAGE_UNSET:
            return
        assert status == TSC_PAGE_SET and part.get(TSC_PAGE_CLOCK) == clock_offset, (
            f"the guest's reference TSC page is stale: status {status!r}, written from clock "
            f"offset {part.get(TSC_PAGE_CLOCK)!r}, but the VM's clock offset is {clock_offset} "
            "and no vCPU has a clock update left to serve")

    def eventfd_assign(self, conn_id: int) -> None:
        """``KVM_HYPERV_EVENTFD``: a VM ioctl binding a connection id, under ``hv_lock``."""
        if not isinstance(conn_id, int) or conn_id < 0:
            raise ValueError(f"conn_id must be a non-negative integer, got {conn_id!r}")
        with unless(HV_EVENTFD_WITHOUT_HV_LOCK, self.vm.hazards, self.lock):
            if self.vm.hazards.hv_lock_locks_vcpus:
                for vcpu in self.vm.vcpus:  # broken: vcpu->mutex is ordered outside hv_lock
                    with vcpu.mutex:
                        pass
            self.eventfds.add(conn_id)

    def get_msr(self, vcpu: Any, msr: str) -> int:
        """RDMSR from ``vcpu`` (its mutex held). A partition-wide MSR is read under
        ``hv_lock`` too: another vCPU may be writing it."""
        vcpu.mutex.assert_held()
        if msr in PARTITION_MSRS:
            with unless(HV_MSR_READ_WITHOUT_HV_LOCK, self.vm.hazards, self.lock):
                return self.partition.get(msr, 0)
        return self.per_vcpu.get((vcpu.id, msr), 0)
