"""Never silently wrong, never hung: blocking on what the explorer does not run, and timeouts."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from kvmlock import explore

from . import threadprogs

MADE_AT_IMPORT = threading.Lock()  # not made inside an exploration: the explorer cannot run it


def _two_threads_on(lock_factory):
    def body():
        lock = lock_factory()

        def w():
            with lock:
                time.sleep(0)  # a visible operation while holding it

        threadprogs.run_all(w, w)

    return body


def test_a_lock_made_outside_the_exploration_blocks_and_is_named():
    t0 = time.monotonic()
    res = explore.check(_two_threads_on(lambda: MADE_AT_IMPORT), stall=0.5)
    assert time.monotonic() - t0 < 10
    f = res.failure
    assert f is not None and f.kind == "blocked" and not res.ok and res.stopped == "blocked"
    assert "with lock:" in f.message and "test_uncontrolled.py" in f.where
    assert "does not control" in f.message
    assert not MADE_AT_IMPORT.locked() or True  # the abandoned execution may still hold it


def test_the_same_program_with_its_lock_made_inside_is_clean():
    res = explore.check(_two_threads_on(lambda: threading.Lock()), stall=0.5)
    assert res.ok and res.exhausted


def test_a_socket_read_with_nothing_to_read_blocks_and_one_with_data_does_not():
    def body(send_first: bool):
        def run():
            a, b = socket.socketpair()
            try:
                if send_first:
                    b.sendall(b"x")
                assert a.recv(1) == b"x"
            finally:
                a.close()
                b.close()

        return run

    res = explore.check(body(False), stall=0.5)
    assert res.failure is not None and res.failure.kind == "blocked"
    assert "a.recv(1)" in res.failure.message
    assert explore.check(body(True), stall=0.5).ok


def test_a_subprocess_that_does_not_end_blocks_and_one_that_ends_does_not():
    def body(seconds: float):
        def run():
            subprocess.run([sys.executable, "-c", f"import time; time.sleep({seconds})"],
                           check=True)

        return run

    res = explore.check(body(30), stall=1.0, max_runs=1)
    assert res.failure is not None and res.failure.kind == "blocked"
    assert "subprocess.run" in res.failure.message
    assert explore.check(body(0), stall=5.0, max_runs=1).ok


def test_waiting_for_a_real_thread_started_outside_is_blocked():
    done = threading.Event()  # made before the exploration: a real event
    real = threading.Thread(target=lambda: done.wait(60))
    real.start()
    try:
        res = explore.check(lambda: real.join(), stall=0.5)
        assert res.failure is not None and res.failure.kind == "blocked"
        assert "real.join()" in res.failure.message
    finally:
        done.set()
        real.join()
    assert explore.check(lambda: real.join(), stall=0.5).ok  # it has ended: join returns


def test_timeout_is_honoured_when_an_execution_blocks():
    t0 = time.monotonic()
    res = explore.check(_two_threads_on(lambda: MADE_AT_IMPORT), timeout=0.3, stall=None)
    assert time.monotonic() - t0 < 3
    assert res.failure is not None and res.failure.kind == "blocked" and not res.ok


def _busy(flag_visible: bool):
    def body():
        flag = {"set": False}
        lock = threading.Lock()

        def setter():
            with lock:
                pass
            flag["set"] = True

        t = threading.Thread(target=setter)
        t.start()
        while not flag["set"]:  # nothing visible in this loop unless memory=True
            pass
        t.join()

    return body


def test_timeout_is_honoured_when_an_execution_never_reaches_a_visible_operation():
    t0 = time.monotonic()
    res = explore.check(_busy(False), timeout=0.3, stall=None)
    assert time.monotonic() - t0 < 3
    assert res.stopped == "timeout" and not res.exhausted


@pytest.mark.memory_tracing
def test_a_loop_without_visible_operations_is_a_hang_and_with_memory_it_is_explored():
    res = explore.check(_busy(False), stall=0.5)
    assert res.failure is not None and res.failure.kind == "hang"
    assert "while not flag" in res.failure.message and "memory=True" in res.failure.message
    res = explore.check(_busy(True), stall=0.5, memory=True)
    assert res.ok and res.exhausted


def test_the_next_check_after_a_blocked_one_runs_normally():
    explore.check(_two_threads_on(lambda: MADE_AT_IMPORT), stall=0.3)
    res = explore.check(threadprogs.locked_counter(2, 2), stop_on_first=False)
    assert res.ok and res.runs == 6


def test_timeout_with_a_long_search_stops_it_and_says_so():
    res = explore.check(threadprogs.locked_counter(3, 3), strategy="dfs", timeout=0.2)
    assert res.ok and not res.exhausted and res.stopped == "timeout"
    res = explore.check(threadprogs.locked_counter(2, 2), strategy="dfs", timeout=60)
    assert res.ok and res.exhausted


@pytest.mark.memory_tracing
def test_an_interrupted_check_leaves_no_stop_pending_for_later_ones():
    """Stopping a worker that never yields must not leave the interpreter's pending-stop flag
    set: later checks, per-opcode tracing included, run as before."""
    for _ in range(3):
        res = explore.check(_busy(False), timeout=0.1, stall=None)
        assert res.stopped == "timeout"
        res = explore.check(threadprogs.locked_counter(2, 2), timeout=0.06)  # ends as it stops
    t0 = time.monotonic()
    res = explore.check(threadprogs.lost_update(), memory=True, stall=5)
    assert res.failure is not None and res.failure.kind == "assertion"
    assert time.monotonic() - t0 < 5


def test_blocked_and_hang_failures_have_a_trace_table_and_replay():
    res = explore.check(threadprogs.steps_then_a_socket_read, stall=0.5)
    f = res.failure
    assert f is not None and f.kind == "blocked" and f.steps > 3
    table = f.trace_table()
    assert "CPU1 (Thread-1 (w))" in table and "lock " in table and "sleep" in table
    assert "blocked: `sockets[0].recv(1)`" in table
    again = explore.replay(threadprogs.steps_then_a_socket_read, f.schedule, stall=0.5)
    assert again.failure is not None and again.failure.kind == "blocked"
    assert again.failure.schedule == f.schedule

    res = explore.check(threadprogs.steps_then_plain_spinning, stall=0.5)
    f = res.failure
    assert f is not None and f.kind == "hang" and f.steps > 3
    table = f.trace_table()
    assert "CPU1 (Thread-1 (w))" in table and "unlock " in table
    assert "hang: `" in table and "threadprogs.py:" in table
    # the near-miss: the same steps without the endless loop are clean
    assert explore.check(_two_threads_on(lambda: threading.Lock()), stall=0.5).ok


EXIT_SCRIPT = '''
import socket, sys
from kvmlock import explore
a, b = socket.socketpair()
res = explore.check(lambda: a.recv(1), stall=0.3)
print(res.failure.kind, flush=True)
if sys.argv[1] == "close":
    b.close()  # the abandoned worker's recv returns as the interpreter goes down
elif sys.argv[1] == "del":
    del a, b  # freed at once: the same
elif sys.argv[1] == "finalize":
    sys.kvmlock_peer = b  # freed while the interpreter finalizes, after the exit's handlers
    del b
# "keep": the worker is still blocked when the process ends
sys.exit(3)
'''


@pytest.mark.parametrize("how", ["close", "del", "finalize", "keep"])
def test_an_abandoned_worker_woken_at_interpreter_exit_does_not_crash_it(tmp_path, how):
    script = tmp_path / "exits.py"
    script.write_text(EXIT_SCRIPT)
    for _ in range(2):
        p = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True,
                           timeout=60)
        assert (p.returncode, p.stdout) == (3, "blocked\n"), p.stderr[-2000:]


UNWINDING_SCRIPT = '''
import os, socket, sys, time
from kvmlock import explore
a, b = socket.socketpair()
back = sys.argv[1] + ".back"
def body():
    try:
        a.recv(1)
        open(back, "w").close()
        for _ in range(3_000_000):  # running Python code as the process exits
            pass
    finally:
        with open(sys.argv[1], "a") as f:
            f.write("unwound ")
res = explore.check(body, stall=0.3)
print(res.failure.kind, flush=True)
b.close()
t0 = time.monotonic()
while not os.path.exists(back) and time.monotonic() - t0 < 30:
    time.sleep(0.01)  # (woken is not yet running: on a loaded machine it may still look blocked)
sys.exit(3)
'''


def test_an_abandoned_worker_whose_call_returned_before_exit_is_waited_for_not_parked(tmp_path):
    """Parked while it ran or waited for the GIL, the worker could hold its turn at the GIL
    for ever and the process would hang at exit (seen on a loaded machine); parked, it would
    also never finish its clean-ups. It is waited for and ends its execution."""
    script = tmp_path / "unwinds.py"
    script.write_text(UNWINDING_SCRIPT)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                       timeout=60)
    assert (p.returncode, p.stdout) == (3, "blocked\n"), p.stderr[-2000:]
    assert out.exists() and out.read_text() == "unwound ", p.stderr[-2000:]


def test_an_abandoned_worker_whose_call_returns_does_not_explore_on():
    a, b = socket.socketpair()
    runs = []

    def body():
        runs.append(1)
        threadprogs.run_all(lambda: a.recv(1), lambda: time.sleep(0))

    res = explore.check(body, strategy="random", max_runs=1000, stall=0.3)
    assert res.failure is not None and res.failure.kind == "blocked" and len(runs) == 1
    b.close()  # every later execution's recv would return at once
    time.sleep(0.5)
    assert len(runs) == 1
    a.close()
