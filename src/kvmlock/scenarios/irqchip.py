"""KVM_CREATE_IRQCHIP racing itself: ``kvm->lock`` makes the EEXIST check and the creation one
step, so of two creators exactly one builds the PIC and the IOAPIC and the other is refused."""

from __future__ import annotations

from kvmlock.kvm import ioctls
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import scenario

__all__: list[str] = []


@scenario("irqchip.two_creators.correct", variant="correct", expect="pass",
          rule="KVM_CREATE_IRQCHIP tests irqchip_in_kernel() (EEXIST) under kvm->lock",
          invariant="of two concurrent KVM_CREATE_IRQCHIP calls exactly one succeeds and the "
                    "other gets EEXIST; the I/O bus holds one PIC and one IOAPIC",
          catches=("irqchip_eexist_check_unlocked",), max_runs=500)
def two_creators() -> None:
    vm = VM(nr_vcpus=0)
    def create() -> str:
        try:
            ioctls.create_irqchip(vm)
        except ValueError as e:
            assert "EEXIST" in str(e), e
            return "EEXIST"
        return "ok"

    results = together(create, create, names=["KVM_CREATE_IRQCHIP a", "KVM_CREATE_IRQCHIP b"])
    assert sorted(results) == ["EEXIST", "ok"], (
        f"two KVM_CREATE_IRQCHIP calls gave {results}: both passed the EEXIST check")
    devs = ioctls.bus_devices(vm)
    assert devs.count("pic") == 1 and devs.count("ioapic") == 1, (
        f"the I/O bus holds {devs}: the irqchip was created twice")
