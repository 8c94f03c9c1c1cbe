"""``kvmlock lockdep SCRIPT`` validates an unmodified threading program from one run."""

import json
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


@pytest.mark.parametrize("args", [[], ["/no/such/script.py"]])
def test_bad_invocation_is_a_clear_error(args):
    p = subprocess.run([sys.executable, "-m", "kvmlock.cli", "lockdep", *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "kvmlock lockdep:" in p.stderr and "Traceback" not in p.stderr
