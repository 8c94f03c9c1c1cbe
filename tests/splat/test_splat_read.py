"""Reading lockdep reports in every form they are found in, and nothing that only looks like one."""

from __future__ import annotations

import pytest
from splat_helpers import text

from kvmlock.splat import KINDS, decode_usage, decode_wait, read_log
from kvmlock.splat.text import kernel_lines

# fixture -> (kind, task, acquiring, holding (all of them), dependencies)
EXPECTED = {
    "s390_tod_clock.dmesg": ("circular", "qemu-system-s39/14220", "kvm->lock",
                             ["vcpu->mutex", "kvm->srcu"],
                             [("kvm->lock", "vcpu->mutex"), ("vcpu->mutex", "kvm->lock")]),
    "xen_srcu_qp.eml": ("circular", "xen_shinfo_test/2938", "kvm->lock",
                        ["vcpu->mutex", "kvm->srcu"],
                        [("kvm->lock", "kvm->srcu"), ("kvm->srcu", "kvm->lock")]),
    "vendor_module_lock.commit": ("circular", "stable/251833", "kvm_lock", ["cpu_hotplug_lock"],
                                  [("kvm_lock", "cpu_hotplug_lock"),
                                   ("cpu_hotplug_lock", "kvm_lock")]),
    "nx_huge_pages.commit": ("circular", "tee/35048", "kvm->slots_lock", ["kvm_lock"],
                             [("kvm->slots_lock", "kvm->srcu"), ("kvm->srcu", "cpu_hotplug_lock"),
                              ("cpu_hotplug_lock", "kvm_lock"), ("kvm_lock", "kvm->slots_lock")]),
    "sev_recursive.eml": ("recursive", "syz-executor.6/4919", "kvm->lock", ["kvm->lock"],
                          [("kvm->lock", "kvm->lock")]),
    "gpc_bad_unlock.dmesg": ("bad_unlock", "kvm_clock_test/5856", "gpc->refresh_lock",
                             ["vcpu->mutex", "kvm->srcu"], []),
    "gfn_to_memslot_rcu.syzbot": ("suspicious_rcu", "syz.0.17/5871", None, ["kvm->lock"], []),
    "arm64_invalid_wait.dmesg": ("invalid_wait", "qemu-system-aar/3598",
                                 "mmu->fault_ranges_mutex",
                                 ["vcpu->mutex", "kvm->srcu", "kvm->mmu_lock", "rcu_read_lock"],
                                 []),
    "s390_invalid_wait_wrapped.eml": ("invalid_wait", "CPU 0/KVM/4263",
                                      "vcpu->arch.local_int.lock",
                                      ["vcpu->mutex", "kvm->srcu", "kvm->arch.float_int.lock"],
                                      []),
    "pvclock_irq_inversion.syzbot": ("irq_inversion", "syz-executor859/8381",
                                     "kvm->arch.pvclock_gtod_sync_lock", ["rq->lock"],
                                     [("rq->lock", "kvm->arch.pvclock_gtod_sync_lock")]),
    "amd_iommu_hardirq.txt": ("irq_safe_unsafe", "cc1/145047", "dev_data->dte_lock",
                              ["domain->lock"], [("domain->lock", "dev_data->dte_lock")]),
    "padata_inconsistent.eml": ("inconsistent", "syz-executor.0/26715", "padata_works_lock",
                                [], []),
    "cifs_held_at_exit.eml": ("held_at_exit", "fsstress/504233", None,
                              ["sb->s_type->i_mutex_key"], []),
    "pds_vfio_sleeping.dmesg": ("sleeping", "bash/2817", None, [], []),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture_is_read(name: str) -> None:
    kind, task, acquiring, holding, deps = EXPECTED[name]
    [sp] = read_log(text(name))
    assert sp.kind == kind
    assert sp.task == task
    assert (sp.acquiring.name if sp.acquiring else None) == acquiring
    assert [r.name for r in sp.holding] == holding
    assert [(d.src, d.dst) for d in sp.dependencies()] == deps
    assert not sp.problems


def test_every_kind_has_a_fixture() -> None:
    assert {k.id for k in KINDS} == {e[0] for e in EXPECTED.values()}


def test_not_a_report_yields_nothing() -> None:
    """MAX_LOCK_DEPTH output, a bot's list of titles, a subject line: no report at all."""
    assert read_log(text("max_lock_depth.nearmiss")) == []
    assert read_log("lockdep said possible circular locking dependency detected here") == []
    assert read_log("WARNING: possible circular locking dependency detected in kvm_foo\n") == []


def test_bot_subject_lines_are_not_reports() -> None:
    [sp] = read_log(text("gfn_to_memslot_rcu.syzbot"))
    assert sp.details[0].endswith("suspicious rcu_dereference_check() usage!")


def test_sync_link_is_marked() -> None:
    [sp] = read_log(text("xen_srcu_qp.eml"))
    link = {lk.index: lk for lk in sp.chain}
    assert link[1].lock.sync and link[1].where.startswith("kvm_create_vm")
    assert not link[0].lock.sync
    [nx] = read_log(text("nx_huge_pages.commit"))
    assert {lk.index: lk.lock.sync for lk in nx.chain} == {3: False, 2: False, 1: True, 0: False}
    assert {lk.index: lk.lock.read for lk in nx.chain}[2] == 1  # cpus_read_lock


def test_quoted_printable_is_decoded() -> None:
    lines = kernel_lines(text("xen_srcu_qp.eml"))
    assert any("kvm_xen_set_evtchn.part.0+0x6d/0x170" in s for s in lines)
    assert not any("=3D" in s for s in lines)
    # near miss: an equals sign in an ordinary log is left alone
    assert kernel_lines("rcu_scheduler_active = 2, debug_locks = 1") == [
        "rcu_scheduler_active = 2, debug_locks = 1"]


def test_timestamps_caller_ids_and_quoting_do_not_change_the_reading() -> None:
    plain = read_log(text("vendor_module_lock.commit"))[0]
    raw = text("vendor_module_lock.commit").splitlines()
    stamped = "\n".join(f"[  12.{i:06d}][ T7781] {s}" for i, s in enumerate(raw))
    quoted = "\n".join(f"> > {s}" for s in raw)
    syslog = "#012".join(raw)
    syslog = "Dec  1 10:00:00 host kernel: " + syslog
    for form in (stamped, quoted, syslog):
        [sp] = read_log(form)
        assert (sp.kind, sp.task, sp.acquiring.name, sp.held.name) == (
            plain.kind, plain.task, plain.acquiring.name, plain.held.name)
        assert [(d.src, d.dst) for d in sp.dependencies()] == [
            (d.src, d.dst) for d in plain.dependencies()]


def test_one_line_form_from_a_commit_message() -> None:
    flat = " ".join(s.strip() for s in text("s390_tod_clock.dmesg").splitlines()
                    if not s.startswith("#"))
    flat = "The fix is for this: " + " ".join(
        p for p in flat.split(" ") if not p.startswith("[") and not p.endswith("]"))
    [sp] = read_log(flat)
    assert (sp.kind, sp.acquiring.name, sp.held.name) == ("circular", "kvm->lock", "vcpu->mutex")
    assert [(d.src, d.dst) for d in sp.dependencies()] == [
        ("kvm->lock", "vcpu->mutex"), ("vcpu->mutex", "kvm->lock")]


def test_several_reports_in_one_log() -> None:
    log = "\n".join([text("gpc_bad_unlock.dmesg"), "[  130.0] unrelated line",
                     text("s390_tod_clock.dmesg"), text("gfn_to_memslot_rcu.syzbot")])
    assert [sp.kind for sp in read_log(log)] == ["bad_unlock", "circular", "suspicious_rcu"]


def test_a_report_cut_short_says_so() -> None:
    cut = text("xen_srcu_qp.eml").split("-> #0")[0]
    [sp] = read_log(cut)
    assert sp.problems and "incomplete" in sp.problems[0]
    [whole] = read_log(text("xen_srcu_qp.eml"))
    assert whole.problems == []


def test_usage_bits_and_wait_types_are_decoded() -> None:
    assert decode_usage("+.+.") == {"hardirq": "irqs enabled", "hardirq-read": "unused",
                                    "softirq": "irqs enabled", "softirq-read": "unused"}
    assert decode_usage("-.-.")["hardirq"] == "in irq"
    assert decode_usage("+.?.")["softirq"] == "in irq and with irqs enabled"
    assert decode_wait("3:3", four_levels=False) == "inner sleep (mutex, rwsem)"
    assert decode_wait("3:3", four_levels=True).startswith("inner config")
    assert decode_wait("1:2", four_levels=True) == "inner free (RCU), outer spin (raw_spinlock_t)"
    [old] = read_log(text("xen_srcu_qp.eml"))
    [new] = read_log(text("s390_invalid_wait_wrapped.eml"))
    assert not old.four_level_waits and new.four_level_waits


def test_lockdep_names_become_document_classes() -> None:
    from kvmlock.splat.report import lock_class

    assert lock_class("&kvm->lock/1") == "kvm->lock"
    assert lock_class("&(kvm)->mmu_lock") == "kvm->mmu_lock"
    assert lock_class("&(&kvm->mmu_lock)->rlock") == "kvm->mmu_lock"
    assert lock_class("cpu_hotplug_lock.rw_sem") == "cpu_hotplug_lock"
    assert lock_class("cpu_hotplug.lock") == "cpu_hotplug_lock"
    assert lock_class("&mm->mmap_sem#2") == "mm->mmap_sem"
    assert lock_class("&kvm->arch.mmu_lock") == "kvm->mmu_lock"


def test_kvmlock_reads_its_own_lockdep_reports() -> None:
    """kvmlock's lockdep prints the kernel's layout: the same reader gives the same facts."""
    from kvmlock import lockdep, spawn
    from kvmlock.sync import Mutex

    with lockdep.isolated():
        kvm_lock, vcpu_mutex = Mutex("kvm->lock"), Mutex("vcpu->mutex")

        def ioctl() -> None:
            with kvm_lock, vcpu_mutex:
                pass

        def run() -> None:
            with vcpu_mutex, kvm_lock:
                pass

        spawn(ioctl).join()
        spawn(run).join()
        [report] = lockdep.reports()
    [sp] = read_log(str(report))
    assert (sp.kind, sp.acquiring.name, [r.name for r in sp.holding]) == (
        "circular", "kvm->lock", ["vcpu->mutex"])
    assert [(d.src, d.dst) for d in sp.dependencies()] == [
        ("kvm->lock", "vcpu->mutex"), ("vcpu->mutex", "kvm->lock")]


@pytest.mark.parametrize("kind", [k.id for k in KINDS])
def test_each_kind_named_in_passing_is_not_a_report(kind: str) -> None:
    """The kind's own headline is read (each fixture above); its title in prose, in a bot's
    subject or in a list of titles is not."""
    k = next(k for k in KINDS if k.id == kind)
    title = k.title.pattern.split("|")[0].replace("(?:", "").replace(")?", "").replace(")", "")
    title = title.replace("\\", "")
    for line in (f"WARNING: {title} in kvm_vm_ioctl", f"Fixes a {title} seen on s390",
                 f"<3> 335     Yes   {title} in sync_timeline_debug_remove"):
        assert read_log(line + "\n") == [], line


@pytest.mark.parametrize("wrap, copies", [(w, 2 if i == 6 else 1) for i, w in enumerate([
    lambda s: "\n".join(f"[  12.{i:06d}] {x}" for i, x in enumerate(s.splitlines())),  # dmesg
    lambda s: "\n".join(f"[  12.{i:06d}][ T4919] {x}" for i, x in enumerate(s.splitlines())),
    lambda s: "\n".join(f"> {x}" for x in s.splitlines()),  # mail quoting
    lambda s: "Content-Transfer-Encoding: quoted-printable\n\n" + s.replace("=", "=3D"),
    lambda s: " ".join(s.split()),  # flattened into a commit message
    lambda s: ("Hello,\n\nsyzbot found the following issue on:\n\nHEAD commit:    0123456789ab"
               " Merge tag 'kvm-x86'\ngit tree:       upstream\n\n"
               "WARNING: possible circular locking dependency detected in kvm_vm_ioctl\n\n"
               + s + "\n---\nThis report is generated by a bot.\n"),  # a syzbot mail
    lambda s: s + "\n[  130.000000] kvm: vcpu 0 reset\n" + s,  # several in one log
])], ids=["dmesg", "caller-id", "quoted", "quoted-printable", "one-line", "syzbot", "several"])
def test_each_input_form_without_a_report_yields_nothing(wrap, copies: int) -> None:
    """Kernel log noise around lockdep, in every transport: a splat-like log with no report."""
    noise = ("kvm: disabled by bios\n"
             "1 lock held by qemu-kvm/11664:\n"
             " #0: ffff800086de5ba0 (&kvm->lock){+.+.}-{3:3}, at: kvm_vm_ioctl+0x174/0x5b0\n"
             "INFO: lockdep is turned off.\n"
             "rcu_scheduler_active = 2, debug_locks = 1\n")
    assert read_log(wrap(noise)) == []
    # and the same transport around a real report reads it
    report = "\n".join(x for x in text("vendor_module_lock.commit").splitlines()
                       if not x.startswith("#"))
    got = read_log(wrap(report))
    assert len(got) == copies
    for sp in got:
        assert (sp.kind, sp.acquiring.name, sp.held.name) == (
            "circular", "kvm_lock", "cpu_hotplug_lock")
        assert [(d.src, d.dst) for d in sp.dependencies()] == [
            ("kvm_lock", "cpu_hotplug_lock"), ("cpu_hotplug_lock", "kvm_lock")]
        assert not sp.problems


_RCU_BODY = (
    "6.12.0 #3 Not tainted\n"
    "-----------------------------\n"
    "include/linux/kvm_host.h:1062 suspicious rcu_dereference_check() usage!\n"
    "\nother info that might help us debug this:\n\n"
    "1 lock held by qemu/100:\n"
    " #0: ff1100002f4b00b0 (&vcpu->mutex){+.+.}-{3:3}, at: kvm_vcpu_ioctl+0x1d5/0x1590\n"
)


def test_a_bots_title_heads_a_report_only_when_the_kernels_report_follows() -> None:
    title = "WARNING: suspicious RCU usage in kvm_vcpu_gfn_to_memslot\n"
    [sp] = read_log(title + _RCU_BODY)
    assert sp.kind == "suspicious_rcu" and [r.name for r in sp.holding] == ["vcpu->mutex"]
    # near-miss: the same title followed by a bot's prose, not the kernel's report
    assert read_log(title + "syzbot found the following issue on:\n\nHEAD commit: 1234\n") == []


def test_one_line_form_keeps_one_lock_per_held_index() -> None:
    held = ("#0: ffff888071cffc00 (&sb->s_type->i_mutex_key#9){++++}-{4:4}, at: inode_lock "
            "include/linux/fs.h:818 [inline] #0: ffff888071cffc00 (&sb->s_type->i_mutex_key#9)"
            "{++++}-{4:4}, at: afs_write+0x2bb/0x14e0 fs/afs/a.c:388 #1: ffff888071cffd00 "
            "(&vcpu->mutex){+.+.}-{3:3}, at: kvm_vcpu_ioctl+0x1d5/0x1590")
    line = ("WARNING: lock held when returning to user space! 6.13.0 #0 Not tainted "
            "------------------------------------------------ syz/5823 is leaving the kernel "
            f"with locks still held! 2 locks held by syz/5823: {held}\n")
    [sp] = read_log(line)
    assert [(r.name, r.at.split("+")[0]) for r in sp.holding] == [
        ("sb->s_type->i_mutex_key", "afs_write"), ("vcpu->mutex", "kvm_vcpu_ioctl")]
    assert sp.acquiring is None and not sp.problems
