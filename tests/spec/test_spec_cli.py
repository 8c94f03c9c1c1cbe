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


# --------------------------------------------------------------------------- exit statuses


def _graph(tmp_path: Path, *edges: tuple[str, str]) -> Path:
    path = tmp_path / "g.json"
    spec.save_graph(spec.view({"classes": {n: "mutex" for e in edges for n in e},
                               "edges": [list(e) for e in edges]}), path)
    return path


ONE_RULE = "Acquisition orders\n------------------\n\n- kvm->lock is taken outside vcpu->mutex\n"


def test_a_graph_that_exercises_no_rule_is_incomplete(tmp_path: Path, capsys) -> None:
    doc = tmp_path / "d.rst"
    doc.write_text(ONE_RULE)
    g = _graph(tmp_path, ("foo->lock", "bar->lock"))
    assert main(["check", str(doc), "--graph", str(g)]) == 2
    assert "INCOMPLETE" in capsys.readouterr().out
    assert main(["check", str(doc), "--graph", str(g), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["complete"] is False and "error" not in out
    # near miss: the same document on a graph that takes the two locks in order is OK
    g = _graph(tmp_path, ("kvm->lock", "vcpu->mutex"))
    assert main(["check", str(doc), "--graph", str(g)]) == 0
    assert "OK: 1 held" in capsys.readouterr().out


def test_bad_input_and_incomplete_share_status_2_but_not_the_json(tmp_path: Path,
                                                                  capsys) -> None:
    assert main(["check", str(tmp_path / "missing.rst"), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert "error" in out and out["complete"] is False
    prose = tmp_path / "p.rst"
    prose.write_text("Acquisition orders\n------------------\n\nWhoever holds kvm->lock may "
                     "grab vcpu->mutex.\n")
    assert main(["check", str(prose), "--graph", str(_graph(tmp_path, ("a_lock", "b_lock"))),
                 "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert "error" not in out and out["incomplete"]


def test_help_lists_the_exit_statuses(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    got = capsys.readouterr().out
    for status in ("0  OK", "1  a rule is violated", "2  no verdict to trust"):
        assert status in got


def test_a_stale_accept_is_reported(tmp_path: Path, capsys) -> None:
    doc = tmp_path / "d.rst"
    doc.write_text(ONE_RULE)
    acc = tmp_path / "known.txt"
    acc.write_text("vcpu->mutex -> kvm->lock: fixed since, kept by mistake\n")
    g = _graph(tmp_path, ("kvm->lock", "vcpu->mutex"))
    assert main(["check", str(doc), "--graph", str(g), "--accept", str(acc)]) == 0
    assert "stale accept: line 1 of" in capsys.readouterr().out
    # near miss: while the violation still occurs the accept is used, not stale
    g = _graph(tmp_path, ("vcpu->mutex", "kvm->lock"))
    assert main(["check", str(doc), "--graph", str(g), "--accept", str(acc)]) == 0
    assert "stale accept" not in capsys.readouterr().out


def test_diff_of_a_document_read_in_part_is_incomplete(tmp_path: Path, docs: Path,
                                                       capsys) -> None:
    assert main(["diff", str(docs / "older.rst"), str(docs / "current.rst")]) == 0
    capsys.readouterr()
    # the changed rule is in a sentence the reader cannot follow: "0 rule changes" would lie
    old, new = tmp_path / "old.rst", tmp_path / "new.rst"
    old.write_text(ONE_RULE + "\n- Whoever holds kvm->lock may grab kvm->slots_lock.\n")
    new.write_text(ONE_RULE + "\n- Whoever holds kvm->slots_lock may grab kvm->lock.\n")
    assert main(["diff", str(old), str(new)]) == 2
    out = capsys.readouterr().out
    assert "0 rule change(s)" in out and "incomplete: " in out
    assert main(["diff", str(old), str(new), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["complete"] is False
