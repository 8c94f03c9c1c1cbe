"""Plain ``threading`` programs, written as a user would (no kvmlock in them), for the tests of
exploring unmodified threading code. Each factory returns a body; ``broken`` picks the variant
with the bug."""

from __future__ import annotations

import queue
import socket
import threading
import time
from threading import Lock as ImportedLock  # bound before any exploration: must still work


def run_all(*targets, args=()):
    ts = [threading.Thread(target=t, args=args) for t in targets]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def abba(broken: bool = True):
    def body():
        a = threading.Lock()
        b = threading.Lock()

        def one():
            with a:
                with b:
                    pass

        def two():
            first, second = (b, a) if broken else (a, b)
            with first:
                with second:
                    pass

        run_all(one, two)

    return body


def locked_counter(n: int = 3, k: int = 3, imported: bool = False):
    def body():
        lock = ImportedLock() if imported else threading.Lock()
        box = {"n": 0}

        def worker():
            for _ in range(k):
                with lock:
                    box["n"] += 1

        run_all(*[worker] * n)
        assert box["n"] == n * k

    return body


class Account:
    def __init__(self) -> None:
        self.balance = 0


def lost_update(locked: bool = False):
    def body():
        acct = Account()
        lock = threading.Lock()

        def deposit():
            if locked:
                with lock:
                    acct.balance = acct.balance + 1
            else:
                v = acct.balance
                acct.balance = v + 1

        run_all(deposit, deposit)
        assert acct.balance == 2, acct.balance

    return body


def pipeline(broken: bool = False, n: int = 3):
    """A producer and a consumer through a bounded queue.Queue; the broken consumer polls
    ``empty()`` and gives up when it sees the queue empty."""

    def body():
        q: queue.Queue = queue.Queue(maxsize=2)
        out: list[int] = []

        def producer():
            for i in range(n):
                q.put(i)
            q.put(None)

        def consumer():
            while True:
                if broken:
                    if q.empty():
                        return
                    item = q.get_nowait()
                else:
                    item = q.get()
                if item is None:
                    return
                out.append(item)

        run_all(producer, consumer)
        assert out == list(range(n)), out

    return body


def lost_wakeup(broken: bool = True):
    """The waiter checks the flag outside the condition's lock (broken), or inside it in a
    loop (correct)."""

    def body():
        cond = threading.Condition()
        state = {"ready": False}

        def waiter():
            if broken:
                if not state["ready"]:
                    threading.Event().wait(0)  # an unrelated visible step before waiting
                    with cond:
                        cond.wait()
            else:
                with cond:
                    while not state["ready"]:
                        cond.wait()

        def notifier():
            with cond:
                state["ready"] = True
                cond.notify()

        run_all(waiter, notifier)

    return body


def recheck_after_wait(loop: bool):
    """A waiter needs two items; the producer notifies after each. Re-checking in a ``while``
    loop is correct; an ``if`` goes on after the first notify with one item."""

    def body():
        cond = threading.Condition()
        items: list[int] = []

        def waiter():
            with cond:
                if loop:
                    while len(items) < 2:
                        cond.wait()
                elif len(items) < 2:
                    cond.wait()
                assert len(items) >= 2, f"woke with {len(items)} item(s)"

        def producer():
            for i in range(2):
                with cond:
                    items.append(i)
                    cond.notify()

        run_all(waiter, producer)

    return body


def steps_then_a_socket_read():
    """Two threads take a lock, then read a socket nothing is ever sent to (blocks for real)."""
    lock = threading.Lock()
    # (the stuck frame keeps its socket: one freed under a stuck read would wake it as the
    # interpreter exits)
    sockets = socket.socketpair()

    def w():
        with lock:
            time.sleep(0)
        sockets[0].recv(1)

    run_all(w, w)


def steps_then_plain_spinning():
    """Two threads take a lock, then loop over a local forever (no visible operation)."""
    lock = threading.Lock()

    def w():
        with lock:
            time.sleep(0)
        n = 0
        while n >= 0:
            n += 1

    run_all(w, w)
