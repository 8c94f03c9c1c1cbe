"""``pytest --lockdep`` fails a test that produced a lockdep report; without it, nothing."""

import pytest

pytest_plugins = ["pytester"]

ABBA_TESTS = """
import threading

A = None
B = None


def setup_module():
    global A, B
    A = threading.Lock()
    B = threading.Lock()


def test_takes_a_then_b():
    with A:
        with B:
            pass


def test_takes_b_then_a():
    with B:
        with A:
            pass


def test_unrelated():
    assert True
"""

CLEAN_TESTS = """
import threading


def test_same_order_twice():
    a, b = threading.Lock(), threading.Lock()
    for _ in range(2):
        with a:
            with b:
                pass
"""


@pytest.fixture
def run(pytester):
    def go(source, *args):
        pytester.makepyfile(test_user=source)
        return pytester.runpytest_subprocess(*args)  # the plugin loads by entry point

    return go


def test_lockdep_option_fails_the_inverting_test(run):
    result = run(ABBA_TESTS, "--lockdep")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*test_takes_b_then_a*",
        "*possible circular locking dependency detected*",
    ])


def test_without_option_nothing_happens(run):
    run(ABBA_TESTS).assert_outcomes(passed=3)


FIXTURE_TESTS = """
import threading

import pytest

A = threading.Lock()
B = threading.Lock()


@pytest.fixture
def inverted():
    with A:
        with B:
            pass
    yield
    with B:
        with A:  # the inversion happens in teardown
            pass


def test_uses_fixture(inverted):
    pass
"""


def test_report_made_in_teardown_is_an_error(run):
    result = run(FIXTURE_TESTS, "--lockdep")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*during this test's teardown*"])


def test_clean_suite_passes_under_lockdep(run):
    run(CLEAN_TESTS, "--lockdep").assert_outcomes(passed=1)


CONFTEST = """
import threading

A = threading.Lock()  # made while conftest.py loads
B = threading.Lock()
"""

CONFTEST_TESTS = """
from conftest import A, B


def test_a_then_b():
    with A:
        with B:
            pass


def test_b_then_a():
    with B:
        with A:
            pass
"""


def test_locks_made_by_conftest_are_validated(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_user=CONFTEST_TESTS)
    result = pytester.runpytest_subprocess("--lockdep")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_b_then_a*", "*circular locking dependency*"])


LOGGING_TESTS = """
import logging
import logging.config


def test_dictconfig_closes_a_handler(tmp_path):
    logging.getLogger().addHandler(logging.FileHandler(tmp_path / "a.log"))
    logging.config.dictConfig({"version": 1})  # module lock, then each old handler's lock


def test_closing_a_file_handler(tmp_path):
    h = logging.FileHandler(tmp_path / "b.log")
    logging.getLogger("x").addHandler(h)
    logging.getLogger("x").warning("hello")
    h.close()  # the handler's lock, then the module lock
"""


def test_logging_module_lock_made_before_the_session_is_validated(run):
    # pytest imports logging long before any plugin starts, so logging's module lock exists
    # before instrumentation: it is adopted, and the FileHandler.close() / dictConfig()
    # inversion is found as under `kvmlock lockdep`.
    result = run(LOGGING_TESTS, "--lockdep")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_closing_a_file_handler*",
                                 "*possible circular locking dependency detected*",
                                 "*(_lock)*"])


def test_logging_in_one_order_stays_silent(run):
    # near-miss: handlers closed and messages logged, but no dictConfig() under the module lock
    only_close = LOGGING_TESTS.split("def test_dictconfig")[0] + "def test_closing" + \
        LOGGING_TESTS.split("def test_closing")[1]
    run(only_close + only_close.replace("test_closing", "test_closing_again"),
        "--lockdep").assert_outcomes(passed=2)


XDIST_FIRST = """
import threading
import time

import shared


def test_a_then_b():
    with shared.A:
        with shared.B:
            time.sleep(0.3)
"""

XDIST_SECOND = """
import time

import shared


def test_b_then_a():
    with shared.B:
        with shared.A:
            time.sleep(0.3)
"""

SHARED = """
import threading

A = threading.Lock()
B = threading.Lock()
"""


def run_xdist(pytester, first, second):
    pytest.importorskip("xdist")
    pytester.makepyfile(shared=SHARED, test_first=first, test_second=second)
    # loadfile: each file is one unit of work, and the two workers start with one each
    return pytester.runpytest_subprocess("--lockdep", "-n", "2", "--dist", "loadfile")


def test_inversion_split_across_xdist_workers_is_reported(pytester):
    result = run_xdist(pytester, XDIST_FIRST, XDIST_SECOND)
    result.assert_outcomes(passed=2)  # no worker saw both orders ...
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # ... the merged graph did
    result.stdout.fnmatch_lines([
        "*lockdep: found outside any test*",
        "*possible circular locking dependency detected*",
        "*made by #0: gw* (test_*.py::test_*), #1: gw* (test_*.py::test_*)*",
    ])
    made_by = [line for line in result.outlines if "made by #0" in line][0]
    assert "gw0" in made_by and "gw1" in made_by
    assert "test_first.py::test_a_then_b" in made_by and "test_second.py::test_b_then_a" in made_by


def test_one_order_across_xdist_workers_is_silent(pytester):
    result = run_xdist(pytester, XDIST_FIRST, XDIST_FIRST.replace("test_a_then_b", "test_again"))
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    assert "lockdep" not in result.stdout.str()


def test_an_inversion_inside_one_xdist_worker_is_reported_once(pytester):
    result = run_xdist(pytester, XDIST_FIRST + XDIST_SECOND.split("import shared")[1], "")
    result.assert_outcomes(passed=1, failed=1)  # the worker's own test fails, as without -n
    body = result.stdout.str().split("short test summary info")[0]
    assert body.count("possible circular locking dependency detected") == 1


LEAKING_THREAD = """
import threading

lock = threading.Lock()
started = threading.Event()


def hold_forever():
    lock.acquire()
    started.set()
    threading.Event().wait()


def test_starts_a_thread_that_keeps_a_lock():
    threading.Thread(target=hold_forever, daemon=True, name="keeper").start()
    started.wait()
"""


def test_a_thread_holding_a_lock_when_the_session_ends_fails_the_session(run):
    result = run(LEAKING_THREAD, "--lockdep")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*lockdep: found outside any test*",
        "*task is exiting with locks still held*",
        "*keeper (still running when the session ends)*",
    ])


def test_a_dependency_call_path_stops_at_the_test(run):
    result = run(ABBA_TESTS, "--lockdep")
    out = result.stdout.str()
    assert " in test_takes_a_then_b" in out and " in test_takes_b_then_a" in out
    assert "pluggy/" not in out and "pytest_pyfunc_call" not in out  # pytest's own frames


FACTORY_TESTS = """
import asyncio


def factory(loop, coro, **kw):
    return asyncio.Task(coro, loop=loop, **kw)


def test_awaits_a_task():
    async def main():
        {setup}
        lock = asyncio.Lock()
        async with lock:
            await asyncio.create_task(asyncio.sleep(0))

    asyncio.run(main())
"""


@pytest.mark.parametrize("xdist", [False, True])
def test_what_lockdep_could_not_validate_makes_the_session_incomplete(pytester, xdist):
    """Every test passes and nothing is reported, but a loop's own task factory hid its tasks'
    awaits: the session says so and does not end OK (from an xdist worker too)."""
    args = ["--lockdep"]
    if xdist:
        pytest.importorskip("xdist")
        args += ["-n", "2"]
    setup = "asyncio.get_running_loop().set_task_factory(factory)"
    pytester.makepyfile(test_user=FACTORY_TESTS.format(setup=setup))
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, warnings=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*lockdep: not validated*",
        "*awaiting tasks made by an event loop's own task factory "
        "(test_user.factory) was not validated*",
    ])
    # the near-miss: the loop's own tasks are validated, and the session is OK
    pytester.makepyfile(test_user=FACTORY_TESTS.format(setup="pass"))
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK and "not validated" not in result.stdout.str()


def test_validation_switched_off_by_a_table_limit_makes_the_session_incomplete(pytester):
    pytester.makepyfile(test_user="""
import threading
from kvmlock import lockdep


def test_deep():
    lockdep.configure(max_depth=4)
    locks = [threading.Lock() for _ in range(8)]
    for lk in locks:
        lk.acquire()
    for lk in reversed(locks):
        lk.release()
""")
    result = pytester.runpytest_subprocess("--lockdep")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*lockdep: not validated*",
                                 "*validation was switched off: too many*"])
