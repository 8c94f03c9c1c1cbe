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
        # the current document calls kvm_lock a leaf; the model (like the kernel) is not
        assert main(["check", str(docs / "current.rst"),
                     "--save-graph", str(tmp_path / "m.json")]) == 1
        out = capsys.readouterr().out
        assert "to the model's own document" in out and "kvm_lock is a leaf" in out
        assert "VIOLATED: " in out and "1 violated" in out
        assert main(["check", str(docs / "older.rst"), "--graph", str(tmp_path / "m.json")]) == 1
        capsys.readouterr()
        ours = str(Path(spec.__file__).parent.parent / "kvm" / "locking.rst")
        assert main(["check", ours, "--graph", str(tmp_path / "m.json")]) == 0
        assert "OK:" in capsys.readouterr().out


def test_render_writes_the_models_document(tmp_path: Path) -> None:
    from kvmlock.kvm.locks import model_doc_text, model_locks

    out = tmp_path / "locking.rst"
    assert main(["render", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == model_doc_text()
    doc = spec.load(out)
    assert {e.name: e.kinds for e in doc.reference} == {
        n: (k,) for n, k in model_locks().items()}
    assert all(e.protects for e in doc.reference)


@pytest.mark.parametrize("argv, message", [
    (["show", "/nonexistent/locking.rst"], "no such locking document"),
    (["check", "README-missing.rst"], "no such locking document"),
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
