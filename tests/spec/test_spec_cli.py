"""`kvmlock spec show | lint | check | render` end to end, with exit codes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from kvmlock import lockdep, spec
from kvmlock.spec.cli import main
from kvmlock.sync import Mutex


def test_show_prints_rules_reference_and_unread(docs: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(docs / "older.rst")]) == 0
    out = capsys.readouterr().out
    assert "kvm->lock is taken outside vcpu->mutex" in out
    assert "Reference" in out and "srcu lock" in out
    assert "Not understood" in out and "call_srcu" in out


def test_lint_exit_codes(docs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(docs / "current.rst")]) == 0
    assert "no contradictions" in capsys.readouterr().out
    assert main(["lint", str(docs / "contradictory.rst")]) == 1
    out = capsys.readouterr().out
    assert "cycle" in out and "leaf" in out


def test_check_saved_graph(tmp_path: Path, docs: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    with lockdep.isolated():
        a, b = Mutex("kvm->lock"), Mutex("vcpu->mutex")
        with b:
            with a:
                pass
        spec.save_graph(spec.snapshot(), tmp_path / "g.json")
    assert main(["check", str(docs / "current.rst"), "--graph", str(tmp_path / "g.json")]) == 1
    out = capsys.readouterr().out
    assert "violated" in out and "test_spec_cli.py:" in out
    assert main(["check", str(docs / "current.rst"), "--graph", str(tmp_path / "g.json"),
                 "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert any(r["status"] == "violated" for r in data["rules"])


def test_check_runs_the_model(tmp_path: Path, docs: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["check", str(docs / "current.rst"),
                     "--save-graph", str(tmp_path / "m.json")]) == 0
        assert "OK:" in capsys.readouterr().out
        assert main(["check", str(docs / "older.rst"), "--graph", str(tmp_path / "m.json")]) == 1


def test_render_writes_a_readable_reference(tmp_path: Path) -> None:
    from kvmlock.kvm.reference import LOCKS

    out = tmp_path / "ref.rst"
    assert main(["render", "-o", str(out)]) == 0
    doc = spec.load(out)
    assert [e.name for e in doc.reference] == [d.name for d in LOCKS]
    for e, d in zip(doc.reference, LOCKS, strict=True):
        assert e.kinds == (d.kind,)
        assert e.arch == d.arch
        assert e.protects == list(d.protects)


@pytest.mark.parametrize("argv, message", [
    (["show", "/nonexistent/locking.rst"], "no such document"),
    (["check", "README-missing.rst"], "no such document"),
])
def test_errors_exit_2_with_a_message(argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_malformed_document_exit_2_names_the_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.rst"
    p.write_text("T\n=\n\nReference\n---------\n\n``kvm_lock``\n^^^^^^^^^^^^\n\n:Arch: any\n")
    assert main(["show", str(p)]) == 2
    assert f"{p}:7:" in capsys.readouterr().err
