"""The platform side: hardware enabling vs CPU hotplug, posted-interrupt wakeups, TSC sync.

* Hardware enabling. The first VM turns virtualization on for every online CPU; a CPU that
  comes online later is enabled by KVM's hotplug callback, one that goes offline is disabled by
  it. Walking the online mask and bumping ``kvm_usage_count`` must be one step against hotplug,
  which is why it runs under ``cpus_read_lock``: without it a CPU can be enabled by the walk
  right after its offline callback ran, and go offline with virtualization still on. A first
  enable that fails removes the callbacks it installed in that same section.
* Posted-interrupt wakeups: a blocking vCPU that found no interrupt pending joins its CPU's
  wakeup list and switches to the wakeup vector; that switch re-checks ON in the value it
  exchanged and sends itself the wakeup vector if set, or an interrupt posted in between is
  never delivered. Back in the guest the vCPU clears ON before it takes the PIR, or a vector
  posted in between is stranded in the PIR with ON clear.
* TSC synchronisation: the read-decide-write of the per-VM TSC generation is one step under
  ``tsc_write_lock``; without it two vCPUs written together end up in one generation with two
  different offsets.
* The Hyper-V reference TSC page after KVM_SET_CLOCK: the vCPU's clock update rewrites it only
  if it is marked changed, so the clock change marks it before raising that update; it tests
  the page and rewrites it in one ``hv_lock`` section, so it never writes an address the guest
  has moved the page away from.
"""

from __future__ import annotations

from kvmlock.kvm.hyperv import HyperV
from kvmlock.kvm.machine import HardwareEnableError, Machine
from kvmlock.kvm.posted_intr import PostedVcpu, post_interrupt
from kvmlock.kvm.tsc import TscSync
from kvmlock.kvm.vcpu import VCPU
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import pair, scenario
from kvmlock.sync import peek

__all__: list[str] = []

_HW_INVARIANT = ("once quiet, a CPU has virtualization on exactly when it is online and a VM "
                 "exists")


# ---------------------------------------------------------------------- hardware enable

def _create_vs_offline(**machine: object) -> None:
    m = Machine(2, **machine)  # type: ignore[arg-type]
    together(m.create_vm, lambda: m.cpu_down(1), names=["KVM_CREATE_VM", "cpu hotplug"])
    m.check_hardware()


@scenario("hardware.enable_vs_hotplug.correct", variant="correct", expect="pass",
          rule="hardware enable/disable runs under cpus_read_lock, racing CPU offline",
          invariant=_HW_INVARIANT, catches=("enable_without_hotplug_lock",), max_runs=2000)
def enable_vs_hotplug_correct() -> None:
    _create_vs_offline()


@scenario("hardware.enable_vs_hotplug.broken", variant="broken", expect="assertion",
          rule="hardware enabled for the first VM without cpus_read_lock, racing CPU offline",
          invariant=_HW_INVARIANT, max_runs=2000)
def enable_vs_hotplug_broken() -> None:
    _create_vs_offline(hazards={"enable_without_hotplug_lock"})


@scenario("hardware.create_destroy_vs_hotplug.correct", variant="correct", expect="pass",
          rule="VM create/destroy racing CPU offline/online (kvm_lock design)",
          invariant=_HW_INVARIANT,
          catches=("enable_without_hotplug_lock", "callback_without_kvm_lock"), max_runs=2000)
def create_destroy_vs_hotplug() -> None:
    m = Machine(2)
    together(lambda: m.destroy_vm(m.create_vm()), lambda: (m.cpu_down(1), m.cpu_up(1)),
             names=["VM lifetime", "cpu hotplug"])
    m.check_hardware()
    assert peek(m, "kvm_usage_count") == 0 and not peek(m, "vm_list"), \
        "the VM's usage count leaked"


@scenario("hardware.usage_lock.correct", variant="correct", expect="pass",
          rule="kvm_usage_lock design: hotplug callbacks installed only while VMs exist",
          invariant=_HW_INVARIANT, catches=("usage_lock_inside_hotplug", "usage_without_lock",
                                                "callbacks_installed_apart"),
          max_runs=2000)
def usage_lock_design() -> None:
    m = Machine(2, usage_lock=True)
    vms: list[VM] = []
    together(lambda: vms.append(m.create_vm()), lambda: (m.cpu_down(1), m.cpu_up(1)),
             names=["KVM_CREATE_VM", "cpu hotplug"])
    m.check_hardware()
    m.destroy_vm(vms[0])
    m.check_hardware()


@scenario("hardware.last_destroy_vs_online.correct", variant="correct", expect="pass",
          rule="kvm_usage_lock design: the last VM disables every CPU and removes the hotplug "
               "callbacks in one cpus_read_lock section, racing a CPU coming online",
          invariant=_HW_INVARIANT,
          catches=("callbacks_removed_apart", "disable_without_hotplug_lock"), max_runs=200)
def last_destroy_vs_online() -> None:
    _last_destroy_vs_online(None)


@scenario("hardware.last_destroy_vs_online.broken", variant="broken", expect="assertion",
          rule="kvm_usage_lock design, but the last VM disables the CPUs and removes the "
               "hotplug callbacks without cpus_read_lock: a CPU coming online reads the "
               "callbacks installed, the walk finds it not yet enabled, and the callback "
               "enables it after the count reached 0",
          invariant=_HW_INVARIANT, max_runs=200)
def last_destroy_vs_online_broken() -> None:
    _last_destroy_vs_online("disable_without_hotplug_lock")


def _last_destroy_vs_online(hazard: str | None) -> None:
    m = Machine(2, usage_lock=True, offline=(1,), hazards={hazard} if hazard else None)
    vm = m.create_vm()
    together(lambda: m.destroy_vm(vm), lambda: m.cpu_up(1),
             names=["last VM destroyed", "cpu online"])
    m.check_hardware()


@pair("hardware.last_destroy_vs_offline",
      rule="kvm_usage_lock design: the last VM removes the hotplug callbacks and disables "
           "every online CPU in one cpus_read_lock section, racing a CPU going offline",
      broken_rule="kvm_usage_lock design, but the CPUs are disabled after cpus_read_unlock: a "
                  "CPU going offline in between has no callback left to disable it, and the "
                  "walk no longer sees it online",
      broken_expect="assertion", invariant=_HW_INVARIANT,
      catches=("cpus_disabled_after_hotplug_unlock",), max_runs=200)
def last_destroy_vs_offline(broken: bool) -> None:
    m = Machine(2, usage_lock=True,
                hazards={"cpus_disabled_after_hotplug_unlock": broken})
    vm = m.create_vm()
    together(lambda: m.destroy_vm(vm), lambda: m.cpu_down(1),
             names=["last VM destroyed", "cpu offline"])
    m.check_hardware()


def _last_destroy_vs_create(usage_lock: bool, hazard: str | None) -> None:
    # VM a is the only VM; it is destroyed while VM b is created and runs a vCPU on each CPU.
    # In the kvm_usage_lock design CPU 1 comes online meanwhile too: whether it is enabled
    # for b depends on the hotplug callbacks b's creation installed.
    m = Machine(2, usage_lock=usage_lock, offline=(1,) if usage_lock else (),
                hazards={hazard} if hazard else None)
    a = m.create_vm(name="a")

    def create_and_run() -> None:
        m.create_vm(name="b")
        for cpu in range(m.nr_cpus):  # KVM_RUN on each CPU (an offline one is skipped)
            m.run_vcpu_on(cpu)

    tasks = [lambda: m.destroy_vm(a), create_and_run]
    names = ["last VM a destroyed", "KVM_CREATE_VM b + KVM_RUN"]
    if usage_lock:
        tasks.append(lambda: m.cpu_up(1))
        names.append("cpu online")
    together(*tasks, names=names)
    assert peek(m, "kvm_usage_count") == 1, "VM b exists: kvm_usage_count must be 1"


@pair("hardware.last_destroy_vs_create.kvm_lock",
      rule="kvm_lock design: the last VM's drop of kvm_usage_count to 0 and its disabling of "
           "every CPU are one kvm_lock section, racing the next VM's creation",
      broken_rule="kvm_lock design, but the last VM disables the CPUs after dropping "
                  "kvm_lock: a VM created in between counts 0 -> 1 and enables them, and the "
                  "late disable turns virtualization off under it",
      broken_expect="assertion", invariant=_HW_INVARIANT,
      catches=("disable_after_kvm_lock_unlock",), max_runs=500)
def last_destroy_vs_create_kvm_lock(broken: bool) -> None:
    _last_destroy_vs_create(False, "disable_after_kvm_lock_unlock" if broken else None)


@pair("hardware.last_destroy_vs_create.usage_lock",
      rule="kvm_usage_lock design: the last VM's drop of kvm_usage_count to 0 and its teardown "
           "(hotplug callbacks removed, every CPU disabled) are one kvm_usage_lock section, "
           "racing the next VM's creation and a CPU coming online",
      broken_rule="kvm_usage_lock design, but the last VM's teardown runs after "
                  "kvm_usage_lock is dropped: a VM created in between installs the callbacks "
                  "and enables the CPUs, and the late teardown removes and disables them under "
                  "it",
      broken_expect="assertion", invariant=_HW_INVARIANT + "; the hotplug callbacks are "
                                                           "installed exactly while a VM exists",
      catches=("teardown_after_usage_unlock",), max_runs=2000)
def last_destroy_vs_create_usage_lock(broken: bool) -> None:
    _last_destroy_vs_create(True, "teardown_after_usage_unlock" if broken else None)


@scenario("hardware.enable_failure.correct", variant="correct", expect="pass",
          rule="a CPU that cannot enable virtualization: VM creation or CPU online fails cleanly",
          invariant="either the VM exists and the bad CPU stayed offline, or creation failed "
                    "and nothing is left enabled",
          catches=("callback_without_kvm_lock", "usage_without_lock"), max_runs=2000)
def enable_failure() -> None:
    m = Machine(2, fail_enable_on=(1,), offline=(1,))
    created: list[object] = []
    onlined: list[bool] = []

    def create() -> None:
        try:
            created.append(m.create_vm())
        except HardwareEnableError:
            pass

    together(create, lambda: onlined.append(m.cpu_up(1)), names=["KVM_CREATE_VM", "cpu online"])
    m.check_hardware()
    if created:
        assert onlined == [False] and not m.cpus[1].online, (
            "a CPU that cannot run VMs came online while a VM exists")
    else:
        assert onlined == [True] and peek(m, "kvm_usage_count") == 0, \
            "failed creation left state behind"


@pair("hardware.enable_failure_two_creators",
      rule="kvm_lock design: the first VM's count, its enabling and the count's rollback when "
           "enabling fails on one CPU are one kvm_lock section, racing a second VM creation",
      broken_rule="kvm_lock design, but the count is rolled back in a second kvm_lock "
                  "section: a VM created in between sees the count non-zero, skips enabling "
                  "and runs with virtualization off",
      broken_expect="assertion", invariant=_HW_INVARIANT,
      catches=("failed_enable_rolled_back_apart",), max_runs=500)
def enable_failure_two_creators(broken: bool) -> None:
    # CPU 1 refuses virtualization, so every creation must fail.
    m = Machine(2, fail_enable_on=(1,), hazards={"failed_enable_rolled_back_apart": broken})
    def create() -> object:
        try:
            return m.create_vm()
        except HardwareEnableError:
            return None

    created = [vm for vm in together(create, create, names=["KVM_CREATE_VM a", "KVM_CREATE_VM b"])
               if vm is not None]
    m.check_hardware()
    assert not created, "a VM was created although CPU 1 cannot enable virtualization"


@pair("hardware.enable_failure_vs_online",
      rule="kvm_usage_lock design: a first enable that fails on one CPU removes the hotplug "
           "callbacks in the cpus_read_lock section that installed them, racing another CPU "
           "coming online",
      broken_rule="kvm_usage_lock design, but the failed enable removes the callbacks after "
                  "cpus_read_unlock: a CPU coming online in between is enabled by them and "
                  "stays enabled once the creation has failed",
      broken_expect="assertion", invariant=_HW_INVARIANT,
      catches=("failed_enable_uninstalls_apart",), max_runs=500)
def enable_failure_vs_online(broken: bool) -> None:
    # CPU 1 refuses virtualization, so the creation fails; CPU 2 comes online meanwhile.
    m = Machine(3, usage_lock=True, fail_enable_on=(1,), offline=(2,),
                hazards={"failed_enable_uninstalls_apart": broken})
    failed: list[bool] = []

    def create() -> None:
        try:
            m.create_vm()
        except HardwareEnableError:
            failed.append(True)

    together(create, lambda: m.cpu_up(2), names=["KVM_CREATE_VM", "cpu online"])
    assert failed, "the creation succeeded although CPU 1 cannot enable virtualization"
    m.check_hardware()


@pair("hardware.online_enable_failure",
      rule="kvm_usage_lock design: a CPU whose virtualization enable fails while a VM exists "
           "is refused by KVM's online callback and stays offline; a vCPU pinned to it runs "
           "elsewhere",
      broken_rule="the online callback ignores the failed enable: the CPU comes online with "
                  "virtualization off and a vCPU enters guest mode there",
      broken_expect="assertion", invariant=_HW_INVARIANT,
      catches=("online_enable_failure_ignored",), max_runs=500)
def online_enable_failure(broken: bool) -> None:
    # A VM exists; CPU 2, which refuses virtualization, comes online while a vCPU is about to
    # enter guest mode on it.
    m = Machine(3, usage_lock=True, fail_enable_on=(2,), offline=(2,),
                hazards={"online_enable_failure_ignored": broken})
    vm = m.create_vm()
    up: list[bool] = []
    together(lambda: up.append(m.cpu_up(2)), lambda: m.run_vcpu_on(2),
             names=["cpu online", "vCPU on cpu2"])
    assert up == [False], "CPU 2 came online although it cannot enable virtualization"
    m.check_hardware()
    m.destroy_vm(vm)
    m.check_hardware()

def _posted(hazard: str | None) -> None:
    m = Machine(2, hazards={hazard} if hazard else None)
    vm = VM(m, nr_vcpus=1)
    pv = PostedVcpu(m, vm.vcpus[0], cpu=1)
    together(pv.block, lambda: post_interrupt(pv, 3), names=["vcpu0 (halt)", "IOMMU"])
    assert pv.delivered == {3}, f"posted vector 3 not delivered: {pv.delivered}"
    assert not peek(m.cpus[1], "wakeup_vcpus_on_cpu"), \
        "the vCPU stayed on the wakeup list after running"


@scenario("posted_intr.wakeup.correct", variant="correct", expect="pass",
          rule="switching to the wakeup vector re-checks ON in the exchanged value (self-IPI)",
          invariant="a posted interrupt always wakes the halted vCPU and is delivered",
          catches=("pi_no_on_recheck", "pi_on_read_apart", "pi_vector_plain_store",
                   "pi_handler_no_wake", "pi_handler_wakes_before_kick", "pi_list_after_vector",
                   "pi_on_before_pir", "pi_on_load_store"),
          max_runs=2000)
def posted_wakeup_correct() -> None:
    _posted(None)


@scenario("posted_intr.wakeup.broken", variant="broken", expect="deadlock",
          rule="switching to the wakeup vector without re-checking ON: an interrupt posted "
               "between the pending check and the switch is never delivered",
          invariant="the interrupt posted in between is never noticed: the vCPU sleeps forever",
          max_runs=2000)
def posted_wakeup_broken() -> None:
    _posted("pi_no_on_recheck")


def _posted_twice(hazard: str | None) -> None:
    """The guest halts until it has both vectors; the IOMMU posts one, then the other, so the
    second can land while the vCPU is taking the first out of the PIR."""
    m = Machine(2, hazards={hazard} if hazard else None)
    vm = VM(m, nr_vcpus=1)
    pv = PostedVcpu(m, vm.vcpus[0], cpu=1)

    def guest() -> None:
        while pv.delivered != {3, 7}:
            pv.block()

    together(guest, lambda: (post_interrupt(pv, 3), post_interrupt(pv, 7)),
             names=["vcpu0 (halt loop)", "IOMMU"])
    assert not peek(m.cpus[1], "wakeup_vcpus_on_cpu"), \
        "the vCPU stayed on the wakeup list after running"


@scenario("posted_intr.sync_pir.correct", variant="correct", expect="pass",
          rule="the vCPU clears ON before it takes the PIR (vmx_sync_pir_to_irr)",
          invariant="an interrupt posted while the vCPU takes the PIR is still noticed: the "
                    "halted vCPU gets both vectors",
          catches=("pi_pir_before_on",), max_runs=2000)
def posted_sync_pir_correct() -> None:
    _posted_twice(None)


@scenario("posted_intr.sync_pir.broken", variant="broken", expect="deadlock",
          rule="the vCPU takes the PIR, then clears ON: a vector posted in between finds ON "
               "set, notifies nobody, and is left in the PIR with ON clear",
          invariant="the stranded vector is never noticed: the vCPU halts for ever (a sleeper "
                    "nobody wakes)",
          max_runs=2000)
def posted_sync_pir_broken() -> None:
    _posted_twice("pi_pir_before_on")


@pair("posted_intr.running_vcpu",
      rule="a running vCPU takes the PIR at VM entry with one atomic exchange, while the "
           "IOMMU posts two vectors",
      broken_rule="the PIR taken with a load and a store of 0: a vector posted between the "
                  "two is erased, and a vCPU that never halts does not hang on it",
      broken_expect="assertion",
      invariant="every vector posted is delivered, or pending in the PIR with ON set",
      catches=("pi_pir_load_store",), max_runs=500)
def posted_running_vcpu(broken: bool) -> None:
    # The body checks nothing itself: the posted-interrupt descriptor's end-of-run check (run
    # on every machine a scenario builds) is what sees a lost vector.
    m = Machine(2, hazards={"pi_pir_load_store": broken})
    vm = VM(m, nr_vcpus=1)
    pv = PostedVcpu(m, vm.vcpus[0], cpu=1)
    together(lambda: (pv.enter_guest(), pv.enter_guest()),
             lambda: (post_interrupt(pv, 3), post_interrupt(pv, 7)),
             names=["vcpu0 (running)", "IOMMU"])


@pair("posted_intr.two_posters",
      rule="two posters (the IOMMU and another vCPU's IPI) set their vectors' PIR bits in one "
           "vCPU's descriptor at once, each with one atomic test-and-set",
      broken_rule="a poster sets its PIR bit with a load and a store: the other poster's bit, "
                  "set in between, is erased",
      broken_expect="assertion",
      invariant="every vector posted is delivered, or pending in the PIR with ON set",
      catches=("pi_pir_set_load_store",), max_runs=500)
def posted_two_posters(broken: bool) -> None:
    # As in posted_intr.running_vcpu, the descriptor's end-of-run check judges the vectors.
    m = Machine(2, hazards={"pi_pir_set_load_store": broken})
    vm = VM(m, nr_vcpus=2)
    pv = PostedVcpu(m, vm.vcpus[0], cpu=1)
    together(pv.enter_guest, lambda: post_interrupt(pv, 3), lambda: post_interrupt(pv, 7),
             names=["vcpu0 (running)", "IOMMU", "vcpu1 (IPI)"])


# ---------------------------------------------------------------------- TSC

def _tsc(locked: bool) -> None:
    vm = VM(None, nr_vcpus=2)
    tsc = TscSync(vm, locked=locked)

    def write(i: int) -> None:
        vcpu = vm.vcpus[i]
        with vcpu.mutex:
            # the same guest TSC, a few microseconds apart: meant to be synchronised
            tsc.write(vcpu, 5_000_000 + 3_000 * i, 5_000_000 + 3_000 * i + 7 * i)

    together(lambda: write(0), lambda: write(1), lambda: tsc.set_clock(9_000, 2_000),
             names=["vcpu0 ioctl", "vcpu1 ioctl", "KVM_SET_CLOCK"])
    tsc.check()
    assert peek(tsc, "kvmclock_offset") == 7_000, "KVM_SET_CLOCK's clock move was lost"


@scenario("tsc.synchronize.correct", variant="correct", expect="pass",
          catches=("tsc_without_lock", "tsc_write_lock_spinlock_t", "tsc_write_lock_mutex"),
          rule="TSC writes are matched into one generation under the raw tsc_write_lock",
          invariant="vCPUs of one TSC generation share one offset", max_runs=500)
def tsc_correct() -> None:
    _tsc(True)


@scenario("kvmclock.set_clock_vs_tsc_page.correct", variant="correct", expect="pass",
          catches=("hv_tsc_page_marked_after_clock_update", "hv_lock_spinlock"),
          rule="a clock change marks the Hyper-V reference TSC page host-changed (under "
               "hv_lock) before the pvclock update whose clock-update requests rewrite it",
          invariant="once vcpu0 has served its clock requests, the guest's reference TSC page "
                    "is current and shows the clock KVM_SET_CLOCK set", max_runs=500)
def set_clock_vs_tsc_page() -> None:
    # Two vCPUs, each entering the guest while KVM_SET_CLOCK runs: either may serve the clock
    # update the change raises (both rewrite the page under hv_lock; the first marks it 'set'),
    # or enter before it and serve nothing. Both have served every earlier request first: a
    # request still pending from before the change could be served between the change's
    # marking and its pvclock update, from the old clock, and mark the page 'set' for good --
    # a window the kernel has too (kvm_start_pvclock_update waits only for vCPUs in guest
    # mode; see docs/kvm.md), outside this rule: userspace normally sets the clock with its
    # vCPUs stopped.
    vm = VM(None, nr_vcpus=2)
    tsc, hv = TscSync(vm), HyperV(vm)
    v0, v1 = vm.vcpus

    def enter_guest(v: VCPU) -> None:  # KVM_RUN: the requests served before the guest runs
        with v.mutex:
            tsc.serve_clock_requests(v, hv)

    with v0.mutex:  # the guest enables its reference TSC page; KVM writes it on entry
        hv.set_msr(v0, "HV_X64_MSR_REFERENCE_TSC", 1)
    enter_guest(v0)
    enter_guest(v1)  # the master-clock update asked vcpu1 for a clock update too
    hv.check_tsc_page(0)
    together(lambda: tsc.set_clock(9_000, 2_000, hv=hv), lambda: enter_guest(v0),
             lambda: enter_guest(v1), names=["KVM_SET_CLOCK", "vcpu0 KVM_RUN", "vcpu1 KVM_RUN"])
    enter_guest(v0)  # the next entries serve whatever is left
    enter_guest(v1)
    hv.check_tsc_page(peek(tsc, "kvmclock_offset"))


@pair("kvmclock.tsc_page_vs_guest_move",
      rule="a vCPU's clock update tests the reference TSC page's status and address and "
           "rewrites it in one hv_lock section, so a guest moving or disabling its page "
           "meanwhile is either seen or waits",
      broken_rule="the status and address tested in one hv_lock section, the page written in "
                  "another: the guest moves or disables its page in between, and KVM writes "
                  "memory the guest gave up",
      broken_expect="assertion", catches=("hv_tsc_page_tested_apart",),
      invariant="KVM writes the reference TSC page only at the address the guest's MSR names "
                "now; once every request is served the page is current", max_runs=500)
def tsc_page_vs_guest_move(broken: bool) -> None:
    vm = VM(None, nr_vcpus=2, hazards={"hv_tsc_page_tested_apart": broken})
    tsc, hv = TscSync(vm), HyperV(vm)
    v0, v1 = vm.vcpus

    def enter_guest(v: VCPU) -> None:  # KVM_RUN: the requests served before the guest runs
        with v.mutex:
            tsc.serve_clock_requests(v, hv)

    def move_page() -> None:  # the guest on vcpu1 moves its page, then disables it (WRMSRs)
        with v1.mutex:
            hv.set_msr(v1, "HV_X64_MSR_REFERENCE_TSC", 3)
        with v1.mutex:
            hv.set_msr(v1, "HV_X64_MSR_REFERENCE_TSC", 0)

    with v0.mutex:  # the guest enables its reference TSC page; KVM writes it on entry
        hv.set_msr(v0, "HV_X64_MSR_REFERENCE_TSC", 1)
    together(lambda: enter_guest(v0), move_page, names=["vcpu0 KVM_RUN", "vcpu1 WRMSRs"])
    for v in (v1, v0, v1):  # the next entries serve whatever is left
        enter_guest(v)
    hv.check_tsc_page(peek(tsc, "kvmclock_offset"))


@pair("kvmclock.set_clock_vs_tsc_page_disable",
      rule="a clock change tests the reference TSC page's status and marks it host-changed "
           "in one hv_lock section, so a guest disabling its page meanwhile is either seen "
           "or undoes the mark",
      broken_rule="the status tested in one hv_lock section, the page marked host-changed in "
                  "another: the guest disables its page in between, and the next clock update "
                  "writes memory the guest gave up",
      broken_expect="assertion", catches=("hv_tsc_page_marked_apart",),
      invariant="KVM writes the reference TSC page only at the address the guest's MSR names "
                "now; once every request is served the page is current", max_runs=500)
def set_clock_vs_tsc_page_disable(broken: bool) -> None:
    vm = VM(None, nr_vcpus=1, hazards={"hv_tsc_page_marked_apart": broken})
    tsc, hv = TscSync(vm), HyperV(vm)
    (v0,) = vm.vcpus

    def enter_guest() -> None:  # KVM_RUN: the requests served before the guest runs
        with v0.mutex:
            tsc.serve_clock_requests(v0, hv)

    def disable_page() -> None:  # the guest turns its reference TSC page off (a WRMSR)
        with v0.mutex:
            hv.set_msr(v0, "HV_X64_MSR_REFERENCE_TSC", 0)

    with v0.mutex:  # the guest enables its reference TSC page; KVM writes it on entry
        hv.set_msr(v0, "HV_X64_MSR_REFERENCE_TSC", 1)
    enter_guest()
    together(lambda: tsc.set_clock(9_000, 2_000, hv=hv), disable_page,
             names=["KVM_SET_CLOCK", "vcpu0 WRMSR"])
    enter_guest()  # the next entry serves whatever is left
    hv.check_tsc_page(peek(tsc, "kvmclock_offset"))


@pair("kvmclock.set_clock_vs_pending_update",
      rule="a vCPU consumes its KVM_REQ_CLOCK_UPDATE before reading the clock, so a clock "
           "change made while it serves an older request leaves a new one behind",
      broken_rule="KVM_REQ_CLOCK_UPDATE cleared after the clock update was served: a request "
                  "KVM_SET_CLOCK raised meanwhile is erased with it",
      broken_expect="assertion", catches=("clock_request_cleared_after_service",
                                                      "clock_request_before_update"),
      invariant="once vcpu0 has served its clock requests, its pvclock page shows the clock "
                "the last KVM_SET_CLOCK set", max_runs=500)
def set_clock_vs_pending_update(broken: bool) -> None:
    vm = VM(None, nr_vcpus=1, hazards={"clock_request_cleared_after_service": broken})
    tsc = TscSync(vm)
    (v0,) = vm.vcpus

    def enter_guest() -> None:  # KVM_RUN: the requests served before the guest runs
        with v0.mutex:
            tsc.serve_clock_requests(v0)

    tsc.set_clock(5_000, 1_000)  # an earlier change: vcpu0 has not entered since
    together(lambda: tsc.set_clock(9_000, 2_000), enter_guest,
             names=["KVM_SET_CLOCK", "vcpu0 KVM_RUN"])
    enter_guest()  # the next entry serves whatever is left
    tsc.check_pvclocks()


@pair("kvmclock.set_clock_vs_masterclock",
      rule="every pvclock update raises KVM_REQ_CLOCK_UPDATE with an atomic bit operation, so "
           "two updates at once (KVM_SET_CLOCK, and vcpu1 serving a master-clock update) and "
           "vcpu0 consuming its request between them leave the last update's request behind",
      broken_rule="the request bit set with a load and a store: vcpu0 consumes the first "
                  "update's request, the second update sets vcpu0's bit, and the first "
                  "update's store for vcpu1 writes back the word it loaded before that",
      broken_expect="assertion", catches=("clock_request_load_store",),
      invariant="once every vCPU has served its clock requests, each one's pvclock page "
                "shows the clock the last pvclock update left", max_runs=3000)
def set_clock_vs_masterclock(broken: bool) -> None:
    vm = VM(None, nr_vcpus=2, hazards={"clock_request_load_store": broken})
    tsc = TscSync(vm)
    v0, v1 = vm.vcpus

    def enter_guest(v: VCPU, masterclock: bool = False) -> None:  # KVM_RUN's requests
        with v.mutex:
            if masterclock:  # KVM_REQ_MASTERCLOCK_UPDATE, raised earlier on this vCPU
                tsc.update_masterclock()
            tsc.serve_clock_requests(v)

    together(lambda: tsc.set_clock(9_000, 2_000), lambda: enter_guest(v0),
             lambda: enter_guest(v1, masterclock=True),
             names=["KVM_SET_CLOCK", "vcpu0 KVM_RUN", "vcpu1 KVM_RUN"])
    enter_guest(v0)  # the next entries serve whatever is left
    enter_guest(v1)
    tsc.check_pvclocks()


def _hyperv_notifier_vs_destroy(hazard: str | None) -> None:
    # The host's TSC page changed while a VM is being destroyed: the notifier must rewrite the
    # VM's reference TSC page either before kvm_destroy_vm unpublishes it or not at all.
    m = Machine(1, hazards={hazard} if hazard else None)
    a, b = m.create_vm(name="a"), m.create_vm(name="b")
    told: list[int] = []
    together(lambda: told.append(m.hyperv_tsc_notifier()), lambda: m.destroy_vm(a),
             names=["hyperv clock notifier", "VM a destroyed"])
    assert told[0] in (1, 2) and peek(b, "hv_tsc_page_updates") == 1, (
        f"the notifier told {told[0]} VM(s) and rewrote VM b's page "
        f"{peek(b, 'hv_tsc_page_updates')} time(s): every live VM is rewritten once")


@scenario("kvmclock.hyperv_notifier_vs_destroy.correct", variant="correct", expect="pass",
          rule="the Hyper-V clock notifier walks vm_list under kvm_lock, so a VM it rewrites "
               "cannot be freed under it",
          invariant="no VM's reference TSC page is rewritten after the VM was freed",
          catches=("hv_tsc_notifier_walks_unlocked",), max_runs=500)
def hyperv_notifier_vs_destroy() -> None:
    _hyperv_notifier_vs_destroy(None)


@scenario("kvmclock.hyperv_notifier_vs_destroy.broken", variant="broken", expect="assertion",
          rule="the Hyper-V clock notifier copies vm_list under kvm_lock and rewrites the "
               "pages after dropping it, with no reference: a VM destroyed in between is "
               "freed while the notifier still uses it",
          invariant="no VM's reference TSC page is rewritten after the VM was freed",
          max_runs=500)
def hyperv_notifier_vs_destroy_broken() -> None:
    _hyperv_notifier_vs_destroy("hv_tsc_notifier_walks_unlocked")


@scenario("tsc.synchronize.broken", variant="broken", expect="lockdep",
          lockdep_kind="unguarded", rule="TSC writes matched without tsc_write_lock",
          invariant="vCPUs of one TSC generation share one offset", max_runs=500)
def tsc_broken() -> None:
    _tsc(False)


@scenario("hardware.many_vms_two_hotplugs.correct", variant="correct", expect="pass",
          rule="two VM lifetimes racing two CPUs going offline and back (kvm_lock design)",
          invariant=_HW_INVARIANT + "; the usage count returns to zero",
          catches=("callback_without_kvm_lock", "usage_without_lock"),
          preemption_bound=2, max_runs=10000)
def many_vms_two_hotplugs() -> None:
    m = Machine(3)
    together(lambda: m.destroy_vm(m.create_vm(name="a")),
             lambda: m.destroy_vm(m.create_vm(name="b")),
             lambda: (m.cpu_down(1), m.cpu_up(1)),
             lambda: (m.cpu_down(2), m.cpu_up(2)),
             names=["VM a", "VM b", "hotplug cpu1", "hotplug cpu2"])
    m.check_hardware()
    assert peek(m, "kvm_usage_count") == 0 and not peek(m, "vm_list"), \
        "a VM's usage count leaked"


@scenario("posted_intr.two_vcpus_one_cpu.correct", variant="correct", expect="pass",
          rule="two vCPUs halted on one CPU's wakeup list; interrupts posted to both",
          invariant="each halted vCPU is woken and gets exactly its own vector",
          catches=("pi_list_without_lock", "pi_handler_without_lock"),
          max_runs=3000)
def posted_two_vcpus() -> None:
    m = Machine(2)
    vm = VM(m, nr_vcpus=2)
    a, b = (PostedVcpu(m, v, cpu=1) for v in vm.vcpus)
    together(a.block, b.block, lambda: (post_interrupt(a, 3), post_interrupt(b, 7)),
             names=["vcpu0 (halt)", "vcpu1 (halt)", "IOMMU"])
    assert a.delivered == {3} and b.delivered == {7}, (a.delivered, b.delivered)
    assert not peek(m.cpus[1], "wakeup_vcpus_on_cpu")


@scenario("hardware.usage_lock.broken", variant="broken", expect="assertion",
          rule="kvm_usage_lock design, but callbacks installed and CPUs enabled without "
               "cpus_read_lock, racing CPU offline",
          invariant=_HW_INVARIANT, max_runs=2000)
def usage_lock_design_broken() -> None:
    _create_vs_offline(usage_lock=True, hazards={"enable_without_hotplug_lock"})


def _two_creators(usage_lock: bool) -> None:
    m = Machine(2, usage_lock=usage_lock)
    def create_and_run(name: str) -> VM:
        vm = m.create_vm(name=name)
        m.run_vcpu_on(0)  # KVM_RUN right after KVM_CREATE_VM returned
        return vm

    vms = together(lambda: create_and_run("a"), lambda: create_and_run("b"),
                   lambda: m.cpu_down(1),
                   names=["KVM_CREATE_VM a", "KVM_CREATE_VM b", "cpu offline"])
    m.check_hardware()
    assert peek(m, "kvm_usage_count") == 2, (
        f"two VMs exist but kvm_usage_count is {peek(m, 'kvm_usage_count')}: an update was lost")
    m.destroy_vm(vms[0])
    m.check_hardware()  # the other VM still needs virtualization on
    m.destroy_vm(vms[1])
    m.check_hardware()


_TWO = dict(variant="correct", expect="pass",
            invariant=_HW_INVARIANT + "; kvm_usage_count counts every VM (no lost update)",
            preemption_bound=2, max_runs=20000)


@scenario("hardware.two_creators.usage_lock.correct",
          rule="two VM creators under kvm_usage_lock, racing a CPU going offline",
          catches=("enable_after_usage_unlock", "usage_without_lock",
                   "enable_without_hotplug_lock", "vm_list_without_kvm_lock"), **_TWO)
def two_creators_usage_lock() -> None:
    _two_creators(True)


@scenario("hardware.two_creators.kvm_lock.correct",
          rule="two VM creators under cpus_read_lock + kvm_lock, racing a CPU going offline",
          catches=("usage_without_lock", "callback_without_kvm_lock",
                   "enable_without_hotplug_lock"), **_TWO)
def two_creators_kvm_lock() -> None:
    _two_creators(False)
