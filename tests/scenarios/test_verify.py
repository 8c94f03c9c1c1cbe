"""`kvmlock verify`: selection, verdicts (met, missed, wrong failure), exit codes, the graph."""

import pytest

import kvmlock.scenarios  # noqa: F401
from kvmlock import lockdep
from kvmlock.scenarios import verify
from kvmlock.scenarios.orders import check_graph
from kvmlock.scenarios.registry import SCENARIOS, Scenario
from kvmlock.sync import Mutex


@pytest.fixture
def temp_scenarios():
    added = []

    def add(name, body, **kw):
        kw.setdefault("rule", "test-only")
        SCENARIOS[name] = Scenario(name=name, body=body, **kw)
        added.append(name)
        return SCENARIOS[name]

    yield add
    for n in added:
        SCENARIOS.pop(n, None)


def _inversion():
    a, b = Mutex("test.A"), Mutex("test.B")
    with a, b:
        pass
    with b, a:
        pass


def _fine():
    a, b = Mutex("test.A"), Mutex("test.B")
    with a, b:
        pass


def _bad_assert():
    raise AssertionError("invariant broken")


def test_broken_variant_that_is_not_caught_is_a_missed_expectation(temp_scenarios):
    sc = temp_scenarios("zz.fine.broken", _fine, variant="broken", expect="lockdep",
                        lockdep_kind="circular")
    out = verify.run_scenario(sc)
    assert not out.met and out.result.startswith("MISSED")


def test_broken_variant_caught_for_the_wrong_reason_is_not_met(temp_scenarios):
    sc = temp_scenarios("zz.assert.broken", _bad_assert, variant="broken", expect="lockdep",
                        lockdep_kind="circular")
    out = verify.run_scenario(sc)
    assert not out.met and out.result.startswith("WRONG FAILURE: assertion")
    sc2 = temp_scenarios("zz.inv.broken", _inversion, variant="broken", expect="lockdep",
                         lockdep_kind="sleep_in_atomic")
    out2 = verify.run_scenario(sc2)
    assert not out2.met, "a circular report must not satisfy an expected sleep_in_atomic"
    sc3 = temp_scenarios("zz.inv2.broken", _inversion, variant="broken", expect="lockdep",
                         lockdep_kind="circular")
    assert verify.run_scenario(sc3).met


def test_correct_variant_with_a_failure_is_not_met(temp_scenarios):
    sc = temp_scenarios("zz.inv.correct", _inversion, variant="correct", expect="pass")
    out = verify.run_scenario(sc)
    assert not out.met and out.result == "FAILED: lockdep circular"
    ok = temp_scenarios("zz.fine.correct", _fine, variant="correct", expect="pass")
    out = verify.run_scenario(ok)
    assert out.met and out.bound == "exhaustive"


def test_main_exit_codes_and_table(temp_scenarios, capsys):
    assert verify.main(["srcu.kvm_lock_in_reader.broken", "order.leaves.correct"]) == 0
    text = capsys.readouterr().out
    assert "caught: lockdep circular" in text and "exhaustive" in text
    assert "2/2 expectations met" in text
    temp_scenarios("zz.inv.correct", _inversion, variant="correct", expect="pass")
    assert verify.main(["zz.inv.correct"]) == 1
    assert "0/1 expectations met" in capsys.readouterr().out


def test_unknown_name_lists_close_matches(capsys):
    assert verify.main(["srcu.slots_lock_in_readr.broken"]) == 2
    out = capsys.readouterr().out
    assert "no scenario named 'srcu.slots_lock_in_readr.broken'" in out
    assert "srcu.slots_lock_in_reader.broken" in out


def test_select_by_prefix_and_glob():
    names = [s.name for s in verify.select(["vendor"])]
    assert names[:2] == ["vendor.second_module_refused.correct",
                         "vendor.init_under_kvm_lock.broken"]
    assert all(n.startswith("vendor.") for n in names)
    assert {s.name for s in verify.select(["tsc.*.broken"])} == {
        "tsc.synchronize.broken", "tsc.write_lock_mutex.broken",
        "tsc.write_lock_spinlock_t.broken"}
    assert len(verify.select([])) == len(SCENARIOS)


def test_trace_prints_the_interleaving_and_the_splat(capsys):
    assert verify.main(["vendor.init_under_kvm_lock.broken", "--trace"]) == 0
    out = capsys.readouterr().out
    assert "CPU1 (modprobe kvm_intel)" in out and "CPU2 (cpu hotplug)" in out
    assert "possible circular locking dependency" in out
    assert "kvm_lock" in out and "cpu_hotplug_lock" in out


def test_spec_with_a_missing_document_is_a_clear_error(capsys, tmp_path):
    assert verify.main(["tsc.synchronize.correct", "--spec", str(tmp_path / "nope.rst")]) == 2
    assert "nope.rst" in capsys.readouterr().out


def test_collect_graph_has_the_documented_orders_and_nothing_against_them():
    g = verify.collect_graph(workload_seconds=0)
    got = {(e.src, e.dst) for e in g.edges}
    for pair in [("cpu_hotplug_lock", "kvm_lock"), ("kvm_usage_lock", "cpu_hotplug_lock"),
                 ("kvm->lock", "vcpu->mutex"), ("kvm->slots_lock", "kvm->srcu"),
                 ("vcpu->mutex", "kvm->arch.hyperv.hv_lock"),
                 ("kvm->srcu", "kvm->slots_arch_lock"),
                 ("kvm_lock", "kvm->arch.tsc_write_lock"),
                 ("kvm->slots_lock", "kvm->irq_lock"),
                 ("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock")]:
        assert pair in got, pair
    check_graph(g)
    assert lockdep.reports() == []  # collect_graph ran isolated: nothing leaks out


class _G:
    def __init__(self, *pairs, classes=None):
        self.edges = [lockdep.Edge(a, b, 0, 0, "here:1") for a, b in pairs]
        self.classes = classes or {}


def test_check_graph_catches_an_implied_inversion_and_passes_unrelated_edges():
    with pytest.raises(AssertionError, match="kvm->lock is taken outside vcpu->mutex"):
        check_graph(_G(("vcpu->mutex", "kvm->lock")))
    # transitively implied: kvm->lock outside vcpu->mutex outside hv_lock -- and hv_lock is a
    # leaf, so the edge out of it is reported too
    with pytest.raises(AssertionError, match="kvm->lock is taken outside "
                                             "kvm->arch.hyperv.hv_lock \\(implied"):
        check_graph(_G(("kvm->arch.hyperv.hv_lock", "kvm->lock")))
    check_graph(_G(("kvm->lock", "vcpu->mutex"), ("vcpu->mutex/1", "kvm->arch.xen.xen_lock"),
                   ("kvm->srcu", "kvm->slots_arch_lock")))


def test_check_graph_catches_an_edge_out_of_a_leaf_but_not_into_one():
    with pytest.raises(AssertionError, match="kvm->irq_lock is a leaf.*kvm->lock is taken"):
        check_graph(_G(("kvm->irq_lock", "kvm->lock")))
    check_graph(_G(("kvm->slots_lock", "kvm->irq_lock"), ("vcpu->mutex", "kvm_lock")))


def test_kvm_lock_may_take_tsc_write_lock_but_not_slots_lock():
    check_graph(_G(("kvm_lock", "kvm->arch.tsc_write_lock")))
    with pytest.raises(AssertionError, match="kvm_lock must not take kvm->slots_lock"):
        check_graph(_G(("kvm_lock", "kvm->slots_lock")))


def test_check_graph_catches_a_wrong_kind_and_an_undocumented_lock():
    with pytest.raises(AssertionError, match="tsc_write_lock is documented as raw_spinlock_t"):
        check_graph(_G(classes={"kvm->arch.tsc_write_lock": "spinlock"}))
    with pytest.raises(AssertionError, match="kvm->big_lock \\(mutex\\) is not in the model"):
        check_graph(_G(classes={"kvm->big_lock": "mutex"}))
    check_graph(_G(classes={"kvm->arch.tsc_write_lock": "raw_spinlock"}))


def test_check_graph_requires_what_it_is_told_was_exercised():
    order = ("order", "kvm->lock", "vcpu->mutex")
    check_graph(_G(("kvm->lock", "vcpu->mutex")), exercised=[order])
    with pytest.raises(AssertionError, match="was not exercised by the run"):
        check_graph(_G(("kvm->lock", "kvm->slots_lock")), exercised=[order])


def test_json_records_and_strategy_override(capsys):
    import json

    assert verify.main(["tsc.synchronize", "--json", "--strategy", "dfs"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in recs] == ["tsc.synchronize.correct", "tsc.synchronize.broken"]
    assert all(r["strategy"] == "dfs" and r["met"] for r in recs)
    assert recs[0]["failure"] is None
    # dfs does not reduce: it runs out of the scenario's max_runs before exhausting, and says so
    assert recs[0]["exhausted"] is False and recs[0]["bound"] == "max_runs=500"
    assert recs[0]["result"] == "pass (bounded)"
    assert recs[1]["failure"]["kind"] == "lockdep" and recs[1]["failure"]["schedule"]
    assert recs[1]["failure"]["lockdep_kinds"] == ["unguarded"]


def test_wrong_failure_says_what_was_expected(temp_scenarios):
    sc = temp_scenarios("zz.assert2.broken", _bad_assert, variant="broken", expect="lockdep",
                        lockdep_kind="circular")
    out = verify.run_scenario(sc)
    assert out.result == "WRONG FAILURE: assertion (expected lockdep circular)"


def test_collect_graph_refuses_a_correct_body_that_hangs_or_fails(temp_scenarios):
    import threading

    gate = threading.Event()
    temp_scenarios("zz.hang.correct", lambda: gate.wait(30), variant="correct", expect="pass")
    with pytest.raises(RuntimeError, match=r"zz.hang.correct did not finish within 1.5s"):
        verify.collect_graph(workload_seconds=0, limit=1.5)
    gate.set()
    SCENARIOS.pop("zz.hang.correct")
    temp_scenarios("zz.bad.correct", _bad_assert, variant="correct", expect="pass")
    with pytest.raises(RuntimeError, match="zz.bad.correct failed on real threads: "
                                           "AssertionError: invariant broken"):
        verify.collect_graph(workload_seconds=0)


def _slow_counter():
    """Three tasks take one mutex twice each (90 orders), and every execution costs 5 ms."""
    import time

    import kvmlock

    m = Mutex("test.slow")
    t_end = time.perf_counter() + 0.005
    while time.perf_counter() < t_end:
        pass

    def worker():
        for _ in range(2):
            with m:
                pass

    tasks = [kvmlock.spawn(worker, name=f"w{i}") for i in range(3)]
    for t in tasks:
        t.join()


def test_a_pass_cut_short_by_the_time_limit_is_an_incomplete_verdict(temp_scenarios, capsys):
    temp_scenarios("zz.slow.correct", _slow_counter, variant="correct", expect="pass",
                   strategy="dfs", options={"max_runs": 40})
    out = verify.run_scenario(SCENARIOS["zz.slow.correct"], timeout=0.05)
    assert out.met and not out.complete and out.result == "pass (time limit)"
    assert out.bound.startswith("timeout=")
    assert verify.main(["zz.slow.correct", "--timeout", "0.05"]) == 2
    text = capsys.readouterr().out
    assert "1/1 expectations met" in text and "incomplete: 1 passing row" in text
    assert "zz.slow.correct" in text.split("incomplete:")[1]
    # near miss: the same row stopped by its own bound of executions is a complete verdict
    out = verify.run_scenario(SCENARIOS["zz.slow.correct"])
    assert out.met and out.complete and out.result == "pass (bounded)"
    assert out.bound == "max_runs=40"
    assert verify.main(["zz.slow.correct"]) == 0
    assert "incomplete" not in capsys.readouterr().out


def test_the_summary_names_passes_stopped_by_their_own_run_limit(temp_scenarios, capsys):
    temp_scenarios("zz.slow.correct", _slow_counter, variant="correct", expect="pass",
                   strategy="dfs", options={"max_runs": 40})
    temp_scenarios("zz.fine.correct", _fine, variant="correct", expect="pass")
    # a declared bound is part of the expectation: exit 0, but the summary says so
    assert verify.main(["zz.slow.correct", "zz.fine.correct"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("2/2 expectations met")
    assert "1 passing row(s) bounded by their own run limit" in last
    assert "zz.slow.correct (max_runs=40)" in last and "zz.fine.correct" not in last
    # near miss: an exhausted row alone is not called bounded
    assert verify.main(["zz.fine.correct"]) == 0
    assert "bounded" not in capsys.readouterr().out.strip().splitlines()[-1]


def test_the_summary_counts_passes_exhaustive_only_up_to_a_preemption_bound(temp_scenarios,
                                                                            capsys):
    temp_scenarios("zz.pb.correct", _slow_counter, variant="correct", expect="pass",
                   strategy="dpor", options={"preemption_bound": 1})
    temp_scenarios("zz.fine.correct", _fine, variant="correct", expect="pass")
    assert verify.main(["zz.pb.correct", "zz.fine.correct"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    last = text[text.rindex("2/2 expectations met"):]
    assert "1 passing row(s) exhaustive only up to a preemption bound" in last
    # near miss: a row explored without a preemption bound is not counted
    assert verify.main(["zz.fine.correct"]) == 0
    assert "preemption bound" not in capsys.readouterr().out.strip().splitlines()[-1]


def test_a_caught_row_is_complete_even_under_a_time_limit(temp_scenarios):
    sc = temp_scenarios("zz.inv3.broken", _inversion, variant="broken", expect="lockdep",
                        lockdep_kind="circular")
    out = verify.run_scenario(sc, timeout=30)
    assert out.met and out.complete


def test_no_scenario_is_bounded_by_the_clock():
    from kvmlock.scenarios.registry import scenario

    assert all("timeout" not in sc.options for sc in SCENARIOS.values())
    with pytest.raises(ValueError, match="not timeout"):
        scenario("zz.clock.correct", rule="r", variant="correct", expect="pass",
                 timeout=5.0)(lambda: None)
    assert "zz.clock.correct" not in SCENARIOS
