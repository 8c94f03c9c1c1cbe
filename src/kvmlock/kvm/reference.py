"""The model's own declaration of every lock it uses: the source of the Reference section.

Each :class:`LockDecl` says what a lock is (its type, in the spelling locking.rst's Reference
uses), on which architectures it exists, what it protects, and a note on why it is the kind of
lock it is. ``kvmlock spec render`` writes the document's Reference section from :data:`LOCKS`,
and tests check that every lock the model really builds is declared here with the right kind --
so the reference cannot drift from the code.

Names are the canonical lockdep class names the model uses; :data:`KIND_OF_TYPE` maps each
declared type onto the lockdep kind of the primitive implementing it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KIND_OF_TYPE", "LOCKS", "LockDecl", "by_name"]

#: locking.rst type spelling -> the kind string lockdep records for our primitive.
KIND_OF_TYPE: dict[str, str] = {
    "mutex": "mutex",
    "spinlock_t": "spinlock",
    "raw_spinlock_t": "raw_spinlock",
    "rwlock_t": "rwlock",
    "srcu_struct": "srcu",
    "rw_semaphore": "rwsem",
    "percpu_rw_semaphore": "percpu_rwsem",
}


@dataclass(frozen=True)
class LockDecl:
    name: str
    type: str
    arch: str
    protects: tuple[str, ...]
    comment: str = ""

    def __post_init__(self) -> None:
        if self.type not in KIND_OF_TYPE:
            raise ValueError(f"lock {self.name!r}: type {self.type!r} is not one of "
                             f"{sorted(KIND_OF_TYPE)}")
        if not isinstance(self.protects, tuple):
            raise TypeError(f"lock {self.name!r}: protects must be a tuple of strings")

    @property
    def kind(self) -> str:
        """The lockdep kind the model's primitive for this lock reports."""
        return KIND_OF_TYPE[self.type]


LOCKS: list[LockDecl] = [
    LockDecl(
        "cpu_hotplug_lock", "percpu_rw_semaphore", "any",
        ("the set of online CPUs",),
        "Not KVM's own, but part of its order: CPU online/offline callbacks run with it held "
        "for write, so every KVM lock they take nests inside it.",
    ),
    LockDecl(
        "kvm_lock", "mutex", "any",
        ("vm_list",),
        "In the older design (model option usage_lock=False) it also guards kvm_usage_count "
        "and per-CPU hardware enabling. Notifiers that walk vm_list may run with "
        "cpus_read_lock held, so nothing that takes the hotplug lock may run under it.",
    ),
    LockDecl(
        "kvm_usage_lock", "mutex", "any",
        ("kvm_usage_count", "turning hardware virtualization on and off"),
        "Split out of kvm_lock so that enabling virtualization can take cpus_read_lock "
        "inside it; it is therefore ordered outside the hotplug lock.",
    ),
    LockDecl(
        "vendor_module_lock", "mutex", "x86",
        ("loading a vendor module (kvm_intel or kvm_amd)",),
        "A lock of its own because vendor setup takes cpus_read_lock, while kvm_lock is "
        "taken inside the hotplug lock: serialising with kvm_lock closes a cycle.",
    ),
    LockDecl(
        "wakeup_vcpus_on_cpu_lock", "raw_spinlock_t", "x86",
        ("wakeup_vcpus_on_cpu",),
        "One per CPU, one class for all. Blocked vCPUs that expect a posted interrupt queue "
        "on their CPU's list; the wakeup-vector handler, in hard interrupt context, walks it. "
        "Older documents call it a spinlock_t; it is raw in current kernels.",
    ),
    LockDecl(
        "kvm->lock", "mutex", "any",
        ("VM-wide configuration changed by VM ioctls (vCPU creation, irqchip, ...)",),
        "Taken outside vcpu->mutex, kvm->slots_lock and kvm->irq_lock. synchronize_srcu may "
        "be called under it, so it must not be taken inside a kvm->srcu read side.",
    ),
    LockDecl(
        "vcpu->mutex", "mutex", "any",
        ("one vCPU's state against concurrent vCPU ioctls",),
        "All vCPUs are one lock class. Taken inside kvm->lock, outside the Hyper-V and Xen "
        "locks; synchronize_srcu may be called under it.",
    ),
    LockDecl(
        "kvm->slots_lock", "mutex", "any",
        ("memslot updates", "kvm->buses updates"),
        "synchronize_srcu is called under it when memslots change, so it cannot be taken "
        "inside a kvm->srcu read side, nor by MMU notifier callbacks.",
    ),
    LockDecl(
        "kvm->slots_arch_lock", "mutex", "any (only needed on x86)",
        ("arch-specific memslot fields changed inside a kvm->srcu read side",),
        "Held from reading the current memslots pointer until the new array is installed, "
        "and dropped before synchronize_srcu: so, unlike slots_lock, it may be taken inside "
        "a kvm->srcu read side.",
    ),
    LockDecl(
        "kvm->irq_lock", "mutex", "any",
        ("interrupt routing",),
        "Inside kvm->lock and kvm->slots_lock; rarely held together with the latter.",
    ),
    LockDecl(
        "kvm->srcu", "srcu_struct", "any",
        ("kvm->memslots", "kvm->buses"),
        "Readers of the memslots array or the I/O buses hold the read side; updaters "
        "publish a new array and wait for a grace period before freeing the old one.",
    ),
    LockDecl(
        "kvm->mmu_lock", "rwlock_t", "any",
        ("shadow pages", "SPTEs (except fixes made by the fast page fault)"),
        "A spinning lock because MMU notifiers take it; an rwlock on x86 so the TDP MMU can "
        "fault pages in concurrently under the read side.",
    ),
    LockDecl(
        "kvm->arch.tdp_mmu_pages_lock", "spinlock_t", "x86",
        ("the TDP MMU's lists of pages",),
        "Only ever taken with kvm->mmu_lock held (usually for read, hence a lock of its own).",
    ),
    LockDecl(
        "kvm->arch.mmu_unsync_pages_lock", "spinlock_t", "x86",
        ("marking shadow pages unsync under a read-held mmu_lock",),
        "Only ever taken with kvm->mmu_lock held.",
    ),
    LockDecl(
        "kvm->mn_invalidate_lock", "spinlock_t", "any",
        ("mn_active_invalidate_count", "mn_memslots_update_rcuwait"),
        "Lets a memslot update wait, without a sleeping lock in the notifier path, until no "
        "invalidation that began on the old memslots is still in flight.",
    ),
    LockDecl(
        "kvm->arch.tsc_write_lock", "raw_spinlock_t", "x86",
        ("last_tsc_write, last_tsc_nsec, last_tsc_offset and the current TSC generation",),
        "Raw because the offset update must not be preempted; a leaf.",
    ),
    LockDecl(
        "kvm->arch.hyperv.hv_lock", "mutex", "x86",
        ("partition-wide Hyper-V state (guest OS id, hypercall page, reference TSC page)",),
        "Taken by one vCPU's MSR write, inside its vcpu->mutex; a leaf.",
    ),
    LockDecl(
        "kvm->arch.xen.xen_lock", "mutex", "x86",
        ("VM-wide Xen state (shared info, upcall vector)",),
        "Inside vcpu->mutex; a lock of its own so that paths inside a kvm->srcu read side "
        "need not take kvm->lock.",
    ),
]


def by_name(name: str) -> LockDecl:
    """The declaration of ``name``; a clear error listing the declared names otherwise."""
    for decl in LOCKS:
        if decl.name == name:
            return decl
    raise KeyError(f"no lock named {name!r} in the reference; declared: "
                   f"{', '.join(d.name for d in LOCKS)}")
