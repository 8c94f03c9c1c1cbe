"""TDP MMU roots, and the fast zap: a second writer of non-leaf entries under read-mode
``mmu_lock``.

Facts from Linux 6.17 (arch/x86/kvm/mmu/mmu.c and tdp_mmu.c, the version whose NX huge-page
recovery also runs under read mode), in the model's own code:

* A root is reference-counted (``tdp_mmu_root_count``): the MMU holds one reference while the
  root is valid, and each vCPU that loaded it holds one. The last put takes the root off
  ``tdp_mmu_roots`` under ``tdp_mmu_pages_lock`` and frees it after an RCU grace period.
* ``kvm_mmu_zap_all_fast`` (called with ``slots_lock`` held: by a memslot deletion or move
  when ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` is on, the kernel's default, and when the
  ``nx_huge_pages`` parameter changes) invalidates every root and makes every vCPU request
  ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``, both in one critical section with ``mmu_lock`` held for
  *write*. The request kicks each vCPU out of guest mode and waits for it; a vCPU checks its
  requests after it has marked itself in guest mode, so none enters with an invalid root.
* Then, with ``mmu_lock`` held only for *read*, ``kvm_tdp_mmu_zap_invalidated_roots`` zaps
  each invalidated root: each entry that points at a table is cleared with a cmpxchg
  (``tdp_mmu_set_spte_atomic``), and the table is handled as removed (``handle_removed_pt``):
  taken off the page list, every SPTE frozen by an exchange, its Accessed/Dirty passed on, the
  table freed after a grace period. Then the zap puts the MMU's reference -- only after the
  zap, so the root stays reachable by MMU notifiers while it is zapped. It flushes no TLB: a
  vCPU serving the request puts its reference to the invalid root and loads a new root, and
  loading a root flushes the vCPU's own TLB (``kvm_mmu_load``).

So two read-mode writers may clear the same non-leaf entry at once: this zap and NX huge-page
recovery (:mod:`kvmlock.kvm.mmu.nx_recovery`). The cmpxchg decides which one removes the table;
the loser sees the entry changed and leaves the table alone. A table removed twice, or freed
twice, is a BUG report of the model (:meth:`ShadowPage.mark_removed`, :meth:`ShadowPage.free`).

Simplifications: the kernel's zap first clears the leaf SPTEs of a root in a pass of their own
(to yield more often); the model removes each table with its SPTEs frozen, which ends the same.
A vCPU takes its reference to the VM's first root when it is created (the model's stand-in
for its first KVM_RUN), without a visible step; later roots it loads with the kernel's steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from kvmlock import irq, runtime
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.shadow import TdpRoot, grace_period, zap_gfn_range
from kvmlock.kvm.mmu.update import propagate_ad
from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import changed_in_place, peek

if TYPE_CHECKING:
    from kvmlock.kvm.memslots import Memslot
    from kvmlock.kvm.mmu.shadow import MMU, ShadowPage
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["FREE_OBSOLETE_ROOTS", "check_roots", "check_still_frozen", "flush_shadow_memslot",
           "handle_removed_table", "kvm_mmu_reload", "walk_roots", "update_nx_huge_pages",
           "zap_all_fast", "zap_invalidated_roots"]

#: ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``
FREE_OBSOLETE_ROOTS = "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"

FAST_ZAP_PLAIN_STORE = mutant(
    "fast_zap_plain_store", removes="the cmpxchg with which the zap of an invalidated root "
    "clears each entry pointing at a table (load, then store)",
    breaks="under read-mode mmu_lock a non-leaf entry changes only atomically: exactly one "
           "remover -- the fast zap or NX huge-page recovery -- takes a table out and tears "
           "it down")
OBSOLETE_ROOTS_REQUEST_NO_WAIT = mutant(
    "obsolete_roots_request_no_wait", removes="the wait of the fast zap's "
    "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS for each vCPU to leave guest mode (posted, no kick)",
    breaks="the zap of invalidated roots flushes no TLB: it relies on every vCPU being out of "
           "guest mode, and reloading (with a local flush) before it enters again")
ROOT_LOAD_NO_FLUSH = mutant(
    "root_load_no_flush", removes="the local TLB flush when a vCPU loads a new root "
    "(kvm_mmu_load)",
    breaks="the zap of invalidated roots flushes no TLB: a vCPU drops the translations of its "
           "old root when it loads the new one")
OBSOLETE_ROOTS_REQUEST_FIRST = mutant(
    "obsolete_roots_request_first", removes="the fast zap's request to free obsolete roots "
    "made in the write-mode mmu_lock section that invalidates the roots (made before it)",
    breaks="a vCPU that serves KVM_REQ_MMU_FREE_OBSOLETE_ROOTS must find its root already "
           "invalid: served earlier, it keeps the root and its TLB, which the zap of "
           "invalidated roots never flushes")
ZAP_SELECTS_INVALID_ROOTS = mutant(
    "zap_selects_invalid_roots", removes="the scheduled-for-zap mark by which the zap of "
    "invalidated roots picks its roots (it takes every invalid root)",
    breaks="each root is zapped, and its MMU reference put, by the one fast zap that "
           "invalidated it: a later fast zap must leave alone a root a vCPU still holds")
ZAPPED_TABLES_FREED_AT_ONCE = mutant(
    "zapped_tables_freed_at_once", removes="the grace period before the zap of invalidated "
    "roots frees the tables it removed (waited for only when a root itself is freed)",
    breaks="a lockless walker (the fast page fault) may still be inside a removed table: it "
           "is freed only after an RCU grace period")
ROOT_LOOKED_UP_UNLOCKED = mutant(
    "root_looked_up_unlocked", removes="mmu_lock around a vCPU's look-up of the valid root and "
    "the reference it takes to it (kvm_mmu_load)",
    breaks="a fast zap invalidates the roots under write-mode mmu_lock and then puts the MMU's "
           "reference: a root found without the lock may be invalidated and freed before the "
           "vCPU's get")
ROOT_FREED_AT_ONCE = mutant(
    "root_freed_at_once", removes="the RCU grace period before a TDP root whose last reference "
    "was put is freed (freed at once, not by call_rcu)",
    breaks="a root leaves tdp_mmu_roots with list_del_rcu: a walker of the list may have "
           "reached it just before and still reads it (its role, its count) inside its RCU "
           "read side")
ROOT_UNLISTED_UNLOCKED = mutant(
    "root_unlisted_unlocked", removes="tdp_mmu_pages_lock around taking a root whose last "
    "reference was put off tdp_mmu_roots (list_del_rcu)",
    breaks="tdp_mmu_roots is changed only under tdp_mmu_pages_lock: puts of two roots, or a put "
           "and a vCPU adding a new root, run under read-mode mmu_lock at the same time")
ROOT_GET_NOT_INC_NOT_ZERO = mutant(
    "root_get_not_inc_not_zero", removes="the inc-not-zero of the reference a walker of "
    "tdp_mmu_roots takes (a plain increment, whatever the count)",
    breaks="a root whose count reached zero is on its way out: the walker that increments it "
           "anyway holds a root that is freed under it")
ZAPPED_ROOT_FREED_WITH_REFS = mutant(
    "zapped_root_freed_with_refs", removes="the put of the MMU's reference after the zap of "
    "an invalidated root (the root is freed once zapped, whoever still holds it)",
    breaks="a TDP root is freed only when its last reference is put: a vCPU that has not yet "
           "served KVM_REQ_MMU_FREE_OBSOLETE_ROOTS still holds its root")


# ------------------------------------------------------------------ removing tables

def handle_removed_table(vm: VM, sp: ShadowPage, by: str, plain_freeze: bool = False) -> None:
    """``handle_removed_pt`` with ``shared``: the caller's atomic change of the entry that
    pointed at ``sp`` took it out; take it off the page list, freeze every SPTE in it with an
    exchange and pass on what each one held. ``plain_freeze``: a load and a store instead."""
    sp.mark_removed(by)
    vm.mmu.unlink_page(sp)
    for sptep in sp.sptes:
        # (the kernel retries while the SPTE is already frozen by a fault that will write it
        # again; the model's faults never freeze, so one exchange is enough)
        if plain_freeze:
            old = sptep.load()
            sptep.store(S.FROZEN)  # broken: what lands in between is overwritten
        else:
            old = sptep.xchg(S.FROZEN)
        propagate_ad(vm, old)


def check_still_frozen(sp: ShadowPage, by: str) -> None:
    """The table is about to be freed: no one may have written it since it was frozen (only
    a writer that did not exclude the read-mode remover could have)."""
    changed = [f"{sptep.name} = {S.describe(v)}" for sptep in sp.sptes
               if (v := sptep.peek()) != S.FROZEN]
    assert not changed, (
        f"shadow page {sp.index}, removed by {by}, was written after its SPTEs were frozen "
        f"({'; '.join(changed)}): a writer that relies on mmu_lock held for write ran beside "
        "the read-mode remover")


def free_tables(tables: list[ShadowPage], by: str) -> None:
    """The RCU callbacks of removed tables (``tdp_mmu_free_sp_rcu_callback``); the caller
    waited for the grace period."""
    rt = runtime.active()
    for sp in tables:
        with irq.softirq():
            check_still_frozen(sp, by)
            rt.point(sp, "free shadow page (RCU callback)", True)  # (a reader of it is ordered)
            sp.free(by)


# ------------------------------------------------------------------ roots

def _get_root(root: TdpRoot) -> None:
    runtime.active().point(root, "refcount_inc tdp_mmu_root_count", True)
    root.check_live("kvm_tdp_mmu_get_root")
    root.refcount += 1


def _try_get_root(vm: VM, root: TdpRoot, only_valid: bool) -> bool:
    """``kvm_tdp_mmu_get_root`` on a root found in the list (``refcount_inc_not_zero``), after
    the test of ``role.invalid`` when only valid roots are wanted; the caller is inside the
    RCU read side, which is all that keeps the root's memory."""
    runtime.active().point(root, "refcount_inc_not_zero tdp_mmu_root_count", True)
    root.check_live("a walk of tdp_mmu_roots")
    if only_valid and root.invalid:
        return False
    if root.refcount == 0 and ROOT_GET_NOT_INC_NOT_ZERO not in vm.hazards:
        return False  # the last reference is gone: the root is being unlisted and freed
    root.refcount += 1  # (broken: from zero, a reference to a root already on its way out)
    return True


def walk_roots(vm: VM, freed: list[TdpRoot], only_valid: bool = False) -> Iterator[TdpRoot]:
    """``for_each_tdp_mmu_root_yield_safe`` (``mmu_lock`` held): each root of
    ``tdp_mmu_roots`` a reference could be taken to, with that reference held while the caller
    uses it. Each step is ``tdp_mmu_next_root``: inside the RCU read side, follow the list to
    the next root and take a reference to it (not-zero); after leaving the read side, put the
    reference to the root before. A root whose last reference that put was goes on ``freed``,
    for the caller to free after a grace period once it drops ``mmu_lock``. The walk must be
    run to its end (it holds a reference until then).

    Each step through the list and each get is a visible step: a root is unlinked by its last
    put under read-mode ``mmu_lock``, so the list changes under the walk, and only the grace
    period before its free keeps a root the walk just reached alive."""
    mmu = vm.mmu
    rt = runtime.active()
    roots = mmu.roots
    prev: TdpRoot | None = None
    at = 0  # where the next root sits in the list as the walk last saw it
    while True:
        with mmu.rcu.read():
            while True:
                rt.point(roots, "list_next_or_null_rcu tdp_mmu_roots", False)
                root = roots[at] if at < len(roots) else None
                if root is None or _try_get_root(vm, root, only_valid):
                    break
                # an unlinked root still points at what followed it: that now sits at ``at``
                at = roots.index(root) + 1 if root in roots else at
        if prev is not None and put_root(vm, prev):
            freed.append(prev)
        if root is None:
            return
        yield root
        prev = root
        at = roots.index(root) + 1 if root in roots else at


def put_root(vm: VM, root: TdpRoot) -> bool:
    """``kvm_tdp_mmu_put_root`` (``mmu_lock`` held): True if that was the last reference and
    the root left ``tdp_mmu_roots``; the caller frees it after a grace period."""
    runtime.active().point(root, "refcount_dec_and_test tdp_mmu_root_count", True)
    root.check_live("kvm_tdp_mmu_put_root")
    root.refcount -= 1
    assert root.refcount >= 0, f"BUG: TDP root {root.gen}: more references put than taken"
    if root.refcount:
        return False
    assert root.invalid, f"BUG: the last reference to TDP root {root.gen} put while it is valid"
    _unlist_root(vm, root)
    return True


def _unlist_root(vm: VM, root: TdpRoot) -> None:
    with unless(ROOT_UNLISTED_UNLOCKED, vm.hazards, vm.tdp_mmu_pages_lock):
        runtime.active().point(vm.mmu.roots, "list_del_rcu tdp_mmu_roots", True)
        assert root in vm.mmu.roots, (
            f"BUG: TDP root {root.gen} taken off tdp_mmu_roots twice (list corruption): its "
            "last reference was put twice -- a reference was taken after the count reached "
            "zero")
        vm.mmu.roots.remove(root)
        changed_in_place(vm.mmu, "roots")


def _free_root(root: TdpRoot) -> None:
    with irq.softirq():  # the RCU callback
        root.check_live("the RCU callback freeing it")
        root.freed = True


def _get_valid_root(mmu: MMU) -> TdpRoot | None:
    """Find the valid root and take a reference to it (the caller holds ``mmu_lock``)."""
    runtime.active().point(mmu.roots, "look for a valid root", False)
    root = mmu.root
    if root is not None:
        _get_root(root)
    return root


def _load_root(vcpu: VCPU) -> None:
    """``kvm_mmu_load`` for the TDP MMU: take a reference to the valid root, or make one
    (``kvm_tdp_mmu_alloc_root``: looked for under read-mode ``mmu_lock``, looked for again
    and made under ``tdp_mmu_pages_lock``); then flush this vCPU's own TLB."""
    vm = vcpu.vm
    mmu = vm.mmu
    rt = runtime.active()
    unlocked = ROOT_LOOKED_UP_UNLOCKED in vm.hazards
    root = _get_valid_root(mmu) if unlocked else None  # broken: freed before the get
    with vm.mmu_lock.read():
        if not unlocked:
            root = _get_valid_root(mmu)
        if root is None:
            with vm.tdp_mmu_pages_lock:
                rt.point(mmu.roots, "list_add_rcu tdp_mmu_roots", True)
                root = mmu.root
                if root is not None:
                    root.refcount += 1
                else:
                    mmu.root_gen += 1
                    root = TdpRoot([None] * len(mmu.pages), mmu.root_gen, refcount=2)
                    mmu.roots.append(root)
                    changed_in_place(mmu, "roots")
                    mmu.root = root
                    mmu.pages = root.pages
    vcpu.root = root
    if ROOT_LOAD_NO_FLUSH not in vm.hazards:
        vcpu.flush_tlb_current()


def _free_obsolete_root(vcpu: VCPU) -> None:
    """``kvm_mmu_free_obsolete_roots``: put the vCPU's reference to an invalidated root."""
    root = vcpu.root
    if root is None:
        return
    vm = vcpu.vm
    # role.invalid is written by the fast zap: reading it is a step that depends on its order
    runtime.active().point(vm.mmu.roots, "read role.invalid", False)
    if not root.invalid:
        return
    with vm.mmu_lock.read():
        last = put_root(vm, root)
    vcpu.root = None
    if last:
        if ROOT_FREED_AT_ONCE not in vm.hazards:
            grace_period(vm)  # call_rcu (broken: a walker of the list may still read it)
        _free_root(root)


def kvm_mmu_reload(vcpu: VCPU) -> None:
    """What ``vcpu_enter_guest`` does for the MMU before entering: serve
    ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``, then load a root if the vCPU has none."""
    if vcpu.take_request(FREE_OBSOLETE_ROOTS):
        _free_obsolete_root(vcpu)
    if vcpu.root is None and vcpu.vm.mmu.tdp:
        _load_root(vcpu)


def _invalidate_all_roots(vm: VM) -> None:
    """``kvm_tdp_mmu_invalidate_all_roots`` (``mmu_lock`` held for write)."""
    mmu = vm.mmu
    runtime.active().point(mmu.roots, "invalidate tdp_mmu_roots", True)
    for root in mmu.roots:
        if not root.invalid:
            root.invalid = True
            root.scheduled = True
    mmu.root = None


def zap_all_fast(vm: VM, shared: bool = True) -> int:
    """``kvm_mmu_zap_all_fast`` for the TDP MMU; returns how many tables were removed.

    ``shared=False`` zaps the invalidated roots with ``mmu_lock`` held for write, as the kernel
    does when the VM is destroyed: slower for vCPUs, as correct.
    """
    if not vm.mmu.tdp_mmu:
        raise ValueError("zap_all_fast: the model's fast zap is the TDP MMU's (roots)")
    vm.slots_lock.assert_held()
    wait = OBSOLETE_ROOTS_REQUEST_NO_WAIT not in vm.hazards
    if OBSOLETE_ROOTS_REQUEST_FIRST in vm.hazards:
        for vcpu in vm.vcpus:  # broken: served before the roots are invalid, it changes nothing
            vcpu.make_request(FREE_OBSOLETE_ROOTS, wait=wait)
        with vm.mmu_lock.write():
            _invalidate_all_roots(vm)
    else:
        with vm.mmu_lock.write():
            # invalidating the roots and making the request in one critical section: no vCPU
            # can load a root between the two and keep it
            _invalidate_all_roots(vm)
            for vcpu in vm.vcpus:
                vcpu.make_request(FREE_OBSOLETE_ROOTS, wait=wait)
    vm.stats["fast_zaps"] += 1
    return zap_invalidated_roots(vm, shared)


def zap_invalidated_roots(vm: VM, shared: bool = True) -> int:
    """``kvm_tdp_mmu_zap_invalidated_roots``: remove every table of every root the last fast
    zap invalidated, then put the reference that kept the root; returns how many tables."""
    gone: list[ShadowPage] = []
    freed: list[TdpRoot] = []
    with vm.mmu_lock.read() if shared else vm.mmu_lock.write():
        for root in walk_roots(vm, freed):  # a reference held to the root it is at
            # role.invalid and the scheduled mark are read under mmu_lock, with a reference
            picked = root.invalid if ZAP_SELECTS_INVALID_ROOTS in vm.hazards else root.scheduled
            if not picked:  # (broken: a root an earlier zap zapped and put is taken again)
                continue
            root.scheduled = False
            gone += _zap_root(vm, root)
            if ZAPPED_ROOT_FREED_WITH_REFS in vm.hazards:
                _unlist_root(vm, root)  # broken: vCPUs may still hold it
                freed.append(root)
            elif put_root(vm, root):  # after the zap: notifiers reach the root until then
                freed.append(root)  # (not while the walk holds it: never the last put)
    at_once = ROOT_FREED_AT_ONCE in vm.hazards
    if at_once:
        for root in freed:
            _free_root(root)  # broken: a walker of the list may still read it
    if (freed and not at_once) or (gone and ZAPPED_TABLES_FREED_AT_ONCE not in vm.hazards):
        grace_period(vm)  # call_rcu
    free_tables(gone, "the zap of invalidated roots")
    if not at_once:
        for root in freed:
            _free_root(root)
    return len(gone)


def _zap_root(vm: VM, root: TdpRoot) -> list[ShadowPage]:
    """``tdp_mmu_zap_root``: clear each entry of ``root`` that points at a table, atomically,
    and handle the table as removed. A table someone else took out meanwhile is theirs."""
    rt = runtime.active()
    plain = FAST_ZAP_PLAIN_STORE in vm.hazards
    entries = root.pages
    gone = []
    for idx in range(vm.mmu.nr_regions):
        if plain:
            rt.point(entries, "load parent SPTE", False)
            sp = entries[idx]
            if sp is None:
                continue
            rt.point(entries, "store parent SPTE", True)  # broken: it may have changed
        else:
            rt.point(entries, "cmpxchg parent SPTE", True)
            sp = entries[idx]
            if sp is None:
                continue
        entries[idx] = None
        handle_removed_table(vm, sp, "the zap of invalidated roots")
        gone.append(sp)
    return gone


def flush_shadow_memslot(vm: VM, slot: Memslot) -> None:
    """``kvm_arch_flush_shadow_memslot``: what a memslot deletion or move zaps.

    With ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` (``VM(slot_zap_all=True)``; the kernel's default) a
    TDP VM fast-zaps everything; without it, only the slot's SPTEs go (``kvm_zap_gfn_range``),
    the model's default path. The model's fast zap is the TDP MMU's: a VM whose direct pages
    the shadow MMU manages (``tdp_mmu=False``) zaps the slot's SPTEs too.
    """
    if vm.mmu.tdp_mmu and vm.slot_zap_all:
        zap_all_fast(vm)
    else:
        zap_gfn_range(vm, slot.base_gfn, slot.base_gfn + slot.npages)


def update_nx_huge_pages(vm: VM) -> None:
    """``kvm_update_nx_huge_pages``: the ``nx_huge_pages`` module parameter changed, so each
    VM's mappings are rebuilt under the new rule -- ``slots_lock``, then a fast zap. (The
    kernel walks ``vm_list`` under ``kvm_lock`` to do this for every VM; the model does one.)"""
    with vm.slots_lock:
        zap_all_fast(vm)


# ------------------------------------------------------------------ invariant

def check_roots(vm: VM) -> None:
    """Once the VM is quiet: every root's count is its references -- the MMU's while it is
    valid or scheduled for its zap, one per vCPU that loaded it -- no vCPU holds a freed root,
    and a root whose zap is done points at no table."""
    mmu = vm.mmu
    if not mmu.tdp:
        return
    bad = []
    for vcpu in vm.vcpus:
        if vcpu.root is not None and vcpu.root not in mmu.roots:
            bad.append(f"{vcpu!r} holds TDP root {vcpu.root.gen}, which was "
                       f"{'freed' if vcpu.root.freed else 'taken off the list'} under it")
    for root in mmu.roots:
        holders = sum(1 for v in vm.vcpus if v.root is root)
        want = holders + (1 if not root.invalid or root.scheduled else 0)
        if root.refcount != want:
            bad.append(f"TDP root {root.gen} has {root.refcount} reference(s), {want} held")
        if root.invalid and not root.scheduled and any(sp is not None for sp in root.pages):
            bad.append(f"invalid TDP root {root.gen} still points at a table after its zap")
    for sp in peek(mmu, "page_list"):
        if sp.parent is not None and sp.parent not in mmu.roots:
            bad.append(f"shadow page {sp.index} hangs in TDP root {sp.parent.gen}, which was "
                       f"{'freed' if sp.parent.freed else 'taken off the list'}: its SPTEs are "
                       "out of reach of every zap (a leaked table)")
    assert not bad, "TDP roots: " + "; ".join(bad)
