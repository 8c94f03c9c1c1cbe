"""The SRCU rule of KVM: synchronize_srcu under slots_lock forbids slots_lock in the read side."""

from kvmlock import lockdep, spawn
from kvmlock.sync import SRCU, Mutex

srcu = SRCU("kvm->srcu")
slots_lock = Mutex("kvm->slots_lock")


def memslot_update():          # synchronize_srcu under slots_lock: what KVM does
    with slots_lock:
        srcu.synchronize()


def bad_reader():              # ...so slots_lock must never be taken inside the read side
    with srcu.read():
        with slots_lock:
            pass


spawn(memslot_update).join()
spawn(bad_reader).join()
print([r.kind for r in lockdep.reports()])
