"""Held-out: the explorer where users run tests -- ``kvmlock explore FILE::TEST`` and
``@pytest.mark.explore`` -- on an unmodified threading test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BANK = """
import threading

import pytest


class Account:
    def __init__(self):
        self.balance = 0


def deposits(locked):
    acct = Account()
    lock = threading.Lock()

    def deposit():
        if locked:
            with lock:
                acct.balance += 1
        else:
            acct.balance += 1

    ts = [threading.Thread(target=deposit) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert acct.balance == 2


def test_racy():
    deposits(False)


def test_locked():
    deposits(True)


@pytest.mark.explore(memory=True)
def test_racy_marked():
    deposits(False)


@pytest.mark.explore(memory=True)
def test_locked_marked():
    deposits(True)
"""


def kvmlock_argv(*args):
    return [str(Path(sys.executable).with_name("kvmlock")), *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every command at once (each is mostly interpreter start-up), then collect."""
    where = tmp_path_factory.mktemp("bank")
    (where / "test_bank_heldout.py").write_text(textwrap.dedent(BANK))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    commands = {
        "racy": kvmlock_argv("explore", "test_bank_heldout.py::test_racy", "--memory"),
        "locked": kvmlock_argv("explore", "test_bank_heldout.py::test_locked", "--memory"),
        "bad": kvmlock_argv("explore", "test_bank_heldout.py::no_such_test"),
        "pytest": [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "test_bank_heldout.py"],
    }
    procs = {k: subprocess.Popen(argv, cwd=where, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
             for k, argv in commands.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=180)
        out[k] = subprocess.CompletedProcess(commands[k], p.returncode, stdout, stderr)
    out["cwd"] = where
    return out


@pytest.mark.memory_tracing
def test_cli_finds_lost_update_and_replays_it(runs):
    proc = runs["racy"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    m = re.search(r"--replay '([^']+)'", proc.stdout)
    assert m, proc.stdout
    again = subprocess.run(
        kvmlock_argv("explore", "test_bank_heldout.py::test_racy", "--memory", "--replay",
                     m.group(1)), cwd=runs["cwd"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "AssertionError" in again.stdout


@pytest.mark.memory_tracing
def test_cli_locked_clean_and_exhausted(runs):
    proc = runs["locked"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exhausted" in proc.stdout and "not exhausted" not in proc.stdout


def test_cli_bad_target_one_line(runs):
    proc = runs["bad"]
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.memory_tracing
def test_pytest_marker(runs):
    proc = runs["pytest"]
    # unmarked, the racy test passes on real threads; marked, the explorer finds its race
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 3 passed" in proc.stdout
    assert "test_racy_marked" in proc.stdout and "--replay" in proc.stdout
