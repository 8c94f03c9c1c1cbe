"""Vendor-module loading: one module at a time, refused cleanly, never under kvm_lock."""

import errno
import threading

import pytest

from kvmlock import lockdep
from kvmlock.kvm.machine import Machine
from kvmlock.kvm.vendor import VendorModuleError, vendor_exit, vendor_init


def test_second_vendor_module_is_refused_with_eexist_and_changes_nothing():
    m = Machine(2)
    vendor_init(m, "kvm_intel")
    with pytest.raises(VendorModuleError, match="'kvm_intel' is already loaded") as ei:
        vendor_init(m, "kvm_amd")
    assert ei.value.errno == errno.EEXIST
    assert m.vendor == "kvm_intel"


def test_unload_rules_busy_wrong_module_then_reload():
    m = Machine(2)
    vendor_init(m, "kvm_amd")
    vm = m.create_vm()
    with pytest.raises(VendorModuleError) as busy:
        vendor_exit(m, "kvm_amd")
    assert busy.value.errno == errno.EBUSY
    with pytest.raises(VendorModuleError) as wrong:
        vendor_exit(m, "kvm_intel")
    assert wrong.value.errno == errno.ENOENT
    m.destroy_vm(vm)
    vendor_exit(m, "kvm_amd")
    assert m.vendor is None
    vendor_init(m, "kvm_intel")
    assert m.vendor == "kvm_intel"


def test_concurrent_loaders_on_threads_exactly_one_wins():
    for _ in range(20):
        m = Machine(2)
        results = {}

        def load(name, m=m, results=results):
            try:
                vendor_init(m, name)
                results[name] = 0
            except VendorModuleError as exc:
                results[name] = exc.errno

        ts = [threading.Thread(target=load, args=(n,)) for n in ("kvm_intel", "kvm_amd")]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert sorted(results.values()) == [0, errno.EEXIST], results
        assert m.vendor in results and results[m.vendor] == 0
    assert lockdep.reports() == []


def test_init_under_kvm_lock_with_a_hotplug_is_a_circular_dependency():
    m = Machine(2)
    vendor_init(m, "kvm_intel", serialize_with="kvm_lock")
    m.cpu_down(1)  # offline callback: cpu_hotplug_lock(W) -> kvm_lock
    kinds = [r.kind for r in lockdep.reports()]
    assert kinds == ["circular"], kinds
    r = lockdep.reports()[0]
    assert {r.lock, r.held} == {"kvm_lock", "cpu_hotplug_lock"}


def test_near_miss_vendor_module_lock_with_the_same_hotplug_is_silent():
    m = Machine(2)
    vendor_init(m, "kvm_intel")
    m.cpu_down(1)
    vm = m.create_vm()
    m.cpu_up(1)
    m.destroy_vm(vm)
    assert lockdep.reports() == []
    got = {(e.src, e.dst) for e in lockdep.graph().edges}
    assert ("vendor_module_lock", "cpu_hotplug_lock") in got


def test_bad_arguments_are_named():
    m = Machine(2)
    with pytest.raises(ValueError, match="unknown vendor module 'kvm_arm'"):
        vendor_init(m, "kvm_arm")
    with pytest.raises(ValueError, match="serialize_with must be one of"):
        vendor_init(m, "kvm_intel", serialize_with="slots_lock")
    with pytest.raises(TypeError, match="needs a Machine"):
        vendor_init(object(), "kvm_intel")
    assert m.vendor is None
