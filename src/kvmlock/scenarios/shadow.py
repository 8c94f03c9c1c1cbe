"""Shadow paging: KVM follows the guest's own page table, so the guest can change what an SPTE
stands for (locking.rst: the shadow MMU changes its pages and rmaps under ``mmu_lock`` held for
write; a fault re-checks the guest PTE it walked before installing).

* ``shadow.gpte_race`` -- a fault walks the guest PTE while the guest re-points it: the fault
  must see the change under ``mmu_lock`` and retry, and the guest's sync (drop the SPTE, flush
  TLBs) must leave no vCPU reading the old page.
* ``shadow.rmap_race`` -- two vCPUs fault two guest pages that map the same gfn at once; both
  SPTEs must land in that gfn's rmap, or the swap-out that zaps through it misses one.
* ``shadow.unsync_repoint`` -- the guest re-points a PTE of an unsync page (no exit) and writes
  through it; the fault installs the new page over the old SPTE and flushes, while the host
  swaps the old page out and another vCPU reads through what it had cached.
* ``shadow.sync_write_revoke`` -- the guest makes a PTE of an unsync page read-only, then a
  CR3 load syncs the page while another vCPU writes through it: the sync must not keep the
  writable SPTE.
* ``shadow.emulated_write_vs_harvest`` -- KVM's emulated write of a shadowed table races a
  migration's harvest: the page is written before its gfn is logged, so no harvest can take
  the bit and copy the old contents.
* ``shadow.flags_change_keeps_arch`` -- turning dirty logging on is a flags-only change: the
  slot keeps its rmaps (the first shadow root allocated them) and write-track counts.
* ``shadow.zap_vs_walk``, ``shadow.sync_vs_zap``, ``shadow.zap_dirty`` -- the shadow MMU
  zaps and frees its pages (prepare under ``mmu_lock``, then flush, then free): a vCPU's walk,
  a CR3 load's sync and a guest write race the zap; no freed page is used, no Dirty bit lost.
* ``shadow.direct_fast_pf_vs_zap`` -- with the TDP MMU off, the fast page fault's lockless
  walk of the shadow MMU's direct pages races a zap, whose remote flush waits for it.
* ``shadow.write_flooding`` -- two vCPUs' emulated writes to a shadowed guest table race;
  the one that finds it flooded zaps its shadow page, under ``mmu_lock``, and only that one.
* ``shadow.flooding_vs_nested_walk`` -- the flooding zap of a guest table's upper-level
  shadow page races a nested guest whose walks pass through that page (and whose
  paging-structure cache keeps it): the page is freed only after the remote flush.
* ``shadow.readonly_rebuild_vs_logging_on`` -- turning dirty logging on flushes only after
  dropping ``mmu_lock``; meanwhile a fault rebuilds an access-tracked SPTE read-only (the
  guest made its PTE read-only) and must flush itself, or a vCPU shadowing the gfn finds
  nothing to flush and a stale writable translation writes the shadowed table.
* ``shadow.zap_all_flush`` -- the shadow MMU's ``zap_all`` commits (flush, then free) before
  dropping ``mmu_lock``: a swap-out right after finds no SPTE and flushes nothing.
* ``shadow.rebuild_vs_store``, ``shadow.first_stores_vs_zap`` -- a page built again after a
  zap write-protects its table and flushes before the fault re-checks the guest PTE; the
  write-protection fault that may rebuild it holds ``mmu_lock`` for write.
* ``shadow.wrprot_vs_dirty`` -- write-protecting a shadowed gfn replaces a volatile SPTE with
  an exchange, judged on the value it replaces.

The invariant is the consequence: every present SPTE maps the frame the host maps for the gfn
the guest's page table names now, and is in that gfn's rmap (:meth:`VM.check`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import kvmlock
from kvmlock.kvm import ioctls
from kvmlock.kvm.guest import (
    GuestFault,
    guest_read,
    guest_write,
    load_cr3,
    nested_guest_walk,
    set_gpte,
    write_gpte,
)
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu.dirty_log import MigrationCopy, get_dirty_log
from kvmlock.kvm.mmu.page_track import WRITE_FLOODING_LIMIT, shadow_guest_table
from kvmlock.kvm.mmu.shadow import check_rmaps
from kvmlock.kvm.vcpu import VCPU
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import pair, scenario

__all__: list[str] = []

_BOUND = {"strategy": "dpor", "max_runs": 20000}
_INV = ("every present SPTE maps the host's frame for the gfn the guest's page table names, "
        "and is in that gfn's rmap")


def _run(*named) -> None:
    tasks = [kvmlock.spawn(fn, name=name) for name, fn in named]
    for t in tasks:
        t.join()


def _shadow_vm() -> VM:
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    return vm


@scenario("shadow.gpte_race.correct",
          rule="a shadow fault re-checks the guest PTE under mmu_lock; the guest's page-table "
               "sync drops the SPTE and flushes TLBs",
          variant="correct", expect="pass", invariant=_INV + "; reads see the new page",
          catches=("no_gpte_recheck", "gpte_no_zap", "gpte_no_flush"), **_BOUND)
def gpte_race() -> None:
    vm = _shadow_vm()
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 2)
    guest_write(v0, 0, 11)  # gfn 1 holds 11 (and vcpu0 caches page 0 -> gfn 1)
    guest_write(v0, 1, 22)  # gfn 2 holds 22
    set_gpte(vm, 2, 1)
    _run(("vcpu1_reads_page2", lambda: guest_read(v1, 2)),
         ("guest_repoints_page2", lambda: set_gpte(vm, 2, 2)))
    vm.check()
    got = guest_read(v1, 2)
    assert got == 22, f"page 2 now maps gfn 2 (holding 22) but the guest reads {got}"
    set_gpte(vm, 0, 2)  # vcpu0 still has page 0 -> gfn 1 in its TLB
    got = guest_read(v0, 0)
    assert got == 22, (f"page 0 now maps gfn 2 (holding 22) but vcpu0 reads {got}: it used a "
                       "translation the page-table sync should have flushed")


@scenario("shadow.rmap_race.correct",
          rule="two shadow faults on one gfn update its rmap under mmu_lock held for write",
          variant="correct", expect="pass", invariant=_INV + "; swap-out zaps every mapping",
          catches=("shadow_fault_read_lock", "unsync_without_lock", "unsync_lock_mutex"), **_BOUND)
def rmap_race() -> None:
    vm = _shadow_vm()
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 1)  # two guest pages, one gfn
    _run(("vcpu0_reads_page0", lambda: guest_read(v0, 0)),
         ("vcpu1_writes_page1", lambda: guest_write(v1, 1, 5)))
    vm.check()
    vm.host.swap_out(1)  # gfn 1's frame goes: both SPTEs must go first
    vm.check()
    got = guest_read(v0, 0), guest_read(v1, 1)
    assert got == (5, 5), f"both pages map gfn 1, which holds 5, but the guests read {got}"


def _unsync_repoint(broken: bool) -> None:
    # Dirty logging on, so a read fault maps read-only and a write faults. Page 0 -> gfn 1,
    # which vcpu1 has read (its TLB caches page 0 -> gfn 1's frame). The guest already changed
    # page 3's entry of the same table, so the shadow page is unsync and the table writable:
    # re-pointing page 0 at gfn 2 is a plain store, and vcpu0's write then faults and replaces
    # the present SPTE (gfn 1's frame) with gfn 2's, dropping it from gfn 1's rmap.
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False,
            hazards={"shadow_remap_no_flush": broken})
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 1)
    guest_read(v1, 0)
    set_gpte(vm, 1, 2)
    guest_read(v0, 1)  # gfn 2 is in memory: the fault below need not swap it in
    write_gpte(v0, 3, 3)  # exits once: the page goes unsync, its table writable
    assert vm.mmu.pages[0].unsync and vm.mmu.pages[0].gpt_writable

    def guest_repoints_and_writes() -> None:
        write_gpte(v0, 0, 2)
        guest_write(v0, 0, 7)

    def host_swaps_gfn1_vcpu1_reads() -> None:
        vm.host.swap_out(1)  # gfn 1's frame is freed: whatever still maps it must be gone
        guest_read(v1, 0)

    _run(("vcpu0_repoints_page0_and_writes", guest_repoints_and_writes),
         ("host_swaps_gfn1_then_vcpu1_reads_page0", host_swaps_gfn1_vcpu1_reads))
    vm.check()
    assert vm.host.contents(2) == 7, (
        f"the guest wrote 7 through page 0 -> gfn 2 but gfn 2 holds {vm.host.contents(2)}")


_UNSYNC_INV = ("no vCPU reads or writes a frame the host freed (a stale translation outlived "
               "its SPTE); every SPTE of a synced page maps what the guest's table names")


@scenario("shadow.unsync_repoint.correct",
          rule="a shadow fault that replaces a present SPTE with another page's (the guest "
               "re-pointed a PTE of an unsync page, no exit) flushes remote TLBs",
          variant="correct", expect="pass", invariant=_UNSYNC_INV,
          catches=("shadow_remap_no_flush",), **_BOUND)
def unsync_repoint_correct() -> None:
    _unsync_repoint(False)


@scenario("shadow.unsync_repoint.broken",
          rule="the shadow fault replaces the SPTE without a flush: the old page leaves its "
               "rmap, its swap-out flushes nothing, vcpu1 reads the freed frame",
          variant="broken", expect="assertion", invariant=_UNSYNC_INV, **_BOUND)
def unsync_repoint_broken() -> None:
    _unsync_repoint(True)


@scenario("shadow.remap_dirty.correct",
          rule="a shadow fault that replaces a present SPTE with another page's passes the "
               "old SPTE's Dirty bit to the old page first (drop_spte)",
          variant="correct", expect="pass",
          invariant="a page the guest wrote is written back when the host swaps it out",
          catches=("shadow_remap_drops_ad",), **_BOUND)
def remap_dirty() -> None:
    # Page 0 -> gfn 1, written (W|D); a harvest write-protects it and keeps Dirty in the SPTE
    # (the page's own dirty flag is only set when an SPTE is dropped or aged). The guest
    # re-points page 0 at gfn 2 in its unsync table and writes: the fault replaces the SPTE,
    # and gfn 1's swap-out must still write back what the guest wrote there.
    vm = VM(nr_vcpus=1, nr_pages=4, host_pages=4, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 42)
    get_dirty_log(vm, 0)
    write_gpte(v0, 3, 3)  # exits once: the page goes unsync, its table writable
    write_gpte(v0, 0, 2)
    guest_write(v0, 0, 7)
    vm.host.swap_out(1)
    vm.check()
    got = vm.host.contents(1)
    assert got == 42, (f"the guest wrote 42 to gfn 1 but after its swap-out it holds {got}: "
                       "the replaced SPTE's Dirty bit never reached the page")


def _sync_roots(broken: bool) -> None:
    # Pages 0 and 1 -> gfn 1 (holding 11), page 2 -> gfn 2 (holding 22); vcpu1 has read page 0,
    # so its TLB caches page 0 -> gfn 1. The guest re-points page 0 at gfn 2 with a plain store
    # (its first store to the table exits and the page goes unsync). Then vcpu0 loads CR3: the
    # sync drops page 0's SPTE, which takes it out of gfn 1's rmap -- while vcpu1 reads page 0,
    # the host swaps gfn 1 out, and vcpu1 reads page 0 again and faults page 1 (gfn 1 again:
    # its SPTE joins that rmap).
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False, hazards={"sync_no_flush": broken})
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v0, v1 = vm.vcpus
    for va, gfn in ((0, 1), (1, 1), (2, 2)):
        set_gpte(vm, va, gfn)
    guest_write(v0, 0, 11)
    guest_write(v0, 2, 22)
    guest_read(v1, 0)
    write_gpte(v0, 0, 2)
    assert vm.mmu.pages[0].unsync
    seen: list[int] = []

    def vcpu1_reads_host_swaps_gfn1() -> None:
        # the first read may re-cache page 0 -> gfn 1 while the sync runs (before it drops
        # the SPTE): the sync's own flush must take it away before gfn 1's frame is freed
        seen.append(guest_read(v1, 0))
        vm.host.swap_out(1)
        seen.append(guest_read(v1, 0))
        seen.append(guest_read(v1, 1))

    _run(("vcpu0_loads_cr3", lambda: load_cr3(v0)),
         ("vcpu1_reads_host_swaps_gfn1_vcpu1_reads", vcpu1_reads_host_swaps_gfn1))
    vm.check()
    assert seen[0] in (11, 22) and seen[1:] == [22, 11], (
        f"vcpu1 read {seen} from pages 0 (gfn 1, then gfn 2), 0 (gfn 2) and 1 (gfn 1)")
    vm.host.swap_out(1)  # every SPTE of gfn 1 must be in its rmap, or this leaves one behind
    assert guest_read(v1, 1) == 11, "gfn 1 was written back and swapped in: it holds 11"
    # The page is sync again, so its table is write-protected: the guest's next change exits,
    # marks it unsync, and the next CR3 load drops the SPTE it makes stale.
    write_gpte(v0, 0, 3)
    load_cr3(v0)
    got = guest_read(v0, 0)
    assert got == 0, (f"the guest pointed page 0 at gfn 3 (holding 0) and loaded CR3, but vcpu0 "
                      f"reads {got}: the shadow page kept the old translation")
    vm.check()


_SYNC_INV = ("no vCPU reaches a frame the host freed; after a CR3 load every SPTE maps what "
             "the guest's table names, and reads see it; every SPTE is in its gfn's rmap")


@scenario("shadow.sync_roots.correct",
          rule="the sync of unsync pages at a CR3 load write-protects the guest tables, drops "
               "the SPTEs that no longer match and flushes, all under mmu_lock held for write",
          variant="correct", expect="pass", invariant=_SYNC_INV,
          catches=("sync_no_flush", "sync_keeps_table_writable", "sync_without_mmu_lock"),
          **_BOUND)
def sync_roots_correct() -> None:
    _sync_roots(False)


@scenario("shadow.sync_roots.broken",
          rule="the sync drops a stale SPTE without a flush: its gfn's swap-out finds nothing "
               "to zap or flush, and vcpu1 reads the freed frame through its TLB",
          variant="broken", expect="assertion", invariant=_SYNC_INV, **_BOUND)
def sync_roots_broken() -> None:
    _sync_roots(True)


@scenario("shadow.sync_vs_store.correct",
          rule="the sync write-protects a writable guest table and flushes before it reads "
               "the table: a store racing it lands before the read or exits and marks the page "
               "unsync again",
          variant="correct", expect="pass",
          invariant="after the storing vCPU's own CR3 load it reads the page its table names; "
                    "a page marked sync matches the guest's table",
          catches=("sync_wrprot_no_flush", "sync_reads_before_wrprot",
                   "sync_keeps_table_writable"), **_BOUND)
def sync_vs_store() -> None:
    # Page 0 -> gfn 1 (holding 11), page 1 -> gfn 2 (holding 22); the guest already changed
    # another entry of the table, so the page is unsync and the table writable. vcpu0 loads
    # CR3 while vcpu1's guest re-points page 0 at gfn 2 with a plain store, then flushes.
    vm = _shadow_vm()
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 2)
    guest_write(v0, 0, 11)
    guest_write(v0, 1, 22)
    write_gpte(v1, 3, 3)
    _run(("vcpu0_loads_cr3", lambda: load_cr3(v0)),
         ("vcpu1_repoints_page0", lambda: write_gpte(v1, 0, 2)))
    load_cr3(v1)
    got = guest_read(v1, 0)
    assert got == 22, (f"vcpu1 pointed page 0 at gfn 2 (holding 22) and loaded CR3, but reads "
                       f"{got}: the sync read the table while the store could still land")
    vm.check()


@scenario("shadow.unsync_vs_lockless_sync.correct",
          rule="the write-protection fault marks the shadow page unsync before it makes the "
               "guest table writable: a CR3 load's sync looks at the unsync flags without "
               "mmu_lock and skips a page that is not marked",
          variant="correct", expect="pass",
          invariant="a vCPU that stored a new guest PTE through the writable table and then "
                    "loaded CR3 reads the page its table names",
          catches=("unsync_marked_after_table_writable",), **_BOUND)
def unsync_vs_lockless_sync() -> None:
    # Page 0 -> gfn 1 (holding 11), page 1 -> gfn 2 (holding 22), the page in sync. vcpu0's
    # guest changes page 3's entry (it exits: the page goes unsync, the table writable) while
    # vcpu1's guest re-points page 0 at gfn 2 -- a plain store if the table is writable by
    # then -- loads CR3 and reads page 0.
    vm = _shadow_vm()
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 2)
    guest_write(v0, 0, 11)
    guest_write(v0, 1, 22)
    got: list[int] = []

    def vcpu1() -> None:
        write_gpte(v1, 0, 2)
        load_cr3(v1)
        got.append(guest_read(v1, 0))

    _run(("vcpu0_changes_page3", lambda: write_gpte(v0, 3, 3)),
         ("vcpu1_repoints_page0_loads_cr3_reads", vcpu1))
    assert got == [22], (f"vcpu1 pointed page 0 at gfn 2 (holding 22) and loaded CR3, but "
                         f"reads {got[0]}: its sync found no page unsync and kept the stale "
                         "SPTE")
    vm.check()


@scenario("shadow.first_store_vs_sync.correct",
          rule="the write-protection fault on a guest table marks its shadow page unsync and "
               "makes the table writable in one mmu_lock section, so a CR3 load's sync sees "
               "both or neither",
          variant="correct", expect="pass",
          invariant="a shadow page in sync maps what the guest's table names",
          catches=("table_writable_after_unlock",), **_BOUND)
def first_store_vs_sync() -> None:
    # vcpu0's guest re-points page 0 (gfn 0 -> gfn 2): its first store to the table exits,
    # while vcpu1's guest loads CR3 and syncs every unsync page. Whichever comes first, the
    # page ends either unsync (the SPTE may lag) or in sync with the guest's table.
    vm = _shadow_vm()
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 0)
    guest_read(v0, 0)
    _run(("vcpu0_first_store_to_table", lambda: write_gpte(v0, 0, 2)),
         ("vcpu1_loads_cr3", lambda: load_cr3(v1)))
    vm.check()


@scenario("shadow.invlpg_vs_first_store.correct",
          rule="the INVLPG path reads whether the shadow page was unsync already under "
               "mmu_lock, so a first store to the table that makes it unsync meanwhile keeps "
               "it unsync",
          variant="correct", expect="pass",
          invariant="a shadow page is in sync only while the guest's table is write-protected, "
                    "and an in-sync page maps what the table names",
          catches=("unsync_sampled_before_mmu_lock",), **_BOUND)
def invlpg_vs_first_store() -> None:
    # Pages 0 and 3 mapped and read (the page in sync, its table write-protected). The guest
    # on vcpu0 re-points page 0 and flushes it (INVLPG) while vcpu1's guest stores a new
    # entry for page 3: its first store exits, marks the page unsync and opens the table.
    vm = _shadow_vm()
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 0)
    set_gpte(vm, 3, 3)
    guest_read(v0, 0)
    guest_read(v1, 3)
    _run(("vcpu0_invlpg_page0", lambda: set_gpte(vm, 0, 1)),
         ("vcpu1_first_store_page3", lambda: write_gpte(v1, 3, 2)))
    vm.check()


def _two_syncs(broken: bool) -> None:
    # Pages 0 and 1 both map gfn 1, so its rmap holds both SPTEs. The guest re-points both
    # entries in its unsync table (gfn 2 and gfn 3), then both vCPUs load CR3 at once: the
    # two syncs each find the page unsync and drop the SPTEs that no longer match. Serialised
    # by mmu_lock held for write, the first drops both and the second finds the page in sync;
    # sharing it for read, one can drop page 0's SPTE while the other drops page 1's, and
    # each writes back gfn 1's rmap without the other's removal.
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False,
            hazards={"sync_read_lock": broken})
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 1)
    guest_write(v0, 0, 11)
    assert guest_read(v1, 1) == 11
    write_gpte(v0, 0, 2)  # exits once: the page goes unsync, its table writable
    write_gpte(v0, 1, 3)
    _run(("vcpu0_loads_cr3", lambda: load_cr3(v0)),
         ("vcpu1_loads_cr3", lambda: load_cr3(v1)))
    vm.check()
    vm.host.swap_out(1)
    got = guest_read(v0, 0), guest_read(v1, 1)
    assert got == (0, 0), (f"pages 0 and 1 now map gfns 2 and 3 (holding 0), but the guests "
                           f"read {got}")
    vm.check()


_TWO_SYNCS_INV = ("every rmap entry names a present SPTE of its gfn, and every present SPTE is "
                  "in its gfn's rmap; reads see what the guest's table names")


@scenario("shadow.two_syncs.correct",
          rule="two vCPUs' CR3 loads sync the same unsync page one after the other: the sync "
               "holds mmu_lock for write",
          variant="correct", expect="pass", invariant=_TWO_SYNCS_INV,
          catches=("sync_read_lock",), **_BOUND)
def two_syncs_correct() -> None:
    _two_syncs(False)


@scenario("shadow.two_syncs.broken",
          rule="the sync holds mmu_lock only for read: two syncs drop SPTEs of one gfn at once "
               "and one removal from its rmap is lost",
          variant="broken", expect="assertion", invariant=_TWO_SYNCS_INV, **_BOUND)
def two_syncs_broken() -> None:
    _two_syncs(True)


@pair("shadow.sync_write_revoke",
      rule="the sync of an unsync page at a CR3 load drops (the kernel rebuilds) an SPTE "
           "whose guest PTE was made read-only, under mmu_lock held for write",
      broken_rule="the sync drops an SPTE only when the guest PTE names another gfn: the "
                  "SPTE of a PTE the guest made read-only stays writable",
      broken_expect="assertion",
      invariant="after a CR3 load no SPTE is writable or MMU-writable where the guest maps the "
                "page read-only, and a vCPU that loaded CR3 cannot write that page",
      catches=("sync_keeps_revoked_write",), **_BOUND)
def sync_write_revoke(broken: bool) -> None:
    # Page 0 -> gfn 1, written by vcpu0 (its SPTE writable). The guest makes page 0 read-only
    # with a plain store (the page goes unsync), then vcpu0 loads CR3 while vcpu1's guest
    # writes page 0 -- through the old SPTE before the sync, or faulting after it.
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False,
            hazards={"sync_keeps_revoked_write": broken})
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v0, v1 = vm.vcpus
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 7)
    write_gpte(v0, 0, 1, writable=False)
    assert vm.mmu.pages[0].unsync

    def vcpu1_writes() -> None:
        with contextlib.suppress(GuestFault):  # the sync came first: the write faults
            guest_write(v1, 0, 9)

    _run(("vcpu0_loads_cr3", lambda: load_cr3(v0)), ("vcpu1_writes_page0", vcpu1_writes))
    vm.check()
    load_cr3(v1)
    try:
        guest_write(v1, 0, 5)
    except GuestFault:
        pass
    else:
        raise AssertionError("vcpu1 wrote guest page 0, which the guest maps read-only, after "
                             "loading CR3: the sync kept a writable SPTE")


# --------------------------------------------------------------------------- write tracking

_WRPROT_INV = ("no vCPU writes a shadowed guest page table through a writable translation once "
               "its write-protection is relied on; no SPTE of it is writable or MMU-writable; "
               "the writes the guest made are all in memory (emulated)")


@scenario("shadow.wrprot.correct",
          rule="a newly shadowed guest page table loses W and MMU-writable under mmu_lock, with "
               "a flush before it is relied on; faults then never make it writable",
          variant="correct", expect="pass", invariant=_WRPROT_INV,
          catches=("shadowed_wrprot_no_flush", "shadowed_wrprot_without_mmu_lock",
                   "shadowed_wrprot_keeps_mmu_writable", "tracked_gfn_mapped_writable",
                   "emulated_write_not_logged", "emulated_write_without_srcu",
                   "fast_pf_ignore_mmu_writable", "fast_pf_plain_store",
                   "skip_tlb_flush_on_wrprot"), **_BOUND)
def wrprot_race() -> None:
    # TDP with dirty logging on, so a read fault maps gfn 1 read-only but MMU-writable: the
    # fast path may make it writable. vcpu1 enters a nested guest whose page table lives at
    # gfn 1, so KVM starts shadowing gfn 1 while vcpu0 (the nested guest's hypervisor) uses it.
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus

    def hypervisor_reads_then_writes() -> None:
        guest_read(v0, 1)
        guest_write(v0, 1, 5)

    _run(("vcpu0_reads_then_writes_gfn1", hypervisor_reads_then_writes),
         ("vcpu1_shadows_gfn1", lambda: shadow_guest_table(v1, 1)))
    assert get_dirty_log(vm, 0) == [1], "the guest wrote gfn 1: the log must say so"
    guest_write(v0, 1, 6)  # vcpu0 may still cache gfn 1 writable: it must not
    vm.check()
    assert vm.host.contents(1) == 6, (
        f"the guest's last write to gfn 1 was 6 but memory holds {vm.host.contents(1)}")
    assert get_dirty_log(vm, 0) == [1], "the emulated write of gfn 1 is missing from the log"


@scenario("shadow.emulated_write_vs_delete.correct",
          rule="KVM's emulated write of a write-tracked gfn logs it inside kvm->srcu: the "
               "memslot's deletion frees the slot and its dirty bitmap only after the grace "
               "period",
          variant="correct", expect="pass",
          invariant="no memslot or dirty bitmap is used after it was freed; the write either "
                    "completed before the deletion or found no memslot",
          catches=("emulated_write_logged_after_srcu",), **_BOUND)
def emulated_write_vs_delete() -> None:
    # TDP with dirty logging on; gfn 1 holds a guest page table KVM shadows (vcpu1's nested
    # guest), so vcpu0's write to it faults and is emulated, while userspace deletes the slot.
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    shadow_guest_table(v1, 1)

    def vcpu0_writes() -> None:
        try:
            guest_write(v0, 1, 5)
        except GuestFault:
            pass  # the slot was gone first: the write is an MMIO exit

    _run(("vcpu0_writes_gfn1", vcpu0_writes),
         ("KVM_SET_USER_MEMORY_REGION_delete", lambda: vm.set_memory_region(0, npages=0)))
    vm.check()


@pair("shadow.emulated_write_vs_harvest",
      rule="KVM's emulated write of a write-tracked gfn writes the page first and logs the "
           "gfn after, so a harvest racing it either sees the bit and copies the new "
           "contents, or leaves the bit for the next harvest",
      broken_rule="the emulated write logs the gfn before writing the page: a harvest in "
                  "between copies the old contents and clears the bit, and the final copy "
                  "misses the write",
      broken_expect="assertion", catches=("emulated_write_logged_first",),
      invariant="a migration copy made from the dirty log equals guest memory after a final "
                "harvest", **_BOUND)
def emulated_write_vs_harvest(broken: bool) -> None:
    # TDP with dirty logging on; gfn 1 holds a guest page table KVM shadows (vcpu1's nested
    # guest), so vcpu0's write to it is emulated, while the migration harvests the log.
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2,
            hazards={"emulated_write_logged_first": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    shadow_guest_table(v1, 1)
    copy = MigrationCopy(vm, 0)
    copy.round()  # the first pass: everything so far
    _run(("vcpu0_writes_gfn1", lambda: guest_write(v0, 1, 5)),
         ("migration_round", copy.round))
    copy.round()  # the guest is stopped: the final pass
    vm.check()
    assert not copy.mismatches(), (
        f"the migrated copy differs from guest memory (gfn, source, copy): "
        f"{copy.mismatches()}: the dirty log lost the emulated write")


@scenario("shadow.wrprot_two_shadowers.correct",
          rule="write-protecting a newly shadowed guest table flushes TLBs before mmu_lock is "
               "released: a second vCPU shadowing the same table finds it read-only, owes no "
               "flush and relies on the protection",
          variant="correct", expect="pass", invariant=_WRPROT_INV,
          catches=("shadowed_wrprot_flush_after_unlock",), **_BOUND)
def wrprot_two_shadowers() -> None:
    # vcpu0 has written gfn 2 (its TLB caches it writable) and writes it again while vcpu1
    # and vcpu2 both start shadowing the guest page table at gfn 2.
    vm = VM(nr_vcpus=3, nr_pages=4, host_pages=4)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v0, v1, v2 = vm.vcpus
    guest_write(v0, 2, 1)
    _run(("vcpu1_shadows_gfn2", lambda: shadow_guest_table(v1, 2)),
         ("vcpu2_shadows_gfn2", lambda: shadow_guest_table(v2, 2)),
         ("vcpu0_writes_gfn2", lambda: guest_write(v0, 2, 5)))
    vm.check()
    got = vm.host.contents(2)
    assert got == 5, f"the guest wrote 5 to gfn 2, memory holds {got}"


@scenario("shadow.wrprot_vs_harvest.correct",
          rule="an SPTE update flushes when it takes W from an MMU-writable SPTE, judged on "
               "MMU-writable, not W: a dirty-log harvest may have cleared W and still owe its "
               "flush when a vCPU write-protects the gfn to shadow it",
          variant="correct", expect="pass", invariant=_WRPROT_INV,
          catches=("flush_judged_on_w",), **_BOUND)
def wrprot_vs_harvest() -> None:
    # Dirty logging on (TDP): vcpu0 has written gfn 1 (its TLB caches it writable). A harvest
    # write-protects gfn 1 and flushes once it is done, while vcpu1 starts shadowing the guest
    # page table at gfn 1 and vcpu0 writes it again.
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    guest_write(v0, 1, 5)
    _run(("KVM_GET_DIRTY_LOG", lambda: get_dirty_log(vm, 0)),
         ("vcpu1_shadows_gfn1", lambda: shadow_guest_table(v1, 1)),
         ("vcpu0_writes_gfn1", lambda: guest_write(v0, 1, 7)))
    vm.check()


def _wrprot_dirty(broken: bool) -> None:
    # TDP: the guest writes gfn 1 (its SPTE is writable and Dirty; the page itself is not yet
    # marked dirty), then gfn 1 becomes a shadowed guest page table: W and MMU-writable go, D
    # stays. The next write faults, and the fault rebuilds the SPTE without W (the write is
    # emulated). Meanwhile the host swaps gfn 1 out and reads it back, as a VMM copying guest
    # memory would: the first write must survive, so the rebuilt SPTE must keep D.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, hazards={"tdp_fault_drops_ad": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 1, 1)
    shadow_guest_table(v0, 1)
    seen: list[int] = []

    def host_swaps_out_and_reads() -> None:
        vm.host.swap_out(1)
        seen.append(vm.host.read(1))

    _run(("vcpu0_writes_gfn1", lambda: guest_write(v0, 1, 2)),
         ("host_swaps_out_and_reads_gfn1", host_swaps_out_and_reads))
    vm.check()
    assert seen[0] in (1, 2), (
        f"the guest wrote 1 to gfn 1, then 2, but the host read back {seen[0]} after swapping "
        "it out: the write's Dirty bit was lost, so the page was never written back")
    assert vm.host.contents(1) == 2, (
        f"the guest's last write to gfn 1 was 2 but memory holds {vm.host.contents(1)}")


_DIRTY_INV = ("Dirty bit propagated to the page before the SPTE is dropped: no guest write is "
              "lost when the host swaps the page out")


@scenario("shadow.wrprot_dirty.correct",
          rule="a TDP fault that rebuilds a present SPTE (a shadowed gfn's, without W) keeps "
               "its Accessed and Dirty bits",
          variant="correct", expect="pass", invariant=_DIRTY_INV,
          catches=("tdp_fault_drops_ad",), **_BOUND)
def wrprot_dirty_correct() -> None:
    _wrprot_dirty(False)


@scenario("shadow.wrprot_dirty.broken",
          rule="a TDP fault rebuilds a shadowed gfn's SPTE without its Dirty bit: swap-out "
               "skips the write-back",
          variant="broken", expect="assertion", invariant=_DIRTY_INV, **_BOUND)
def wrprot_dirty_broken() -> None:
    _wrprot_dirty(True)


# --------------------------------------------------------------------------- first shadow root


@scenario("shadow.first_root.correct",
          rule="the first shadow root gives every memslot its rmaps under slots_arch_lock, and "
               "only then sets shadow_root_allocated (store-release; readers load-acquire)",
          variant="correct", expect="pass",
          invariant="a vCPU that sees shadow_root_allocated finds its memslot's rmaps; every "
                    "memslot has rmaps once a root exists",
          catches=("root_flag_before_rmaps",), **_BOUND)
def first_root() -> None:
    # two vCPUs enter KVM_RUN on a VM with no shadow root yet: both want to build it, and the
    # one that finds it built goes straight on to a fault that adds rmap entries
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    for va in (0, 1):  # the guest's own page table (va -> gfn va), before any shadow root
        vm.mmu.gpt[va].store(va + 1)
    v0, v1 = vm.vcpus
    _run(("vcpu0_reads_page0", lambda: guest_read(v0, 0)),
         ("vcpu1_reads_page1", lambda: guest_read(v1, 1)))
    check_rmaps(vm)
    vm.check()


@scenario("shadow.first_root_vs_create.correct",
          rule="two vCPUs build the first shadow root while a memslot is created: "
               "slots_arch_lock orders the rmap allocation with the new slot, and the flag is "
               "set only once every slot has its rmaps",
          variant="correct", expect="pass",
          invariant="every memslot has rmaps once a root exists, the new one too; a fault "
                    "that finds the root built finds its slot's rmaps",
          catches=("root_flag_before_rmaps", "root_alloc_without_slots_arch_lock",
                   "roots_sampled_before_slots_arch_lock"),
          strategy="dpor", max_runs=300)
def first_root_vs_create() -> None:
    # three actors, bounded: exhaustive DPOR needs about 7,500 executions, and both mutants
    # are found within the first 100
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    for va in (0, 1, 2):  # page 2 -> gfn 2, which the new slot 1 will back
        vm.mmu.gpt[va].store(va + 1)
    v0, v1 = vm.vcpus

    def kvm_run(vcpu: VCPU, va: int) -> Callable[[], None]:
        def run() -> None:
            try:
                ioctls.kvm_run(vcpu, lambda v: guest_read(v, va))
            except GuestFault:
                pass  # gfn 2 before its slot exists: an MMIO exit
        return run

    together(kvm_run(v0, 0), kvm_run(v1, 2),
             lambda: vm.set_memory_region(1, base_gfn=2, npages=1, hva=2),
             names=["vcpu0 KVM_RUN", "vcpu1 KVM_RUN", "KVM_SET_USER_MEMORY_REGION"])
    check_rmaps(vm)
    vm.check()


@pair("shadow.flags_change_keeps_arch",
      rule="a flags-only memslot change (dirty logging turned on) keeps the slot's arch "
           "data: its rmaps and the write-track count of a shadowed guest table",
      broken_rule="the flags-only change gives the slot fresh arch data, as a created slot "
                  "gets: no rmaps although a shadow root exists, and the shadowed table's "
                  "gfn no longer tracked",
      broken_expect="assertion", catches=("flags_change_new_arch",),
      invariant="every memslot has rmaps once a shadow root exists, after a flags-only "
                "change too", strategy="dpor")
def flags_change_keeps_arch(broken: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, tdp=False,
            hazards={"flags_change_new_arch": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    for va in (0, 1):
        vm.mmu.gpt[va].store(va + 1)
    (v0,) = vm.vcpus
    guest_read(v0, 0)  # the first shadow root: every memslot gets its rmaps
    assert shadow_guest_table(v0, 1), "gfn 1 is backed by slot 0"
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    check_rmaps(vm)
    guest_write(v0, 1, 7)  # to the shadowed table: emulated, never through a writable SPTE
    vm.check()


def _sync_vs_slot_update() -> None:
    # Page 0 -> gfn 1, then the guest re-points it at gfn 2 in its unsync table: vcpu0's CR3
    # load drops page 0's SPTE, finding gfn 1's rmap through the memslots array it loaded.
    # Meanwhile userspace creates a second memslot: the update swaps the array, waits for a
    # grace period and reuses the old array for its next update.
    vm = VM(nr_vcpus=1, nr_pages=6, host_pages=6, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    (v0,) = vm.vcpus
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 11)
    write_gpte(v0, 3, 3)  # the first store exits: the page goes unsync, its table writable
    write_gpte(v0, 0, 2)
    _run(("vcpu0_loads_cr3", lambda: load_cr3(v0)),
         ("userspace_creates_slot1", lambda: vm.set_memory_region(1, base_gfn=4, npages=2,
                                                                  hva=4)))
    vm.check()
    assert guest_read(v0, 0) == 0, "page 0 now names gfn 2, never written"


@scenario("shadow.sync_vs_slot_update.correct",
          rule="kvm->srcu: the sync of unsync pages finds each dropped SPTE's rmap through the "
               "memslots array inside the read side, so a memslot update cannot free (reuse) "
               "the array under it",
          variant="correct", expect="pass",
          invariant="no memslots array is used after the update that replaced it freed it",
          catches=("sync_without_srcu",), **_BOUND)
def sync_vs_slot_update() -> None:
    _sync_vs_slot_update()


@pair("shadow.wrprot_vs_dirty",
      rule="write-protecting a shadowed gfn replaces a volatile SPTE (read-only but "
           "MMU-writable) with an exchange, judged on the value it replaces: the fast path's "
           "W and the CPU's Dirty bit set meanwhile are passed to the page",
      broken_rule="the volatility test made on the value written (read-only, no longer "
                  "MMU-writable: not volatile), so the write-protection is a plain store and "
                  "the Dirty bit the CPU set meanwhile is lost: swap-out skips the write-back",
      broken_expect="assertion", catches=("volatile_judged_on_new",),
      invariant="Dirty bit propagated to the page before the SPTE stops saying so: a page the "
                "guest wrote is written back when the host swaps it out", **_BOUND)
def wrprot_vs_dirty(broken: bool) -> None:
    # TDP with dirty logging on: vcpu0's read maps gfn 1 read-only but MMU-writable (the fast
    # path may set W). vcpu0 writes gfn 1 -- the fast path sets W, the CPU sets Dirty -- while
    # vcpu1 starts shadowing the guest page table at gfn 1, which clears W and MMU-writable.
    # Then the host swaps gfn 1 out and reads it back.
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2, hazards={"volatile_judged_on_new": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    guest_read(v0, 1)
    _run(("vcpu0_writes_gfn1", lambda: guest_write(v0, 1, 5)),
         ("vcpu1_shadows_gfn1", lambda: shadow_guest_table(v1, 1)))
    vm.host.swap_out(1)
    got = vm.host.read(1)
    assert got == 5, (f"the guest wrote 5 to gfn 1 but the host reads {got} after swapping it "
                      "out: the Dirty bit was lost when gfn 1 was write-protected")
    vm.check()


# --------------------------------------------------------------------------- zap and free


def _zapped_vm(nr_vcpus: int, hazard: str, broken: bool) -> VM:
    """Shadow paging, four pages, page 0 -> gfn 1; ``hazard`` applied when ``broken``."""
    vm = VM(nr_vcpus=nr_vcpus, nr_pages=4, host_pages=4, tdp=False, hazards={hazard: broken})
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    set_gpte(vm, 0, 1)
    return vm


def _race_zap_all(vm: VM, name: str, fn: Callable[[], object]) -> None:
    """``fn`` against ``kvm_mmu_zap_all``, which frees every shadow page."""
    _run((name, fn), ("kvm_mmu_zap_all", vm.mmu.zap_all))


@pair("shadow.zap_vs_walk",
      rule="the shadow MMU's zap flushes remote TLBs before it frees the zapped pages: the "
           "flush waits for every vCPU still walking a page it found before the zap",
      broken_rule="the zapped pages freed before the flush: a vCPU in guest mode that found "
                  "the page before the zap walks it after the free",
      broken_expect="assertion", catches=("commit_zap_frees_before_flush",),
      invariant="no vCPU walks a shadow page after it was freed; every present SPTE maps what "
                "the guest's table names, and reads see it", **_BOUND)
def zap_vs_walk(broken: bool) -> None:
    # Shadow paging: page 0 -> gfn 1 (holding 11), mapped. vcpu1 reads page 0 while all
    # shadow pages are zapped (what a memslot deletion does with the zap-all behaviour).
    vm = _zapped_vm(2, "commit_zap_frees_before_flush", broken)
    v0, v1 = vm.vcpus
    guest_write(v0, 0, 11)
    got: list[int] = []
    _race_zap_all(vm, "vcpu1_reads_page0", lambda: got.append(guest_read(v1, 0)))
    vm.check()
    assert got == [11] and guest_read(v0, 0) == 11, (
        f"page 0 maps gfn 1, which holds 11, but the guests read {got} and "
        f"{guest_read(v0, 0)}")


@pair("shadow.sync_vs_zap",
      rule="a CR3 load's sync gathers the unsync pages and syncs them in one mmu_lock "
           "section: a zap, also under mmu_lock, frees none of them in between",
      broken_rule="the sync gathers the unsync pages before taking mmu_lock: a zap in between "
                  "frees a page the sync then write-protects and syncs",
      broken_expect="assertion",
      catches=("sync_gathers_without_mmu_lock", "zap_keeps_unsync_accounted"),
      invariant="no shadow page is used after it was freed; after the CR3 load every SPTE "
                "maps what the guest's table names", **_BOUND)
def sync_vs_zap(broken: bool) -> None:
    # Page 0 -> gfn 1 (holding 11); the guest re-points it at gfn 2 in its unsync table
    # (the first store exits). vcpu0 loads CR3 while the shadow pages are zapped.
    vm = _zapped_vm(1, "sync_gathers_without_mmu_lock", broken)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 11)
    write_gpte(v0, 3, 3)
    write_gpte(v0, 0, 2)
    _race_zap_all(vm, "vcpu0_loads_cr3", lambda: load_cr3(v0))
    vm.check()
    got = guest_read(v0, 0)
    assert got == 0, (f"the guest pointed page 0 at gfn 2 (never written) and loaded CR3, but "
                      f"reads {got}")


@pair("shadow.zap_dirty",
      rule="zapping a shadow page drops each SPTE through the rmap-tracked drop, which passes "
           "its Dirty bit to the page",
      broken_rule="the zap clears the SPTEs with plain stores: the Dirty bit of the guest's "
                  "write is lost, and swap-out skips the write-back",
      broken_expect="assertion", catches=("zap_page_drops_ad",),
      invariant="Dirty bit propagated to the page before the SPTE is dropped: a page the "
                "guest wrote is written back when the host swaps it out", **_BOUND)
def zap_dirty(broken: bool) -> None:
    # vcpu0 writes page 0 -> gfn 1 (its SPTE gets Dirty; the page itself is marked dirty only
    # when the SPTE is dropped) while every shadow page is zapped; a second zap drops the SPTE
    # the write may have built after the first. Then gfn 1 is swapped out and read back.
    vm = _zapped_vm(1, "zap_page_drops_ad", broken)
    (v0,) = vm.vcpus
    guest_read(v0, 0)
    _race_zap_all(vm, "vcpu0_writes_page0", lambda: guest_write(v0, 0, 5))
    vm.mmu.zap_all()
    vm.host.swap_out(1)
    got = vm.host.read(1)
    assert got == 5, (f"the guest wrote 5 to gfn 1 but the host reads {got} after the zap and "
                      "swap-out: the zapped SPTE's Dirty bit never reached the page")
    vm.check()


@pair("shadow.direct_fast_pf_vs_zap",
      rule="with the TDP MMU off the shadow MMU manages the direct pages: its fast page fault "
           "walks them between walk_shadow_page_lockless_begin and _end (interrupts off, "
           "vcpu->mode READING_SHADOW_PAGE_TABLES), and a zap frees them only after a remote "
           "flush, which waits for that walk",
      broken_rule="the fast page fault walks the shadow MMU's pages without the begin/end "
                  "protection: the zap's flush does not wait for it, and it reads the page "
                  "after the free",
      broken_expect="assertion", catches=("shadow_lockless_walk_unprotected",),
      invariant="no lockless walker reads a shadow page after it was freed; the guest's write "
                "is in memory and in the dirty log", **_BOUND)
def direct_fast_pf_vs_zap(broken: bool) -> None:
    # TDP with the TDP MMU off, dirty logging on: vcpu0's read maps gfn 0 read-only but
    # MMU-writable, so its write takes the fast path, while every shadow page is zapped.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, tdp_mmu=False,
            hazards={"shadow_lockless_walk_unprotected": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    guest_read(v0, 0)
    _race_zap_all(vm, "vcpu0_writes_gfn0", lambda: guest_write(v0, 0, 5))
    vm.check()
    assert get_dirty_log(vm, 0) == [0], "the guest wrote gfn 0: the log must say so"
    got = guest_read(v0, 0)
    assert got == 5, f"the guest wrote 5 to gfn 0 but reads {got}"


@pair("shadow.write_flooding",
      rule="an emulated write to a shadowed guest table looks up the table's shadow page, "
           "counts the write and zaps a flooded page under mmu_lock held for write: of two "
           "writes racing to one table exactly one zaps it",
      broken_rule="the emulated write's look-up, flooding test and zap done without mmu_lock: "
                  "two writes both find the page flooded and both take it out",
      broken_expect="assertion",
      catches=("track_write_without_mmu_lock", "flood_zap_after_unlock"),
      invariant="a shadow page is removed and freed once; the guest's last write is in memory",
      **_BOUND)
def write_flooding(broken: bool) -> None:
    # TDP; gfn 1 holds a guest page table KVM shadows (vcpu2's nested guest). vcpu0's first
    # two writes to it are emulated (flooding count 2, one short of the limit); then vcpu0
    # and vcpu1 write it at once: each write would flood the table, and the first to take
    # mmu_lock zaps its shadow page -- the other finds no page (the zap unlinked it inside
    # the same mmu_lock section as the flooding test).
    vm = VM(nr_vcpus=3, nr_pages=2, host_pages=2,
            hazards={"track_write_without_mmu_lock": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    v0, v1, v2 = vm.vcpus
    shadow_guest_table(v2, 1)
    for value in range(1, WRITE_FLOODING_LIMIT):
        guest_write(v0, 1, value)
    _run(("vcpu0_writes_gfn1", lambda: guest_write(v0, 1, 2)),
         ("vcpu1_writes_gfn1", lambda: guest_write(v1, 1, 3)))
    vm.check()
    assert vm.stats["mmu_flooded"] == 1 and 1 not in vm.mmu.shadowed, (
        f"the emulated writes flood the table once: {vm.stats['mmu_flooded']} zap(s)")
    got = vm.host.contents(1)
    assert got in (2, 3), f"the guests wrote 2 and 3 to gfn 1, memory holds {got}"


@pair("shadow.flooding_vs_nested_walk",
      rule="the write-flooding zap of a guest table's upper-level shadow page goes through "
           "kvm_mmu_commit_zap_page: the remote flush, which waits for every vCPU in guest "
           "mode and empties its paging-structure cache, comes before the free, even though "
           "no leaf SPTE was dropped",
      broken_rule="the flooded page is freed at once (it mapped no leaf): the nested guest's "
                  "next walk starts from the page its paging-structure cache still holds, "
                  "and reads it after the free",
      broken_expect="assertion",
      catches=("flooded_page_freed_without_flush", "commit_zap_frees_before_flush"),
      invariant="no walk passes through a shadow page after it was freed; a walk after the "
                "zap finds the table shadowed again", **_BOUND)
def flooding_vs_nested_walk(broken: bool) -> None:
    # TDP; gfn 1 holds the page table of vcpu1's nested guest, shadowed by an upper-level
    # shadow page that vcpu1's walk has cached. Two emulated writes by vcpu0 are counted;
    # its third floods the table and zaps the page while vcpu1's nested guest walks again.
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2,
            hazards={"flooded_page_freed_without_flush": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    v0, v1 = vm.vcpus
    nested_guest_walk(v1, 1)  # shadows the table, walks through its page, caches it
    first = vm.mmu.shadowed[1]
    guest_write(v0, 1, 1)
    guest_write(v0, 1, 2)
    _run(("vcpu0_writes_gfn1", lambda: guest_write(v0, 1, 3)),
         ("vcpu1_nested_walk", lambda: nested_guest_walk(v1, 1)))
    nested_guest_walk(v1, 1)
    vm.check()
    assert vm.stats["mmu_flooded"] == 1 and first.freed, (
        f"the third emulated write floods the table once: {vm.stats['mmu_flooded']} zap(s)")
    assert vm.mmu.shadowed.get(1) not in (None, first), (
        "after the zap, vcpu1's walk shadows the table again with a new page")


def _readonly_rebuild_vs_logging_on(broken: bool, readonly: bool = True) -> None:
    # Shadow paging, A/D bits off. vcpu1 has written page 0 -> gfn 1: its SPTE is writable
    # and MMU-writable, and vcpu1's TLB caches it writable. The guest already changed another
    # entry of the table, so the shadow page is unsync and the table writable to the guest.
    # Userspace turns dirty logging on (W leaves the SPTE, MMU-writable stays, and the flush
    # comes only after mmu_lock is dropped) while, on the guest's side: the host ages gfn 1
    # (the SPTE is access-tracked: no R, still MMU-writable); the guest makes page 0
    # read-only with a plain store; vcpu0 reads page 0 and faults, and the fault rebuilds the
    # SPTE read-only and not MMU-writable; vcpu2 starts shadowing the guest table at gfn 1,
    # finds no MMU-writable SPTE and relies on the protection at once; vcpu1 writes page 0.
    # (``readonly=False``: the guest keeps page 0 writable, so the rebuilt SPTE stays
    # MMU-writable and the shadowing vCPU's write-protection flushes for itself.)
    vm = VM(nr_vcpus=3, nr_pages=4, host_pages=4, tdp=False, ad_disabled=True,
            hazards={"shadow_fault_wrprot_no_flush": broken})
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v0, v1, v2 = vm.vcpus
    set_gpte(vm, 0, 1)
    guest_write(v1, 0, 5)
    write_gpte(v0, 3, 3)  # exits once: the page goes unsync, its table writable
    assert v1.tlb[0].writable

    def guest_side() -> None:
        vm.host.age(1)
        write_gpte(v0, 0, 1, writable=not readonly)
        assert guest_read(v0, 0) == 5
        assert shadow_guest_table(v2, 1)
        try:
            guest_write(v1, 0, 7)
        except GuestFault:
            pass  # page 0 is read-only to the guest now: its write faults into the guest

    _run(("KVM_SET_USER_MEMORY_REGION_log_dirty",
          lambda: vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)),
         ("guest_ages_protects_reads_shadows_writes", guest_side))
    vm.check()


_RO_REBUILD_INV = ("no guest write reaches a shadowed guest page table through a writable "
                   "translation; every SPTE of a synced page allows no more than the guest's "
                   "PTE")


@pair("shadow.readonly_rebuild_vs_logging_on",
      rule="a shadow fault that rebuilds an MMU-writable SPTE without W flushes (the flush "
           "mmu_spte_update asks for): turning dirty logging on cleared W and flushes only "
           "after dropping mmu_lock, so a vCPU may still cache the SPTE writable",
      broken_rule="the fault ignores that flush: the SPTE is read-only and not MMU-writable, "
                  "so the vCPU that shadows the gfn flushes nothing and relies on it, and the "
                  "stale writable translation writes the shadowed table",
      broken_expect="assertion", catches=("shadow_fault_wrprot_no_flush",),
      invariant=_RO_REBUILD_INV, **_BOUND)
def readonly_rebuild_vs_logging_on(broken: bool) -> None:
    _readonly_rebuild_vs_logging_on(broken)


@pair("shadow.zap_all_flush",
      rule="the shadow MMU's kvm_mmu_zap_all commits (remote flush, then free) before it "
           "drops mmu_lock: a swap-out that takes the lock next finds no SPTE, so nothing "
           "else would flush",
      broken_rule="the commit runs after write_unlock: a swap-out in between finds no SPTE, "
                  "flushes nothing and frees the frame while the vCPU's TLB still maps it",
      broken_expect="assertion", catches=("shadow_zap_all_commit_after_unlock",),
      invariant="no vCPU reaches a freed frame through a cached translation; the guest's "
                "write survives the zap and the swap-out", **_BOUND)
def zap_all_flush(broken: bool) -> None:
    # TDP with the TDP MMU off (the shadow MMU's direct pages): vcpu0 has written gfn 0 and
    # caches the translation; it reads again while every shadow page is zapped and the host
    # swaps gfn 0's page out.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, tdp_mmu=False,
            hazards={"shadow_zap_all_commit_after_unlock": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)
    got: list[int] = []
    _run(("vcpu0_reads_gfn0", lambda: got.append(guest_read(v0, 0))),
         ("kvm_mmu_zap_all", vm.mmu.zap_all), ("swap_out_gfn0", lambda: vm.host.swap_out(0)))
    vm.check()
    assert got == [1] and guest_read(v0, 0) == 1, (
        f"the guest wrote 1 to gfn 0 but reads {got} and {guest_read(v0, 0)}")


@pair("shadow.first_stores_vs_zap",
      rule="the write-protection fault on a guest table holds mmu_lock for write: after a "
           "zap, of two vCPUs whose first stores to the table exit at once, one builds and "
           "links its shadow page again and the other finds it",
      broken_rule="the fault holds mmu_lock for read: both find the page missing and both "
                  "build and link one",
      broken_expect="assertion", catches=("gpte_fault_read_lock",),
      invariant="every shadow page is built and linked once and stays reachable; a page in "
                "sync maps what the guest's table names", **_BOUND)
def first_stores_vs_zap(broken: bool) -> None:
    # Page 0 -> gfn 1, read (its shadow page in sync, the table write-protected). vcpu0 and
    # vcpu1 store new entries for pages 0 and 1 of that table (both exit) while every
    # shadow page is zapped.
    vm = _zapped_vm(2, "gpte_fault_read_lock", broken)
    v0, v1 = vm.vcpus
    guest_read(v0, 0)
    _run(("vcpu0_first_store_page0", lambda: write_gpte(v0, 0, 2)),
         ("vcpu1_first_store_page1", lambda: write_gpte(v1, 1, 3)),
         ("kvm_mmu_zap_all", vm.mmu.zap_all))
    vm.check()


@pair("shadow.rebuild_vs_store",
      rule="a shadow page built again after a zap write-protects its guest table and flushes "
           "remote TLBs (account_shadowed) before it is used: the flush waits for a vCPU "
           "still storing to the table through the mapping it had while unshadowed",
      broken_rule="the rebuild skips the flush: the store lands after the fault installed "
                  "the old entry's translation in a page that is in sync",
      broken_expect="assertion",
      catches=("shadow_rebuild_no_flush", "gpte_recheck_before_rebuild"),
      invariant="a shadow page in sync maps what the guest's table names", **_BOUND)
def rebuild_vs_store(broken: bool) -> None:
    # Page 0 -> gfn 1, read. vcpu0's guest stores a new entry for page 0 (-> gfn 2): the
    # table is write-protected when it starts, unshadowed (writable) once vcpu1 has zapped
    # every shadow page; vcpu1 then reads page 0, and its fault builds the page again.
    vm = _zapped_vm(2, "shadow_rebuild_no_flush", broken)
    v0, v1 = vm.vcpus
    guest_read(v0, 0)

    def zap_then_read() -> None:
        vm.mmu.zap_all()
        guest_read(v1, 0)

    _run(("vcpu0_stores_page0", lambda: write_gpte(v0, 0, 2)),
         ("vcpu1_zaps_then_reads_page0", zap_then_read))
    vm.check()
