"""expect: clean
Locks of one class taken as a list, always in list order (as fasteners does), from several
threads; and key locks taken sorted (as dogpile does)."""
import threading


class Resource:
    def __init__(self):
        self.lock = threading.Lock()


resources = [Resource() for _ in range(5)]


def take_all(items):
    taken = []
    for r in items:
        r.lock.acquire()
        taken.append(r)
    for r in reversed(taken):
        r.lock.release()


keys = {k: threading.Lock() for k in "edcba"}


def take_sorted(names):
    for k in sorted(names):
        keys[k].acquire()
    for k in sorted(names, reverse=True):
        keys[k].release()


threads = [threading.Thread(target=take_all, args=(resources,)) for _ in range(3)]
threads += [threading.Thread(target=take_sorted, args=(n,)) for n in ("ace", "dcb", "ea")]
for t in threads:
    t.start()
for t in threads:
    t.join()
