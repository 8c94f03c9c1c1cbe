"""The Hyper-V clock notifier rewrites each VM's reference TSC page as the kernel's
__kvm_start_pvclock_update does: tsc_write_lock taken with interrupts off."""

from kvmlock import irq, lockdep, runtime
from kvmlock.kvm.machine import Machine
from kvmlock.sync import peek


def test_hyperv_clock_notifier_rewrites_each_page_with_interrupts_off(monkeypatch):
    m = Machine(1)
    vms = [m.create_vm(name="a"), m.create_vm(name="b")]
    at_rewrite: list[tuple[bool, bool]] = []

    def point(obj, label, write):
        if label == "update reference TSC page":
            at_rewrite.append((irq.irqs_disabled(), obj.tsc_write_lock.locked()))

    monkeypatch.setattr(runtime.RT, "point", point)
    assert m.hyperv_tsc_notifier() == 2
    assert at_rewrite == [(True, True), (True, True)]
    assert not irq.irqs_disabled(), "interrupts back on after the notifier"
    assert [peek(vm, "hv_tsc_page_updates") for vm in vms] == [1, 1]
    assert lockdep.reports() == []
