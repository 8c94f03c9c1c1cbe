"""``kvmlock run``: the real-thread workload finishes, checks its invariants, reports nothing."""

import pytest

from kvmlock.kvm import workload


def test_short_run_is_clean_and_exercises_every_path():
    r = workload.run_workload(vcpus=2, seconds=0.5, quiet=True)
    assert r.ok, r.render()
    c = r.counters
    assert c["writes"] > 0 and c["reads"] > 0
    assert c["slow_pf"] > 0 and c["swap_out"] > 0 and c["harvests"] > 0
    assert c["memslot_updates"] > 1 and c["hotplug"] > 0
    assert {"kvm->mmu_lock", "kvm->srcu", "kvm->slots_lock", "vcpu->mutex",
            "mmu_notifier_invalidate_range_start", "kvm_lock"} <= set(r.lock_classes)
    assert "OK -- every invariant held" in r.render()


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(ValueError, match="vcpus must be"):
        workload.run_workload(vcpus=0, seconds=1)
    with pytest.raises(ValueError, match="seconds must be"):
        workload.run_workload(vcpus=1, seconds=-1)
    with pytest.raises(SystemExit) as exc:
        workload.main(["--vcpus", "0"])
    assert exc.value.code == 2
    assert "vcpus must be" in capsys.readouterr().err


def test_main_prints_the_summary_and_exits_zero(capsys):
    assert workload.main(["--vcpus", "1", "--seconds", "0.3", "--no-hotplug"]) == 0
    out = capsys.readouterr().out
    assert "fast-path faults" in out and "result: OK" in out
