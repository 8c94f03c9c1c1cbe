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
    config.pluginmanager.register(_LockdepChecker(), "kvmlock-lockdep-checker")


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(_STATE_KEY, None)
    if st is None:
        return
    from kvmlock import lockdep

    st["instr"].stop()
    lockdep.set_mode(st["mode"])


_SEEN_KEY = pytest.StashKey[set]()


class _LockdepChecker:
    """Registered only under ``--lockdep``: a test fails when lockdep reported something new
    during its setup or call; a report made during teardown makes the test an error."""

    @staticmethod
    def _check(item: pytest.Item, phase: str) -> None:
        """Fail the test when lockdep reported something not seen by an earlier check."""
        from kvmlock import lockdep

        seen = item.stash.setdefault(_SEEN_KEY, set())
        new = [r for r in lockdep.reports() if id(r) not in seen]
        if not new:
            return
        seen.update(id(r) for r in new)
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
