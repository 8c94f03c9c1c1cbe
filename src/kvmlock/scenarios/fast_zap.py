"""The fast zap of TDP roots (a memslot deletion with ``KVM_X86_QUIRK_SLOT_ZAP_ALL``), the
second read-mode writer of non-leaf entries, against the paths it races
(see :mod:`kvmlock.kvm.mmu.tdp_mmu`).

* ``nx_recovery.vs_fast_zap`` -- a memslot is deleted (every root invalidated under write-mode
  ``mmu_lock``, then zapped under read mode) while NX huge-page recovery removes the table
  that maps both slots' pages, also under read mode. Both clear the same root entry; the
  cmpxchg lets exactly one of them remove the table. With either side's cmpxchg made a load
  and a store, both remove it, and the model reports the table removed twice.
* ``memslots.fast_zap_vs_vcpu`` -- a vCPU reads the page of a memslot that is deleted with a
  fast zap, after which userspace discards the page (``MADV_DONTNEED``: its frame is freed and
  reused). The zap flushes no TLB: the vCPU must be out of guest mode when the roots are
  invalidated, must not re-enter without serving its request, must flush its TLB when it
  loads the new root, and must still hold its old root (its reference) when it serves the
  request; otherwise it reads the freed frame through a cached translation, or puts a root
  that was freed.
* ``memslots.fast_zap_vs_running_vcpu`` -- a vCPU reads a page through its cached
  translation while a fast zap runs, then the host swaps the page out: with no SPTE left the
  swap-out flushes nothing, so the vCPU must have served its request with its root already
  invalid, and flushed its TLB loading the new one. With the request made before the
  invalidation, the vCPU can serve it while its root is still valid and keep reading the
  freed frame. (Bounded to three preemptions: the zap's walk of the roots takes and puts
  references the vCPU's put is ordered against.)
* ``tdp_mmu.fast_zap_vs_fault`` -- a vCPU's first read of a page (a slow TDP fault) races a
  fast zap (the ``nx_huge_pages`` parameter changed: ``kvm_update_nx_huge_pages``). A fault
  that runs after the roots were invalidated must retry (the vCPU reloads first): installing
  into the old root, whose zap may already have cleared that entry, links a table no later
  zap can reach.
* ``memslots.fast_zap_vs_fast_pf`` -- a vCPU's fast page fault walks, without ``mmu_lock``,
  a table of the root a fast zap is tearing down (the table exists: another page of it is
  mapped). The zap frees the tables it removed only after a grace period; freed at once, the
  walk reads a freed table.
* ``memslots.two_fast_zaps`` -- two fast zaps before the vCPU serves its request, the second
  racing the vCPU's reload. Each zap picks only the roots it invalidated itself; picking every
  invalid root, the second zaps the first's root again and puts the MMU's reference a second
  time, freeing the root the vCPU still holds.
* ``memslots.fast_zap_vs_swap_out`` -- the host swaps out a page the guest wrote while a fast
  zap runs. Between the write-mode section that invalidates the roots and the zap of those
  roots, the invalidated root still holds the page's Dirty SPTE: the notifier's unmap must
  drop it (and pass its Dirty bit on) like any other. Walking the valid root only, the
  swap-out finds the page clean and frees it unwritten; the guest's write is lost.
* ``tdp_mmu.root_free_vs_root_walk`` -- vcpu0 serves its request after a fast zap: it puts
  the last reference to its old root, which leaves ``tdp_mmu_roots``, and frees it; a second
  fast zap meanwhile walks the list (``tdp_mmu_next_root``: under the RCU read side, the next
  root, then a reference to it if its count is not zero). The free waits for an RCU grace
  period; freed at once, the walk reads the count of a freed root.
* ``memslots.load_root_vs_fast_zap`` -- vcpu0 serves its request and loads the valid root
  (made by vcpu1) while a second fast zap invalidates that root and vcpu1 puts its reference
  to it. The look-up and the get are under ``mmu_lock``; made before it, vcpu0 finds the root,
  the zap and vcpu1 free it, and vcpu0's get is on a freed root. (Bounded to two preemptions:
  the tasks' reloads take many steps.)

* ``tdp_mmu.release_vs_fast_zap`` -- the VMM exits while a fast zap runs (the
  ``nx_huge_pages`` parameter changed): the MMU notifier's release zaps everything, and the
  host then frees every page without telling KVM again. Between the fast zap's write-mode
  section and its zap of the invalidated roots, the invalidated root still maps the page the
  guest wrote: the release must zap it too. Zapping the valid roots only, it leaves that SPTE
  to the fast zap, which passes its Accessed and Dirty bits to a frame the host has freed.

All end with the VM's invariants (every present SPTE maps the host's frame, every table
reachable once, every root's count equal to its holders).
"""

from __future__ import annotations

from kvmlock.kvm.guest import GuestFault, guest_read, guest_write
from kvmlock.kvm.mmu.nx_recovery import recover_nx_huge_page
from kvmlock.kvm.mmu.tdp_mmu import kvm_mmu_reload, update_nx_huge_pages, zap_all_fast
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import pair

__all__: list[str] = []

_BOUND = {"strategy": "dpor", "max_runs": 20000}


def _two_slot_vm(hazards: dict[str, bool] | None = None) -> VM:
    """gfn 0 in slot 0 and gfn 1 in slot 1 (both in one table), deleted with a fast zap."""
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3, slot_zap_all=True, hazards=hazards)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.set_memory_region(1, base_gfn=1, npages=1, hva=1)
    return vm


def _one_slot_vm(hazard: str, broken: bool, npages: int = 2, nr_vcpus: int = 1) -> VM:
    """gfns from 0 in one memslot, in one table; ``hazard`` switched on for the broken row."""
    vm = VM(nr_vcpus=nr_vcpus, nr_pages=2, host_pages=3, hazards={hazard: broken})
    vm.set_memory_region(0, base_gfn=0, npages=npages, hva=0)
    return vm


def _fast_zap(vm: VM) -> None:
    with vm.slots_lock:
        zap_all_fast(vm)


def recovery_vs_fast_zap(hazards: dict[str, bool] | None = None, shared: bool = True) -> None:
    """The body of ``nx_recovery.vs_fast_zap``; ``shared=False`` zaps the invalidated roots
    under write-mode ``mmu_lock`` (a near miss that must pass as well)."""
    vm = _two_slot_vm(hazards)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 5)
    guest_read(v0, 1)  # the table of gfns 0-1 holds two present SPTEs

    def delete_slot1() -> None:
        if shared:
            vm.set_memory_region(1, npages=0)
        else:
            with vm.slots_lock:
                zap_all_fast(vm, shared=False)

    together(delete_slot1, lambda: recover_nx_huge_page(vm, 0),
             names=["delete slot 1 (fast zap)", "NX recovery"])
    vm.check()
    got = guest_read(v0, 0)  # vcpu0 reloads: its old root is gone
    assert got == 5, f"the guest wrote 5 but reads {got:#x}"
    vm.check()


@pair("nx_recovery.vs_fast_zap",
      rule="NX huge-page recovery and the fast zap of invalidated roots both clear non-leaf "
           "entries under read-mode mmu_lock, each with a cmpxchg: exactly one removes the "
           "table",
      broken_rule="NX huge-page recovery clears the entry pointing at its table with a load "
                  "and a store: the zap removed the table meanwhile, and it is removed (and "
                  "freed) twice",
      broken_expect="assertion",
      invariant="a table is removed and freed once; the guest reads back what it wrote",
      catches=("recover_parent_load_store", "fast_zap_plain_store", "recover_without_rcu"),
      **_BOUND)
def vs_fast_zap(broken: bool) -> None:
    recovery_vs_fast_zap({"recover_parent_load_store": broken})


@pair("memslots.fast_zap_vs_vcpu",
      rule="a fast zap invalidates the roots and kicks every vCPU out of guest mode in one "
           "write-mode mmu_lock section; a vCPU serves the request before it enters again, "
           "puts its own reference to the old root and flushes its TLB when it loads the new "
           "one -- the zap itself flushes nothing",
      broken_rule="the vCPU loads the new root without flushing its TLB: it reads the page of "
                  "the deleted memslot through its old translation after the frame was freed",
      broken_expect="assertion",
      invariant="no access touches a freed frame; every root's count equals its holders",
      catches=("root_load_no_flush", "obsolete_roots_request_no_wait",
               "entry_checks_requests_first", "zapped_root_freed_with_refs"), **_BOUND)
def fast_zap_vs_vcpu(broken: bool) -> None:
    vm = _two_slot_vm({"root_load_no_flush": broken})
    (v0,) = vm.vcpus
    guest_write(v0, 1, 7)  # vcpu0's TLB caches gfn 1's translation

    def vcpu0_reads() -> None:
        try:
            got = guest_read(v0, 1)
        except GuestFault:
            return  # the slot is gone: the read exits to userspace
        assert got == 7, f"vcpu0 wrote 7 to gfn 1 but reads {got:#x}"

    def delete_and_discard() -> None:
        vm.set_memory_region(1, npages=0)
        vm.host.discard(1)  # userspace drops the memory it no longer gives the guest

    together(vcpu0_reads, delete_and_discard, names=["vcpu0 reads gfn 1", "delete slot 1"])
    vm.check()
    assert guest_read(v0, 0) == 0
    vm.check()


@pair("tdp_mmu.fast_zap_vs_fault",
      rule="a TDP fault on a root that a fast zap invalidated retries (is_page_fault_stale): "
           "the vCPU reloads, and no table is linked into the old root",
      broken_rule="the fault installs into the invalidated root after its zap cleared the "
                  "entry: the new table outlives the root, out of reach of every zap",
      broken_expect="assertion",
      invariant="every table hangs in a live root; the guest reads back what it wrote",
      catches=("stale_root_fault_not_retried", "root_unlisted_unlocked"), **_BOUND)
def fast_zap_vs_fault(broken: bool) -> None:
    vm = _two_slot_vm({"stale_root_fault_not_retried": broken})
    (v0,) = vm.vcpus
    guest_write(v0, 1, 7)  # the table exists; gfn 0 has no SPTE yet

    together(lambda: guest_read(v0, 0), lambda: update_nx_huge_pages(vm),
             names=["vcpu0 reads gfn 0", "nx_huge_pages changed"])
    vm.check()
    assert guest_read(v0, 1) == 7


@pair("memslots.fast_zap_vs_running_vcpu",
      rule="the fast zap makes KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in the write-mode mmu_lock "
           "section that invalidates the roots: a vCPU serving it finds its root invalid, "
           "puts it and flushes its TLB as it loads the new one",
      broken_rule="the request is made before the roots are invalidated: the vCPU serves it "
                  "while its root is still valid, keeps root and TLB, and reads the page "
                  "through the old translation after the host swapped it out",
      broken_expect="assertion",
      invariant="no access touches a freed frame; every root's count equals its holders",
      catches=("obsolete_roots_request_first",), strategy="dpor", max_runs=20000,
      preemption_bound=3)
def fast_zap_vs_running_vcpu(broken: bool) -> None:
    vm = _one_slot_vm("obsolete_roots_request_first", broken, npages=1)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)  # vcpu0's TLB caches gfn 0's translation

    def vcpu0_reads() -> None:
        got = guest_read(v0, 0)
        assert got == 1, f"vcpu0 wrote 1 to gfn 0 but reads {got:#x}"

    def fast_zap_then_swap_out() -> None:
        _fast_zap(vm)
        vm.host.swap_out(0)  # no SPTE is left: nothing to zap, nothing to flush

    together(vcpu0_reads, fast_zap_then_swap_out, names=["vcpu0 reads gfn 0", "fast zap, swap-out"])
    vm.check()


@pair("memslots.fast_zap_vs_fast_pf",
      rule="the zap of invalidated roots frees the tables it removed only after an RCU grace "
           "period: a fast page fault may be walking one of them without mmu_lock",
      broken_rule="the removed tables are freed at once when no root is freed with them: the "
                  "fast page fault reads an SPTE of a freed table",
      broken_expect="assertion",
      invariant="no lockless walk reads a freed table; every root's count equals its holders",
      catches=("zapped_tables_freed_at_once",), **_BOUND)
def fast_zap_vs_fast_pf(broken: bool) -> None:
    vm = _one_slot_vm("zapped_tables_freed_at_once", broken)
    (v0,) = vm.vcpus
    guest_write(v0, 1, 7)  # the table of gfns 0-1 exists; gfn 0's SPTE is not present
    together(lambda: guest_write(v0, 0, 1), lambda: _fast_zap(vm),
             names=["vcpu0 writes gfn 0", "fast zap"])
    vm.check()


@pair("memslots.two_fast_zaps",
      rule="the zap of invalidated roots takes only the roots its own fast zap scheduled: a "
           "root an earlier zap already zapped, whose MMU reference it put, is left alone",
      broken_rule="the zap takes every invalid root: the second fast zap puts the first "
                  "root's MMU reference again and frees it while vcpu0 still holds it",
      broken_expect="assertion",
      invariant="a root is freed only when its last reference is put; every root's count "
                "equals its holders",
      catches=("zap_selects_invalid_roots",), **_BOUND)
def two_fast_zaps(broken: bool) -> None:
    vm = _one_slot_vm("zap_selects_invalid_roots", broken)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 7)
    _fast_zap(vm)  # vcpu0 still holds the invalidated root 0
    together(lambda: guest_read(v0, 0), lambda: _fast_zap(vm),
             names=["vcpu0 reads gfn 0 (reloads)", "second fast zap"])
    vm.check()
    assert guest_read(v0, 0) == 7


@pair("memslots.fast_zap_vs_swap_out",
      rule="until the zap of invalidated roots clears an invalidated root, the MMU notifier's "
           "unmap walks it too: a page swapped out between the fast zap's write-mode section "
           "and that zap has its SPTE there dropped, and its Dirty bit passed on, first",
      broken_rule="the notifier's unmap walks the valid root only: the invalidated root still "
                  "maps the page, so the swap-out finds it clean, frees it without writing it "
                  "back, and the zap passes the Dirty bit on too late",
      broken_expect="assertion",
      invariant="the guest reads back what it wrote; every present SPTE maps the host's frame",
      catches=("gfn_sptes_valid_root_only",), **_BOUND)
def fast_zap_vs_swap_out(broken: bool) -> None:
    vm = _one_slot_vm("gfn_sptes_valid_root_only", broken, npages=1)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 7)  # gfn 0's SPTE in root 0 is writable and Dirty; vcpu0 holds root 0
    together(lambda: update_nx_huge_pages(vm), lambda: vm.host.swap_out(0),
             names=["nx_huge_pages changed", "swap-out of gfn 0"])
    vm.check()
    got = guest_read(v0, 0)  # vcpu0 serves its request, reloads, faults the page back in
    assert got == 7, f"vcpu0 wrote 7 to gfn 0 but reads {got:#x} after the swap-out"


@pair("tdp_mmu.root_free_vs_root_walk",
      rule="a TDP root whose last reference is put leaves tdp_mmu_roots with list_del_rcu and "
           "is freed after an RCU grace period: a walk of the list that reached it just "
           "before still reads it, inside its read side, and takes no reference to a root "
           "whose count is zero",
      broken_rule="the vCPU that puts the last reference frees the root at once: the second "
                  "fast zap's walk of tdp_mmu_roots reads the count of a freed root",
      broken_expect="assertion",
      invariant="no root is used after it was freed; every root's count equals its holders",
      catches=("root_freed_at_once", "root_get_not_inc_not_zero"), **_BOUND)
def root_free_vs_root_walk(broken: bool) -> None:
    root_put_vs_zap_walk({"root_freed_at_once": broken})


def root_put_vs_zap_walk(hazards: dict[str, bool] | None = None, shared: bool = True) -> None:
    """The body of ``tdp_mmu.root_free_vs_root_walk``; ``shared=False`` walks the roots with
    ``mmu_lock`` held for write, which no put can run beside (a near miss)."""
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3, hazards=hazards)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    (v0,) = vm.vcpus
    _fast_zap(vm)  # vcpu0 holds the invalidated root 0 alone: its put will be the last

    def second_fast_zap() -> None:
        with vm.slots_lock:
            zap_all_fast(vm, shared=shared)

    together(lambda: kvm_mmu_reload(v0), second_fast_zap,
             names=["vcpu0 serves its request", "second fast zap"])
    vm.check()


@pair("memslots.load_root_vs_fast_zap",
      rule="a vCPU looks up the valid root and takes its reference under mmu_lock, which the "
           "fast zap holds for write while it invalidates the roots",
      broken_rule="the look-up and the get are made before mmu_lock: the zap invalidates the "
                  "root found, vcpu1 puts the last reference and frees it, and vcpu0 gets it",
      broken_expect="assertion",
      invariant="no root is used after it was freed; every root's count equals its holders",
      catches=("root_looked_up_unlocked",), strategy="dpor", max_runs=2000,
      preemption_bound=2)
def load_root_vs_fast_zap(broken: bool) -> None:
    vm = _one_slot_vm("root_looked_up_unlocked", broken, nr_vcpus=2)
    v0, v1 = vm.vcpus
    _fast_zap(vm)
    guest_read(v1, 0)  # vcpu1 serves its request and makes root 1; vcpu0 still holds root 0

    def zap_then_vcpu1_reloads() -> None:
        _fast_zap(vm)
        guest_read(v1, 0)  # puts root 1's last reference but vcpu0's

    together(lambda: guest_read(v0, 0), zap_then_vcpu1_reloads,
             names=["vcpu0 reloads", "second fast zap, vcpu1 reloads"])
    vm.check()


@pair("tdp_mmu.release_vs_fast_zap",
      rule="kvm_mmu_zap_all, the MMU notifier's release, zaps every TDP root, an invalid one "
           "too: a fast zap between its write-mode section and the zap of the roots it "
           "invalidated leaves their SPTEs in place, and the host frees every page once the "
           "release returns",
      broken_rule="kvm_mmu_zap_all zaps the valid roots only: the invalidated root still maps "
                  "the guest's page when the host frees it, and the fast zap's later zap "
                  "passes the SPTE's Accessed and Dirty bits to the freed frame",
      broken_expect="assertion",
      invariant="no SPTE outlives the release of the address space: nothing reaches a frame "
                "the host freed",
      catches=("zap_all_skips_invalid_roots",), **_BOUND)
def release_vs_fast_zap(broken: bool) -> None:
    vm = _one_slot_vm("zap_all_skips_invalid_roots", broken, npages=1)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 7)  # gfn 0's SPTE in root 0 is Accessed and Dirty
    together(lambda: update_nx_huge_pages(vm), vm.host.exit_mmap,
             names=["nx_huge_pages changed", "the VMM exits (mm teardown)"])
    vm.check()
