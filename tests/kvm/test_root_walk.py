"""Walks of tdp_mmu_roots under the RCU read side: the reference a walk takes (not from zero),
the put that may be the last, and the grace period before a root whose last reference was put
is freed -- each with the broken variant seen failing and a near miss seen passing."""

import pytest

from kvmlock import explore
from kvmlock.kvm.guest import guest_write
from kvmlock.kvm.mmu.tdp_mmu import _unlist_root, put_root, walk_roots, zap_all_fast
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.fast_zap import root_put_vs_zap_walk


def fast_zapped_vm(**kw):
    """One vCPU left holding the invalidated root 0 alone, after a fast zap."""
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    guest_write(vm.vcpus[0], 0, 5)
    old = vm.mmu.root
    with vm.slots_lock:
        zap_all_fast(vm)
    assert old.invalid and old.refcount == 1 and old in vm.mmu.roots
    return vm, old


def walk(vm, only_valid=False):
    freed = []
    with vm.mmu_lock.read():
        seen = [(r, r.refcount) for r in walk_roots(vm, freed, only_valid)]
    return seen, freed


def test_the_walk_holds_a_reference_to_each_root_and_puts_it_after():
    vm, old = fast_zapped_vm()
    seen, freed = walk(vm)
    assert seen == [(old, 2)], "the vCPU's reference and the walk's"
    assert freed == [] and old.refcount == 1
    assert walk(vm, only_valid=True) == ([], []), "only_valid skips the invalid root"


def test_the_walk_skips_a_root_whose_count_reached_zero():
    """Near miss of inc-not-zero: a root between its last put and its list_del_rcu is still
    listed; the walk takes no reference to it."""
    vm, old = fast_zapped_vm()
    old.refcount = 0  # the vCPU's put has dropped the count, the list_del is yet to come
    assert walk(vm) == ([], [])
    assert old.refcount == 0


def test_a_reference_taken_from_zero_is_seen_failing():
    vm, old = fast_zapped_vm(hazards={"root_get_not_inc_not_zero": True})
    old.refcount = 0  # as above: the vCPU's last put done, its list_del to come
    seen, freed = walk(vm)
    assert seen == [(old, 1)] and freed == [old], "the walk's put was a second last put"
    with pytest.raises(AssertionError, match="taken off tdp_mmu_roots twice"):
        with vm.mmu_lock.read():
            _unlist_root(vm, old)  # the vCPU's list_del_rcu


def test_the_walks_put_may_be_the_last():
    vm, old = fast_zapped_vm()
    v0 = vm.vcpus[0]
    freed = []
    with vm.mmu_lock.read():
        for root in walk_roots(vm, freed):
            assert put_root(vm, root) is False  # the vCPU puts while the walk holds it
            v0.root = None
    assert freed == [old] and old not in vm.mmu.roots and not old.freed, (
        "the walk put the last reference: the root left the list, its free is the caller's")


@pytest.mark.parametrize("shared", [True, False])
def test_a_root_put_beside_a_walk_of_the_list_is_freed_safely(shared):
    res = explore.check(lambda: root_put_vs_zap_walk(shared=shared), max_runs=5000)
    assert res.ok and res.exhausted, res.failure


def test_a_root_freed_at_once_is_read_by_the_walk():
    res = explore.check(lambda: root_put_vs_zap_walk({"root_freed_at_once": True}),
                        max_runs=5000)
    assert not res.ok and res.failure.kind == "assertion"
    assert "a walk of tdp_mmu_roots used TDP root 0 after it was freed" in res.failure.message


def test_a_root_freed_at_once_is_harmless_to_a_walk_under_write_mode():
    """Near miss: a walk that holds mmu_lock for write runs beside no put, so no root it
    reaches can be on its way out -- the broken free finds no reader to hurt."""
    res = explore.check(lambda: root_put_vs_zap_walk({"root_freed_at_once": True},
                                                     shared=False), max_runs=5000)
    assert res.ok and res.exhausted, res.failure


def test_a_reference_taken_from_zero_is_caught_in_the_race():
    res = explore.check(lambda: root_put_vs_zap_walk({"root_get_not_inc_not_zero": True}),
                        max_runs=5000)
    assert not res.ok and res.failure.kind == "assertion"
    assert ("after it was freed" in res.failure.message
            or "taken off tdp_mmu_roots twice" in res.failure.message)
