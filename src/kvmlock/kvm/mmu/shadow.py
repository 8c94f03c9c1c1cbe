"""Shadow pages, the reverse map, and the guest page table shadow paging follows.

The model keeps one level of leaf shadow pages, ``SP_ENTRIES`` SPTEs each, indexed by the
guest page number ``va`` the vCPU accesses. With TDP (two-dimensional paging) ``va`` *is* the
gfn and every shadow page is *direct*: entry ``i`` of a direct page always maps the same gfn.
Without TDP the guest's own page table (``gpt``) translates ``va`` to a gfn and KVM shadows that
composite translation in *indirect* shadow pages, whose entry ``i`` maps whatever gfn the guest
pointed ``va`` at when the SPTE was installed -- it can change. That difference is why the fast
page fault only handles direct pages (the gfn->pfn ABA hazard).

Shadow paging builds its pages under ``mmu_lock`` held for write; the TDP MMU builds them in
faults that hold ``mmu_lock`` only for read, so linking a page on the VM's list (and into the
table) is serialised by ``tdp_mmu_pages_lock``; marking a page unsync takes
``mmu_unsync_pages_lock``. Both of
those locks may only be taken with ``mmu_lock`` held, which :meth:`MMU.link_page` and
:meth:`MMU.mark_unsync` assert (a lockdep "not held" report otherwise).

Pages are freed in both MMUs, each the kernel's way. The TDP MMU frees after an RCU grace
period (:meth:`MMU.zap_all`), which its lockless walkers' read sides hold off. The shadow MMU
zaps in two steps (facts from arch/x86/kvm/mmu/mmu.c ``__kvm_mmu_prepare_zap_page`` and
``kvm_mmu_commit_zap_page``, in our own code): under ``mmu_lock`` held for write,
:meth:`MMU.prepare_zap` drops the page's SPTEs through the rmap-tracked drop (Accessed/Dirty
reach the page), takes it out of its parent entry and the unsync accounting and off the
page list, onto an invalid list; :meth:`MMU.commit_zap` then flushes remote TLBs and only
then frees the pages. That flush *is* the shadow MMU's grace period: it waits for every vCPU
to leave guest mode (the CPU's own walk of the page) and, in the kernel, for every vCPU out of
a lockless walk (``walk_shadow_page_lockless_begin`` disables interrupts and sets
``READING_SHADOW_PAGE_TABLES``, so the flush's IPI is not acknowledged until the walk ends).
A freed page is poisoned (its SPTEs stored to, visibly) and flagged: any later use of it by
a walker or by a path that found it without ``mmu_lock`` fails as a use after free.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

from kvmlock import irq, lockdep, runtime
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mmu.update import spte_clear_track_bits
from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import RCU, Atomic64, guarded_by, peek

if TYPE_CHECKING:
    from kvmlock.kvm.vm import VM

__all__ = ["GPTE_READONLY", "MMU", "SP_ENTRIES", "ShadowPage", "TdpRoot", "check_rmaps",
           "first_shadow_root_alloc", "grace_period", "unmap_gfn_range", "zap_gfn_range"]

SP_ENTRIES = 8

#: a guest PTE's read-only flag (the guest cleared its W bit): gpt values are gfn + 1, or'ed
#: with this; a shadow SPTE of such a PTE is neither writable nor MMU-writable
GPTE_READONLY = 1 << 40

TDP_LINK_WITHOUT_PAGES_LOCK = mutant(
    "tdp_link_without_pages_lock", removes="tdp_mmu_pages_lock around linking a new shadow page",
    breaks="TDP faults under read-mode mmu_lock link shadow pages under tdp_mmu_pages_lock")
TDP_LINK_NO_RECHECK = mutant(
    "tdp_link_no_recheck", removes="the re-check of the slot under tdp_mmu_pages_lock (a fault "
    "that found it empty links a page even if another fault linked one meanwhile)",
    breaks="TDP faults under read-mode mmu_lock link shadow pages under tdp_mmu_pages_lock")
GFN_SPTES_VALID_ROOT_ONLY = mutant(
    "gfn_sptes_valid_root_only", removes="the invalidated TDP roots in the walk of a gfn's "
    "SPTEs (the notifier's unmap, aging, write-protection and the dirty-log harvest look at "
    "valid roots only)",
    breaks="an invalidated root keeps its SPTEs until the zap of invalidated roots clears "
           "them: until then a notifier unmapping a page must drop them too, or the page's "
           "Dirty bit reaches it only after the host wrote it back and freed it")
UNSYNC_WITHOUT_LOCK = mutant(
    "unsync_without_lock", removes="mmu_unsync_pages_lock around the unsync accounting",
    breaks="kvm->arch.mmu_unsync_pages_lock serialises marking shadow pages unsync")
ROOT_ALLOC_TAKES_SLOTS_LOCK = mutant(
    "root_alloc_takes_slots_lock", removes="(adds) slots_lock taken under slots_arch_lock by "
    "the first shadow root's allocation",
    breaks="slots_lock is taken outside slots_arch_lock, and never inside kvm->srcu")
ROOT_ALLOC_WITHOUT_SLOTS_ARCH_LOCK = mutant(
    "root_alloc_without_slots_arch_lock", removes="slots_arch_lock around the first shadow "
    "root's rmap allocation",
    breaks="slots_arch_lock orders the rmap allocation with a memslot being created")
ROOT_FLAG_BEFORE_RMAPS = mutant(
    "root_flag_before_rmaps", removes="setting shadow_root_allocated only once every memslot "
    "has its rmaps (the flag published first)",
    breaks="a vCPU that sees shadow_root_allocated (smp_load_acquire) finds every memslot's "
           "rmaps allocated")
FREE_PAGES_NO_GRACE_PERIOD = mutant(
    "free_pages_no_grace_period",
    removes="the RCU grace period between unlinking and freeing shadow pages",
    breaks="a shadow page is freed only after every lockless walker that may use it is done")
PAGES_LOCK_OUTSIDE_MMU_LOCK = mutant(
    "pages_lock_outside_mmu_lock", removes="(adds) zap_all takes tdp_mmu_pages_lock before "
    "mmu_lock, to hold the page list while it zaps",
    breaks="kvm->mmu_lock is taken outside kvm->arch.tdp_mmu_pages_lock")
UNLINK_PAGE_AT_FREE = mutant(
    "unlink_page_at_free", removes="mmu_lock around taking a zapped page off the TDP MMU's "
    "page list (it leaves the list in the RCU callback that frees it, in softirq context)",
    breaks="kvm->arch.tdp_mmu_pages_lock is only ever taken with kvm->mmu_lock held")
ZAP_NO_FLUSH = mutant(
    "zap_no_flush", removes="the remote TLB flush after zapping SPTEs (kvm_zap_gfn_range)",
    breaks="a zapped SPTE's frame is reused only after every vCPU dropped its translation")
ZAP_FLUSH_AFTER_UNLOCK = mutant(
    "zap_flush_after_unlock", removes="flushing remote TLBs before kvm_zap_gfn_range releases "
    "mmu_lock (the flush moved after write_unlock)",
    breaks="once mmu_lock is dropped with the SPTE gone, a notifier finds nothing to flush and "
           "the host frees the frame a vCPU's TLB still maps")
COMMIT_ZAP_FREES_BEFORE_FLUSH = mutant(
    "commit_zap_frees_before_flush", removes="the order of kvm_mmu_commit_zap_page: the "
    "zapped shadow pages freed first, the remote TLB flush after",
    breaks="a shadow page is freed only once no vCPU can still be walking it: the remote "
           "flush waits for every vCPU in guest mode or in a lockless walk")
ZAP_PAGE_DROPS_AD = mutant(
    "zap_page_drops_ad", removes="the rmap-tracked drop of a zapped shadow page's SPTEs "
    "(cleared with a plain store and taken off the rmap, as mmu_spte_clear_no_track does)",
    breaks="Accessed and Dirty reach the page before the SPTE goes: a zapped page's Dirty bit "
           "is the only record of the guest's writes through it")
ZAP_KEEPS_UNSYNC_ACCOUNTED = mutant(
    "zap_keeps_unsync_accounted", removes="taking a zapped unsync page out of the unsync "
    "accounting (kvm_unlink_unsync_page)",
    breaks="kvm->arch.mmu_unsync_pages_lock's count says how many live pages are unsync: a "
           "freed page must not stay counted")
SHADOW_REBUILD_NO_FLUSH = mutant(
    "shadow_rebuild_no_flush", removes="the remote TLB flush when a zapped shadow page is "
    "built again for its guest table (account_shadowed's kvm_flush_remote_tlbs_gfn)",
    breaks="shadow paging: a guest table is write-protected again, and no vCPU still stores "
           "to it through the mapping it had while unshadowed, before its page is used")
SHADOW_ZAP_ALL_COMMIT_AFTER_UNLOCK = mutant(
    "shadow_zap_all_commit_after_unlock", removes="committing the shadow MMU's zap_all "
    "(remote flush, then free) before mmu_lock is dropped (the commit moved after "
    "write_unlock)",
    breaks="once mmu_lock is dropped with the SPTEs gone, a notifier finds nothing to flush "
           "and the host frees the frame a vCPU's TLB still maps")
ZAP_ALL_NO_FLUSH = mutant(
    "zap_all_no_flush", removes="the remote TLB flush after kvm_mmu_zap_all drops every SPTE",
    breaks="once no SPTE maps a frame, no vCPU's TLB does (a later notifier finds nothing "
           "to flush)")
ZAP_ALL_SKIPS_INVALID_ROOTS = mutant(
    "zap_all_skips_invalid_roots", removes="the zap of invalid TDP roots by kvm_mmu_zap_all "
    "(only valid roots walked)",
    breaks="kvm_mmu_zap_all drops every SPTE before it returns: the MMU notifier's release "
           "calls it, and the host then frees every page without telling KVM again")


class ShadowPage:
    """One leaf page table of SPTEs; ``direct`` pages map fixed gfns."""

    __slots__ = ("index", "direct", "sptes", "gfns", "unsync", "gpt_writable", "removed",
                 "freed", "parent", "write_flooding_count")

    def __init__(self, index: int, direct: bool, parent: TdpRoot | None = None) -> None:
        self.index = index
        self.direct = direct
        #: TDP MMU: the root whose entry ``index`` points at this table (``sp->ptep``)
        self.parent = parent
        base = index * SP_ENTRIES
        self.sptes = [Atomic64(0, name=f"spte[{base + i}]") for i in range(SP_ENTRIES)]
        #: indirect pages: the gfn each SPTE was last installed for (-1: none yet), meaningful
        #: while it is present (as the kernel's shadowed_translation, not cleared by a drop);
        #: written under mmu_lock before the SPTE is stored (:meth:`MMU.note_gfn`)
        self.gfns = [base + i if direct else -1 for i in range(SP_ENTRIES)]
        self.unsync = False
        #: the guest may store to the page table this page shadows without an exit: KVM made
        #: its own mapping of that table writable when the page went unsync (the model's guest
        #: table has no gfn, so this flag stands for that mapping; see guest.write_gpte)
        self.gpt_writable = False
        #: set once a remover took the page out of the paging structure and owns its teardown
        #: (the kernel's ``handle_removed_pt``); exactly one remover may ever do that
        self.removed = False
        #: set once the page is freed (the model's KASAN: a use after that is a bug)
        self.freed = False
        #: emulated writes to the guest table this page shadows since a fault last used it
        #: (an atomic, as in the kernel; see page_track.track_write)
        self.write_flooding_count = Atomic64(0, name=f"write_flooding_count[{index}]")

    def mark_removed(self, by: str) -> None:
        """The remover that unlinked this page from its parent entry takes over its teardown.

        Only the thread whose atomic change of the parent entry took the page out may do that;
        a second one means two removers both believed they cleared the entry -- in the kernel
        a second ``handle_removed_pt`` on one table, which spins for ever on its frozen SPTEs
        or frees it twice. The model reports it as the bug it is.
        """
        assert not self.removed and not self.freed, (
            f"BUG: shadow page {self.index} removed twice ({by} found it already "
            f"{'freed' if self.freed else 'removed'}): two removers both cleared the entry "
            "pointing at it -- a change of that entry not serialised with another (made "
            "non-atomically under read-mode mmu_lock, or without mmu_lock)")
        self.removed = True

    def free(self, by: str) -> None:
        """Free the page (the RCU callback): the model's KASAN for a double free."""
        assert not self.freed, (
            f"BUG: shadow page {self.index} freed twice ({by}): two removers each scheduled "
            "its free")
        self.freed = True

    def gfn_at(self, i: int) -> int:
        """``kvm_mmu_page_get_gfn``: fixed for direct pages, recorded at install otherwise."""
        return self.index * SP_ENTRIES + i if self.direct else self.gfns[i]

    def __repr__(self) -> str:
        return f"<SP {'direct' if self.direct else 'indirect'} #{self.index}>"


class TdpRoot:
    """A TDP MMU root: the model's one upper level, an entry per region pointing at a table.

    ``refcount`` is ``tdp_mmu_root_count``: one reference for the MMU itself while the root is
    valid (handed to the zap of invalidated roots, which puts it), one per vCPU that loaded it.
    ``invalid`` is ``role.invalid`` (set under write-mode ``mmu_lock``); ``scheduled`` is
    ``tdp_mmu_scheduled_root_to_zap``. The root is freed after a grace period once the last
    reference is put; a use after that is the model's KASAN report.
    """

    __slots__ = ("gen", "pages", "invalid", "scheduled", "refcount", "freed")

    def __init__(self, pages: list[ShadowPage | None], gen: int, refcount: int) -> None:
        self.gen = gen
        self.pages = pages
        self.invalid = False
        self.scheduled = False
        self.refcount = refcount
        self.freed = False

    def check_live(self, who: str) -> None:
        assert not self.freed, (
            f"BUG: {who} used TDP root {self.gen} after it was freed: the root was freed while "
            "a reference to it was still held, or before a grace period")

    def __repr__(self) -> str:
        return (f"<TdpRoot {self.gen}{' invalid' if self.invalid else ''} "
                f"refs={self.refcount}>")


class MMU:
    """The VM's shadow page tables for a guest address space of ``nr_va`` pages."""

    #: how many shadow pages are unsync (``kvm->arch.mmu_unsync_pages_lock`` protects it)
    unsync_count = guarded_by("vm.mmu_unsync_pages_lock")
    #: every shadow page built, in order (``kvm->arch.tdp_mmu_pages_lock`` protects the list)
    page_list = guarded_by("vm.tdp_mmu_pages_lock")
    #: the TDP roots not yet freed (``tdp_mmu_roots``): changed under
    #: ``kvm->arch.tdp_mmu_pages_lock``, read under RCU or mmu_lock without it
    roots = guarded_by("vm.tdp_mmu_pages_lock", writes_only=True)

    def __init__(self, vm: VM, nr_va: int, *, tdp: bool = True, tdp_mmu: bool = True,
                 ad_disabled: bool = False, pml: bool = False):
        if not isinstance(nr_va, int) or nr_va < 1:
            raise ValueError(f"the guest address space needs at least one page, got {nr_va!r}")
        self.vm = vm
        self.nr_va = nr_va
        self.tdp = tdp
        #: direct pages managed by the TDP MMU (else, with ``tdp``, by the shadow MMU)
        self.tdp_mmu = tdp and tdp_mmu
        self.ad_disabled = ad_disabled
        #: dirty logging clears Dirty (not W) and the CPU logs each page it sets Dirty on
        self.pml = pml
        nsp = (nr_va + SP_ENTRIES - 1) // SP_ENTRIES
        #: how many entries the one upper level (a root) has: fixed, so reading it orders
        #: nothing, where the length of an entry array read as a container would
        self.nr_regions = nsp
        #: region -> shadow page; filled by load() under mmu_lock, read locklessly afterwards
        self.pages: list[ShadowPage | None] = [None] * nsp
        self.page_list: list[ShadowPage] = []
        self.unsync_count = 0  # under mmu_unsync_pages_lock
        #: gfn -> the shadow page of the upper-level guest table there (write-tracked, never
        #: unsync; see page_track.account_shadowed); changed under mmu_lock held for write
        self.shadowed: dict[int, ShadowPage] = {}
        #: gfn -> {(sp, i)}: which SPTEs map it; under mmu_lock held for write
        self.rmap: dict[int, frozenset[tuple[ShadowPage, int]]] = {}
        #: shadow paging only: the guest's page table, va -> gfn + 1 (0: not present), with
        #: ``GPTE_READONLY`` when the guest maps the page read-only
        self.gpt = [] if tdp else [Atomic64(0, name=f"gpte[{v}]") for v in range(nr_va)]
        self.loaded = False
        #: gfns whose write-protection is complete and relied on (the model's audit, no lock)
        self.wrprot_relied: set[int] = set()
        #: TDP MMU: every root not yet freed (``tdp_mmu_roots``; changed under
        #: tdp_mmu_pages_lock) and the valid one (None after a fast zap, until a vCPU loads
        #: a new one). The first root is made with the VM, the MMU's own reference on it.
        self.roots: list[TdpRoot] = []
        #: the RCU read side of the tasks that walk ``roots`` (the fast zap's zap of invalidated
        #: roots, NX huge-page recovery); a grace period waits for them and for every vCPU's
        #: lockless walk (:func:`grace_period`)
        self.rcu = RCU("rcu")
        self.root: TdpRoot | None = None
        self.root_gen = 0
        if tdp:
            self.root = TdpRoot(self.pages, 0, refcount=1)
            self.roots.append(self.root)

    # ----------------------------------------------------------- construction

    def load(self) -> None:
        """``kvm_mmu_load``. The shadow MMU builds its pages here, under ``mmu_lock`` for write
        (and again after a zap, :meth:`shadow_page_for`); the TDP MMU builds them on demand in
        faults (:meth:`ensure_page`).

        The test without ``mmu_lock`` is a visible read, as the store of the flag under it is
        a visible write: another vCPU may be building the pages meanwhile, and one that finds
        them built walks them at once, with no lock ordering it after their publication.
        Each page is published with a visible store of its entry, as a lockless walk reads it
        (:meth:`walk`)."""
        if self.tdp_mmu:
            return
        rt = runtime.active()
        rt.point(self, "read loaded (lockless)", False)
        if self.loaded:
            return
        vm = self.vm
        first_shadow_root_alloc(vm)
        with vm.mmu_lock.write():
            if not self.loaded:
                for idx in range(len(self.pages)):
                    sp = ShadowPage(idx, direct=self.tdp)
                    self.link_page(sp)
                    rt.point(self.pages, "link shadow page", True)
                    self.pages[idx] = sp
                rt.point(self, "set loaded", True)
                self.loaded = True

    def link_page(self, sp: ShadowPage) -> None:
        """Account a new shadow page on the VM's list (needs ``mmu_lock``)."""
        vm = self.vm
        vm.mmu_lock.assert_held()
        with vm.tdp_mmu_pages_lock:
            self.page_list.append(sp)

    def ensure_page(self, va: int, root: TdpRoot | None = None) -> tuple[ShadowPage, int]:
        """The leaf page for ``va``, built if missing. ``mmu_lock`` is held -- for *read* by a
        TDP fault, so two faults may race to build it: ``tdp_mmu_pages_lock`` decides."""
        vm = self.vm
        vm.mmu_lock.assert_held()
        idx = va // SP_ENTRIES
        root = root or self.root
        pages = self.pages if root is None else root.pages
        if TDP_LINK_WITHOUT_PAGES_LOCK in vm.hazards:
            return self._link_unlocked(idx, pages, root), va % SP_ENTRIES
        rt = runtime.active()
        if self.tdp:  # mmu_lock held for read: another fault may link the page meanwhile
            rt.point(pages, "check tdp_mmu_pages", False)
        sp = pages[idx]
        if sp is None:
            with vm.tdp_mmu_pages_lock:
                sp = None if TDP_LINK_NO_RECHECK in vm.hazards else pages[idx]
                if sp is None:
                    sp = ShadowPage(idx, direct=self.tdp, parent=root)
                    rt.point(pages, "link tdp_mmu_pages", True)
                    self.page_list.append(sp)
                    pages[idx] = sp
        return sp, va % SP_ENTRIES

    def _link_unlocked(self, idx: int, pages: list[ShadowPage | None],
                       root: TdpRoot | None) -> ShadowPage:
        """The broken variant: check and link with only the read-mode ``mmu_lock`` held.

        The check and the link are separate steps (as a list_add racing another is), so two
        faults can both find the slot empty and both link a page.
        """
        rt = runtime.active()
        rt.point(pages, "check tdp_mmu_pages", False)
        sp = pages[idx]
        if sp is None:
            sp = ShadowPage(idx, direct=self.tdp, parent=root)
            rt.point(pages, "link tdp_mmu_pages", True)
            self.page_list.append(sp)
            pages[idx] = sp
        return sp

    def tables(self) -> list[ShadowPage]:
        """Every table reachable from an entry: of the shadow MMU's one array, or of every
        TDP root not yet freed (an invalid one is reachable until its zap has cleared it)."""
        if not self.tdp:
            return [sp for sp in self.pages if sp is not None]
        return [sp for root in self.roots for sp in root.pages if sp is not None]

    def check_pages(self) -> None:
        """Assert the page accounting: every built page linked once, and still reachable.

        Once per root: two valid TDP roots of one role (two vCPUs that each found none and
        each made one) each have their own table for a region, both on ``tdp_mmu_roots``,
        where every zap and notifier walk finds them -- wasteful, not wrong, as in the kernel.
        Two tables for one region of one root are: only one is linked there.
        """
        seen: dict[tuple[int, int], int] = {}
        built = peek(self, "page_list")
        for sp in built:
            key = (id(sp.parent), sp.index)
            seen[key] = seen.get(key, 0) + 1
        twice = sorted(i for (_, i), n in seen.items() if n > 1)
        assert not twice, (f"shadow page(s) for region {twice} were built and linked twice in "
                           "one root: one of them is unreachable and its SPTEs are never "
                           "zapped")
        lost = [sp for sp in built
                if (self.pages if sp.parent is None else sp.parent.pages)[sp.index] is not sp]
        assert not lost, f"linked shadow pages no longer reachable: {lost}"
        gone = [sp for sp in [*self.tables(), *self.shadowed.values()] if sp.removed or sp.freed]
        assert not gone, f"removed or freed shadow pages still reachable: {gone}"
        open_tables = [sp.index for sp in self.pages
                       if sp is not None and sp.gpt_writable and not sp.unsync]
        assert not open_tables, (
            f"shadow page(s) for region {open_tables} are marked in sync while the guest's "
            "table is writable: the guest changes it with no exit and no sync ever follows")

    def shadow_page_for(self, va: int) -> tuple[ShadowPage, int]:
        """The shadow page for ``va`` and the index in it, built if a zap freed it
        (``kvm_mmu_get_child_sp``, shadow paging; ``mmu_lock`` held for write).

        A page built again shadows a guest table that was left unshadowed, hence writable to
        the guest, since the zap: it is write-protected again and TLBs flushed before the page
        is used (``account_shadowed``), so no vCPU is still storing to the table unseen.
        """
        vm = self.vm
        vm.mmu_lock.assert_held()
        idx = va // SP_ENTRIES
        # a visible read: a fault holding mmu_lock for read (a broken one) could race another
        runtime.active().point(self.pages, "check shadow page", False)
        sp = self.pages[idx]
        if sp is None:
            sp = ShadowPage(idx, direct=self.tdp)
            self.link_page(sp)
            runtime.active().point(self.pages, "link shadow page", True)
            self.pages[idx] = sp
            if SHADOW_REBUILD_NO_FLUSH not in vm.hazards:
                flush_remote_tlbs(vm)
        return sp, va % SP_ENTRIES

    def check_live(self, sp: ShadowPage, who: str) -> None:
        """The model's KASAN for shadow pages: ``who`` is about to use ``sp``."""
        assert not sp.freed, (
            f"{who} used shadow page {sp.index} after it was zapped and freed: it found the "
            "page without holding what keeps it alive (mmu_lock, guest mode or a lockless "
            "walk the free waits for, or a paging-structure cache the flush empties)")

    def prepare_zap(self, sp: ShadowPage) -> ShadowPage:
        """``kvm_mmu_prepare_zap_page`` (shadow paging, ``mmu_lock`` held for write): the page
        leaves the MMU and goes on the invalid list the caller passes to :meth:`commit_zap`.

        Its SPTEs are dropped first (each through the rmap-tracked drop, which passes Accessed
        and Dirty to the page), then the parent entry pointing at it is cleared, the page
        leaves the unsync accounting and the page list. Walkers that found it before are
        still using it: it is freed only by the commit.
        """
        vm = self.vm
        vm.mmu_lock.assert_held()
        for i in range(SP_ENTRIES):
            if ZAP_PAGE_DROPS_AD in vm.hazards:  # broken: the Dirty bit goes with the SPTE
                if S.is_present(sp.sptes[i].load()):
                    sp.sptes[i].store(0)
                    self.rmap_remove(sp, i)
            else:
                self.drop_spte(sp, i)
        runtime.active().point(self.pages, "unlink shadow page", True)
        if self.pages[sp.index] is sp:
            self.pages[sp.index] = None
        sp.mark_removed("kvm_mmu_prepare_zap_page")
        if ZAP_KEEPS_UNSYNC_ACCOUNTED not in vm.hazards:
            self.mark_synced(sp)  # kvm_unlink_unsync_page, if it was unsync
        self.unlink_page(sp)
        return sp

    def commit_zap(self, invalid: list[ShadowPage]) -> None:
        """``kvm_mmu_commit_zap_page``: flush remote TLBs, then free the pages zapped.

        The flush returns only once every vCPU has left guest mode (or, in the kernel, a
        lockless walk): from then on nobody can reach the pages, and they are freed.
        """
        if not invalid:
            return
        vm = self.vm
        late = COMMIT_ZAP_FREES_BEFORE_FLUSH in vm.hazards
        if not late:
            flush_remote_tlbs(vm)
        for sp in invalid:
            self.free_page(sp)
        if late:
            flush_remote_tlbs(vm)  # broken: a vCPU may still be walking what was freed

    @staticmethod
    def free_page(sp: ShadowPage) -> None:
        """Free (poison) a shadow page: its SPTEs are written, a visible step each, so a
        walker's read of them is ordered against the free and finds the page flagged."""
        for i, sptep in enumerate(sp.sptes):
            sptep.store(0)
            if i == 0:
                sp.free("kvm_mmu_commit_zap_page")

    def zap_all(self) -> int:
        """``kvm_mmu_zap_all``: drop every SPTE and free every shadow page; returns how many.

        Shadow paging: every page is zapped under ``mmu_lock`` held for write and the batch
        committed before the lock is released (what a memslot deletion does with the zap-all
        behaviour, ``kvm_mmu_zap_all_fast``, to the pages below the roots; the model's one
        upper level stands for the root, which stays).
        """
        if not self.tdp_mmu:
            vm = self.vm
            late = SHADOW_ZAP_ALL_COMMIT_AFTER_UNLOCK in vm.hazards
            with vm.mmu_lock.write():
                invalid = [self.prepare_zap(sp) for sp in self.pages if sp is not None]
                if not late:
                    self.commit_zap(invalid)
            if late:
                self.commit_zap(invalid)  # broken: a notifier in between flushes nothing
            return len(invalid)
        return self._zap_all_tdp()

    def _zap_all_tdp(self) -> int:
        """``kvm_mmu_zap_all`` (TDP): drop every SPTE and free every shadow page.

        The pages are unlinked under ``mmu_lock`` and TLBs flushed; they are freed only after a
        grace period (every vCPU out of its lockless walk, the TDP MMU's RCU read side): a fast
        page fault that found a page before it was unlinked is done with it by then. Returns
        how many pages were freed.

        Every root is walked, an invalid one too (``kvm_tdp_mmu_zap_all``): a fast zap may
        have invalidated it and not yet zapped it, and the MMU notifier's release, which calls
        this, tells the host that no SPTE is left -- the host then frees every page unseen.
        """
        vm = self.vm
        # broken: the page list's lock held from before mmu_lock (faults nest it inside)
        inverted = PAGES_LOCK_OUTSIDE_MMU_LOCK in vm.hazards
        late = UNLINK_PAGE_AT_FREE in vm.hazards
        valid_only = ZAP_ALL_SKIPS_INVALID_ROOTS in vm.hazards
        with vm.tdp_mmu_pages_lock if inverted else nullcontext(), vm.mmu_lock.write():
            gone = []
            for root, idx, sp in [(r, idx, sp) for r in self.roots
                                  if not (valid_only and r.invalid)  # (broken)
                                  for idx, sp in enumerate(r.pages) if sp is not None]:
                for i in range(SP_ENTRIES):
                    self.drop_spte(sp, i)
                runtime.active().point(root.pages, "unlink shadow page", True)
                root.pages[idx] = None
                sp.mark_removed("kvm_mmu_zap_all")
                if inverted:
                    self.page_list = [p for p in self.page_list if p is not sp]
                elif not late:
                    self.unlink_page(sp)
                gone.append(sp)
            if gone and ZAP_ALL_NO_FLUSH not in vm.hazards:
                flush_remote_tlbs(vm)
        if gone and FREE_PAGES_NO_GRACE_PERIOD not in vm.hazards:
            grace_period(vm)  # call_rcu: the free runs after a grace period
        for sp in gone:
            with irq.softirq():  # the RCU callback that frees the page
                if late:
                    self.unlink_page(sp)  # broken: mmu_lock is long dropped
                sp.free("kvm_mmu_zap_all")
        return len(gone)

    def clear_parent(self, sp: ShadowPage, plain: bool = False) -> bool:
        """``tdp_mmu_set_spte_atomic`` on the entry that points at ``sp`` (its root's entry,
        the model's one upper level): replace it with nothing if it still points at ``sp``;
        one visible step. The page itself is still reachable by walkers that read the entry
        before. ``plain``: the broken load, compare, then store (two steps)."""
        assert sp.parent is not None, f"{sp!r} is no TDP MMU table"
        entries = sp.parent.pages
        rt = runtime.active()
        # what locates the entry is the table's own (sp->ptep, sp->spt): read before the
        # change, as a step the free of the table (free_tables) is ordered against
        rt.point(sp, "read sp->ptep", False)
        self.check_live(sp, "NX huge-page recovery's change of the entry above it")
        if plain:
            rt.point(entries, "load parent SPTE", False)
            if entries[sp.index] is not sp:
                return False
            rt.point(entries, "store parent SPTE", True)  # broken: it may have changed
        else:
            rt.point(entries, "cmpxchg parent SPTE", True)
            if entries[sp.index] is not sp:
                return False
        entries[sp.index] = None
        return True

    def unlink_page(self, sp: ShadowPage) -> None:
        """Take a zapped page off the VM's list (needs ``mmu_lock``, as :meth:`link_page`)."""
        vm = self.vm
        vm.mmu_lock.assert_held()
        with vm.tdp_mmu_pages_lock:
            self.page_list = [p for p in self.page_list if p is not sp]

    def check_mappings(self) -> None:
        """Assert the consequences, once the VM is quiet (no visible steps: after the run).

        Every present SPTE maps the frame the host maps *now* for the gfn it stands for (and,
        with shadow paging, that gfn is the one the guest's page table names); a writable SPTE
        is on a writable memslot and in the rmap of its gfn, so the next zap finds it, and
        every rmap entry names a present SPTE of that gfn; no SPTE
        of a write-tracked gfn has W or MMU-writable; the unsync count matches the pages marked
        unsync. Only an *unsync* page may still map what the guest's table named before the
        guest changed it (the guest has not flushed that change yet).
        """
        vm = self.vm
        slots = vm.memslots.access_pointer()
        bad: list[str] = []
        for sp in self.tables():
            for i, sptep in enumerate(sp.sptes):
                v = sptep.peek()
                if not S.is_present(v):
                    continue
                va, gfn = sp.index * SP_ENTRIES + i, sp.gfn_at(i)
                what = f"SPTE of guest page {va} ({S.describe(v)}, gfn {gfn})"
                if not self.tdp:
                    g = self.gpt[va].peek()
                    named = (g & ~GPTE_READONLY) - 1
                    if named != gfn and not sp.unsync:
                        bad.append(f"{what}: the guest maps that page to "
                                   f"{'nothing' if not g else f'gfn {named}'}")
                    elif g & GPTE_READONLY and v & (S.W | S.MMU_WRITABLE) and not sp.unsync:
                        bad.append(f"{what}: writable or MMU-writable, but the guest maps "
                                   "that page read-only")
                    if (sp, i) not in self.rmap.get(gfn, ()):
                        bad.append(f"{what}: missing from gfn {gfn}'s rmap (a zap cannot "
                                   "find it)")
                slot = slots.lookup(gfn)
                if slot is None or slot.invalid:
                    bad.append(f"{what}: no memslot backs gfn {gfn}")
                    continue
                host_pfn = vm.host.pfn_of(slot.gfn_to_hva(gfn))
                if host_pfn != S.pfn_of(v):
                    bad.append(f"{what}: the host maps hva {slot.gfn_to_hva(gfn)} to "
                               f"{'no frame' if host_pfn is None else f'frame {host_pfn}'}")
                if S.is_writable(v) and slot.readonly:
                    bad.append(f"{what}: writable on a read-only memslot")
                if v & (S.W | S.MMU_WRITABLE) and slot.arch.peek_write_track(gfn):
                    bad.append(f"{what}: writable or MMU-writable, but gfn {gfn} holds a "
                               "shadowed guest page table")
        if not self.tdp:
            bad += self._stale_rmap_entries()
        unsync = sum(1 for p in self.pages if p is not None and p.unsync)
        if unsync != peek(self, "unsync_count"):
            bad.append(f"unsync_count is {peek(self, 'unsync_count')} but {unsync} page(s) "
                       "are unsync")
        assert not bad, "mapping invariant broken: " + "; ".join(bad)

    def _stale_rmap_entries(self) -> list[str]:
        """The rmap's other half: every entry names a present SPTE that maps that gfn.

        The kernel treats an entry for a dropped SPTE as corruption (an rmap walk expects only
        present SPTEs, and removing an entry that is not there is a BUG); it is what two
        unserialised removals from one gfn's rmap leave behind.
        """
        bad = []
        for gfn, entries in self.rmap.items():
            for sp, i in sorted(entries, key=lambda e: (e[0].index, e[1])):
                v = sp.sptes[i].peek()
                va = sp.index * SP_ENTRIES + i
                if not S.is_present(v):
                    bad.append(f"gfn {gfn}'s rmap names the SPTE of guest page {va}, which "
                               "is not present (its removal from the rmap was lost)")
                elif sp.gfn_at(i) != gfn:
                    bad.append(f"gfn {gfn}'s rmap names the SPTE of guest page {va}, which "
                               f"maps gfn {sp.gfn_at(i)}")
        return bad

    def mark_unsync(self, sp: ShadowPage) -> None:
        """The guest changed the table ``sp`` shadows: it is out of date (needs ``mmu_lock``)."""
        vm = self.vm
        vm.mmu_lock.assert_held()
        with unless(UNSYNC_WITHOUT_LOCK, vm.hazards, vm.mmu_unsync_pages_lock):
            runtime.active().point(sp, "mark unsync", True)  # read locklessly by sync_roots
            if not sp.unsync:
                sp.unsync = True
                self._count_unsync(+1)

    def mark_synced(self, sp: ShadowPage) -> None:
        """``sp`` matches the guest's table again (needs ``mmu_lock``)."""
        vm = self.vm
        vm.mmu_lock.assert_held()
        with unless(UNSYNC_WITHOUT_LOCK, vm.hazards, vm.mmu_unsync_pages_lock):
            runtime.active().point(sp, "mark synced", True)
            if sp.unsync:
                sp.unsync = False
                self._count_unsync(-1)

    def _count_unsync(self, delta: int) -> None:
        """``unsync_count += delta`` as the load and store it is, so a missing lock loses one."""
        rt = runtime.active()
        rt.point(self, "read unsync_count", False)
        n = self.unsync_count
        rt.point(self, "write unsync_count", True)
        self.unsync_count = n + delta

    # ----------------------------------------------------------- lookups

    def check_va(self, va: int) -> int:
        if not isinstance(va, int) or isinstance(va, bool) or not 0 <= va < self.nr_va:
            raise ValueError(f"guest page {va!r} is outside the guest address space "
                             f"[0, {self.nr_va})")
        return va

    def walk(self, va: int, root: TdpRoot | None = None) -> tuple[ShadowPage, int] | None:
        """The lockless shadow walk: the leaf shadow page and index for ``va``, if built --
        from ``root`` (a vCPU's own), else from the valid root (none after a fast zap until a
        vCPU loads one) or the shadow MMU's array."""
        if root is not None:
            root.check_live("a walk")
            pages = root.pages
        elif self.tdp:
            if self.root is None:
                return None
            pages = self.root.pages
        else:
            pages = self.pages
        # the parent entry, read without mmu_lock (READ_ONCE): a zap clears it, a fault or a
        # load links a page there, and with the TDP MMU read-mode removers (the fast zap, NX
        # recovery) clear it too
        runtime.active().point(pages, "read parent SPTE (lockless)", False)
        sp = pages[va // SP_ENTRIES]
        if sp is None:
            return None
        return sp, va % SP_ENTRIES

    def sptep(self, va: int) -> Atomic64 | None:
        loc = self.walk(va)
        return None if loc is None else loc[0].sptes[loc[1]]

    def guest_translate(self, va: int) -> int | None:
        """The guest's own translation of ``va`` to a gfn (identity with TDP)."""
        return self.guest_pte(va)[0]

    def guest_pte(self, va: int) -> tuple[int | None, bool]:
        """The guest's PTE for ``va``, read once: the gfn it names (None: not present) and
        whether the guest lets it be written (always, with TDP)."""
        if self.tdp:
            return va, True
        g = self.gpt[va].load()
        if not g:
            return None, False
        return (g & ~GPTE_READONLY) - 1, not g & GPTE_READONLY

    # ----------------------------------------------------------- gfn -> SPTEs (mmu_lock held)

    def gfn_sptes(self, gfn: int) -> list[tuple[ShadowPage, int]]:
        """Every SPTE that may map ``gfn``: the one fixed slot with TDP, the rmap otherwise."""
        if self.tdp and GFN_SPTES_VALID_ROOT_ONLY in self.vm.hazards:
            return self._valid_root_sptes(gfn)  # broken: an invalid root still maps gfn
        if self.tdp:  # every root, an invalid one too (it is zapped only after this lock)
            if not 0 <= gfn < self.nr_va:
                return []
            idx, i = gfn // SP_ENTRIES, gfn % SP_ENTRIES
            return [(sp, i) for root in self.roots if (sp := root.pages[idx]) is not None]
        return list(self.rmap.get(gfn, ()))

    def _valid_root_sptes(self, gfn: int) -> list[tuple[ShadowPage, int]]:
        if not 0 <= gfn < self.nr_va:
            return []
        idx, i = gfn // SP_ENTRIES, gfn % SP_ENTRIES
        return [(sp, i) for root in self.roots
                if not root.invalid and (sp := root.pages[idx]) is not None]

    def rmap_add(self, gfn: int, sp: ShadowPage, i: int) -> None:
        """Indirect pages only (mmu_lock held for write); direct ones need no reverse map."""
        if sp.direct:
            return
        self._rmap_update(gfn, lambda e: e | {(sp, i)})

    @staticmethod
    def note_gfn(sp: ShadowPage, i: int, gfn: int) -> None:
        """``kvm_mmu_page_set_translation``, made before the SPTE is stored (mmu_lock held
        for write): a vCPU that loads the new SPTE reads which gfn it stands for."""
        if not sp.direct:
            sp.gfns[i] = gfn

    def _rmap_update(self, gfn: int, change: Callable[[frozenset], frozenset]) -> None:
        """Read one gfn's rmap, then store its new value: two visible steps, as the kernel's
        list update is two stores, so a writer without the lock can lose another's entry."""
        rt = runtime.active()
        rt.point(self.rmap, "read rmap", False)
        entries = change(self.rmap.get(gfn, frozenset()))
        rt.point(self.rmap, "write rmap", True)
        if entries:
            self.rmap[gfn] = entries
        else:
            self.rmap.pop(gfn, None)

    def rmap_remove(self, sp: ShadowPage, i: int) -> None:
        if sp.direct:
            return
        gfn = sp.gfn_at(i)
        if gfn < 0:
            return
        self._rmap_update(gfn, lambda e: e - {(sp, i)})

    def drop_spte(self, sp: ShadowPage, i: int) -> bool:
        """Zap one SPTE (mmu_lock held for write); True if something was mapped."""
        old = spte_clear_track_bits(self.vm, sp.sptes[i])
        if S.is_present(old):
            self.rmap_remove(sp, i)
            return True
        return False


def grace_period(vm: VM) -> None:
    """The wait before an RCU callback (``call_rcu``) frees what was unlinked: every vCPU out
    of the lockless walk it may be in, and every reader of the TDP MMU's roots that entered
    its read side before this call out of it -- so none still uses a shadow page or a root
    unlinked before this call."""
    for vcpu in vm.vcpus:
        vcpu.wait_lockless_walk()
    if vm.mmu.tdp_mmu:
        vm.mmu.rcu.synchronize()


def first_shadow_root_alloc(vm: VM) -> None:
    """``mmu_first_shadow_root_alloc``: give every memslot its rmaps before the first shadow root.

    Runs in KVM_RUN, inside ``kvm->srcu``'s read side, so it may not take ``slots_lock`` (a
    memslot update synchronizes under it) -- ``slots_arch_lock`` is the lock made for this: a
    memslot update holds it from reading the memslots until the new array is installed, so a
    slot is either seen here or created knowing the root exists.

    The flag is published last (``smp_store_release``) and read first (``smp_load_acquire``):
    a vCPU that finds it set skips all of this and goes on to use the rmaps at once, so they
    must all exist before it is set. (The model's memory is sequentially consistent, so the
    release/acquire pair is plain program order here; its mutant moves the store.)
    """
    if vm.shadow_root_allocated.load():  # smp_load_acquire: rmaps exist if this is set
        return
    h = vm.hazards
    lock = None if h.root_alloc_without_slots_arch_lock else vm.slots_arch_lock
    if lock is not None:
        lock.lock()
    try:
        if h.root_alloc_takes_slots_lock:
            with vm.slots_lock:  # broken: slots_lock is ordered outside slots_arch_lock
                pass
        if vm.shadow_root_allocated.load():
            return
        # kvm_memslots(): inside kvm->srcu from KVM_RUN; set_gpte builds the root outside it,
        # where slots_arch_lock keeps the array from changing
        slots = vm.memslots.srcu_dereference_check(vm.srcu, lockdep.is_held(vm.slots_arch_lock))
        early = ROOT_FLAG_BEFORE_RMAPS in h
        if early:
            vm.shadow_root_allocated.store(1)
        for slot in slots.slots:
            slot.arch.alloc_rmaps()
        if not early:  # smp_store_release: the rmaps are visible before the flag
            vm.shadow_root_allocated.store(1)
    finally:
        if lock is not None:
            lock.unlock()


def check_rmaps(vm: VM) -> None:
    """Invariant: once a shadow root exists, every memslot in the active array has its rmaps
    (a slot without them would be dereferenced as NULL by the next rmap walk)."""
    if not vm.shadow_root_allocated.peek():
        return
    missing = [s.id for s in vm.memslots.access_pointer().slots if not s.arch.has_rmaps()]
    assert not missing, (f"memslot(s) {missing} have no rmaps although a shadow root exists: "
                         "the first root's allocation missed a slot being created")


def unmap_gfn_range(vm: VM, start: int, end: int) -> bool:
    """``kvm_unmap_gfn_range``: drop every SPTE mapping a gfn in ``[start, end)``.

    The caller holds ``mmu_lock`` for write and flushes TLBs when this returns True.
    """
    vm.mmu_lock.assert_held()
    mmu = vm.mmu
    zapped = False
    for gfn in range(start, end):
        for sp, i in mmu.gfn_sptes(gfn):
            zapped |= mmu.drop_spte(sp, i)
    return zapped


def zap_gfn_range(vm: VM, start: int, end: int) -> bool:
    """Take ``mmu_lock``, drop the range's SPTEs and flush if anything was mapped."""
    late = ZAP_FLUSH_AFTER_UNLOCK in vm.hazards
    with vm.mmu_lock.write():
        zapped = unmap_gfn_range(vm, start, end)
        if zapped and ZAP_NO_FLUSH not in vm.hazards and not late:
            flush_remote_tlbs(vm)
    if zapped and late:
        flush_remote_tlbs(vm)  # broken: the SPTE is gone, the translation is not yet
    return zapped
