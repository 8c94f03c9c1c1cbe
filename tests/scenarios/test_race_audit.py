"""The race audit on the KVM model: it flags the plain accesses DPOR once missed, when they are
put back, and is quiet on the model as it is (every finding fixed or declared benign)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

import kvmlock
from kvmlock import runtime
from kvmlock.explore.audit import audit
from kvmlock.kvm import ioctls
from kvmlock.kvm.mmu import tdp_mmu
from kvmlock.kvm.vcpu import VCPU
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import verify
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.sync import Mutex, RCUWait, data_racy, guarded_by

#: the race audit traces with memory=True's tracer (CPython 3.11 only)
pytestmark = pytest.mark.memory_tracing

_ROOT = os.path.dirname(kvmlock.__file__)
#: the model, its scenarios, and this file (the reverted fixes below are model code too)
PATHS = [os.path.join(_ROOT, "kvm"), os.path.join(_ROOT, "scenarios"), __file__]


def _audit(name: str, runs: int = 20) -> Any:
    sc = SCENARIOS[name]
    return audit(sc.body, PATHS, runs=runs, max_steps=sc.options.get("max_steps", 5000))


def _at(res: Any, location: str) -> list[Any]:
    return [f for f in res.findings if f.location == location]


# ----------------------------------------------------------------------------- reverted fixes
# Each is the model's code before a fix that made an access a visible step, written here as a
# variant (a plain access where the model now has a visible one).

def _take_request_plain(self: VCPU, req: str) -> bool:
    if req not in self.requests:  # the test as a plain read, before the visible step
        return False
    cpu = self._cpu
    with cpu:
        cpu.point(f"kvm_check_request {req}")
        self.requests.discard(req)
    return True


def _free_obsolete_root_plain(vcpu: Any) -> None:
    root = vcpu.root
    if root is None or not root.invalid:  # role.invalid as a plain read
        return
    vm = vcpu.vm
    with vm.mmu_lock.read():
        last = tdp_mmu.put_root(vm, root)
    vcpu.root = None
    if last:
        tdp_mmu.grace_period(vm)
        tdp_mmu._free_root(root)


def _set_vcpus_config_after_unlock(vm: Any, key: str, value: int) -> None:
    rt = runtime.active()
    with vm.lock:
        rt.point(vm.vcpus, "read vcpu_array", False)
        vcpus = list(vm.vcpus)
        for vcpu in vcpus:
            vcpu.mutex.lock_nest(vm.lock)
        try:
            for vcpu in vcpus:
                vcpu.config[key] = value
        finally:
            for vcpu in reversed(vcpus):
                vcpu.mutex.unlock()
    vm.vcpu_defaults = {**vm.vcpu_defaults, key: value}  # after kvm->lock is dropped


def _set_vcpus_config_under_lock(vm: Any, key: str, value: int) -> None:
    """The near miss of the one above: the same store, before the unlock."""
    rt = runtime.active()
    with vm.lock:
        rt.point(vm.vcpus, "read vcpu_array", False)
        vcpus = list(vm.vcpus)
        vm.vcpu_defaults = {**vm.vcpu_defaults, key: value}
        for vcpu in vcpus:
            vcpu.mutex.lock_nest(vm.lock)
        try:
            for vcpu in vcpus:
                vcpu.config[key] = value
        finally:
            for vcpu in reversed(vcpus):
                vcpu.mutex.unlock()


FAST_ZAP = "memslots.fast_zap_vs_running_vcpu.broken"  # (where DPOR missed the read)
CONFIG = "protected.vm_config_vs_create.correct"


def _plain_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """``VM.vcpu_defaults`` as a guarded field whose accesses are plain: the model makes each
    access a visible step, which the search orders every way (nothing for the audit to find)."""
    plain = guarded_by("lock")
    plain.__set_name__(VM, "vcpu_defaults")
    monkeypatch.setattr(VM, "vcpu_defaults", plain)


def _store_after_unlock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VM-wide vCPU setting stored just after kvm->lock is dropped, as a plain write."""
    _plain_defaults(monkeypatch)
    monkeypatch.setattr(ioctls, "set_vcpus_config", _set_vcpus_config_after_unlock)


def _post_and_check_request() -> None:
    """A vCPU checks for a request while another task posts it."""
    vm = VM(None, nr_vcpus=1)
    (v0,) = vm.vcpus
    together(lambda: v0.take_request("KVM_REQ_TEST"),
             lambda: v0.make_request("KVM_REQ_TEST", wait=False), names=["vcpu0", "poster"])


def test_request_test_as_plain_read_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    res = audit(_post_and_check_request, PATHS, runs=10)
    assert res.runs >= 2 and not _at(res, "VCPU.requests[]")  # the model: a visible step
    monkeypatch.setattr(VCPU, "take_request", _take_request_plain)
    hits = _at(audit(_post_and_check_request, PATHS, runs=10), "VCPU.requests[]")
    assert hits, "the plain test of a pending request was not flagged"
    assert any(s.function == "_take_request_plain" and not w
               for f in hits for s, w in ((f.first, f.first_write), (f.second, f.second_write)))


def test_role_invalid_as_plain_read_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _at(_audit(FAST_ZAP, runs=100), "TdpRoot.invalid")
    monkeypatch.setattr(tdp_mmu, "_free_obsolete_root", _free_obsolete_root_plain)
    # (DPOR's first 300 executions reach a run where the read is unordered: the zap's walk of
    # the roots list puts its own steps after the invalidation, which DPOR permutes first)
    hits = _at(_audit(FAST_ZAP, runs=400), "TdpRoot.invalid")
    assert hits, "the plain read of role.invalid was not flagged"
    assert {f.first.function for f in hits} | {f.second.function for f in hits} >= {
        "_free_obsolete_root_plain", "_invalidate_all_roots"}


def test_store_after_unlock_is_flagged_and_under_lock_is_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the model's field is visible: its store after the unlock is a step the search moves
    # around the vCPU creation's read (verify catches that mutant), not a finding here
    monkeypatch.setattr(ioctls, "set_vcpus_config", _set_vcpus_config_after_unlock)
    assert not _at(_audit(CONFIG), "VM.vcpu_defaults")
    _plain_defaults(monkeypatch)
    monkeypatch.setattr(ioctls, "set_vcpus_config", _set_vcpus_config_under_lock)
    assert not _at(_audit(CONFIG), "VM.vcpu_defaults")
    monkeypatch.setattr(ioctls, "set_vcpus_config", _set_vcpus_config_after_unlock)
    hits = _at(_audit(CONFIG), "VM.vcpu_defaults")
    assert hits, "a store after the unlock, racing KVM_CREATE_VCPU's read, was not flagged"
    assert any("_set_vcpus_config_after_unlock" in (f.first.function, f.second.function)
               for f in hits)


def test_verify_audit_command_reports_and_fails(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _store_after_unlock(monkeypatch)
    monkeypatch.setattr(verify, "AUDIT_PATHS", (*verify.AUDIT_PATHS, __file__))
    assert verify.main(["--audit", CONFIG]) == 1
    out = capsys.readouterr().out
    assert "VM.vcpu_defaults" in out and "_set_vcpus_config_after_unlock" in out


def test_verify_audit_bad_pattern_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--audit", "no.such.scenario"]) == 2
    assert "no scenario named" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a wait's condition

class _Kicked:
    """A sleeper waits for ``kicks``, a plain field; the waker changes it as a visible step."""

    def __init__(self) -> None:
        self.kicks = 0
        self.w = RCUWait("kicked")


def _kick_while_waiting(declared: bool) -> Callable[[], None]:
    def body() -> None:
        s = _Kicked()

        def kick() -> None:
            runtime.active().point(s, "kick", True)
            s.kicks += 1
            s.w.wake_up()

        together(lambda: s.w.wait(lambda: s.kicks > 0, reads=s if declared else None), kick,
                 names=["sleeper", "waker"])

    return body


def test_a_condition_checked_at_its_declared_read_is_ordered_and_an_undeclared_one_is_not(
) -> None:
    # RCUWait.wait evaluates the condition (traced code) right after its visible read of
    # ``reads``: that read is the check, as DPOR orders it against the waker's kick
    assert not _at(audit(_kick_while_waiting(True), PATHS, runs=10), "_Kicked.kicks")
    hits = _at(audit(_kick_while_waiting(False), PATHS, runs=10), "_Kicked.kicks")
    assert hits, "a condition read with no visible read of its own was not flagged"
    assert {f.first.function for f in hits} | {f.second.function for f in hits} >= {
        "<lambda>", "kick"}


# ----------------------------------------------------------------------------- container reads

class _Table:
    def __init__(self) -> None:
        self.counts: dict[int, int] = {}


def _lookup_while(change: bool) -> Callable[[], None]:
    def body() -> None:
        t = _Table()
        other = (lambda: t.counts.setdefault(1, 1)) if change else (lambda: t.counts.get(1, 0))
        together(lambda: t.counts.get(1, 0), other, names=["a", "b"])

    return body


def test_a_containers_own_non_mutating_method_reads_it() -> None:
    # dict.get hands the dict to untraced code, which is a read, not a possible write
    assert not audit(_lookup_while(False), PATHS, runs=4).findings
    assert _at(audit(_lookup_while(True), PATHS, runs=4), "_Table.counts[]")


# ----------------------------------------------------------------------------- declared benign

class _Counter:
    #: read by the audit: accesses of ``hits`` are a race on purpose, excused with this reason
    hits = data_racy("a statistic, read only after every task ended")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0


def _two_counters() -> None:
    c = _Counter()

    def bump() -> None:
        c.hits += 1
        c.misses += 1

    together(bump, bump, names=["a", "b"])


def test_a_declared_benign_race_is_excused_and_an_undeclared_one_is_not() -> None:
    res = audit(_two_counters, PATHS, runs=4)
    assert [f.location for f in res.findings] == ["_Counter.misses"]
    assert res.excused.get(("_Counter.hits", "a statistic, read only after every task ended"))


# ----------------------------------------------------------------------------- the model

#: families of correct rows that audit clean today: any new unordered plain access in them fails
CLEAN = ("access_track", "srcu", "tsc", "vendor", "msr_filter", "aging")


def _dirty(outcomes: list[Any]) -> dict[str, Any]:
    return {o.scenario.name: o.error or [str(f) for f in o.audit.findings]
            for o in outcomes if o.audit.findings or o.error}


def test_clean_families_stay_clean() -> None:
    outcomes = verify.audit_scenarios(verify.audit_selection(list(CLEAN)))
    assert len(outcomes) >= len(CLEAN)
    assert not _dirty(outcomes), _dirty(outcomes)


#: executions audited per row by the whole-model check below (``kvmlock verify --audit`` runs
#: twenty): the suite's budget, about 5 s of CPU for every correct row
SUITE_RUNS = 5


def test_every_correct_row_audits_clean() -> None:
    outcomes = verify.audit_scenarios(verify.audit_selection([]), runs=SUITE_RUNS)
    assert len(outcomes) == sum(1 for s in SCENARIOS.values() if s.expect == "pass")
    assert not _dirty(outcomes), _dirty(outcomes)


def test_the_whole_model_check_sees_a_reverted_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _store_after_unlock(monkeypatch)
    monkeypatch.setattr(verify, "AUDIT_PATHS", (*verify.AUDIT_PATHS, __file__))
    dirty = _dirty(verify.audit_scenarios(verify.audit_selection([CONFIG]), runs=SUITE_RUNS))
    assert CONFIG in dirty and "VM.vcpu_defaults" in str(dirty[CONFIG]), dirty


# ----------------------------------------------------------------------------- the verdict

def test_a_clean_audit_says_it_covered_a_sample_not_every_execution(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--audit", "--audit-runs", "2", CONFIG]) == 0
    out = capsys.readouterr().out
    verdict = out.strip().splitlines()[-1]
    assert "sample" in verdict and "not a proof" in verdict, out
    assert verify.main(["--audit", "--audit-runs", "2", "--json", CONFIG]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["verdict"] == "clean in sample" and rec["proof"] is False, rec
    assert "sample" in rec["coverage"] and "2" in rec["coverage"], rec


def test_an_audit_with_a_finding_says_so_in_its_verdict(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _store_after_unlock(monkeypatch)
    monkeypatch.setattr(verify, "AUDIT_PATHS", (*verify.AUDIT_PATHS, __file__))
    assert verify.main(["--audit", "--json", CONFIG]) == 1
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["verdict"] == "findings" and rec["findings"] and rec["proof"] is False, rec


# ------------------------------------------------------------------------ visible guarded fields

class _Published:
    """A field whose every access after the first is a visible step of the explorer."""

    value = guarded_by("lock", visible=True)

    def __init__(self) -> None:
        self.lock = Mutex("published.lock")
        self.value = 0


def _reader_and(writer: Callable[[_Published], None]) -> Callable[[], None]:
    def body() -> None:
        p = _Published()
        together(lambda: p.value, lambda: writer(p), names=["reader", "writer"])

    return body


def _store(p: _Published) -> None:
    p.value = 1  # a visible write (the field is set already)


def _drop_and_store(p: _Published) -> None:
    del p.value  # no visible step: a plain write of the field
    p.value = 1  # a first assignment again, a plain write too


def test_a_visible_fields_access_is_its_own_step_and_a_plain_one_is_flagged() -> None:
    # each access is a step DPOR orders both ways: nothing for the audit to find
    res = audit(_reader_and(_store), PATHS, runs=10)
    assert res.runs == 2 and not res.failures, res  # (both orders of the two steps)
    assert not _at(res, "_Published.value")
    res = audit(_reader_and(_drop_and_store), PATHS, runs=10)
    assert not res.failures, res
    hits = _at(res, "_Published.value")
    assert hits, "a write of a visible field made with no visible step was not flagged"
    assert any("_drop_and_store" in (f.first.function, f.second.function) for f in hits)


# ----------------------------------------------------------------------------- a container's length

class _Rows:
    def __init__(self) -> None:
        self.items: list[int] = [0, 0]
        self.index: dict[str, int] = {"a": 0}


def _length_while(change: Callable[[_Rows], None],
                  read: Callable[[_Rows], object] = lambda r: len(r.items)) -> Callable[[], None]:
    def body() -> None:
        r = _Rows()
        together(lambda: read(r), lambda: change(r), names=["reader", "changer"])

    return body


def _set_item(r: _Rows) -> None:
    r.items[1] = 7  # the length stays


def _append(r: _Rows) -> None:
    r.items.append(7)


def _pop(r: _Rows) -> None:
    r.items.pop()


def _del_item(r: _Rows) -> None:
    del r.items[0]


def _set_known_key(r: _Rows) -> None:
    r.index["a"] = 1  # a key the dict has: its length stays


def _add_key(r: _Rows) -> None:
    r.index["b"] = 1


def _truth(r: _Rows) -> object:
    return 1 if r.items else 0  # whether it is empty: its length


def _dict_len(r: _Rows) -> object:
    return len(r.index)


def _found_at(body: Callable[[], None], location: str) -> list[Any]:
    res = audit(body, PATHS, runs=4)
    assert res.runs >= 1 and not res.failures, res
    return _at(res, location)


@pytest.mark.parametrize("read", [lambda r: len(r.items), _truth], ids=["len", "truth"])
def test_a_length_read_conflicts_with_what_changes_the_length_only(
        read: Callable[[_Rows], object]) -> None:
    assert not _found_at(_length_while(_set_item, read), "_Rows.items[]")
    for change in (_append, _pop, _del_item):
        assert _found_at(_length_while(change, read), "_Rows.items[]"), change.__name__


def test_a_dicts_length_changes_with_a_new_key_not_with_a_known_one() -> None:
    assert not _found_at(_length_while(_set_known_key, _dict_len), "_Rows.index[]")
    assert _found_at(_length_while(_add_key, _dict_len), "_Rows.index[]")


def test_reading_every_item_still_conflicts_with_a_store_of_one() -> None:
    # (the near miss of the length read: iteration reads the items themselves)
    assert _found_at(_length_while(_set_item, lambda r: sum(r.items)), "_Rows.items[]")
    assert _found_at(_length_while(_set_item, lambda r: list(r.items)), "_Rows.items[]")


def _add_other_key(r: _Rows) -> None:
    r.index["c"] = 2


def test_two_new_keys_change_the_length_without_a_conflict_and_one_key_twice_has_one() -> None:
    # (the length grows by one either way round: only a read of it sees the order)
    def adding(second: Callable[[_Rows], None]) -> Callable[[], None]:
        def body() -> None:
            r = _Rows()
            together(lambda: _add_key(r), lambda: second(r), names=["a", "b"])
        return body

    assert not _found_at(adding(_add_other_key), "_Rows.index[]")
    assert _found_at(adding(_add_key), "_Rows.index[]")
