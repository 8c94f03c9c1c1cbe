"""The ``kvmlock`` command as a shell pipeline sees it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest


def _listing_into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    # The reader takes one line and closes the pipe, as ``| head -1`` does. The pipe holds
    # one page, so the writer is still writing when it is closed, whatever the listing's size.
    rfd, wfd = os.pipe()
    fcntl.fcntl(wfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    writer = subprocess.Popen([sys.executable, "-m", "kvmlock.cli", *args],
                              stdout=wfd, stderr=subprocess.PIPE)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as reader:
        first = reader.readline()
    assert writer.stderr is not None
    err = writer.stderr.read()
    writer.wait(timeout=120)
    return subprocess.CompletedProcess(args, writer.returncode, first, err)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sets a pipe's size")
def test_a_reader_that_goes_away_stops_the_listing_quietly():
    out = _listing_into_closed_pipe(["verify", "--mutants", "--list"])
    assert out.stdout.strip()
    assert b"Traceback" not in out.stderr and b"BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode == 141


def test_a_reader_that_reads_everything_gets_status_zero():
    out = subprocess.run([sys.executable, "-m", "kvmlock.cli", "verify", "--mutants", "--list"],
                         capture_output=True, timeout=120)
    assert out.returncode == 0 and out.stdout.count(b"\n") > 100 and not out.stderr
