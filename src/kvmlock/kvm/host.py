"""The host side of guest memory: host pages, the host's page table, swap, and the notifier hook.

Guest memory is ordinary host memory. Each guest-visible page lives at a host virtual page
(``hva``) that the host maps to a physical page frame (``pfn``) on demand. The host may take a
page away at any time -- swap it out, write it back if it is dirty, and give the frame to
someone else -- but it tells KVM first through the MMU notifier, and KVM must drop its own
mappings (SPTEs) of that frame before the frame is reused. That reuse is what makes a stale
mapping dangerous: a late write through it lands in somebody else's page.

The host's own bookkeeping (which hva maps which pfn, the free list, the swap area) is guarded
by one monitor from the runtime, the way the kernel's page table lock and page lock would be.
It is not a KVM lock, so it takes no part in lockdep's graph. The page contents and the page
flags are :class:`~kvmlock.sync.Atomic64` because guest hardware and KVM touch them without
any host lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from kvmlock import lockdep, runtime
from kvmlock.sync import Atomic64

__all__ = ["Host", "HostPage", "MmuNotifierOps", "PG_ACCESSED", "PG_DIRTY"]

PG_DIRTY = 1
PG_ACCESSED = 2
#: what a freed frame holds until it is reused: a stale reader sees this, not the old data
POISON = 0xDEAD_BEEF


class MmuNotifierOps(Protocol):
    def invalidate_range_start(self, start: int, end: int, blockable: bool = True) -> Any: ...
    def invalidate_range_end(self, start: int, end: int, token: Any,
                             blockable: bool = True) -> None: ...
    def clear_flush_young(self, start: int, end: int) -> bool: ...
    def release(self) -> None: ...


class HostPage:
    """A physical page: its contents (one word is enough for the model) and PG_* flags."""

    __slots__ = ("pfn", "data", "flags", "hva")

    def __init__(self, pfn: int) -> None:
        self.pfn = pfn
        self.data = Atomic64(0, name=f"page{pfn}.data")
        self.flags = Atomic64(0, name=f"page{pfn}.flags")
        self.hva: int | None = None

    def __repr__(self) -> str:
        return f"<HostPage pfn={self.pfn} hva={self.hva} data={self.data.peek()}>"

    def poison(self) -> None:
        """The frame was freed: its old contents are gone. A visible write of the page's word,
        so that a stale access through a cached translation is ordered against the free (and
        an exploration may put it after)."""
        self.data.store(POISON)


class Host:
    """``nr_pages`` physical frames backing an address space of ``nr_hva`` host pages.

    With fewer frames than pages, faulting one page in may need another swapped out first
    (:meth:`fault_in` reclaims directly, like an allocation under memory pressure).
    """

    def __init__(self, nr_pages: int = 16, nr_hva: int | None = None) -> None:
        if not isinstance(nr_pages, int) or nr_pages < 1:
            raise ValueError(f"a host needs at least one page frame, got nr_pages={nr_pages!r}")
        nr_hva = nr_pages if nr_hva is None else nr_hva
        if not isinstance(nr_hva, int) or nr_hva < 1:
            raise ValueError(f"nr_hva must be a positive integer, got {nr_hva!r}")
        self.nr_hva = nr_hva
        self.pages = [HostPage(pfn) for pfn in range(nr_pages)]
        # Most recently freed first: a freed frame is the next one handed out, which is what
        # makes ABA on a pfn easy to reach (and is also what real allocators tend to do).
        self._free = list(range(nr_pages - 1, -1, -1))
        self._ptes: dict[int, int] = {}
        self._busy: set[int] = set()
        self._backing: dict[int, int] = {}
        self.name = "host mm"  # set before the monitor: traces name its steps by it
        self._mm = runtime.active().waitq(self)
        self.notifiers: list[MmuNotifierOps] = []
        #: the kernel's lockdep map held around every invalidate_range_start callback, and
        #: taken (as might_lock) by any allocation that could reclaim memory.
        self.mn_map = lockdep.LockMap("mmu_notifier_invalidate_range_start", "pseudo")
        self.stats = {"swap_out": 0, "swap_in": 0, "writeback": 0, "discard": 0}
        #: swap-out under memory pressure reclaims one more page inside its invalidation
        self.reclaim_nested = True
        #: the lockless lookup (GUP-fast) may return a page that is being unmapped; off by
        #: default because it multiplies the interleavings of every fault racing a swap-out
        self.gup_fast = False

    # ---------------------------------------------------------------- helpers

    def _check_hva(self, hva: int) -> int:
        if not isinstance(hva, int) or isinstance(hva, bool) or not 0 <= hva < self.nr_hva:
            raise ValueError(f"hva {hva!r} is outside the host address space [0, {self.nr_hva})")
        return hva

    def register(self, notifier: MmuNotifierOps) -> None:
        """``mmu_notifier_register``: the host will tell ``notifier`` before unmapping."""
        self.notifiers.append(notifier)

    def pfn_of(self, hva: int) -> int | None:
        """Who backs ``hva`` right now (no visible operation: for checks after the run)."""
        return self._ptes.get(self._check_hva(hva))

    # ---------------------------------------------------------------- faulting in

    def fault_in(self, hva: int) -> int:
        """``hva_to_pfn``: the frame backing ``hva``, swapping it in if needed. May sleep."""
        self._check_hva(hva)
        lockdep.might_sleep("hva_to_pfn")
        mm = self._mm
        while True:
            with mm:
                # With ``gup_fast`` a page still mapped is found even while it is being
                # unmapped (the lockless lookup) -- why a fault checks invalidations in progress.
                mm.wait_for(lambda: hva not in self._busy or (self.gup_fast and hva in self._ptes),
                            "hva_to_pfn")
                pfn = self._ptes.get(hva)
                if pfn is not None:
                    return pfn
                if self._free:
                    pfn = self._free.pop()
                    self._busy.add(hva)
                    value = self._backing.get(hva, 0)
                    break
            if not self.reclaim_one(avoid=hva):
                # every mapped page is being swapped or pinned: sleep until a frame is freed
                with mm:
                    mm.wait_for(lambda: bool(self._free) or hva in self._ptes, "wait_free")
        page = self.pages[pfn]
        page.data.store(value)
        page.flags.store(0)
        with mm:
            mm.point("set_pte")
            self._ptes[hva] = pfn
            page.hva = hva
            self._busy.discard(hva)
            self.stats["swap_in"] += 1
            mm.notify_all()
        return pfn

    @contextmanager
    def pinned(self, hva: int) -> Iterator[HostPage]:
        """``get_user_pages`` + ``put_page``: the page stays mapped while the body runs."""
        self._check_hva(hva)
        mm = self._mm
        while True:
            pfn = self.fault_in(hva)
            with mm:
                mm.wait_for(lambda: hva not in self._busy, "pin")
                if self._ptes.get(hva) == pfn:
                    self._busy.add(hva)
                    break
        try:
            yield self.pages[pfn]
        finally:
            with mm:
                mm.point("unpin")
                self._busy.discard(hva)
                mm.notify_all()

    def read(self, hva: int) -> int:
        """What the owner of the address space reads at ``hva`` (e.g. migration copying)."""
        with self.pinned(hva) as page:
            return page.data.load()

    # ---------------------------------------------------------------- reclaim

    def might_reclaim(self) -> None:
        """An allocation that may enter reclaim: lockdep learns that it can reach notifiers."""
        with self.mn_map:
            pass

    def reclaim_one(self, avoid: int | None = None, *, nested: bool = False) -> bool:
        """Direct reclaim: swap out one mapped page (not ``avoid``); False if none could go."""
        with self._mm:
            self._mm.point("pick_victim", False)
            victims = [h for h in sorted(self._ptes) if h != avoid and h not in self._busy]
        for hva in victims:
            if self.swap_out(hva, nested=nested):
                return True
        return False

    def swap_out(self, hva: int, *, nested: bool = False, blockable: bool = True) -> bool:
        """Unmap ``hva``, write the page back if dirty and free the frame for reuse.

        The notifier's invalidate_range_start runs before the host PTE is cleared and its
        _end after, so KVM has dropped every SPTE of the frame -- and propagated the Dirty bits
        those SPTEs held -- before the host looks at the page's dirty flag. ``blockable=False``
        is the OOM reaper's unmapping: the notifiers are told they may not sleep.
        """
        self._check_hva(hva)
        mm = self._mm
        with mm:
            mm.wait_for(lambda: hva not in self._busy, "swap_out")
            pfn = self._ptes.get(hva)
            if pfn is None:
                return False
            self._busy.add(hva)
        tokens = self._invalidate_start(hva, blockable)
        with mm:
            mm.point("ptep_clear_flush")
            del self._ptes[hva]
            short = not self._free
        # Writing the page to swap needs memory too: with no frame free this reclaims another
        # page -- a nested invalidation while this one is still active.
        self.might_reclaim()
        if short and self.reclaim_nested and not nested:
            self.reclaim_one(avoid=hva, nested=True)
        page = self.pages[pfn]
        flags = page.flags.xchg(0)
        data = page.data.load() if flags & PG_DIRTY else None
        self._invalidate_end(hva, tokens, blockable)
        page.hva = None
        page.poison()
        with mm:
            mm.point("free_page")
            if data is not None:
                self._backing[hva] = data
                self.stats["writeback"] += 1
            self._free.append(pfn)
            self._busy.discard(hva)
            self.stats["swap_out"] += 1
            mm.notify_all()
        return True

    def discard(self, hva: int) -> bool:
        """``MADV_DONTNEED`` (``zap_page_range``): drop ``hva``'s page and free its frame; the
        next touch faults in a zeroed page. False if nothing was mapped.

        Unlike :meth:`swap_out` it does not lock the page first: two discards of one page (two
        threads, each under ``mmap_lock`` held for read) run their notifiers at the same time,
        and whichever then clears the host PTE frees the frame at once -- possibly while the
        other's invalidate_range_start is still running.
        """
        self._check_hva(hva)
        mm = self._mm
        with mm:  # a page being swapped or pinned is left to that path to finish first
            mm.wait_for(lambda: hva not in self._busy, "zap_page_range")
        tokens = self._invalidate_start(hva)
        with mm:
            mm.wait_for(lambda: hva not in self._busy, "zap_pte_range")
            pfn = self._ptes.pop(hva, None)
            self._backing.pop(hva, None)
            if pfn is not None:
                self.pages[pfn].hva = None
        if pfn is not None:
            self.pages[pfn].poison()
            with mm:
                mm.point("free_page")
                self._free.append(pfn)
                self.stats["discard"] += 1
                mm.notify_all()
        self._invalidate_end(hva, tokens)
        return pfn is not None

    def exit_mmap(self) -> int:
        """The address space is torn down (its last user exits): returns how many frames
        were freed.

        Every notifier's release runs first (``mmu_notifier_release``) and the notifiers are
        then dropped: the unmapping that follows tells nobody, so a notifier must have let go
        of every mapping of these pages by the time its release returns. Each page is then
        unmapped and its frame freed, unwritten (nobody is left to read it back).
        """
        notifiers, self.notifiers = self.notifiers, []
        for n in notifiers:
            n.release()
        mm = self._mm
        with mm:
            mm.wait_for(lambda: not self._busy, "exit_mmap")
            freed = [self._ptes.pop(hva) for hva in sorted(self._ptes)]
            self._backing.clear()
            for pfn in freed:
                self.pages[pfn].hva = None
        for pfn in freed:
            page = self.pages[pfn]
            page.flags.store(0)  # the allocator clears a freed page's flags
            page.poison()
        with mm:
            mm.point("free_page")
            self._free.extend(freed)
            mm.notify_all()
        return len(freed)

    def _invalidate_start(self, hva: int, blockable: bool = True) -> list[Any]:
        """Every notifier's invalidate_range_start for ``hva``, each inside the lockdep map
        the kernel holds around it; the tokens their _end calls take back."""
        tokens = []
        for n in self.notifiers:
            with self.mn_map:
                tokens.append(n.invalidate_range_start(hva, hva + 1, blockable))
        return tokens

    def _invalidate_end(self, hva: int, tokens: list[Any], blockable: bool = True) -> None:
        for n, token in zip(self.notifiers, tokens, strict=True):
            n.invalidate_range_end(hva, hva + 1, token, blockable)

    def age(self, hva: int) -> bool:
        """``page_referenced``: was ``hva`` used since last asked? The page's own referenced
        flag (set when KVM dropped an Accessed SPTE) and the notifiers' answer both count."""
        self._check_hva(hva)
        young = False
        with self._mm:
            self._mm.point("page_referenced", False)
            pfn = self._ptes.get(hva)
        if pfn is not None:
            young = bool(self.pages[pfn].flags.fetch_and(~PG_ACCESSED & (2**64 - 1))
                         & PG_ACCESSED)
        for n in self.notifiers:
            young |= bool(n.clear_flush_young(hva, hva + 1))
        return young

    # ---------------------------------------------------------------- page flags

    def set_page_dirty(self, pfn: int) -> None:
        """``kvm_set_pfn_dirty``: the page must be written back before its frame is reused."""
        self._set_flag(pfn, PG_DIRTY, "Dirty")

    def set_page_accessed(self, pfn: int) -> None:
        """``kvm_set_pfn_accessed``: the page was used, so reclaim keeps it longer."""
        self._set_flag(pfn, PG_ACCESSED, "Accessed")

    def _set_flag(self, pfn: int, flag: int, what: str) -> None:
        """Set ``flag`` on the page in frame ``pfn``, which must still be a mapped page: the
        check is made in the same step as the change of the flags, which the free of a frame
        also writes, so the two are ordered."""
        page = self.pages[pfn]
        page.flags.fetch_or(flag)
        assert page.hva is not None, (
            f"{what} passed to frame {pfn}, which the host has freed: a mapping of the page "
            "outlived it, and the page it marks is no longer the guest's")

    def contents(self, hva: int) -> int:
        """The current value at ``hva`` wherever it is (no visible operation: for checks)."""
        pfn = self._ptes.get(self._check_hva(hva))
        if pfn is not None:
            return self.pages[pfn].data.peek()
        return self._backing.get(hva, 0)
