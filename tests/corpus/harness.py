"""Run a test suite twice -- plain, and under lockdep -- and compare what each test did."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

_START = re.compile(r"^(\w+) \(([\w.]+)\)")
_RESULT = re.compile(r" \.\.\. (ok|FAIL|ERROR|skipped|expected failure|unexpected success)")


def unittest_outcomes(text: str) -> dict[str, str]:
    """test id -> outcome, from ``python -m unittest -v`` output (a docstring or the test's
    own output may come between a test's name and its result)."""
    out: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        m = _START.match(line)
        if m:
            key = m.group(2)
        res = _RESULT.search(line)
        if res and key is not None:
            out[key] = res.group(1).split()[0]
            key = None
    return out


def run_stdlib(module: str, tmp: Path) -> tuple[dict, dict, list[dict], str]:
    """(plain outcomes, instrumented outcomes, lockdep reports, instrumented stderr)."""
    plain = subprocess.run([sys.executable, "-m", "unittest", "-v", f"test.{module}"],
                           capture_output=True, text=True, timeout=1200, cwd=tmp)
    report = tmp / f"{module}.json"
    checked = subprocess.run(
        [sys.executable, "-m", "kvmlock.cli", "lockdep", "--quiet", "--json", str(report),
         "-m", "unittest", "-v", f"test.{module}"],
        capture_output=True, text=True, timeout=1200, cwd=tmp)
    return (unittest_outcomes(plain.stderr), unittest_outcomes(checked.stderr),
            json.loads(report.read_text()), checked.stderr)


def fetch_sdist(dist: str, version: str, into: Path) -> Path:
    """Download and unpack a source distribution (its tests ship there, not in the wheel)."""
    into.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", ":all:", "-d", str(into), f"{dist}=={version}"],
                       capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(f"pip download {dist}=={version} failed: {p.stderr[-2000:]}")
    (archive,) = [p for p in into.iterdir() if p.name.endswith(".tar.gz")
                  and p.name.lower().replace("_", "-").startswith(dist.lower().replace(".", "-")
                                                                  .replace("_", "-"))]
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / archive.name[: -len(".tar.gz")]


def junit_outcomes(path: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        out[key] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                    else "skipped" if "skipped" in kinds else "passed")
    return out


def run_pytest_suite(root: Path, args: list[str], lockdep: bool, tag: str) -> tuple[dict, str]:
    xml = root / f"junit-{tag}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-o", "asyncio_default_fixture_loop_scope=function",
           f"--junitxml={xml}", *args] + (["--lockdep"] if lockdep else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=root)
    return junit_outcomes(xml), p.stdout + p.stderr
