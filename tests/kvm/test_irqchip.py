"""KVM_CREATE_IRQCHIP publishes irqchip_mode last, so the paths that test it without kvm->lock
(KVM_SET_GSI_ROUTING, KVM_IRQ_LINE) find what it stands for."""

import re

import pytest

from kvmlock import explore, lockdep
from kvmlock.kvm import ioctls
from kvmlock.kvm.iobus import Doorbell
from kvmlock.kvm.mutants import applied
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.protected import irqchip_publish


def test_irq_line_and_routing_are_refused_before_the_irqchip_and_then_reach_its_devices():
    # the near miss of both checks: refused calls are no lost interrupt and set no routes
    vm = VM(None, nr_vcpus=0)
    with pytest.raises(ValueError, match="ENXIO"):
        ioctls.irq_line(vm, 1)
    with pytest.raises(ValueError, match="EINVAL"):
        ioctls.set_gsi_routing(vm, ("ioapic",))
    ioctls.create_irqchip(vm)
    assert ioctls.irq_line(vm, 1) == ["pic", "ioapic"]
    ioctls.set_gsi_routing(vm, ("ioapic",))
    assert ioctls.irq_line(vm, 0) == ["ioapic"]
    devs: dict[str, Doorbell] = {d.name: d for d in vm.buses.access_pointer().devs}
    assert devs["pic"].writes == [1] and devs["ioapic"].writes == [1, 0]
    assert lockdep.reports() == []


def _explore(**tasks):
    return explore.check(lambda: irqchip_publish(**tasks), max_runs=2000)


@pytest.mark.parametrize("tasks, message", [
    ({"line": False}, "the defaults replaced the routes KVM_SET_GSI_ROUTING set"),
    ({"routing": False}, "found irqchip_in_kernel.. true but no routing table"),
])
def test_irqchip_mode_set_first_is_caught_by_each_reader(tasks, message):
    ok = _explore(**tasks)
    assert ok.ok and ok.exhausted, ok.headline()
    with applied("irqchip_mode_before_devices"):
        bad = _explore(**tasks)
    assert bad.failure is not None and bad.failure.kind == "assertion", bad.headline()
    assert re.search(message, bad.failure.message), bad.failure.message


def test_irq_line_sees_a_route_to_a_device_that_does_not_exist():
    vm = VM(None, nr_vcpus=0)
    ioctls.create_irqchip(vm)
    ioctls.set_gsi_routing(vm, ("ioapic", "pit"))  # the PIT is not created (KVM_CREATE_PIT2)
    with pytest.raises(AssertionError, match="route to the pit, but no pit exists"):
        ioctls.irq_line(vm, 1)
    ioctls.create_pit(vm)
    assert ioctls.irq_line(vm, 1) == ["ioapic", "pit"]
