"""What a lock protects: a pointer published to SRCU readers, and a counter a mutex guards."""

from kvmlock import lockdep, spawn
from kvmlock.sync import SRCU, Mutex, RcuPointer, guarded_by


class Kvm:
    usage_count = guarded_by("usage_lock")        # every access needs kvm_usage_lock

    def __init__(self):
        self.usage_lock = Mutex("kvm_usage_lock")
        self.slots_lock = Mutex("kvm->slots_lock")
        self.srcu = SRCU("kvm->srcu")
        self.memslots = RcuPointer({}, name="kvm->memslots")
        self.usage_count = 0                      # the first assignment initialises


kvm = Kvm()


def update():          # the update side: slots_lock held, so the check allows it
    with kvm.slots_lock:
        old = kvm.memslots.srcu_dereference_check(kvm.srcu, lockdep.is_held(kvm.slots_lock))
        kvm.memslots.assign({**old, 1: "slot 1"})
    kvm.srcu.synchronize()


def page_fault():      # a reader that forgot srcu_read_lock()
    return kvm.memslots.srcu_dereference(kvm.srcu)


def create_vm():       # a count bumped without its lock
    kvm.usage_count += 1


for fn in (update, page_fault, create_vm):
    spawn(fn, name=fn.__name__).join()
print([r.kind for r in lockdep.reports()])
