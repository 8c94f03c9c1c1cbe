"""Where users run tests: ``kvmlock explore FILE::TEST`` and ``@pytest.mark.explore``."""

from __future__ import annotations

import re

import pytest

from kvmlock.explore import cli

pytest_plugins = ["pytester"]

PROGRAM = '''
import threading

import pytest


class Account:
    def __init__(self):
        self.balance = 0


def _two(fn):
    ts = [threading.Thread(target=fn) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


@pytest.mark.explore(memory=True)
def test_racy():
    a = Account()

    def dep():
        a.balance += 10

    _two(dep)
    assert a.balance == 20


@pytest.mark.explore(memory=True, strategy="dfs")
def test_locked():
    a = Account()
    lock = threading.Lock()

    def dep():
        with lock:
            a.balance += 10

    _two(dep)
    assert a.balance == 20
'''


@pytest.mark.memory_tracing
def test_cli_finds_the_race_prints_the_replay_command_and_replays_it(tmp_path, capsys):
    f = tmp_path / "test_bank.py"
    f.write_text(PROGRAM)
    assert cli.main([f"{f}::test_racy", "--memory"]) == 1
    out = capsys.readouterr().out
    assert "assertion" in out and "store Account.balance" in out
    m = re.search(r"--replay '([^']+)' --memory", out)
    assert m is not None
    assert cli.main([f"{f}::test_racy", "--memory", "--replay", m.group(1)]) == 1
    assert "AssertionError" in capsys.readouterr().out
    assert cli.main([f"{f}::test_locked", "--memory", "--strategy", "dfs"]) == 0
    assert "ok;" in capsys.readouterr().out
    assert cli.main([f"{f}::test_racy"]) == 0  # without --memory the race is invisible


def test_cli_bad_targets_are_one_line_errors(tmp_path, capsys):
    f = tmp_path / "t.py"
    f.write_text("x = 1\n")
    assert cli.main([f"{f}::nope"]) == 2
    assert "has no 'nope'" in capsys.readouterr().err
    assert cli.main([f"{f}"]) == 2
    assert cli.main([str(tmp_path / "missing.py") + "::t"]) == 2
    assert cli.main([f"{f}::x"]) == 2
    assert cli.main([f"{f}::x", "--replay", "zz"]) == 2


def test_cli_a_function_that_needs_arguments_is_bad_input_not_a_finding(tmp_path, capsys):
    """A test taking fixtures cannot be called with none: that is no failure of the program."""
    f = tmp_path / "t.py"
    f.write_text("def test_fx(tmp_path, n=1):\n    pass\n\ndef test_plain(n=1):\n    pass\n")
    assert cli.main([f"{f}::test_fx"]) == 2
    err = capsys.readouterr().err
    assert "takes arguments (tmp_path)" in err and "@pytest.mark.explore" in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main([f"{f}::test_plain"]) == 0  # defaults only: it runs


@pytest.mark.memory_tracing
def test_marker_fails_the_racy_test_with_the_trace_and_passes_the_locked_one(pytester):
    pytester.makepyfile(test_user=PROGRAM)
    res = pytester.runpytest("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=1)
    text = res.stdout.str()
    assert "FAILED test_user.py::test_racy" in text
    assert "store Account.balance" in text and "CPU1" in text
    assert "replay: kvmlock explore" in text and "--memory" in text
