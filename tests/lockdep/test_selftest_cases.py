"""Every self-test cell as a pytest case, and its near-miss twin, which must stay silent."""

import pytest

from kvmlock.lockdep import selftest

CASES = selftest.CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_gives_expected_verdict(case):
    reports = selftest.run_case(case.run)
    kinds = [r.kind for r in reports]
    if case.expect is None:
        assert kinds == [], f"{case.id} must be silent, got {kinds}"
    else:
        assert case.expect in kinds, f"{case.id} must report {case.expect}, got {kinds}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_near_miss_stays_silent(case):
    assert case.near_miss is not None
    kinds = [r.kind for r in selftest.run_case(case.near_miss)]
    assert kinds == [], f"near-miss of {case.id} must be silent, got {kinds}"


def test_table_covers_the_issue_grid():
    rows = {c.row for c in CASES}
    for pattern in ("AA", "ABBA", "ABBCCA", "ABCABC", "ABBCCDDA", "ABCDBDDA", "ABCDBCDA"):
        cols = {c.column for c in CASES if c.row == pattern}
        assert cols == {"spin", "wlock", "rlock", "mutex", "wsem", "rsem"}, pattern
    assert {"rw R-R", "rw R-W", "rw W-R", "rwsem r-r", "double unlock"} <= rows
    kinds = {c.expect for c in CASES}
    assert {"circular", "recursive", "bad_unlock", "held_at_exit", "sleep_in_atomic",
            "not_held", None} <= kinds


def test_main_prints_table_and_succeeds(capsys):
    assert selftest.main([]) == 0
    out = capsys.readouterr().out
    assert "ABCDBCDA" in out and "rsem" in out and "FAIL" not in out
    assert f"all {len(CASES)} cells right" in out


def test_main_fails_on_a_wrong_cell(monkeypatch, capsys):
    # A cell whose expectation is wrong (ABBA on mutexes claimed silent) must turn the run red.
    bad = [c for c in CASES if c.id == "ABBA/mutex"][0]
    wrong = selftest.Case(bad.row, bad.column, bad.run, None, bad.near_miss)
    monkeypatch.setattr(selftest, "CASES", [wrong if c is bad else c for c in CASES])
    assert selftest.main(["-v"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "ABBA/mutex" in out and "circular locking" in out
