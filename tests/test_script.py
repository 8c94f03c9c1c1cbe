"""``kvmlock lockdep SCRIPT`` validates an unmodified threading program from one run."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROGRAM = """
import threading

alice = threading.Lock()
bob = threading.Lock()


def pay(src, dst):
    with src:
        with dst:
            pass


t1 = threading.Thread(target=pay, args=(alice, bob), name="payroll")
t1.start(); t1.join()
t2 = threading.Thread(target=pay, args=({second}), name="refunds")
t2.start(); t2.join()
print("done")
"""


def run(tmp_path, second, *extra):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(PROGRAM.format(second=second)))
    return subprocess.run(
        [sys.executable, "-m", "kvmlock.cli", "lockdep", *extra, str(script)],
        capture_output=True, text=True, timeout=60,
    )


def test_inverted_order_is_reported_although_the_run_did_not_deadlock(tmp_path):
    p = run(tmp_path, "bob, alice", "--json", str(tmp_path / "r.json"))
    assert p.returncode == 1
    assert "done" in p.stdout
    assert "possible circular locking dependency detected" in p.stderr
    assert "refunds is trying to acquire lock" in p.stderr
    assert "prog.py:9" in p.stderr  # the inner `with dst:` line, in the user's file
    reports = json.loads((tmp_path / "r.json").read_text())
    assert [r["kind"] for r in reports] == ["circular"]


def test_same_order_is_silent(tmp_path):
    p = run(tmp_path, "alice, bob")
    assert p.returncode == 0, p.stderr
    assert "0 report(s)" in p.stderr
    assert "WARNING" not in p.stderr


def test_script_exit_status_is_kept_when_clean(tmp_path):
    script = tmp_path / "exit3.py"
    script.write_text("import sys\nsys.exit(3)\n")
    p = subprocess.run([sys.executable, "-m", "kvmlock.cli", "lockdep", str(script)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 3


def lockdep_cli(*args, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "kvmlock.cli", "lockdep", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_bad_invocation_is_a_clear_error(tmp_path):
    """Each bad input: one line naming the problem, its own status, before any work."""
    good = tmp_path / "good.py"
    good.write_text("print('ran')\n")
    bad_syntax = tmp_path / "bad.py"
    bad_syntax.write_text("def f(:\n")
    binary = tmp_path / "bin.py"
    binary.write_bytes(b"\x7fELF\x00\x01\x02")
    unreadable = tmp_path / "secret.py"
    unreadable.write_text("print('x')\n")
    unreadable.chmod(0)
    cases = [
        ([], 2, "name a script"),
        (["/no/such/script.py"], 3, "no such script"),
        ([bad_syntax], 4, "not valid Python"),
        ([binary], 4, "not Python source"),
        (["-m", "no_such_module_xyz"], 5, "no module named no_such_module_xyz"),
        (["--json", tmp_path / "no" / "dir" / "r.json", good], 6, "cannot write --json"),
    ]
    if os.geteuid() != 0:  # root reads anything
        cases.append(([unreadable], 3, "cannot read"))
    for args, status, words in cases:
        p = lockdep_cli(*args)
        assert p.returncode == status, (args, p.stderr)
        assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "ran" not in p.stdout


def kvmlock_command(*args, cwd):
    """The installed ``kvmlock`` command itself (not ``python -m``, which puts the current
    directory on the path for the program)."""
    exe = os.path.join(os.path.dirname(sys.executable), "kvmlock")
    if not os.path.exists(exe):
        pytest.skip("no kvmlock command next to this interpreter")
    return subprocess.run([exe, "lockdep", *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_a_module_in_the_current_directory_runs_as_with_python_m(tmp_path):
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "__init__.py").write_text("")
    (tmp_path / "tool" / "__main__.py").write_text("import sys\nprint('tool', sys.argv[1:])\n")
    (tmp_path / "one.py").write_text("print('one')\n")
    p = kvmlock_command("-m", "tool", "-v", cwd=tmp_path)
    assert (p.returncode, p.stdout.strip()) == (0, "tool ['-v']"), p.stderr
    p = kvmlock_command("-m", "one", cwd=tmp_path)
    assert (p.returncode, p.stdout.strip()) == (0, "one"), p.stderr
    p = kvmlock_command("-m", "two", cwd=tmp_path)  # near-miss: still not found
    assert p.returncode == 5 and "no module named two" in p.stderr


def test_a_module_that_cannot_run_is_a_one_line_error_before_it_starts(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text("print('ran')\ndef f(:\n")
    (tmp_path / "nomain").mkdir()
    (tmp_path / "nomain" / "__init__.py").write_text("")
    (tmp_path / "badmod.py").write_text("print('ran')\ndef f(:\n")
    (tmp_path / "fine").mkdir()
    (tmp_path / "fine" / "__init__.py").write_text("")
    (tmp_path / "fine" / "__main__.py").write_text("print('fine')\n")
    for args, status, words in [
        (["-m", "broken"], 4, "broken/__init__.py is not valid Python"),
        (["-m", "broken.sub"], 4, "broken/__init__.py is not valid Python"),
        (["-m", "badmod"], 4, "badmod.py is not valid Python"),
        (["-m", "nomain"], 5, "nomain is a package without a __main__ module"),
    ]:
        p = lockdep_cli(*args, cwd=tmp_path)
        assert p.returncode == status, (args, p.stderr)
        assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "ran" not in p.stdout
    p = lockdep_cli("-m", "fine", cwd=tmp_path)  # near-miss: a package with a __main__
    assert (p.returncode, p.stdout.strip()) == (0, "fine"), p.stderr


def test_the_script_sees_itself_as_under_python(tmp_path):
    """``__file__`` of the main script is absolute (python 3.9+), ``sys.argv[0]`` as given."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "where.py").write_text(
        "import os, sys\nprint(os.path.isabs(__file__), sys.argv[0], __name__)\n")
    p = lockdep_cli("sub/where.py", cwd=tmp_path)
    plain = subprocess.run([sys.executable, "sub/where.py"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert plain.stdout.strip() == "True sub/where.py __main__"
    assert p.stdout.strip() == plain.stdout.strip(), p.stderr


def test_module_arguments_pass_through_as_with_python_m(tmp_path):
    (tmp_path / "echo_args.py").write_text("import sys\nprint(sys.argv[1:])\n")
    p = lockdep_cli("-m", "echo_args", "-v", "--json", "x", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['-v', '--json', 'x']"
    p = lockdep_cli("--quiet", tmp_path / "echo_args.py", "-m", "y")
    assert p.stdout.strip() == "['-m', 'y']"


INVERT = """
import threading
a = threading.Lock()
b = threading.Lock()
def ab():
    with a:
        with b:
            pass
def ba():
    with b:
        with a:
            pass
"""


def run_inverting(tmp_path, body, *opts):
    """Run INVERT's two functions plus ``body`` under ``kvmlock lockdep``."""
    script = tmp_path / "prog.py"
    script.write_text(INVERT + body)
    return lockdep_cli(*opts, script)


def test_a_raising_script_still_gets_its_summary(tmp_path):
    p = run_inverting(tmp_path, "ab(); ba()\nraise KeyError('boom')\n",
                      "--json", tmp_path / "r.json")
    assert p.returncode == 1
    assert "KeyError: 'boom'" in p.stderr and "prog.py" in p.stderr
    assert "1 report(s)" in p.stderr and "runpy" not in p.stderr
    assert [r["kind"] for r in json.loads((tmp_path / "r.json").read_text())] == ["circular"]


@pytest.mark.parametrize("code, status, printed", [("'bye now'", 1, "bye now"), ("7", 7, None),
                                                   ("None", 0, None)])
def test_sys_exit_message_and_status_are_kept(tmp_path, code, status, printed):
    script = tmp_path / "leave.py"
    script.write_text(f"import sys\nsys.exit({code})\n")
    p = lockdep_cli(script)
    assert p.returncode == status
    assert "0 report(s)" in p.stderr
    if printed:
        assert p.stderr.splitlines()[0] == printed


def test_sys_exit_zero_after_a_report_is_still_a_failure(tmp_path):
    p = run_inverting(tmp_path, "ab(); ba()\nimport sys\nsys.exit(0)\n")
    assert p.returncode == 1 and "1 report(s)" in p.stderr


def test_os_exit_loses_no_report_in_the_json(tmp_path):
    p = run_inverting(tmp_path, "ab(); ba()\nimport os\nos._exit(0)\n",
                      "--json", tmp_path / "r.json")
    assert p.returncode == 0  # os._exit ends the process before any summary
    assert [r["kind"] for r in json.loads((tmp_path / "r.json").read_text())] == ["circular"]


def test_a_non_daemon_thread_reporting_after_the_body_is_counted(tmp_path):
    p = run_inverting(tmp_path, "ab()\nimport time\ndef later():\n    time.sleep(0.3)\n"
                      "    ba()\nthreading.Thread(target=later).start()\n")
    assert p.returncode == 1
    assert "1 report(s)" in p.stderr
    assert p.stderr.index("circular locking") < p.stderr.index("1 report(s)")


def test_an_atexit_handler_runs_before_the_summary(tmp_path):
    p = run_inverting(tmp_path, "ab()\nimport atexit\natexit.register(ba)\n")
    assert p.returncode == 1 and "1 report(s)" in p.stderr


def test_a_forked_child_reports_reach_the_summary(tmp_path):
    p = run_inverting(tmp_path, "ab()\nimport os\npid = os.fork()\nif pid == 0:\n"
                      "    ba()\n    os._exit(0)\nos.waitpid(pid, 0)\n",
                      "--quiet", "--json", tmp_path / "r.json")
    assert p.returncode == 1, p.stderr
    assert "1 report(s) (1 in child processes)" in p.stderr
    assert [r["kind"] for r in json.loads((tmp_path / "r.json").read_text())] == ["circular"]


def test_a_clean_fork_with_logging_is_silent(tmp_path):
    """logging reinitialises its locks in the child (_at_fork_reinit): no report there."""
    script = tmp_path / "forklog.py"
    script.write_text("import logging, os, threading\nlogging.basicConfig()\n"
                      "log = logging.getLogger('x')\nlog.warning('parent')\npid = os.fork()\n"
                      "if pid == 0:\n    log.warning('child')\n    os._exit(0)\n"
                      "os.waitpid(pid, 0)\n")
    p = lockdep_cli(script)
    assert p.returncode == 0, p.stderr
    assert "0 report(s)" in p.stderr


def test_validation_switched_off_makes_the_verdict_incomplete(tmp_path):
    script = tmp_path / "many.py"
    script.write_text("import threading\nfrom kvmlock import lockdep\n"
                      "lockdep.configure(max_depth=4)\n"
                      "locks = [threading.Lock() for _ in range(8)]\n"
                      "for lk in locks: lk.acquire()\n")
    p = lockdep_cli(script)
    assert p.returncode == 1
    assert "verdict is incomplete" in p.stderr and "0 report(s)" in p.stderr


FACTORY_PROGRAM = """
import asyncio, os

def factory(loop, coro, **kw):
    return asyncio.Task(coro, loop=loop, **kw)

async def main():
    {setup}
    lock = asyncio.Lock()
    async with lock:
        await asyncio.create_task(asyncio.sleep(0))

if {in_child}:
    pid = os.fork()
    if pid == 0:
        asyncio.run(main())
        os._exit(0)
    os.waitpid(pid, 0)
else:
    asyncio.run(main())
print("done")
"""


@pytest.mark.parametrize("in_child", [False, True])
def test_awaits_lockdep_could_not_validate_make_the_verdict_incomplete(tmp_path, in_child):
    """A loop's own task factory hides its tasks' awaits from lockdep: a clean summary would
    be a false OK, so it says what was not validated, and the status is 1 (a forked child's
    gap too)."""
    script = tmp_path / "factory.py"
    setup = "asyncio.get_running_loop().set_task_factory(factory)"
    script.write_text(FACTORY_PROGRAM.format(setup=setup, in_child=in_child))
    p = lockdep_cli(script)
    assert p.returncode == 1, p.stderr
    assert "0 report(s)" in p.stderr and "done" in p.stdout
    assert ("awaiting tasks made by an event loop's own task factory (__main__.factory) was "
            "not validated; the verdict is incomplete") in p.stderr
    # the near-miss: the same program on the loop's own tasks is validated in full
    script.write_text(FACTORY_PROGRAM.format(setup="pass", in_child=in_child))
    p = lockdep_cli(script)
    assert p.returncode == 0 and "incomplete" not in p.stderr, p.stderr


LOGGING_DEADLOCK = """
import logging
import logging.config
import os
import tempfile

path = os.path.join(tempfile.mkdtemp(), "x.log")
handler = logging.FileHandler(path)
logging.getLogger("app").addHandler(handler)
handler.close()  # the handler's lock, then logging's module lock
logging.config.dictConfig({"version": 1, "handlers": {"f": {
    "class": "logging.FileHandler", "filename": path}}, "root": {"handlers": ["f"]}})
logging.config.dictConfig({"version": 1})  # the module lock held while closing handlers
print("done")
"""


def test_logging_file_handler_close_against_dict_config_is_found(tmp_path):
    """CPython's known deadlock between FileHandler.close() and dictConfig(), from one run."""
    script = tmp_path / "logdl.py"
    script.write_text(LOGGING_DEADLOCK)
    p = lockdep_cli("--json", tmp_path / "r.json", script)
    assert p.returncode == 1 and "done" in p.stdout, p.stderr
    (r,) = json.loads((tmp_path / "r.json").read_text())
    assert r["kind"] == "circular"
    assert {r["lock"].split("@")[0], r["held"].split("@")[0]} == {"Handler.lock", "_lock"}
    frames = " ".join(f for e in r["chain"] for f in e["stack"])
    assert " in close" in frames and " in configure" in frames


def test_dict_config_alone_is_silent(tmp_path):
    script = tmp_path / "logok.py"
    script.write_text(LOGGING_DEADLOCK.replace("handler.close()", "pass"))
    p = lockdep_cli(script)
    assert p.returncode == 0 and "0 report(s)" in p.stderr, p.stderr


DAEMON = """
import threading
import time

held = threading.Lock()
busy = threading.Lock()
started = threading.Event()


def holder():
    with held:
        started.set()
        time.sleep(60)  # still inside when the program ends


def waiter():
    with busy:  # blocks: main holds it
        pass


threading.Thread(target=holder, daemon=True).start()
started.wait()
busy.acquire()
threading.Thread(target=waiter, daemon=True).start()
time.sleep(0.2)
"""


def test_a_daemon_thread_holding_a_lock_at_the_end_is_reported(tmp_path):
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    p = lockdep_cli("--json", tmp_path / "r.json", script)
    assert p.returncode == 1 and "1 report(s)" in p.stderr, p.stderr
    (r,) = json.loads((tmp_path / "r.json").read_text())
    assert r["kind"] == "held_at_exit" and r["lock"] == "held"
    assert r["task"] == "Thread-1 (holder) (still running when the process ends)"


def test_daemon_threads_waiting_or_idle_at_the_end_are_silent(tmp_path):
    # near-miss: one daemon thread blocked acquiring a lock (it does not hold it), one idle
    script = tmp_path / "idle.py"
    script.write_text(DAEMON.replace(
        "        started.set()\n        time.sleep(60)", "        pass\n    started.set()\n"
        "    time.sleep(60)"))
    p = lockdep_cli(script)
    assert p.returncode == 0 and "0 report(s)" in p.stderr, p.stderr
