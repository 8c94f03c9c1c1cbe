"""An unmodified threading program under the explorer: a lost update on a plain attribute.

Nothing here imports kvmlock except the two lines at the bottom: the body is ordinary
threading code, the kind a flaky test is made of.
"""

import sys
import threading

from kvmlock import explore


class Account:
    def __init__(self) -> None:
        self.balance = 0
        self.lock = threading.Lock()

    def deposit(self, amount: int, locked: bool) -> None:
        if locked:
            with self.lock:
                self.balance += amount
        else:  # read, add, write: another thread may come in between
            self.balance += amount


def body(locked: bool) -> None:
    acct = Account()
    ts = [threading.Thread(target=acct.deposit, args=(10, locked)) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert acct.balance == 20, f"balance {acct.balance}"


if __name__ == "__main__":
    locked = "--locked" in sys.argv
    print(explore.check(lambda: body(locked), memory=True))
