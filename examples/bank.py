"""Two transfers that take the same two locks in opposite orders.

This run never deadlocks (the threads run one after the other), yet the orders it shows can
deadlock on another day. `kvmlock lockdep examples/bank.py` reports it from this one run.
"""

import threading

alice = threading.Lock()
bob = threading.Lock()


def pay(src, dst):
    with src:
        with dst:
            pass


t1 = threading.Thread(target=pay, args=(alice, bob), name="payroll")
t1.start()
t1.join()
t2 = threading.Thread(target=pay, args=(bob, alice), name="refunds")
t2.start()
t2.join()
print("both transfers done: this run did not deadlock")
