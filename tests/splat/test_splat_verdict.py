"""One verdict for the words, the JSON and the exit status of ``kvmlock splat``.

A report read in part, a document read in part or an exploration that did not finish is no
verdict to trust (exit 2, ``"complete": false``); a violation found in what was read still
exits 1. Cutting a violating report anywhere never turns it into an OK.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from splat_helpers import DOCS, FIXTURES, text

from kvmlock import spec
from kvmlock.splat import read_log
from kvmlock.splat.cli import main

NEWEST = DOCS / "versions" / "newest.rst"


def run(capsys, *args: str | Path) -> tuple[int, dict]:
    code = main([str(a) for a in args] + ["--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["s390_tod_clock.dmesg", "xen_srcu_qp.eml",
                                  "vendor_module_lock.commit", "handmade_buses_slots_lock.txt"])
def test_a_violating_report_cut_anywhere_is_never_ok(tmp_path, capsys, monkeypatch,
                                                     name) -> None:
    read = functools.cache(spec.load)  # one reading of the document for every cut
    monkeypatch.setattr(spec, "load", read)
    whole = text(name)
    assert main([str(FIXTURES / name), "--doc", str(NEWEST)]) == 1
    capsys.readouterr()
    lines = whole.splitlines(keepends=True)
    cut = tmp_path / "cut.log"
    for k in range(len(lines)):
        cut.write_text("".join(lines[:k]))
        code, out = run(capsys, cut, "--doc", NEWEST)
        assert code in (1, 2, 3), (k, out)
        if code == 2:
            assert out["complete"] is False, k
        if code == 3:  # cut before the headline: no report at all
            assert not out["reports"], k


def test_an_unknown_rcu_read_is_not_judged_ok(tmp_path, capsys) -> None:
    # the report cut before its stack: which pointer it read is unknown
    lines = text("handmade_buses_slots_lock.txt").splitlines(keepends=True)
    cut = tmp_path / "rcu.log"
    cut.write_text("".join(lines[:16]))
    code, out = run(capsys, cut, "--doc", NEWEST)
    assert code == 2 and out["complete"] is False
    assert out["protected_data"]["verdict"] == "unjudged"
    assert any("pointer" in p for p in out["problems"])
    # near miss: without a document nothing was asked to be judged, and the report was read
    code, out = run(capsys, cut)
    assert code == 0 and out["complete"] is True


def test_a_violation_in_a_later_report_is_at_the_top_too(tmp_path, capsys) -> None:
    log = tmp_path / "two.log"
    log.write_text(text("sev_recursive.eml") + "\n" + text("s390_tod_clock.dmesg"))
    code, out = run(capsys, log, "--doc", NEWEST)
    assert code == 1
    assert [r["kind"] for r in out["reports"]] == ["recursive", "circular"]
    assert out["kind"] == "recursive"  # the first report's fields
    assert out["violations"] == ["vcpu->mutex -> kvm->lock"]  # every report's violations


def test_an_exploration_that_cannot_settle_is_incomplete_in_json_too(tmp_path, capsys) -> None:
    # a document calling the irq-unsafe lock a mutex: the scenario cannot run, no answer
    doc = tmp_path / "doc.rst"
    doc.write_text("Acquisition orders\n------------------\n\n- rq->lock is taken outside "
                   "kvm->arch.pvclock_gtod_sync_lock.\n\nReference\n---------\n\n"
                   "``kvm->arch.pvclock_gtod_sync_lock``\n"
                   "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n\n:Type: mutex\n")
    code, out = run(capsys, FIXTURES / "pvclock_irq_inversion.syzbot", "--doc", doc,
                    "--explore")
    assert out["explore"]["complete"] is False and not out["explore"]["deadlock"]
    assert code == 2 and out["complete"] is False
    # near miss: with the kernel's kinds the deadlock is reproduced
    code, out = run(capsys, FIXTURES / "pvclock_irq_inversion.syzbot", "--explore")
    assert code == 1 and out["explore"]["deadlock"]


def test_bad_input_and_incomplete_share_status_2_but_not_the_json(tmp_path, capsys) -> None:
    code, out = run(capsys, tmp_path / "missing.log")
    assert code == 2 and "error" in out and out["complete"] is False
    code, out = run(capsys, FIXTURES / "s390_tod_clock.dmesg", "--doc", DOCS / "prose.rst")
    assert code == 2 and "error" not in out and out["document_incomplete"]


def test_help_lists_the_exit_statuses(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    got = capsys.readouterr().out
    for status in ("0  every report read whole", "1  a dependency violates", "2  no verdict",
                   "3  no lockdep report"):
        assert status in got


@pytest.mark.parametrize("name", ["pvclock_irq_inversion.syzbot", "amd_iommu_hardirq.txt"])
def test_an_irq_report_cut_anywhere_keeps_its_pair_or_says_it_is_cut(name) -> None:
    # the report states one dependency (the irq-safe lock -> the irq-unsafe one); a cut that
    # loses it must say the reading is incomplete, never pass as a report with nothing to judge
    lines = text(name).splitlines(keepends=True)
    [whole] = read_log("".join(lines))
    pair = [(d.src, d.dst) for d in whole.dependencies()]
    assert len(pair) == 1 and not whole.problems
    for k in range(len(lines)):
        for sp in read_log("".join(lines[:k])):
            got = [(d.src, d.dst) for d in sp.dependencies()]
            assert got == pair or sp.problems, (k, got)
