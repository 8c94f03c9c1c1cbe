"""SPTE bit helpers: layout, volatility, access tracking."""

import pytest

from kvmlock.kvm.mmu import spte as S


def test_layout_round_trips_pfn_and_bits():
    v = S.make(0x1234, writable=True, dirty=True)
    assert S.pfn_of(v) == 0x1234
    assert v & S.R and v & S.W and v & S.X and v & S.ACCESSED and v & S.DIRTY
    assert v & S.MMU_PRESENT and v & S.HOST_WRITABLE and v & S.MMU_WRITABLE
    assert S.ad_enabled(v) and S.is_present(v)
    assert (S.W, S.ACCESSED, S.DIRTY, S.HOST_WRITABLE, S.MMU_WRITABLE) == (
        1 << 1, 1 << 8, 1 << 9, 1 << 57, 1 << 58)
    assert S.describe(v) == "pfn=4660 R|W|X|A|D|P|HW|MW"
    assert S.describe(0) == "0 (not present)"


def test_bad_spte_construction_is_refused():
    with pytest.raises(ValueError, match="Host-writable and MMU-writable"):
        S.make(1, writable=True, mmu_writable=False)
    with pytest.raises(ValueError, match="pfn"):
        S.make(-1)


def test_write_protected_but_mmu_writable_spte_is_volatile_only_under_the_new_rule():
    ro = S.make(3, writable=False, accessed=True)  # what dirty logging leaves behind
    assert S.has_volatile_bits(ro), "the fast path may set W on it: volatile"
    assert not S.has_volatile_bits(ro, old_rule=True), "the pre-fast-PF rule misses it"
    # near miss: not MMU-writable, Accessed set -> nobody can change it locklessly
    frozen = S.make(3, writable=False, accessed=True, mmu_writable=False)
    assert not S.has_volatile_bits(frozen)


def test_hardware_settable_bits_make_an_spte_volatile():
    # A may be set, but losing it is tolerated: not volatile for that alone
    assert not S.has_volatile_bits(S.make(1, accessed=False, mmu_writable=False))
    assert S.has_volatile_bits(S.make(1, writable=True, dirty=False))  # D may be set
    assert not S.has_volatile_bits(S.make(1, writable=True, dirty=True))  # nothing left to set


def test_access_tracking_saves_rx_drops_w_and_restores_without_w():
    v = S.make(7, writable=True, ad_disabled=True)
    assert S.is_dirty(v) and S.is_accessed(v), "without A/D bits W means dirty, RWX accessed"
    t = S.mark_for_access_track(v)
    assert S.is_access_track(t) and S.is_present(t) and not S.hw_allows(t, False)
    assert not S.is_accessed(t) and not S.is_dirty(t)
    assert S.has_volatile_bits(t)
    assert S.mark_for_access_track(t) == t
    r = S.restore_access_track(t)
    assert r & S.R and r & S.X and not r & S.W, "restore brings back R/X, never W"
    assert S.pfn_of(r) == 7 and r & S.MMU_WRITABLE and not S.is_access_track(r)


def test_aging_with_ad_bits_only_clears_accessed():
    v = S.make(2, writable=True, dirty=True)
    aged = S.mark_for_access_track(v)
    assert aged == v & ~S.ACCESSED and not S.is_access_track(aged)


def test_hw_allows_follows_permissions():
    ro = S.make(1)
    assert S.hw_allows(ro, False) and not S.hw_allows(ro, True)
    assert S.hw_allows(S.make(1, writable=True), True)
    assert not S.hw_allows(0, False)
