"""Real programs, run as a user would (``kvmlock lockdep PROGRAM``), each with its verdict in
its docstring's first line: ``expect: clean`` or the report kinds, optionally the exit status
and a line the program's stderr must contain. They cover the patterns that gave false reports
(same-class locks nested in a fixed order, forwarding log handlers, fork, a Lock used as a
signal), behaviour parity, limits, late reports, threads ending with locks held, asyncio
waits, and the true logging deadlock."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAMS = sorted((Path(__file__).parent / "programs").glob("*.py"))


def expectation(path: Path) -> tuple[list[str], int, str]:
    first = path.read_text().split('"""')[1].splitlines()[0]
    words = first.removeprefix("expect: ").split()
    kinds, status, stderr = [], None, ""
    while words:
        w = words.pop(0)
        if w == "status":
            status = int(words.pop(0))
        elif w == "stderr":
            stderr, words = " ".join(words), []
        elif w != "clean":
            kinds.append(w)
    return kinds, (1 if kinds else 0) if status is None else status, stderr


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_program_verdict(path, tmp_path):
    if path.stem.startswith("fork") and not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    kinds, status, stderr = expectation(path)
    out = tmp_path / "reports.json"
    p = subprocess.run([sys.executable, "-m", "kvmlock.cli", "lockdep", "--quiet", "--json",
                        str(out), str(path)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    found = [r["kind"] for r in json.loads(out.read_text())]
    assert (found, p.returncode) == (kinds, status), p.stderr[-3000:]
    assert stderr in p.stderr
