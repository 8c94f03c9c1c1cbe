"""pytest plugin: ``pytest --lockdep`` runs the suite under kvmlock's lock validator.

With the option, ``threading.Lock``/``RLock`` created during the session are validated
(see :func:`kvmlock.lockdep.instrument_threading`) along with every kvmlock.sync primitive,
and a test during which lockdep found a new problem fails with the report. The dependency
graph is kept across tests, as the kernel keeps it across a boot: test A taking X then Y and
test B taking Y then X is the inversion, found in test B. Without the option the plugin only
registers it, so a normal run pays nothing.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

import pytest

_STATE_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmlock")
    group.addoption(
        "--lockdep",
        action="store_true",
        default=False,
        help="validate lock ordering (threading locks and kvmlock.sync) and fail tests "
        "that produce a lockdep report",
    )


def _start(config: pytest.Config) -> None:
    if _STATE_KEY in config.stash:
        return
    from kvmlock import lockdep

    config.stash[_STATE_KEY] = {
        "instr": lockdep.instrument_threading(),
        "mode": lockdep.get_mode(),
    }
    lockdep.set_mode("collect")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> None:
    """Start before conftest.py files are imported: the locks they make are validated too."""
    ns = getattr(early_config, "known_args_namespace", None)
    if getattr(ns, "lockdep", False):
        _start(early_config)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "explore(strategy='dpor', max_runs=None, memory=False, ...): run the test "
        "under kvmlock's schedule explorer (keyword arguments go to explore.check); a failure "
        "shows the trace table and the command that replays it")
    if not config.getoption("lockdep", False):
        return
    _start(config)
    config.pluginmanager.register(_LockdepChecker(config), "kvmlock-lockdep-checker")


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(_STATE_KEY, None)
    if st is None:
        return
    from kvmlock import lockdep

    st["instr"].stop()
    lockdep.set_mode(st["mode"])


_SEEN_KEY = pytest.StashKey[set]()
_XDIST_KEY = "kvmlock_lockdep"


class _LockdepChecker:
    """Registered only under ``--lockdep``: a test fails when lockdep reported something new
    during its setup or call; a report made during teardown makes the test an error.

    What no test can answer for is reported at the end of the session, which then fails:
    reports made between tests, threads still running with locks held, and under
    pytest-xdist the inversions that only the workers' graphs together show (each worker
    sends its graph to the controller, which merges them, see :mod:`kvmlock.lockdep.merge`).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.claimed: set[int] = set()  # ids of reports a test answered for
        self.origins: dict = {}  # (id(link), kind) -> the test that made that dependency
        self.nedges = 0
        self.parts: list[tuple[str, dict]] = []  # workers' graphs (xdist controller)
        self.late: list[str] = []  # session-level findings, as text
        self.gaps: list[str] = []  # what lockdep could not validate (lockdep.gaps())

    def _check(self, item: pytest.Item, phase: str) -> None:
        """Fail the test when lockdep reported something not seen by an earlier check."""
        from kvmlock import lockdep
        from kvmlock.lockdep import core, merge

        S = core._state()
        if S.nedges != self.nedges:  # the dependencies this test made, for merged reports
            self.nedges = S.nedges
            merge.origins_of(S, self.origins, item.nodeid)
        seen = item.stash.setdefault(_SEEN_KEY, set())
        new = [r for r in lockdep.reports() if id(r) not in seen]
        if not new:
            return
        seen.update(id(r) for r in new)
        self.claimed.update(id(r) for r in new)
        text = "\n".join(str(r) for r in new)
        pytest.fail(f"lockdep found {len(new)} problem(s) during this test's {phase}:\n{text}",
                    pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Any:
        from kvmlock import lockdep

        item.stash[_SEEN_KEY] = {id(r) for r in lockdep.reports()}
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        result = yield
        self._check(item, "setup or call")
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Any:
        result = yield
        self._check(item, "teardown")
        return result

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: a worker finished; keep its graph and its late findings."""
        out = getattr(node, "workeroutput", None) or {}
        data = out.get(_XDIST_KEY)
        if data:
            part = json.loads(data)
            label = str(out.get("workerid", getattr(node, "gateway", None) and node.gateway.id))
            self.parts.append((label, part))
            self.late.extend(f"[{label}] {text}" for text in part["late"])
            self.gaps.extend(f"[{label}] {text}" for text in part.get("gaps", ()))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from kvmlock import lockdep
        from kvmlock.lockdep import core, merge

        lockdep.check_live_threads("still running when the session ends")
        late = [str(r) for r in lockdep.reports() if id(r) not in self.claimed]
        worker = getattr(self.config, "workeroutput", None)
        if worker is not None:  # an xdist worker: the controller reports for it
            worker[_XDIST_KEY] = json.dumps({**merge.export(core._state(), self.origins),
                                             "late": late, "gaps": lockdep.gaps()})
            return
        self.late.extend(late)
        self.gaps[:0] = lockdep.gaps()
        if self.parts:
            self.parts.sort(key=lambda p: p[0])
            self.late.extend(str(r) for r in merge.merge(self.parts))
        if (self.late or self.gaps) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if self.gaps:
            tr.section("lockdep: not validated", sep="=", red=True)
            tr.write_line("the run may have missed a problem here, so its verdict is "
                          "incomplete:")
            for text in self.gaps:
                tr.write_line(f"  {text}")
        if not self.late:
            return
        tr.section("lockdep: found outside any test", sep="=", red=True)
        tr.write_line(f"{len(self.late)} problem(s) no single test answers for "
                      "(made between tests, at the session's end, or across xdist workers):")
        for text in self.late:
            tr.write(text)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    """``@pytest.mark.explore(...)``: the test body is explored instead of run once. Its
    fixtures are made once and shared by every execution."""
    mark = pyfuncitem.get_closest_marker("explore")
    if mark is None:
        return None
    from kvmlock import explore
    from kvmlock.explore.cli import replay_command

    fn = pyfuncitem.obj
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {n: pyfuncitem.funcargs[n] for n in names}
    # an async test stays an async function, so it runs on the explorer's event loop
    body = functools.partial(fn, **kwargs) if inspect.iscoroutinefunction(fn) else \
        (lambda: fn(**kwargs))
    res = explore.check(body, *mark.args, **mark.kwargs)
    if res.failures:
        f = res.failures[0]
        target = f"{pyfuncitem.path}::{pyfuncitem.name}"
        how = replay_command(target, f.schedule, bool(mark.kwargs.get("memory")))
        pytest.fail(f"{res.headline()}\n{f}\nreplay: {how}", pytrace=False)
    return True
