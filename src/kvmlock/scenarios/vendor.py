"""Vendor-module loading: serialised by ``vendor_module_lock``, never by ``kvm_lock``.

Loading kvm_intel or kvm_amd takes ``cpus_read_lock`` (patching static calls, registering
hotplug state). A CPU going offline runs KVM's callback with the hotplug lock held for write,
and that callback takes ``kvm_lock``. Serialising vendor init with ``kvm_lock`` therefore makes
``kvm_lock -> cpu_hotplug_lock`` in one task and ``cpu_hotplug_lock -> kvm_lock`` in the other:
the circular dependency lockdep reported in the kernel before ``vendor_module_lock`` existed.
With ``vendor_module_lock`` the two loaders still exclude each other, and the second is refused
with EEXIST while the machine stays consistent.
"""

from __future__ import annotations

import errno

from kvmlock.kvm.machine import Machine
from kvmlock.kvm.vendor import VendorModuleError, vendor_init
from kvmlock.scenarios.orders import check_graph, together
from kvmlock.scenarios.registry import scenario

__all__: list[str] = []


def _loader(m: Machine, name: str, results: dict[str, int], how: str) -> None:
    try:
        vendor_init(m, name, serialize_with=how)
        results[name] = 0
    except VendorModuleError as exc:
        results[name] = -exc.errno


@scenario("vendor.second_module_refused.correct", variant="correct", expect="pass",
          rule="vendor_module_lock serialises vendor init; a second vendor module is refused",
          invariant="exactly one module loads, the other gets EEXIST; no lock cycle with "
                    "the hotplug lock, even with a CPU going offline meanwhile",
          catches=("vendor_init_without_lock", "vendor_lock_inside_hotplug"), max_runs=600)
def second_module_refused() -> None:
    m = Machine(2)
    results: dict[str, int] = {}
    together(lambda: _loader(m, "kvm_intel", results, "vendor_module_lock"),
             lambda: _loader(m, "kvm_amd", results, "vendor_module_lock"),
             lambda: m.cpu_down(1),
             names=["modprobe kvm_intel", "modprobe kvm_amd", "cpu hotplug"])
    winners = [n for n, r in results.items() if r == 0]
    assert len(winners) == 1, f"exactly one vendor module must load, got {results}"
    assert m.vendor == winners[0], f"machine says {m.vendor!r} but {winners[0]!r} loaded"
    loser = ({"kvm_intel", "kvm_amd"} - set(winners)).pop()
    assert results[loser] == -errno.EEXIST, f"{loser} must be refused with EEXIST: {results}"
    check_graph()


@scenario("vendor.init_under_kvm_lock.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="vendor init serialised by kvm_lock while a CPU goes offline",
          invariant="lockdep reports kvm_lock -> cpu_hotplug_lock -> kvm_lock", max_runs=200)
def init_under_kvm_lock() -> None:
    m = Machine(2)
    results: dict[str, int] = {}
    together(lambda: _loader(m, "kvm_intel", results, "kvm_lock"), lambda: m.cpu_down(1),
             names=["modprobe kvm_intel", "cpu hotplug"])


@scenario("vendor.init_under_kvm_lock_cpufreq.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="vendor init under kvm_lock while a cpufreq notifier walks vm_list under "
               "cpus_read_lock",
          invariant="lockdep reports kvm_lock -> cpu_hotplug_lock -> kvm_lock (two readers "
                    "of the hotplug lock still deadlock once a writer queues)", max_runs=200)
def init_under_kvm_lock_cpufreq() -> None:
    m = Machine(2)
    results: dict[str, int] = {}
    together(lambda: _loader(m, "kvm_intel", results, "kvm_lock"), m.cpufreq_notifier,
             names=["modprobe kvm_intel", "cpufreq boost"])


@scenario("vendor.init_under_kvm_lock.deadlock", variant="broken", expect="deadlock",
          rule="the same, with lockdep off: the explorer finds the real three-task deadlock "
               "(reader, queued hotplug writer, kvm_lock holder waiting to read)",
          invariant="all tasks blocked: the cycle is not just lockdep's theory",
          lockdep=False, max_runs=5000)
def init_under_kvm_lock_deadlock() -> None:
    m = Machine(2)
    results: dict[str, int] = {}
    together(lambda: _loader(m, "kvm_intel", results, "kvm_lock"), m.cpufreq_notifier,
             lambda: m.cpu_down(1),
             names=["modprobe kvm_intel", "cpufreq boost", "cpu hotplug"])
