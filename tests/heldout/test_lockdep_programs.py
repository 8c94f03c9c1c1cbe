"""Held-out: real programs run under ``kvmlock lockdep`` (a subprocess) and ``pytest --lockdep``.

Each case is a whole program with its expected verdict: the report kinds in the ``--json``
file, the exit status, and what must appear in the output. The verdicts come from what the
program can really do (can it deadlock?) and from docs/lockdep.md's promises, written down
before the tool was run on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

KVMLOCK = [sys.executable, "-m", "kvmlock"]


def kvmlock_cli() -> list[str]:
    exe = Path(sys.executable).with_name("kvmlock")
    return [str(exe)] if exe.exists() else KVMLOCK


def run_lockdep(tmp_path: Path, source: str, *, name: str = "prog.py", args=(), timeout=60,
                extra_files: dict | None = None):
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    for fname, text in (extra_files or {}).items():
        (tmp_path / fname).write_text(textwrap.dedent(text))
    out_json = tmp_path / "reports.json"
    proc = subprocess.run(
        [*kvmlock_cli(), "lockdep", "--json", str(out_json), str(script), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
    )
    reports = json.loads(out_json.read_text()) if out_json.exists() else None
    return proc, reports


def kinds(reports) -> list[str]:
    return sorted(r["kind"] for r in (reports or []))


def summary_count(proc) -> int:
    text = proc.stdout + proc.stderr
    marker = "kvmlock lockdep: "
    line = [ln for ln in text.splitlines() if ln.startswith(marker) and "report(s)" in ln]
    assert line, f"no summary line in:\n{text}"
    return int(line[-1][len(marker):].split()[0])


def assert_clean(proc, reports):
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert kinds(reports) == [], text
    assert summary_count(proc) == 0


def assert_reported(proc, reports, expected_kinds, status=1):
    text = proc.stdout + proc.stderr
    assert proc.returncode == status, text
    assert kinds(reports) == sorted(expected_kinds), text
    assert summary_count(proc) == len(expected_kinds)


# --------------------------------------------------------------------------- false-report patterns

ACCOUNTS = """
import threading

class Account:
    def __init__(self, n):
        self.n = n
        self.lock = threading.Lock()
        self.balance = 100

def transfer(a, b, amount):
    {order}
    with first.lock:
        with second.lock:
            a.balance -= amount
            b.balance += amount

accounts = [Account(i) for i in range(5)]

def worker(k):
    for i in range(30):
        a, b = accounts[(i + k) % 5], accounts[(3 * i + k + 1) % 5]
        if a is not b:
            transfer(a, b, 1)

ts = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
{run}
assert sum(a.balance for a in accounts) == 500
"""

CONCURRENT = "for t in ts:\n    t.start()\nfor t in ts:\n    t.join()"
# one after the other: this run cannot hang, although the orders it takes can
ONE_BY_ONE = "for t in ts:\n    t.start()\n    t.join()"


def test_same_class_locks_in_sorted_order_silent(tmp_path):
    src = ACCOUNTS.replace("{order}", "first, second = sorted((a, b), key=lambda x: x.n)")
    src = src.replace("{run}", CONCURRENT)
    assert_clean(*run_lockdep(tmp_path, src))


def test_same_class_instances_in_both_orders_reported(tmp_path):
    # must catch: transfer(a, b) and transfer(b, a) take two Account locks both ways
    src = ACCOUNTS.replace("{order}", "first, second = a, b").replace("{run}", ONE_BY_ONE)
    assert_reported(*run_lockdep(tmp_path, src), ["circular"])


def test_list_of_locks_in_list_order_silent(tmp_path):
    src = """
    import threading

    locks = [threading.Lock() for _ in range(10)]

    def take_all(rounds):
        for _ in range(rounds):
            for lk in locks:
                lk.acquire()
            for lk in reversed(locks):
                lk.release()

    def take_some(rounds):
        for _ in range(rounds):
            chosen = locks[2:7:2]
            for lk in chosen:
                lk.acquire()
            for lk in reversed(chosen):
                lk.release()

    ts = [threading.Thread(target=take_all, args=(20,)),
          threading.Thread(target=take_some, args=(20,))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    """
    assert_clean(*run_lockdep(tmp_path, src))


def test_key_locks_in_sorted_key_order_silent(tmp_path):
    src = """
    import threading

    registry_lock = threading.Lock()
    key_locks = {}

    def lock_for(key):
        with registry_lock:
            if key not in key_locks:
                key_locks[key] = threading.Lock()
            return key_locks[key]

    def update(keys):
        held = [lock_for(k) for k in sorted(keys)]
        for lk in held:
            lk.acquire()
        for lk in reversed(held):
            lk.release()

    def worker(keysets):
        for ks in keysets:
            update(ks)

    ts = [threading.Thread(target=worker, args=([["b", "a"], ["c", "a", "d"]],)),
          threading.Thread(target=worker, args=([["d", "b"], ["a", "c"]],))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    """
    assert_clean(*run_lockdep(tmp_path, src))


def test_futures_wait_and_as_completed_over_many_silent(tmp_path):
    src = """
    import concurrent.futures as cf
    import time

    with cf.ThreadPoolExecutor(max_workers=4) as ex:
        futs = [ex.submit(time.sleep, 0.001) for _ in range(60)]
        done, not_done = cf.wait(futs)
        assert len(done) == 60 and not not_done
        futs = [ex.submit(pow, 2, i) for i in range(60)]
        assert sorted(f.result() for f in cf.as_completed(futs)) == [2 ** i for i in range(60)]
        futs = [ex.submit(time.sleep, 0.001) for _ in range(30)]
        cf.wait(futs, return_when=cf.FIRST_COMPLETED)
        cf.wait(futs)
    """
    assert_clean(*run_lockdep(tmp_path, src))


def test_logging_handlers_forwarding_silent(tmp_path):
    src = """
    import io
    import logging
    import threading

    class Forward(logging.Handler):
        def __init__(self, target):
            super().__init__()
            self.target = target

        def emit(self, record):
            self.target.handle(record)

    buf = io.StringIO()
    leaf = logging.StreamHandler(buf)
    top = Forward(Forward(leaf))
    log = logging.getLogger("heldout.forward")
    log.addHandler(top)
    log.setLevel(logging.INFO)
    log.propagate = False

    def worker(i):
        for j in range(20):
            log.info("msg %d %d", i, j)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert buf.getvalue().count("msg") == 60
    """
    assert_clean(*run_lockdep(tmp_path, src))


def test_lock_as_signal_between_threads_silent(tmp_path):
    src = """
    import threading

    done = threading.Lock()
    done.acquire()
    result = []

    def worker():
        result.append(42)
        done.release()          # released by a thread that did not take it

    t = threading.Thread(target=worker)
    t.start()
    done.acquire()              # waits for the worker's release
    assert result == [42]
    done.release()
    t.join()

    # ping-pong: two Locks used as binary semaphores, handed back and forth
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()
    trace = []

    def player():
        for _ in range(5):
            ping.acquire()
            trace.append("pong")
            pong.release()

    t = threading.Thread(target=player)
    t.start()
    for _ in range(5):
        trace.append("ping")
        ping.release()
        pong.acquire()
    t.join()
    assert trace == ["ping", "pong"] * 5
    """
    assert_clean(*run_lockdep(tmp_path, src))


FORK = """
import io
import logging
import os
import threading

log = logging.getLogger("heldout.fork")
log.addHandler(logging.StreamHandler(io.StringIO()))
stop = threading.Event()

def chatter():
    while not stop.is_set():
        log.warning("parent thread")

t = threading.Thread(target=chatter)
t.start()
for _ in range(5):
    pid = os.fork()
    if pid == 0:
        log.warning("child")
        {child_extra}
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
stop.set()
t.join()
"""


def test_fork_child_that_logs_silent(tmp_path):
    src = FORK.replace("{child_extra}", "pass")
    assert_clean(*run_lockdep(tmp_path, src))


def test_fork_child_inversion_reaches_parent_summary(tmp_path):
    extra = ("a, b = threading.Lock(), threading.Lock()\n"
             "        with a:\n            with b: pass\n"
             "        with b:\n            with a: pass")
    src = FORK.replace("{child_extra}", extra)
    proc, reports = run_lockdep(tmp_path, src)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert set(kinds(reports)) == {"circular"}, text
    assert summary_count(proc) >= 1


def test_garbage_collected_held_lock_leaves_no_false_dependency(tmp_path):
    src = """
    import gc
    import threading

    def new_lock():
        return threading.Lock()          # one creation site: one class

    def leak():
        lk = new_lock()
        lk.acquire()                     # dropped while held

    leak()
    gc.collect()
    a = threading.Lock()
    with a:                              # nothing of new_lock's class is held here
        pass

    def other():
        with a:
            m = new_lock()
            with m:
                pass

    t = threading.Thread(target=other)
    t.start()
    t.join()
    """
    assert_clean(*run_lockdep(tmp_path, src))


# --------------------------------------------------------------------------- behaviour parity

PARITY = r"""
import _thread
import copy
import multiprocessing
import pickle
import re
import threading

from kvmlock import lockdep

problems = []

def outcome(fn):
    try:
        r = fn()
    except BaseException as e:
        return ("raise", type(e).__name__, str(e))
    return ("ok", re.sub(r"0x[0-9a-fA-F]+", "ADDR", repr(r)) if isinstance(r, str) else r)

def same(what, fn, real, inst):
    a, b = outcome(lambda: fn(real)), outcome(lambda: fn(inst))
    if a != b:
        problems.append(f"{what}: real {a!r} instrumented {b!r}")

def norm(x):
    return re.sub(r"0x[0-9a-fA-F]+", "ADDR", repr(x))

# instrumentation is really on: the lock shows among this thread's held locks
probe = threading.Lock()
with probe:
    assert lockdep.held_locks(), "threading.Lock is not instrumented under kvmlock lockdep"

def L(real):
    return (_thread.allocate_lock(), threading.Lock())

def R():
    return (_thread.RLock(), threading.RLock())

same("repr unlocked Lock", norm, *L(1))
def locked_repr(lk):
    lk.acquire()
    try:
        return norm(lk)
    finally:
        lk.release()
same("repr locked Lock", locked_repr, *L(1))
same("repr unlocked RLock", lambda lk: norm(lk).replace(str(threading.get_ident()), "ME"), *R())
def rlock_twice_repr(lk):
    lk.acquire(); lk.acquire()
    try:
        return norm(lk).replace(str(threading.get_ident()), "ME")
    finally:
        lk.release(); lk.release()
same("repr RLock held twice", rlock_twice_repr, *R())
same("negative timeout", lambda lk: lk.acquire(timeout=-5), *L(1))
same("negative timeout RLock", lambda lk: lk.acquire(timeout=-5), *R())
same("timeout with non-blocking", lambda lk: lk.acquire(False, 1), *L(1))
same("release unlocked", lambda lk: lk.release(), *L(1))
same("release un-acquired RLock", lambda lk: lk.release(), *R())
same("pickle Lock", lambda lk: pickle.dumps(lk), *L(1))
same("pickle RLock", lambda lk: pickle.dumps(lk), *R())
same("copy Lock", lambda lk: copy.copy(lk), *L(1))
same("deepcopy Lock", lambda lk: copy.deepcopy(lk), *L(1))
same("type(Lock)()", lambda lk: type(lk)() and "made", *L(1))
same("type(RLock)()", lambda lk: type(lk)() and "made", *R())


def try_held(lk):
    lk.acquire()
    try:
        return (lk.acquire(False), lk.acquire(timeout=0.01), lk.locked())
    finally:
        lk.release()
same("trylock on held Lock", try_held, *L(1))
same("enter returns", lambda lk: (lk.__enter__(), lk.__exit__(None, None, None)), *L(1))
def private(lk):
    lk.acquire(); lk.acquire()
    a = (lk._is_owned(), lk._recursion_count())
    state = lk._release_save()
    b = (lk._is_owned(), lk._recursion_count())
    lk._acquire_restore(state)
    c = (lk._is_owned(), lk._recursion_count())
    lk.release(); lk.release()
    return (a, b, c, lk._recursion_count())
same("RLock private methods", private, *R())
def reinit(lk):
    lk.acquire()
    lk._at_fork_reinit()
    return lk.locked()
same("_at_fork_reinit", reinit, *L(1))
inst = threading.Lock()
inst.acquire()
inst._at_fork_reinit()
if lockdep.held_locks():
    problems.append(f"_at_fork_reinit left a held lock: {lockdep.held_locks()}")

cv = threading.Condition()
with cv:
    if cv.wait(timeout=0.01) is not False:
        problems.append("Condition.wait(timeout) did not time out")

q = multiprocessing.get_context("spawn").Queue()
q.put(7)
if q.get(timeout=10) != 7:
    problems.append("spawn Queue round trip")
q.close()
q.join_thread()

for p in problems:
    print("PARITY:", p)
raise SystemExit(1 if problems else 0)
"""


def test_behaviour_parity(tmp_path):
    proc, reports = run_lockdep(tmp_path, PARITY, timeout=120)
    assert "PARITY:" not in proc.stdout, proc.stdout
    assert_clean(proc, reports)


# --------------------------------------------------------------------------- limits

INVERSION = """
x, y = threading.Lock(), threading.Lock()
with x:
    with y:
        pass
with y:
    with x:
        pass
"""


def test_seventy_held_locks_then_inversion_reported(tmp_path):
    src = """
    import threading

    many = [threading.Lock() for _ in range(70)]
    for lk in many:
        lk.acquire()
    for lk in reversed(many):
        lk.release()
    """ + textwrap.indent(INVERSION, "    ")
    proc, reports = run_lockdep(tmp_path, src)
    assert_reported(proc, reports, ["circular"])
    assert "incomplete" not in (proc.stdout + proc.stderr)


def test_wait_on_sixty_futures_then_inversion_reported(tmp_path):
    src = """
    import concurrent.futures as cf
    import threading

    with cf.ThreadPoolExecutor(max_workers=4) as ex:
        cf.wait([ex.submit(abs, -i) for i in range(60)])
    """ + textwrap.indent(INVERSION, "    ")
    assert_reported(*run_lockdep(tmp_path, src), ["circular"])


# --------------------------------------------------------------------------- late and lost reports

ABBA = """
import threading
a, b = threading.Lock(), threading.Lock()
with a:
    with b:
        pass
with b:
    with a:
        pass
"""


def test_report_from_non_daemon_thread_after_main_returns(tmp_path):
    src = """
    import threading
    import time

    def late():
        time.sleep(0.3)
        a, b = threading.Lock(), threading.Lock()
        with a:
            with b:
                pass
        with b:
            with a:
                pass

    threading.Thread(target=late).start()
    print("main body returned")
    """
    proc, reports = run_lockdep(tmp_path, src)
    assert_reported(proc, reports, ["circular"])
    both = proc.stdout + proc.stderr
    # the summary comes after the late report, however the two streams are captured
    assert "1 report(s)" in both


def test_sys_exit_message_kept_with_report(tmp_path):
    src = ABBA + "\nimport sys\nsys.exit('farewell from the program')\n"
    proc, reports = run_lockdep(tmp_path, src)
    assert "farewell from the program" in proc.stderr
    assert_reported(proc, reports, ["circular"], status=1)


def test_sys_exit_status_kept_with_report(tmp_path):
    src = ABBA + "\nimport sys\nsys.exit(3)\n"
    assert_reported(*run_lockdep(tmp_path, src), ["circular"], status=3)


def test_sys_exit_message_kept_without_report(tmp_path):
    src = "import sys\nsys.exit('nothing wrong, just leaving')\n"
    proc, reports = run_lockdep(tmp_path, src)
    assert proc.returncode == 1
    assert "nothing wrong, just leaving" in proc.stderr
    assert kinds(reports) == []
    assert summary_count(proc) == 0


def test_exception_after_report_keeps_traceback_and_summary(tmp_path):
    src = ABBA + "\nraise ValueError('late failure')\n"
    proc, reports = run_lockdep(tmp_path, src)
    assert "ValueError: late failure" in proc.stderr
    assert_reported(proc, reports, ["circular"], status=1)


def test_os_exit_keeps_json(tmp_path):
    src = ABBA + "\nimport os\nos._exit(7)\n"
    proc, reports = run_lockdep(tmp_path, src)
    assert proc.returncode == 7
    assert kinds(reports) == ["circular"], proc.stdout + proc.stderr


def test_plain_thread_ending_with_kvmlock_mutex_held(tmp_path):
    src = """
    import threading
    from kvmlock.sync import Mutex

    m = Mutex("heldout->m")

    def forgets():
        m.lock()

    t = threading.Thread(target=forgets)
    t.start()
    t.join()
    """
    assert_reported(*run_lockdep(tmp_path, src), ["held_at_exit"])


def test_plain_thread_releasing_kvmlock_mutex_silent(tmp_path):
    src = """
    import threading
    from kvmlock.sync import Mutex

    m = Mutex("heldout->m")

    def careful():
        m.lock()
        m.unlock()

    t = threading.Thread(target=careful)
    t.start()
    t.join()
    """
    assert_clean(*run_lockdep(tmp_path, src))


def test_daemon_thread_holding_lock_at_process_end(tmp_path):
    src = """
    import threading

    lk = threading.RLock()
    started = threading.Event()

    def holder():
        with lk:
            started.set()
            threading.Event().wait()     # forever

    threading.Thread(target=holder, daemon=True).start()
    started.wait()
    """
    assert_reported(*run_lockdep(tmp_path, src), ["held_at_exit"])


# --------------------------------------------------------------------------- logging's deadlock

LOGGING = """
import logging
import logging.config
import os
import tempfile
import threading

path = os.path.join(tempfile.mkdtemp(), "app.log")
fh = logging.FileHandler(path)
root = logging.getLogger()
root.addHandler(fh)
root.warning("hello")

def worker():
    for i in range(10):
        logging.getLogger("heldout.app").warning("line %d", i)

t = threading.Thread(target=worker)
t.start()
t.join()
{action}
logging.config.dictConfig({{"version": 1, "disable_existing_loggers": False}})
"""


def test_logging_filehandler_close_vs_dictconfig_reported(tmp_path):
    # close() takes the handler's lock, then logging's module lock; dictConfig() holds the
    # module lock and, through shutdown(), takes every live handler's lock: an inversion
    src = LOGGING.replace("{action}", "fh.close()  # handler lock -> module lock").replace(
        "{{", "{").replace("}}", "}")
    assert_reported(*run_lockdep(tmp_path, src), ["circular"])


def test_logging_dictconfig_without_close_silent(tmp_path):
    src = LOGGING.replace("{action}", "root.removeHandler(fh)").replace("{{", "{").replace(
        "}}", "}")
    src += 'logging.config.dictConfig({"version": 1})\nlogging.getLogger("x").warning("after")\n'
    assert_clean(*run_lockdep(tmp_path, src))


# --------------------------------------------------------------------------- asyncio

ASYNC = """
import asyncio

async def main():
    a, b = asyncio.Lock(), asyncio.Lock()

    async def ab():
        async with a:
            await asyncio.sleep(0)
            async with b:
                pass

    async def ba():
        async with b:
            await asyncio.sleep(0)
            async with a:
                pass

    {run}

asyncio.run(main())
print("no hang")
"""


def test_asyncio_abba_between_two_tasks_reported(tmp_path):
    # one task after the other: this run cannot hang, the orders still can
    src = ASYNC.replace(
        "{run}", "await asyncio.create_task(ab())\n    await asyncio.create_task(ba())")
    proc, reports = run_lockdep(tmp_path, src)
    assert "no hang" in proc.stdout
    assert_reported(proc, reports, ["circular"])


def test_asyncio_consistent_order_silent(tmp_path):
    src = ASYNC.replace("{run}", "await asyncio.gather(ab(), ab(), ab())")
    proc, reports = run_lockdep(tmp_path, src)
    assert "no hang" in proc.stdout
    assert_clean(proc, reports)


# --------------------------------------------------------------------------- -m and CLI errors


def run_module(tmp_path, env=None):
    (tmp_path / "heldout_argv.py").write_text("import sys\nprint('ARGV', sys.argv[1:])\n")
    return subprocess.run(
        [*kvmlock_cli(), "lockdep", "-m", "heldout_argv", "-v", "X", "--json", "j"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)


def test_module_arguments_pass_through(tmp_path):
    proc = run_module(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "ARGV ['-v', 'X', '--json', 'j']" in proc.stdout


def test_module_in_current_directory_found_as_python_m_does(tmp_path):
    proc = run_module(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ARGV ['-v', 'X', '--json', 'j']" in proc.stdout


@pytest.mark.parametrize(
    "setup,argv,status",
    [
        (None, ["missing_script.py"], 3),
        ({"bad.py": "def broken(:\n"}, ["bad.py"], 4),
        (None, ["-m", "heldout_no_such_module_xyz"], 5),
        ({"ok.py": "print('ran')\n"}, ["--json", "/nonexistent-dir/x/out.json", "ok.py"], 6),
    ],
)
def test_cli_bad_input_one_line(tmp_path, setup, argv, status):
    for fname, text in (setup or {}).items():
        (tmp_path / fname).write_text(text)
    proc = subprocess.run([*kvmlock_cli(), "lockdep", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == status, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "ran" not in proc.stdout  # checked before the program starts


# --------------------------------------------------------------------------- pytest --lockdep

CONFTEST = """
import threading

import pytest

SHARED = threading.Lock()          # made while conftest.py loads


@pytest.fixture
def shared_lock():
    return SHARED
"""

TESTS = """
import threading

other = threading.Lock()


def test_first(shared_lock):
    with shared_lock:
        with other:
            pass


def test_second(shared_lock):
    {second}
"""


def run_pytest_lockdep(tmp_path, second):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_heldout_orders.py").write_text(
        textwrap.dedent(TESTS).replace("{second}", second))
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--lockdep",
         "test_heldout_orders.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )


def test_pytest_lockdep_inversion_with_conftest_lock_fails_the_test(tmp_path):
    proc = run_pytest_lockdep(tmp_path, "with other:\n        with shared_lock:\n            pass")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout
    assert "test_second" in proc.stdout and "circular locking dependency" in proc.stdout


def test_pytest_lockdep_consistent_order_passes(tmp_path):
    proc = run_pytest_lockdep(tmp_path, "with shared_lock:\n        with other:\n            pass")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


# --------------------------------------------------------------------------- Lock vs RLock re-entry


def test_rlock_reentry_silent(tmp_path):
    src = """
    import threading

    rl = threading.RLock()

    def nested(depth):
        with rl:
            if depth:
                nested(depth - 1)

    ts = [threading.Thread(target=nested, args=(3,)) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    """
    assert_clean(*run_lockdep(tmp_path, src))


def test_lock_taken_twice_by_one_thread_with_no_release_reported(tmp_path):
    # must catch (the twin of the signal case): nobody will ever release it
    src = """
    import threading
    import time

    lk = threading.Lock()

    def stuck():
        lk.acquire()
        lk.acquire()          # waits for a release that never comes

    threading.Thread(target=stuck, daemon=True).start()
    time.sleep(3.0)           # longer than lockdep's wait for a signalling release
    """
    assert_reported(*run_lockdep(tmp_path, src), ["held_at_exit", "recursive"])


# --------------------------------------------------------------------------- asyncio events

EVENT = """
import asyncio

async def main():
    stock = asyncio.Lock()
    delivered = asyncio.Event()

    async def supplier():
        {set_it}

    async def restocker():
        async with stock:
            await delivered.wait()     # the event is already set in this run: no wait

    await asyncio.create_task(supplier())
    await asyncio.create_task(restocker())

asyncio.run(main())
print("no hang")
"""


def test_asyncio_event_set_under_lock_and_waited_under_lock_reported(tmp_path):
    # restocker first would hold stock while waiting for an event that only a holder of
    # stock can set: a deadlock on another day, whichever side this run met first
    src = EVENT.replace("{set_it}", "async with stock:\n            delivered.set()")
    proc, reports = run_lockdep(tmp_path, src)
    assert "no hang" in proc.stdout
    assert_reported(proc, reports, ["circular"])


def test_asyncio_event_set_holding_nothing_silent(tmp_path):
    src = EVENT.replace("{set_it}", "delivered.set()")
    proc, reports = run_lockdep(tmp_path, src)
    assert "no hang" in proc.stdout
    assert_clean(proc, reports)


def test_script_file_absolute_as_python_gives_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "where.py").write_text(
        "import os\nprint('ABS', os.path.isabs(__file__), __name__)\n")
    proc = subprocess.run([*kvmlock_cli(), "lockdep", "sub/where.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    plain = subprocess.run([sys.executable, "sub/where.py"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert plain.stdout.strip() == "ABS True __main__"
    assert "ABS True __main__" in proc.stdout
