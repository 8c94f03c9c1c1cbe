"""The machine's global side on real threads: usage count, hardware enabling, CPU hotplug."""

import sys
import threading

import pytest

from kvmlock import explore, lockdep
from kvmlock.explore.runtime import SimWaitQueue
from kvmlock.kvm.machine import HardwareEnableError, Machine, checked_at_end
from kvmlock.scenarios import verify
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.sync import peek
from kvmlock.sync._rw import ReadWriteLock


def edges() -> set[tuple[str, str]]:
    return {(e.src, e.dst) for e in lockdep.graph().edges}


@pytest.mark.parametrize("usage_lock", [False, True])
def test_first_vm_enables_every_online_cpu_and_last_disables(usage_lock):
    m = Machine(3, usage_lock=usage_lock, offline=(2,))
    a = m.create_vm(name="a")
    b = m.create_vm(name="b")
    assert [pc.hardware_enabled for pc in m.cpus] == [True, True, False]
    assert peek(m, "kvm_usage_count") == 2 and peek(m, "vm_list") == [a, b]
    m.destroy_vm(a)
    assert m.cpus[0].hardware_enabled, "one VM left: hardware must stay on"
    m.destroy_vm(b)
    assert [pc.hardware_enabled for pc in m.cpus] == [False, False, False]
    m.check_hardware()
    assert lockdep.reports() == []


@pytest.mark.parametrize("usage_lock", [False, True])
def test_hotplug_callbacks_follow_the_usage_count(usage_lock):
    m = Machine(2, usage_lock=usage_lock)
    m.cpu_down(1)
    m.cpu_up(1)
    assert not m.cpus[1].hardware_enabled, "no VM: onlining must not enable"
    vm = m.create_vm()
    m.cpu_down(1)
    assert not m.cpus[1].hardware_enabled and not m.cpus[1].online
    m.check_hardware()
    assert m.cpu_up(1) is True
    assert m.cpus[1].hardware_enabled
    m.check_hardware()
    m.destroy_vm(vm)
    m.check_hardware()
    assert lockdep.reports() == []


def test_old_design_orders_hotplug_outside_kvm_lock():
    m = Machine(2)
    vm = m.create_vm()
    m.cpu_down(1)
    m.destroy_vm(vm)
    got = edges()
    assert ("cpu_hotplug_lock", "kvm_lock") in got
    assert ("kvm_lock", "cpu_hotplug_lock") not in got


def test_usage_lock_design_orders_usage_lock_outside_hotplug_and_callbacks_take_no_kvm_lock():
    m = Machine(2, usage_lock=True)
    vm = m.create_vm()
    m.cpu_down(1)
    m.cpu_up(1)
    m.destroy_vm(vm)
    got = edges()
    assert ("kvm_usage_lock", "cpu_hotplug_lock") in got
    assert not any(src == "cpu_hotplug_lock" for src, _ in got), got


@pytest.mark.parametrize("usage_lock", [False, True])
def test_enable_failure_rolls_back_and_blocks_onlining_a_bad_cpu(usage_lock):
    m = Machine(2, fail_enable_on=(1,), usage_lock=usage_lock)
    with pytest.raises(HardwareEnableError, match=r"CPU\(s\) \[1\]"):
        m.create_vm()
    assert peek(m, "kvm_usage_count") == 0 and peek(m, "vm_list") == []
    m.check_hardware()

    assert m.hotplug_callbacks_installed is (not usage_lock)

    m2 = Machine(2, fail_enable_on=(1,), offline=(1,), usage_lock=usage_lock)
    vm = m2.create_vm()
    assert m2.cpu_up(1) is False, "a CPU that cannot run the VM must not come online"
    assert not m2.cpus[1].online
    m2.check_hardware()
    m2.destroy_vm(vm)
    assert m2.cpu_up(1) is True, "without VMs the CPU may come online"


def test_check_hardware_catches_an_offline_cpu_left_enabled_but_not_a_consistent_state():
    m = Machine(2)
    vm = m.create_vm()
    m.check_hardware()  # near miss: consistent, silent
    m.cpu_down(1)
    m.cpus[1].hardware_enabled = True  # what the unguarded enable race produces
    with pytest.raises(AssertionError, match="cpu1: online=False enabled=True"):
        m.check_hardware()
    m.cpus[1].hardware_enabled = False
    m.destroy_vm(vm)
    m.cpus[0].hardware_enabled = True  # enabled with no VM
    with pytest.raises(AssertionError, match="kvm_usage_count=0"):
        m.check_hardware()


def test_threads_creating_vms_while_a_cpu_toggles_keep_the_invariant():
    m = Machine(3)
    stop = threading.Event()

    def hotplug():
        while not stop.is_set():
            m.cpu_down(2)
            m.cpu_up(2)

    def vms():
        for _ in range(150):
            m.destroy_vm(m.create_vm())

    t = threading.Thread(target=hotplug)
    t.start()
    workers = [threading.Thread(target=vms) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    t.join()
    m.check_hardware()
    assert peek(m, "kvm_usage_count") == 0
    assert lockdep.reports() == []


def test_cpufreq_notifier_walks_vm_list_inside_the_hotplug_lock():
    m = Machine(2)
    m.create_vm()
    assert m.cpufreq_notifier() == 1
    assert ("cpu_hotplug_lock", "kvm_lock") in edges()


@pytest.mark.parametrize("kwargs, match", [
    ({"nr_cpus": 0}, "nr_cpus must be an integer in 1..64"),
    ({"nr_cpus": "2"}, "nr_cpus must be an integer"),
    ({"nr_cpus": 2, "offline": (5,)}, r"offline names CPUs that do not exist: \[5\]"),
    ({"nr_cpus": 2, "offline": (0,)}, "boot CPU"),
    ({"nr_cpus": 2, "fail_enable_on": (-1,)}, "fail_enable_on names CPUs"),
])
def test_bad_machine_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Machine(**kwargs)


def test_a_single_cpu_number_instead_of_a_collection_is_a_type_error():
    with pytest.raises(TypeError, match="offline must be a collection of CPU numbers, got 1"):
        Machine(2, offline=1)


def test_bad_operations_are_named():
    m = Machine(2)
    with pytest.raises(ValueError, match="no CPU 7"):
        m.cpu_up(7)
    with pytest.raises(ValueError, match="boot CPU"):
        m.cpu_down(0)
    with pytest.raises(RuntimeError, match="without a matching hardware_enable_all"):
        m.hardware_disable_all()
    vm = m.create_vm()
    m.destroy_vm(vm)
    with pytest.raises(ValueError, match="not on this machine's vm_list"):
        m.destroy_vm(vm)


def test_nx_huge_pages_walk_keeps_kvm_lock_a_leaf_unless_told_otherwise():
    m = Machine(2)
    m.create_vm(name="a")
    m.create_vm(name="b")
    assert m.update_nx_huge_pages() == 2
    assert ("kvm_lock", "kvm->slots_lock") not in edges()
    m = Machine(2, hazards={"nx_walk_holds_kvm_lock"})
    m.create_vm(name="a")
    m.create_vm(name="b")
    assert m.update_nx_huge_pages() == 2
    assert ("kvm_lock", "kvm->slots_lock") in edges()
    assert lockdep.reports() == []  # one path alone is no cycle: the scenario needs all four


def test_static_key_update_takes_the_hotplug_lock_for_read():
    m = Machine(1)
    vm = m.create_vm()
    with vm.srcu.read():
        m.static_key_update()
    assert ("kvm->srcu", "cpu_hotplug_lock") in edges()


def test_a_destroyed_vm_is_freed_and_the_hyperv_notifier_only_reaches_live_ones():
    from kvmlock.kvm.mutants import applied
    from kvmlock.scenarios import verify
    from kvmlock.scenarios.registry import SCENARIOS

    m = Machine(1)
    a, b = m.create_vm(name="a"), m.create_vm(name="b")
    m.destroy_vm(a)
    assert a.freed and not b.freed
    assert m.hyperv_tsc_notifier() == 1
    assert peek(a, "hv_tsc_page_updates") == 0 and peek(b, "hv_tsc_page_updates") == 1
    with pytest.raises(AssertionError, match="which kvm_destroy_vm has freed"):
        m._rewrite_tsc_page(a)
    # the walk under kvm_lock never meets a freed VM; the walk of a copy without it does
    sc = SCENARIOS["kvmclock.hyperv_notifier_vs_destroy.correct"]
    assert verify.run_scenario(sc).met
    with applied("hv_tsc_notifier_walks_unlocked"):
        out = verify.run_scenario(sc)
    assert out.failure is not None and "which kvm_destroy_vm has freed" in str(
        out.failure.message)


def test_the_last_vm_disables_in_one_hotplug_section_with_a_cpu_coming_online():
    from kvmlock.kvm.mutants import applied
    from kvmlock.scenarios import verify
    from kvmlock.scenarios.registry import SCENARIOS

    sc = SCENARIOS["hardware.last_destroy_vs_online.correct"]
    assert verify.run_scenario(sc).met
    with applied("disable_without_hotplug_lock"):
        out = verify.run_scenario(sc)
    # the online callback read the callbacks installed, the disabling walk found the CPU not
    # yet enabled, and the callback enabled it after the count had reached 0
    assert out.failure is not None and out.failure.kind == "assertion"
    assert "kvm_usage_count=0: cpu1: online=True enabled=True" in str(out.failure.message)
    assert verify.run_scenario(SCENARIOS["hardware.last_destroy_vs_online.broken"]).met


def _last_destroy_vs_create(usage_lock, hazards=None):
    """A body that checks nothing itself: only the end-of-body check can judge it."""
    m = Machine(2, usage_lock=usage_lock, hazards=hazards)
    a = m.create_vm(name="a")
    together(lambda: m.destroy_vm(a), lambda: m.create_vm(name="b"),
             names=["last VM destroyed", "KVM_CREATE_VM"])


@pytest.mark.parametrize(("usage_lock", "mutant", "lock"), [
    (False, "disable_after_kvm_lock_unlock", "kvm_lock"),
    (True, "teardown_after_usage_unlock", "kvm_usage_lock")])
def test_the_end_of_a_body_sees_a_late_teardown_undo_the_next_vms_enable(usage_lock, mutant,
                                                                          lock):
    res = explore.check(checked_at_end(lambda: _last_destroy_vs_create(usage_lock)),
                        max_runs=500)
    assert res.ok and res.exhausted, res.failure  # near miss: the teardown under the lock
    res = explore.check(checked_at_end(lambda: _last_destroy_vs_create(usage_lock, {mutant})),
                        max_runs=500)
    assert not res.ok and res.failure.kind == "assertion"
    msg = res.failure.message
    assert "A VM exists but an online CPU has virtualization off" in msg, msg
    assert "teardown ran after a new VM had counted itself" in msg, msg
    assert f"must be one {lock} section" in msg, msg


def test_check_hardware_sees_the_hotplug_callbacks_disagree_with_the_count():
    m = Machine(2, usage_lock=True)
    vm = m.create_vm()
    m.check_hardware()  # near miss: callbacks installed while the VM exists
    m.hotplug_callbacks_installed = False  # what a late teardown of the previous VM leaves
    with pytest.raises(AssertionError, match="hotplug callbacks are not installed"):
        m.check_hardware()
    m.hotplug_callbacks_installed = True
    m.destroy_vm(vm)
    m.check_hardware()  # near miss: removed with the last VM
    m.hotplug_callbacks_installed = True
    with pytest.raises(AssertionError, match="callbacks are still installed"):
        m.check_hardware()


def test_a_cpu_coming_online_checks_the_whole_state_under_kvm_lock():
    m = Machine(3)
    m.create_vm()
    m.cpu_down(1)
    assert m.cpu_up(1) is True  # near miss: every online CPU enabled, nothing raised
    m.cpu_down(1)
    m.cpus[2].hardware_enabled = False  # a disable that ran after the count went back up
    with pytest.raises(AssertionError, match="as cpu1 came online, .* kvm_usage_count=1: "
                                             "cpu2: online=True enabled=False"):
        m.cpu_up(1)


def test_an_async_body_is_run_and_its_machines_checked_once_it_has_finished():
    ran = []

    async def body():
        m = Machine(2)
        m.create_vm()
        ran.append(m)

    async def broken():
        await body()
        ran[-1].cpus[1].hardware_enabled = False  # a VM exists, cpu1 turned off under it

    res = explore.check(checked_at_end(body), max_runs=5)
    assert res.ok and ran, res.failure  # near miss: the body ran, its machine is consistent
    res = explore.check(checked_at_end(broken), max_runs=5)
    assert not res.ok and res.failure.kind == "assertion"
    assert "cpu1: online=True enabled=False" in res.failure.message, res.failure.message


def test_a_hotplug_writer_waits_for_a_reader_whose_up_read_must_wake_it(monkeypatch):
    """CPU offline's cpus_write_lock waits for VM creation's cpus_read_lock section: the last
    up_read must wake it. With up_read of a sleeping lock waking nobody, the writer would sleep
    for ever, and the correct scenario fails as a lost wake-up."""
    sc = SCENARIOS["hardware.enable_vs_hotplug.correct"]
    assert verify.run_scenario(sc).met
    notify, up = SimWaitQueue.notify_all, ReadWriteLock.read_unlock.__code__

    def notify_all(wq: SimWaitQueue) -> None:
        if not (sys._getframe(1).f_code is up and wq.owner.SLEEPS):
            notify(wq)

    monkeypatch.setattr(SimWaitQueue, "notify_all", notify_all)
    out = verify.run_scenario(sc)
    assert out.failure is not None and out.failure.kind == "deadlock", out.failure
    msg = out.failure.message
    assert "(cpu hotplug) went on from a sleeping wait" in msg and "lost wake-up" in msg
    assert "sleeps in: down_write:wait cpu_hotplug_lock" in msg
