"""Whatever file a user names, ``kvmlock splat`` and ``kvmlock spec`` answer with one line that
names the problem and a distinct exit status, never a traceback."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from splat_helpers import DOCS, FIXTURES

from kvmlock.spec.cli import main as spec_main
from kvmlock.splat.cli import main as splat_main

LOG, DOC = str(FIXTURES / "xen_srcu_qp.eml"), str(DOCS / "versions" / "newest.rst")


def _bad(tmp: Path) -> dict[str, Path]:
    files = {"missing": tmp / "missing.txt", "directory": tmp / "adir",
             "empty": tmp / "empty.txt", "binary": tmp / "bin.dat", "huge": tmp / "huge.log",
             "latin1": tmp / "latin1.rst"}
    files["directory"].mkdir()
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(bytes(range(256)) * 8)
    with open(files["huge"], "wb") as f:  # sparse: its size is over every limit, nothing written
        f.truncate(300 * 2**20)
    files["latin1"].write_bytes("Acquisition Orders\n------------------\n\n- caf\xe9\n".encode(
        "latin-1"))
    return files


# (argv with {f} for the bad file, which file) -> (exit status, words of the one-line error)
CASES = [
    (["splat", "{f}"], "missing", 2, "no such kernel log"),
    (["splat", "{f}"], "directory", 2, "is a directory, not a kernel log"),
    (["splat", "{f}"], "binary", 2, "is binary data"),
    (["splat", "{f}"], "huge", 2, "a kernel log is at most 64 MiB"),
    (["splat", "{f}"], "empty", 3, "no lockdep report found"),
    (["splat", LOG, "--doc", "{f}"], "missing", 2, "no such locking document"),
    (["splat", LOG, "--doc", "{f}"], "directory", 2, "is a directory, not a locking document"),
    (["splat", LOG, "--doc", "{f}"], "binary", 2, "is binary data"),
    (["splat", LOG, "--doc", "{f}"], "huge", 2, "a locking document is at most 4 MiB"),
    (["splat", LOG, "--doc", "{f}"], "empty", 2, "found neither an 'Acquisition Orders'"),
    (["splat", LOG, "--doc", "{f}"], "latin1", 2, "not UTF-8 text (byte 0xe9"),
    (["spec", "check", "{f}"], "missing", 2, "no such locking document"),
    (["spec", "lint", "{f}"], "directory", 2, "is a directory"),
    (["spec", "show", "{f}"], "binary", 2, "is binary data"),
    (["spec", "diff", DOC, "{f}"], "huge", 2, "at most 4 MiB"),
    (["spec", "check", "{f}"], "empty", 2, "found neither"),
    (["spec", "check", DOC, "--proc-lockdep", "{f}"], "missing", 2, "no such /proc/lockdep dump"),
    (["spec", "check", DOC, "--proc-lockdep", "{f}"], "directory", 2, "is a directory"),
    (["spec", "check", DOC, "--proc-lockdep", "{f}"], "binary", 2, "is binary data"),
    (["spec", "check", DOC, "--proc-lockdep", "{f}"], "huge", 2, "is at most 256 MiB"),
    (["spec", "check", DOC, "--proc-lockdep", "{f}"], "empty", 2, "no lock classes found"),
    (["spec", "check", DOC, "--accept", "{f}"], "missing", 2, "no such accept file"),
    (["spec", "check", DOC, "--accept", "{f}"], "binary", 2, "is binary data"),
    (["spec", "check", DOC, "--accept", "{f}"], "directory", 2, "is a directory, not an accept"),
]


@pytest.mark.parametrize("argv, which, status, words", CASES,
                         ids=[f"{' '.join(a[:2])}-{w}" for a, w, _, _ in CASES])
def test_bad_input_gets_one_line_and_its_exit_status(argv, which, status, words, tmp_path,
                                                     capsys) -> None:
    bad = _bad(tmp_path)
    args = [a.replace("{f}", str(bad[which])) for a in argv]
    main = splat_main if args[0] == "splat" else spec_main
    assert main(args[1:]) == status
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def test_a_log_with_a_few_stray_bytes_is_still_read(tmp_path, capsys) -> None:
    """Near miss of 'binary': a console log with some bytes that are not UTF-8."""
    log = tmp_path / "console.log"
    log.write_bytes(b"\xff\xfe garbage from the serial line\n" + Path(LOG).read_bytes())
    assert splat_main([str(log)]) == 0
    assert "circular" in capsys.readouterr().out


def test_standard_input_binary_and_text(monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\0\1\2" * 100)))
    assert splat_main(["-"]) == 2
    assert "standard input is binary data" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(Path(LOG).read_bytes())))
    assert splat_main(["-"]) == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, capsys) -> None:
    p = tmp_path / "secret.log"
    p.write_text("x")
    p.chmod(0)
    assert splat_main([str(p)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_part_of_a_report_is_no_report_and_says_why(capsys) -> None:
    """A commit message quoting only chain links: no report is invented from it, and the
    message says what is missing (an empty file or plain prose gets no such hint)."""
    assert splat_main([str(FIXTURES / "vgic_chain_only.commit")]) == 3
    err = capsys.readouterr().err
    assert "dependency-chain links without the report's headline" in err
    assert err.count("\n") == 1
    assert splat_main([str(FIXTURES / "max_lock_depth.nearmiss")]) == 3
    assert "chain links" not in capsys.readouterr().err
