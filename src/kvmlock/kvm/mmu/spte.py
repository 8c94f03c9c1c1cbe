"""Shadow page table entries: the bit layout and the predicates KVM's MMU reasons with.

The layout follows x86 KVM with EPT (facts from arch/x86/kvm/mmu/spte.h, in our own code):

=========  =====================================================================
bit 0      R: readable; together with W and X the hardware-visible permissions
bit 1      W: writable
bit 2      X: executable
bit 8      Accessed (EPT A/D), set by the CPU when it walks the entry
bit 9      Dirty (EPT A/D), set by the CPU on the first write through the entry
bit 11     MMU-present: KVM's own "this SPTE maps memory" bit, survives access tracking
12..51     the host page frame number
52..53     A/D type: 0 A/D enabled, 1 A/D disabled (access tracked), 2 write-protect only
54, 56     access-track saved R and X (R/X shifted up by 54 while the SPTE is tracked)
57         Host-writable: the host page may be written (the host maps it writable)
58         MMU-writable: KVM itself has no reason to write-protect the gfn
=========  =====================================================================

An SPTE whose W bit is clear but MMU-writable bit set may be made writable by the *fast* page
fault with a cmpxchg outside ``mmu_lock``; that is what makes such an SPTE *volatile*.
"""

from __future__ import annotations

R = 1 << 0
W = 1 << 1
X = 1 << 2
RWX = R | W | X
ACCESSED = 1 << 8
DIRTY = 1 << 9
MMU_PRESENT = 1 << 11
PFN_SHIFT = 12
PFN_MASK = ((1 << 52) - 1) & ~((1 << PFN_SHIFT) - 1)
AD_SHIFT = 52
AD_MASK = 3 << AD_SHIFT
AD_ENABLED = 0 << AD_SHIFT
AD_DISABLED = 1 << AD_SHIFT
AD_WRPROT_ONLY = 2 << AD_SHIFT
ACC_TRACK_SAVED_MASK = R | X
ACC_TRACK_SAVED_SHIFT = 54
HOST_WRITABLE = 1 << 57
MMU_WRITABLE = 1 << 58
#: bits cleared when an A/D-disabled SPTE is marked for access tracking
ACC_TRACK_MASK = RWX
#: the *frozen* value (the kernel's REMOVED_SPTE / FROZEN_SPTE): not present, and written
#: only by a read-mode writer that owns the SPTE until it writes it again -- every SPTE of a
#: table removed under read-mode ``mmu_lock`` stays frozen until the table is freed. Other
#: read-mode writers seeing it retry; a write-mode writer never sees one.
FROZEN = 1 << 59

_NAMES = [
    (R, "R"), (W, "W"), (X, "X"), (ACCESSED, "A"), (DIRTY, "D"), (MMU_PRESENT, "P"),
    (HOST_WRITABLE, "HW"), (MMU_WRITABLE, "MW"),
]


def make(
    pfn: int,
    *,
    writable: bool = False,
    host_writable: bool = True,
    mmu_writable: bool = True,
    accessed: bool = True,
    dirty: bool = False,
    ad_disabled: bool = False,
    executable: bool = True,
) -> int:
    """Build a present leaf SPTE for ``pfn``; W needs both writable bits, as in the kernel.

    A page the host maps read-only is never MMU-writable either: nothing may make it writable.
    """
    if not isinstance(pfn, int) or pfn < 0 or pfn >= (1 << 40):
        raise ValueError(f"pfn must be an integer in [0, 2**40), got {pfn!r}")
    mmu_writable = mmu_writable and host_writable
    if writable and not (host_writable and mmu_writable):
        raise ValueError("a writable SPTE must be both Host-writable and MMU-writable")
    v = MMU_PRESENT | R | (pfn << PFN_SHIFT)
    if executable:
        v |= X
    if writable:
        v |= W
    if host_writable:
        v |= HOST_WRITABLE
    if mmu_writable:
        v |= MMU_WRITABLE
    if ad_disabled:
        v |= AD_DISABLED  # A/D bits do not exist: W stands for dirty, RWX for accessed
    else:
        if accessed:
            v |= ACCESSED
        if dirty:
            v |= DIRTY
    return v


def pfn_of(spte: int) -> int:
    return (spte & PFN_MASK) >> PFN_SHIFT


def is_present(spte: int) -> bool:
    """MMU-present: maps memory, even if access tracking made it not present to hardware."""
    return bool(spte & MMU_PRESENT)


def ad_enabled(spte: int) -> bool:
    return (spte & AD_MASK) == AD_ENABLED


def is_writable(spte: int) -> bool:
    return bool(spte & W)


def is_mmu_writable(spte: int) -> bool:
    return bool(spte & MMU_WRITABLE)


def is_host_writable(spte: int) -> bool:
    return bool(spte & HOST_WRITABLE)


def is_access_track(spte: int) -> bool:
    """Marked for access tracking: A/D disabled and every hardware permission removed."""
    return not ad_enabled(spte) and not (spte & ACC_TRACK_MASK)


def is_accessed(spte: int) -> bool:
    if ad_enabled(spte):
        return bool(spte & ACCESSED)
    return not is_access_track(spte)


def is_dirty(spte: int) -> bool:
    if ad_enabled(spte):
        return bool(spte & DIRTY)
    return bool(spte & W)


def hw_allows(spte: int, write: bool) -> bool:
    """Would the CPU let this access through without a fault (EPT violation)?"""
    if not is_present(spte) or not (spte & R):
        return False
    return bool(spte & W) if write else True


def has_volatile_bits(spte: int, *, old_rule: bool = False) -> bool:
    """May a bit of this SPTE change under our feet while we hold ``mmu_lock``?

    Two agents change SPTEs without the lock: the fast page fault (sets W on a read-only but
    MMU-writable SPTE, restores an access-tracked one) and the CPU (sets Accessed and Dirty).
    A volatile SPTE must be changed with an atomic exchange so nothing they did is lost.
    ``old_rule`` is the rule from before the fast page fault existed, which forgot the first
    case: it is the bug behind locking.rst's "Dirty bit tracking" hazard.
    """
    if not old_rule and not is_writable(spte) and is_mmu_writable(spte):
        return True
    if is_access_track(spte):
        return True
    # The CPU sets Accessed too, but a clobbered Accessed bit is tolerated: aging already
    # misses accesses made through translations it does not flush, so an SPTE is not
    # volatile for Accessed alone (the kernel's rule since 6.14)
    return ad_enabled(spte) and is_writable(spte) and not (spte & DIRTY)


def mark_for_access_track(spte: int) -> int:
    """Age an SPTE: clear Accessed, or (A/D disabled) hide it from hardware, saving R/X."""
    if ad_enabled(spte):
        return spte & ~ACCESSED
    if is_access_track(spte):
        return spte
    saved = (spte & ACC_TRACK_SAVED_MASK) << ACC_TRACK_SAVED_SHIFT
    return (spte | saved) & ~ACC_TRACK_MASK


def restore_access_track(spte: int) -> int:
    """Undo :func:`mark_for_access_track`: R/X come back, W does not (only a write sets it)."""
    saved = (spte >> ACC_TRACK_SAVED_SHIFT) & ACC_TRACK_SAVED_MASK
    spte &= ~ACC_TRACK_MASK
    spte &= ~(ACC_TRACK_SAVED_MASK << ACC_TRACK_SAVED_SHIFT)
    return spte | saved


def describe(spte: int) -> str:
    """Human-readable form used in traces and failure messages: ``pfn=3 R|W|A|D|P|HW|MW``."""
    if spte == 0:
        return "0 (not present)"
    if spte == FROZEN:
        return "frozen"
    bits = "|".join(n for m, n in _NAMES if spte & m)
    extra = ""
    if not ad_enabled(spte):
        extra = " ad-off"
        if is_access_track(spte):
            extra += " tracked"
    return f"pfn={pfn_of(spte)} {bits}{extra}"
