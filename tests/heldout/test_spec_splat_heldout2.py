# ruff: noqa: E501
"""Held-out checks of `kvmlock spec` and `kvmlock splat`, written from what the README,
docs/spec.md, docs/splat.md and `--help` promise, through the command line a user types.

The documents below are our own words in the locking.rst layout. The kernel logs are short
excerpts of public reports (each names its source); some stack frames are trimmed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KVMLOCK = shutil.which("kvmlock", path=str(Path(sys.executable).parent)) or shutil.which("kvmlock")


def run(*args: object, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KVMLOCK, "the kvmlock command is not installed"
    return subprocess.run(
        [KVMLOCK, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=300
    )


def run_json(*args: object, stdin: str | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    p = run(*args, "--json", stdin=stdin)
    try:
        return p, json.loads(p.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON (exit {p.returncode}): {p.stdout[-800:]} {p.stderr[-800:]}")


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    """Bad input: exit 2 and one line on stderr, never a traceback."""
    assert p.returncode == 2, (p.returncode, p.stdout[-400:], p.stderr[-400:])
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


# --------------------------------------------------------------------------------------------
# Documents (our own wording, locking.rst layout) and hand-written /proc/lockdep dumps
# --------------------------------------------------------------------------------------------

TITLE = """=====================
Locking in a toy VMM
=====================

"""

ORDERS_HEAD = """1. Acquisition Orders
---------------------

Locks are nested as follows.

- kvm->lock is taken outside vcpu->mutex

"""

REFERENCE = """
9. Reference
------------

``kvm->lock``
^^^^^^^^^^^^^

:Type:         mutex
:Arch:         any
:Protects:     - settings shared by the whole VM

``vcpu->mutex``
^^^^^^^^^^^^^^^

:Type:         mutex
:Arch:         any
:Protects:     - the state of one virtual CPU
"""


IRQ_LOCK_ENTRY = """
``kvm->irq_lock``
^^^^^^^^^^^^^^^^^

:Type:         mutex
:Arch:         any
:Protects:     - the interrupt routing table
"""


def document(rules: str, *, head: str = ORDERS_HEAD, tail: str = REFERENCE) -> str:
    return TITLE + head + rules + tail


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing `needle`."""
    for n, ln in enumerate(text.splitlines(), 1):
        if needle in ln:
            return n
    raise AssertionError(needle)


# A kernel that nests kvm->lock > vcpu->mutex > kvm->slots_lock > kvm->irq_lock, in the format
# of kernel/locking/lockdep_proc.c (l_show): "<key> FD: BD: <usage>: <name>", then " -> [key] name".
PROC_LOCKDEP = """all lock classes:
ffffffffc0a1b2c0 FD:    3 BD:    1 +.+.: &kvm->lock
 -> [ffffffffc0a1b2d0] &vcpu->mutex

ffffffffc0a1b2d0 FD:    2 BD:    2 +.+.: &vcpu->mutex
 -> [ffffffffc0a1b2e0] &kvm->slots_lock

ffffffffc0a1b2e0 FD:    1 BD:    3 +.+.: &kvm->slots_lock
 -> [ffffffffc0a1b2f0] &kvm->irq_lock

ffffffffc0a1b2f0 FD:    0 BD:    4 +.+.: &kvm->irq_lock

"""

# Same classes, as /proc/lockdep_chains prints them (lc_show): one block per held-lock stack.
PROC_CHAINS = """all lock chains:
irq_context: 0
[ffffffffc0a1b2c0] &kvm->lock
[ffffffffc0a1b2d0] &vcpu->mutex

irq_context: 0
[ffffffffc0a1b2d0] &vcpu->mutex
[ffffffffc0a1b2e0] &kvm->slots_lock

irq_context: 0
[ffffffffc0a1b2e0] &kvm->slots_lock
[ffffffffc0a1b2f0] &kvm->irq_lock

"""


@pytest.fixture
def dump(tmp_path: Path) -> Path:
    p = tmp_path / "lockdep"
    p.write_text(PROC_LOCKDEP)
    return p


def check_doc(tmp_path: Path, dump: Path, text: str | bytes, *extra: object):
    doc = tmp_path / "locking.rst"
    if isinstance(text, bytes):
        doc.write_bytes(text)
    else:
        doc.write_text(text)
    return run_json("spec", "check", doc, "--proc-lockdep", dump, *extra)


def violated_rules(j: dict) -> list[dict]:
    return [r for r in j.get("rules", []) if r["status"] == "violated"]


def assert_slots_before_lock_read(p, j, line: int) -> None:
    """The document says kvm->slots_lock goes outside kvm->lock; the dump nests it inside
    (kvm->lock -> vcpu->mutex -> kvm->slots_lock). Read correctly, that is a violation at
    `line`, exit 1."""
    assert p.returncode == 1, (p.returncode, j.get("incomplete"), j.get("rules"))
    assert j["ok"] is False and j["complete"] is True
    hits = [
        r for r in violated_rules(j)
        if r["line"] == line and r["kind"] == "order"
        and r["rule"].startswith("kvm->slots_lock") and "kvm->lock" in r["rule"]
    ]
    assert hits, j["rules"]
    assert hits[0]["path"][-1] == "vcpu->mutex -> kvm->slots_lock"


def assert_never_false_ok(p, j, line: int) -> None:
    """Either the rule at `line` was read (and is violated) or the verdict is incomplete and
    names that line. Never exit 0 / "ok": true with the rule dropped."""
    assert j["ok"] is False, f"false OK: the rule at line {line} was dropped silently: {j}"
    if p.returncode == 1 and j["complete"]:
        assert_slots_before_lock_read(p, j, line)
        return
    assert p.returncode == 2 and j["complete"] is False, (p.returncode, j)
    assert any(f"line {line}" in reason for reason in j["incomplete"]), j["incomplete"]


# --------------------------------------------------------------------------------------------
# spec: phrasings the docs promise, read exactly
# --------------------------------------------------------------------------------------------

PROMISED = {
    "must_be_acquired_before": "- kvm->slots_lock must always be acquired before kvm->lock.\n",
    "nests_inside": "- kvm->lock nests inside kvm->slots_lock\n",
    "arrow": "- kvm->slots_lock -> kvm->lock\n",
    "can_taken_outside_sic": "- kvm->slots_lock can taken outside kvm->lock\n",
    "taken_after": "- kvm->lock is taken after kvm->slots_lock\n",
    "acquired_while_holding": "- kvm->lock is acquired while holding kvm->slots_lock\n",
    "split_over_two_lines": "- kvm->slots_lock is taken\n  outside kvm->lock, though rarely\n",
    "tab_continuation": "- kvm->slots_lock is taken\n\toutside kvm->lock\n",
    "space_then_tab_continuation": "- kvm->slots_lock is taken\n \toutside kvm->lock\n",
    "six_space_continuation": "- kvm->slots_lock is taken\n      outside kvm->lock\n",
    "nested_bullet": "- On every architecture:\n\n  - kvm->slots_lock is taken outside kvm->lock\n",
}


@pytest.mark.parametrize("form", sorted(PROMISED))
def test_promised_phrasing_is_read_as_the_order_it_states(tmp_path, dump, form):
    text = document(PROMISED[form])
    p, j = check_doc(tmp_path, dump, text)
    assert_slots_before_lock_read(p, j, line_of(text, "kvm->slots_lock"))


def test_arrow_chain_gives_one_order_per_arrow(tmp_path, dump):
    text = document("- kvm->slots_lock -> kvm->lock -> kvm->irq_lock\n")
    p, j = check_doc(tmp_path, dump, text)
    assert p.returncode == 1
    n = line_of(text, "kvm->irq_lock")
    rules = {r["rule"]: r["status"] for r in j["rules"] if r["line"] == n}
    # the first arrow is broken by the dump, the second one is not
    assert rules.get("kvm->slots_lock is taken outside kvm->lock") == "violated", rules
    assert rules.get("kvm->lock is taken outside kvm->irq_lock") == "held", rules


def test_crlf_and_bom_read_the_same_rules_on_the_same_lines(tmp_path, dump):
    text = document(PROMISED["split_over_two_lines"])
    p0, j0 = check_doc(tmp_path, dump, text)
    for raw in (text.replace("\n", "\r\n").encode(), b"\xef\xbb\xbf" + text.encode()):
        p, j = check_doc(tmp_path, dump, raw)
        assert p.returncode == p0.returncode == 1
        assert [(r["line"], r["rule"], r["status"]) for r in j["rules"]] == [
            (r["line"], r["rule"], r["status"]) for r in j0["rules"]
        ]


# --------------------------------------------------------------------------------------------
# spec: forms a real document may use -- read, or said to be unread; never dropped
# --------------------------------------------------------------------------------------------

UNUSUAL = {
    "prose_paragraph": "Whoever needs both must grab kvm->slots_lock first and kvm->lock second.\n",
    "note_admonition": ".. note:: kvm->slots_lock is taken outside kvm->lock.\n",
    "definition_list": "Memory slots\n    kvm->slots_lock is taken outside kvm->lock.\n",
    "grid_table": (
        "+----------------------------------------------+-----------+\n"
        "| rule                                         | how often |\n"
        "+==============================================+===========+\n"
        "| kvm->slots_lock is taken outside kvm->lock   | rarely    |\n"
        "+----------------------------------------------+-----------+\n"
    ),
    "field_list": ":Slots: kvm->slots_lock is taken outside kvm->lock.\n",
    "line_block": "| kvm->slots_lock is taken outside kvm->lock\n",
    "literal_block_diagram": "The nesting, outermost first::\n\n    kvm->slots_lock -> kvm->lock\n",
}


@pytest.mark.parametrize("form", sorted(UNUSUAL))
def test_unusual_form_is_read_or_reported_unread(tmp_path, dump, form):
    text = document(UNUSUAL[form])
    p, j = check_doc(tmp_path, dump, text)
    assert_never_false_ok(p, j, line_of(text, "kvm->slots_lock"))


def test_rule_in_a_section_with_an_unusual_title_is_never_dropped(tmp_path, dump):
    extra = (
        "\n2. When two VM locks meet\n"
        "-------------------------\n\n"
        "kvm->slots_lock is taken outside kvm->lock.\n"
    )
    text = document(extra)
    p, j = check_doc(tmp_path, dump, text)
    assert_never_false_ok(p, j, line_of(text, "kvm->slots_lock"))


def blame_view(text: str) -> str:
    """What copying a web blame view gives: commit subject, author and age before runs of
    lines, a line-number line before each line, and no indentation left."""
    out: list[str] = []
    for n, ln in enumerate(text.splitlines(), 1):
        if n % 7 == 1:
            out += ["KVM: document the order of the memslot locks", "A. Developer", "3 years ago"]
        out += [str(n), ln.lstrip()]
    return "\n".join(out) + "\n"


def test_blame_view_export_reads_the_clean_files_rules_or_says_it_could_not(tmp_path, dump):
    text = document(
        "- vcpu->mutex is taken outside kvm->slots_lock\n\n"
        "- kvm->slots_lock is taken\n  outside kvm->irq_lock, though acquiring\n  them together is rare.\n\n"
        "- kvm->slots_lock must always be acquired before kvm->lock.\n"
    )
    p0, j0 = check_doc(tmp_path, dump, text)

    def rules(j: dict) -> list[tuple[str, str]]:
        # "(implied by lines a, b)" names the lines of the file read, which differ
        return [(r["rule"].split(" (implied")[0], r["status"]) for r in j["rules"]]

    clean = rules(j0)
    assert p0.returncode == 1 and len(clean) >= 4, clean
    p, j = check_doc(tmp_path, dump, blame_view(text))
    assert j["ok"] is False
    if j["complete"]:
        assert p.returncode == 1
        assert rules(j) == clean
    else:
        assert p.returncode == 2 and j["incomplete"]


# --------------------------------------------------------------------------------------------
# spec: documents that must never pass
# --------------------------------------------------------------------------------------------


def test_orders_section_with_prose_only_is_incomplete(tmp_path, dump):
    text = document(
        "Please think twice before adding a lock here, and ask on the list first.\n",
        head=ORDERS_HEAD.replace("- kvm->lock is taken outside vcpu->mutex\n\n", ""),
    )
    p, j = check_doc(tmp_path, dump, text)
    assert p.returncode == 2
    assert j["ok"] is False and j["complete"] is False
    assert any("no rules" in reason for reason in j["incomplete"]), j["incomplete"]
    out = run("spec", "check", tmp_path / "locking.rst", "--proc-lockdep", dump)
    assert out.returncode == 2 and "INCOMPLETE" in out.stdout and "OK:" not in out.stdout


def test_page_of_prose_without_sections_is_not_a_locking_document(tmp_path, dump):
    text = "Notes on locks\n==============\n\nWe take kvm->lock before vcpu->mutex, mostly.\n"
    p, j = check_doc(tmp_path, dump, text)
    assert p.returncode == 2 and j["ok"] is False and j["complete"] is False


def test_the_projects_readme_is_not_a_locking_document(tmp_path, dump):
    readme = Path(__file__).resolve().parents[2] / "README.md"
    p, j = run_json("spec", "check", readme, "--proc-lockdep", dump)
    assert p.returncode == 2 and j["ok"] is False and j["complete"] is False
    plain = run("spec", "check", readme, "--proc-lockdep", dump)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr + plain.stdout
    assert "OK:" not in plain.stdout


def test_empty_document_is_not_ok(tmp_path, dump):
    p, j = check_doc(tmp_path, dump, "")
    assert p.returncode == 2 and j["ok"] is False and j["complete"] is False


def test_binary_document_gives_one_line_error(tmp_path, dump):
    doc = tmp_path / "locking.rst"
    doc.write_bytes(bytes(range(256)) * 4)
    msg = one_line_error(run("spec", "check", doc, "--proc-lockdep", dump))
    assert "locking.rst" in msg and "binary" in msg


def test_document_over_the_size_limit_gives_one_line_error(tmp_path, dump):
    doc = tmp_path / "locking.rst"
    filler = "A paragraph of filler that states no rule at all.\n\n" * 90_000  # ~4.6 MB
    doc.write_text(document("- kvm->slots_lock -> kvm->lock\n\n" + filler))
    assert doc.stat().st_size > 4 * 1024 * 1024
    msg = one_line_error(run("spec", "show", doc))
    assert "locking.rst" in msg and "MiB" in msg


# --------------------------------------------------------------------------------------------
# spec: rules a /proc/lockdep dump cannot decide make the verdict incomplete
# --------------------------------------------------------------------------------------------


def test_srcu_rule_a_proc_lockdep_dump_cannot_decide_is_unchecked_and_incomplete(tmp_path):
    # kvm->lock -> kvm->srcu: synchronize_srcu under kvm->lock, or a read side entered under
    # it? The dump does not say, and only the first breaks the older SRCU rule.
    dump = _write(tmp_path, "lockdep", """all lock classes:
ffffffffc0a1b2c0 FD:    2 BD:    1 +.+.: &kvm->lock
 -> [ffffffffc0a1b2d0] &vcpu->mutex
 -> [ffffffffc0a1b2b0] &kvm->srcu

ffffffffc0a1b2b0 FD:    0 BD:    2 ....: &kvm->srcu

ffffffffc0a1b2d0 FD:    0 BD:    2 +.+.: &vcpu->mutex

""")
    text = document(
        "For SRCU:\n\n"
        "- kvm->lock is taken inside kvm->srcu, therefore ``synchronize_srcu(&kvm->srcu)`` "
        "cannot be called inside a kvm->lock critical section.\n"
    )
    p, j = check_doc(tmp_path, dump, text)
    srcu = [r for r in j["rules"] if "srcu" in r["rule"]]
    assert srcu and all(r["status"] == "unchecked" for r in srcu), j["rules"]
    assert p.returncode == 2 and j["ok"] is False and j["complete"] is False
    assert any(f"line {srcu[0]['line']}" in reason for reason in j["incomplete"])


# --------------------------------------------------------------------------------------------
# spec check --proc-lockdep / --chains, --accept, spec diff
# --------------------------------------------------------------------------------------------


def test_proc_lockdep_reports_held_violated_not_exercised_and_unmentioned(tmp_path, dump):
    text = document(
        "- vcpu->mutex is taken outside kvm->slots_lock\n\n"
        "- kvm->lock is taken outside kvm->mmu_lock\n\n"
        "- kvm->mmu_lock is taken outside vcpu->mutex\n",
        tail=REFERENCE + IRQ_LOCK_ENTRY,
    )
    p, j = check_doc(tmp_path, dump, text)
    status = {r["rule"]: (r["status"], r["line"]) for r in j["rules"]}
    assert status["kvm->lock is taken outside vcpu->mutex"][0] == "held"
    assert status["vcpu->mutex is taken outside kvm->slots_lock"][0] == "held"
    assert status["kvm->lock is taken outside kvm->mmu_lock"][0] == "not exercised"
    assert p.returncode == 0 and j["ok"] is True
    # kvm->slots_lock -> kvm->irq_lock: both locks documented, no rule covers that nesting
    assert j["unmentioned_dependencies"] == ["kvm->slots_lock -> kvm->irq_lock"], j[
        "unmentioned_dependencies"]
    # the same dump against a rule it breaks
    text = document("- kvm->irq_lock is taken outside vcpu->mutex\n")
    p, j = check_doc(tmp_path, dump, text)
    status = {r["rule"]: (r["status"], r["line"]) for r in j["rules"]}
    assert status["kvm->irq_lock is taken outside vcpu->mutex"] == (
        "violated", line_of(text, "kvm->irq_lock is taken"))
    assert p.returncode == 1


def test_requires_rule_needs_the_chains_dump(tmp_path, dump):
    text = document(
        "- kvm->irq_lock is taken inside kvm->slots_lock, and cannot be taken without "
        "already holding kvm->slots_lock\n"
    )
    doc = tmp_path / "locking.rst"
    doc.write_text(text)
    p, j = run_json("spec", "check", doc, "--proc-lockdep", dump)
    assert p.returncode == 2 and j["complete"] is False
    assert any(r["status"] == "unchecked" for r in j["rules"]), j["rules"]
    chains = tmp_path / "lockdep_chains"
    chains.write_text(PROC_CHAINS)
    p, j = run_json("spec", "check", doc, "--proc-lockdep", dump, "--chains", chains)
    assert p.returncode == 0 and j["ok"] is True and j["complete"] is True, j
    assert not any(r["status"] in ("unchecked", "violated") for r in j["rules"]), j["rules"]


def test_accept_waives_known_violation_and_reports_a_stale_waiver(tmp_path, dump):
    text = document("- kvm->slots_lock must always be acquired before kvm->lock.\n")
    accept = tmp_path / "known.txt"
    accept.write_text(
        "# known\n"
        "vcpu->mutex -> kvm->slots_lock: the toy VMM still nests slots inside the vCPU lock\n"
        "kvm->irq_lock -> kvm->lock: fixed long ago, kept by mistake\n"
    )
    p, j = check_doc(tmp_path, dump, text, "--accept", accept)
    assert p.returncode == 0 and j["ok"] is True, j
    assert j["counts"]["accepted"] >= 1 and j["counts"]["violated"] == 0
    assert any("kvm->irq_lock -> kvm->lock" in json.dumps(u) for u in j["unused_accepts"]), j[
        "unused_accepts"]
    assert not any("kvm->slots_lock" in json.dumps(u) for u in j["unused_accepts"])
    # a waiver for some other violation leaves the check failing
    accept.write_text("kvm->irq_lock -> kvm->lock: unrelated\n")
    p, j = check_doc(tmp_path, dump, text, "--accept", accept)
    assert p.returncode == 1 and j["ok"] is False


def test_accept_line_without_reason_is_a_one_line_error(tmp_path, dump):
    doc = tmp_path / "locking.rst"
    doc.write_text(document("- kvm->slots_lock -> kvm->lock\n"))
    accept = tmp_path / "known.txt"
    accept.write_text("vcpu->mutex -> kvm->slots_lock\n")
    msg = one_line_error(run("spec", "check", doc, "--proc-lockdep", dump, "--accept", accept))
    assert "known.txt" in msg


def test_spec_diff_shows_a_reversed_rule_and_an_added_one(tmp_path):
    old = tmp_path / "old.rst"
    new = tmp_path / "new.rst"
    old.write_text(document("- vcpu->mutex is taken outside kvm->slots_lock\n"))
    new.write_text(document(
        "- kvm->slots_lock is taken outside vcpu->mutex\n\n"
        "- kvm->slots_lock is taken outside kvm->irq_lock\n"
    ))
    p, j = run_json("spec", "diff", old, new)
    assert p.returncode in (0, 1), p.stderr
    text = json.dumps(j)
    assert "reversed" in text and "added" in text, text[:2000]
    plain = run("spec", "diff", old, new)
    assert "reversed" in plain.stdout and "kvm->irq_lock" in plain.stdout
    same = run("spec", "diff", old, old)
    assert "reversed" not in same.stdout and "added" not in same.stdout


# --------------------------------------------------------------------------------------------
# bad input to spec and splat
# --------------------------------------------------------------------------------------------


def test_missing_files_and_directories_give_one_line_errors(tmp_path, dump):
    gone = tmp_path / "nope.rst"
    assert "nope.rst" in one_line_error(run("spec", "show", gone))
    assert "nope.rst" in one_line_error(run("spec", "check", gone, "--proc-lockdep", dump))
    assert "nope.rst" in one_line_error(run("splat", gone))
    assert str(tmp_path) in one_line_error(run("splat", tmp_path))
    assert str(tmp_path) in one_line_error(run("spec", "lint", tmp_path))
    doc = tmp_path / "locking.rst"
    doc.write_text(document(""))
    assert "lockdep.missing" in one_line_error(
        run("spec", "check", doc, "--proc-lockdep", tmp_path / "lockdep.missing"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_gives_one_line_error(tmp_path):
    log = tmp_path / "dmesg.txt"
    log.write_text(S390_TOD)
    log.chmod(0)
    assert "dmesg.txt" in one_line_error(run("splat", log))


def test_wrong_format_for_proc_lockdep_gives_one_line_error(tmp_path):
    doc = tmp_path / "locking.rst"
    doc.write_text(document(""))
    notdump = tmp_path / "lockdep"
    notdump.write_text(S390_TOD)  # a kernel log, not a /proc/lockdep dump
    p = run("spec", "check", doc, "--proc-lockdep", notdump)
    assert "lockdep" in one_line_error(p)


def test_splat_doc_that_is_not_a_locking_document_is_refused(tmp_path):
    log = tmp_path / "dmesg.txt"
    log.write_text(S390_TOD)
    notdoc = tmp_path / "notes.rst"
    notdoc.write_text("Some notes\n==========\n\nNothing about locks.\n")
    assert "notes.rst" in one_line_error(run("splat", log, "--doc", notdoc))


# --------------------------------------------------------------------------------------------
# Splats: real excerpts
# --------------------------------------------------------------------------------------------

# kvm@vger.kernel.org, Message-Id <20220223102000.3733712-2-mimu@linux.ibm.com>
# https://lore.kernel.org/kvm/20220223102000.3733712-2-mimu@linux.ibm.com/ (dmesg timestamps)
S390_TOD = """[  319.799638] ======================================================
[  319.799639] WARNING: possible circular locking dependency detected
[  319.799641] 5.17.0-rc5-08427-gfd14b6309198 #4661 Not tainted
[  319.799643] ------------------------------------------------------
[  319.799644] qemu-system-s39/14220 is trying to acquire lock:
[  319.799646] 00000000b30c0b50 (&kvm->lock){+.+.}-{3:3}, at: kvm_s390_set_tod_clock+0x36/0x250
[  319.799659]
               but task is already holding lock:
[  319.799660] 00000000b5beda60 (&vcpu->mutex){+.+.}-{3:3}, at: kvm_vcpu_ioctl+0x9a/0x958
[  319.799665]
               which lock already depends on the new lock.

[  319.799667]
               the existing dependency chain (in reverse order) is:
[  319.799668]
               -> #1 (&vcpu->mutex){+.+.}-{3:3}:
[  319.799671]        __mutex_lock+0x8a/0x798
[  319.799677]        mutex_lock_nested+0x32/0x40
[  319.799679]        kvm_arch_vm_ioctl+0x1902/0x2c58
[  319.799682]        kvm_vm_ioctl+0x5b0/0xa80
[  319.799685]        __s390x_sys_ioctl+0xbe/0x100
[  319.799688]        __do_syscall+0x1da/0x208
[  319.799689]        system_call+0x82/0xb0
[  319.799692]
               -> #0 (&kvm->lock){+.+.}-{3:3}:
[  319.799694]        __lock_acquire+0x1916/0x2e70
[  319.799699]        lock_acquire+0x164/0x388
[  319.799702]        __mutex_lock+0x8a/0x798
[  319.799757]        mutex_lock_nested+0x32/0x40
[  319.799759]        kvm_s390_set_tod_clock+0x36/0x250
[  319.799761]        kvm_s390_handle_b2+0x6cc/0x26f0
[  319.799764]        kvm_handle_sie_intercept+0x1fe/0xe98
[  319.799765]        kvm_arch_vcpu_ioctl_run+0xec8/0x1880
[  319.799768]        kvm_vcpu_ioctl+0x29e/0x958
[  319.799769]        __s390x_sys_ioctl+0xbe/0x100
[  319.799771]        __do_syscall+0x1da/0x208
[  319.799773]        system_call+0x82/0xb0
[  319.799774]
               other info that might help us debug this:

[  319.799776]  Possible unsafe locking scenario:

[  319.799777]        CPU0                    CPU1
[  319.799778]        ----                    ----
[  319.799779]   lock(&vcpu->mutex);
[  319.799780]                                lock(&kvm->lock);
[  319.799782]                                lock(&vcpu->mutex);
[  319.799783]   lock(&kvm->lock);
[  319.799784]
                *** DEADLOCK ***

[  319.799785] 2 locks held by qemu-system-s39/14220:
[  319.799787]  #0: 00000000b5beda60 (&vcpu->mutex){+.+.}-{3:3}, at: kvm_vcpu_ioctl+0x9a/0x958
[  319.799791]  #1: 00000000b30c4588 (&kvm->srcu){....}-{0:0}, at: kvm_arch_vcpu_ioctl_run+0x6f2/0x1880
[  319.799796]
               stack backtrace:
[  319.799798] CPU: 5 PID: 14220 Comm: qemu-system-s39 Not tainted 5.17.0-rc5-08427-gfd14b6309198 #4661
[  319.799801] Hardware name: IBM 8561 T01 701 (LPAR)
[  319.799802] Call Trace:
[  319.799803]  [<000000020d7410de>] dump_stack_lvl+0x76/0x98
[  319.799808]  [<000000020cbbd268>] check_noncircular+0x140/0x160
[  319.799836] INFO: lockdep is turned off.
"""

# kvm@vger.kernel.org, David Woodhouse, 10 Jan 2023, "Re: [PATCH 1/2] KVM: x86: Fix deadlock in
# kvm_vm_ioctl_set_msr_filter()", Message-ID <825aef8e14c1aeaf1870ac3e1510a6e1fe71129d.camel@infradead.org>
# The body as sent: quoted-printable (=3D, =20, soft line breaks). Frames of #3..#2 trimmed.
XEN_GPC_QP = """Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

What I got when I ran xen_shinfo_test was... not what I expected:


[13890.148203] =3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=
=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=3D=
=3D=3D=3D=3D=3D=3D=3D=3D=3D
[13890.148205] WARNING: possible circular locking dependency detected
[13890.148207] 6.1.0-rc4+ #1024 Tainted: G          I E    =20
[13890.148209] ------------------------------------------------------
[13890.148210] xen_shinfo_test/13326 is trying to acquire lock:
[13890.148212] ffff888107d493b0 (&gpc->lock){....}-{2:2}, at: kvm_xen_updat=
e_runstate_guest+0xf2/0x4e0 [kvm]
[13890.148285]=20
               but task is already holding lock:
[13890.148287] ffff88887f671718 (&rq->__lock){-.-.}-{2:2}, at: __schedule+0=
x84/0x7c0
[13890.148295]=20
               which lock already depends on the new lock.

[13890.148296]=20
               the existing dependency chain (in reverse order) is:
[13890.148298]=20
               -> #4 (&rq->__lock){-.-.}-{2:2}:
[13890.148301]        __lock_acquire+0x4b4/0x940
[13890.148306]        lock_acquire.part.0+0xa8/0x210
[13890.148309]        _raw_spin_lock_nested+0x35/0x50
[13890.148313]        raw_spin_rq_lock_nested+0x23/0x30
[13890.148318]        task_fork_fair+0x45/0x170
[13890.148349]=20
               -> #3 (&p->pi_lock){-.-.}-{2:2}:
[13890.148352]        __lock_acquire+0x4b4/0x940
[13890.148357]        __raw_spin_lock_irqsave+0x44/0x60
[13890.148360]        try_to_wake_up+0x69/0x360
[13890.148378]=20
               -> #2 (&pool->lock){-.-.}-{2:2}:
[13890.148381]        __lock_acquire+0x4b4/0x940
[13890.148386]        _raw_spin_lock+0x2f/0x40
[13890.148389]        __queue_work+0x1a1/0x490
[13890.148432]=20
               -> #1 (lock#4){+.+.}-{2:2}:
[13890.148436]        __lock_acquire+0x4b4/0x940
[13890.148439]        lock_acquire.part.0+0xa8/0x210
[13890.148441]        folio_mark_accessed+0x8d/0x1a0
[13890.148444]        kvm_release_page_clean+0x89/0xb0 [kvm]
[13890.148485]        hva_to_pfn_retry+0x296/0x2d0 [kvm]
[13890.148704]=20
               -> #0 (&gpc->lock){....}-{2:2}:
[13890.148708]        check_prev_add+0x8f/0xc20
[13890.148710]        validate_chain+0x3ba/0x450
[13890.148713]        __lock_acquire+0x4b4/0x940
[13890.148715]        lock_acquire.part.0+0xa8/0x210
[13890.148717]        __raw_read_lock_irqsave+0x7f/0xa0
[13890.148720]        kvm_xen_update_runstate_guest+0xf2/0x4e0 [kvm]
[13890.148771]        kvm_arch_vcpu_put+0x1d4/0x250 [kvm]
[13890.148996]=20
               other info that might help us debug this:

[13890.148997] Chain exists of:
                 &gpc->lock --> &p->pi_lock --> &rq->__lock

[13890.149002]  Possible unsafe locking scenario:

[13890.149003]        CPU0                    CPU1
[13890.149004]        ----                    ----
[13890.149005]   lock(&rq->__lock);
[13890.149007]                                lock(&p->pi_lock);
[13890.149009]                                lock(&rq->__lock);
[13890.149011]   lock(&gpc->lock);
[13890.149013]=20
                *** DEADLOCK ***

[13890.149014] 3 locks held by xen_shinfo_test/13326:
[13890.149016]  #0: ffff888107d480b0 (&vcpu->mutex){+.+.}-{3:3}, at: kvm_vc=
pu_ioctl+0x77/0x700 [kvm]
[13890.149057]  #1: ffff88887f671718 (&rq->__lock){-.-.}-{2:2}, at: __sched=
ule+0x84/0x7c0
[13890.149064]  #2: ffffc900017c5860 (&kvm->srcu){....}-{0:0}, at: kvm_arch=
_vcpu_put+0x2a/0x250 [kvm]
[13890.149109]=20
               stack backtrace:
[13890.149111] CPU: 1 PID: 13326 Comm: xen_shinfo_test Tainted: G          =
I E      6.1.0-rc4+ #1024
"""

# kvm@vger.kernel.org, Paul Durrant's review of "[PATCH ...] KVM: x86/xen: ..." (In-Reply-To
# <20240217114017.11551-6-dwmw2@infradead.org>): the splat as quoted with "> " in the reply.
XEN_RECURSIVE_QUOTED = """On 17/02/2024 11:27, David Woodhouse wrote:
> From: David Woodhouse <dwmw@amazon.co.uk>
>
> The fast-path timer delivery introduced a recursive locking deadlock
> when userspace configures a timer which has already expired and is
> delivered immediately. The call to kvm_xen_inject_timer_irqs() can
> call to kvm_xen_set_evtchn() which may take kvm->arch.xen.xen_lock,
> which is already held in kvm_xen_vcpu_get_attr().
>
>   ============================================
>   WARNING: possible recursive locking detected
>   6.8.0-smp--5e10b4d51d77-drs #232 Tainted: G           O
>   --------------------------------------------
>   xen_shinfo_test/250013 is trying to acquire lock:
>   ffff938c9930cc30 (&kvm->arch.xen.xen_lock){+.+.}-{3:3}, at: kvm_xen_set_evtchn+0x74/0x170 [kvm]
>
>   but task is already holding lock:
>   ffff938c9930cc30 (&kvm->arch.xen.xen_lock){+.+.}-{3:3}, at: kvm_xen_vcpu_get_attr+0x38/0x250 [kvm]
>
> Now that the gfn_to_pfn_cache has its own self-sufficient locking, its
> callers no longer need to ensure serialization, so just stop taking
> kvm->arch.xen.xen_lock from kvm_xen_set_evtchn().

Reviewed-by: Paul Durrant <paul@xen.org>
"""

# syzbot, "Re: possible deadlock in io_poll_double_wake (2)", Message-ID
# <000000000000a52fb105bc71e7b8@google.com> (syzkaller format: file:line per frame, the lock
# printed once per inlined frame). Call trace trimmed.
SYZBOT_RECURSIVE = """syzbot has tested the proposed patch but the reproducer is still triggering an issue:
possible deadlock in io_poll_double_wake

============================================
WARNING: possible recursive locking detected
5.11.0-syzkaller #0 Not tainted
--------------------------------------------
syz-executor.0/10241 is trying to acquire lock:
ffff888012e09130 (&runtime->sleep){..-.}-{2:2}, at: spin_lock include/linux/spinlock.h:354 [inline]
ffff888012e09130 (&runtime->sleep){..-.}-{2:2}, at: io_poll_double_wake+0x25f/0x6a0 fs/io_uring.c:4921

but task is already holding lock:
ffff888013b00130 (&runtime->sleep){..-.}-{2:2}, at: __wake_up_common_lock+0xb4/0x130 kernel/sched/wait.c:137

other info that might help us debug this:
 Possible unsafe locking scenario:

       CPU0
       ----
  lock(&runtime->sleep);
  lock(&runtime->sleep);

 *** DEADLOCK ***

 May be due to missing lock nesting notation

4 locks held by syz-executor.0/10241:
 #0: ffff88801b1ce128 (&ctx->uring_lock){+.+.}-{3:3}, at: __do_sys_io_uring_enter+0x1155/0x22b0 fs/io_uring.c:9139
 #1: ffffffff8b574460 (rcu_read_lock){....}-{1:2}, at: file_ctx security/apparmor/include/file.h:33 [inline]
 #1: ffffffff8b574460 (rcu_read_lock){....}-{1:2}, at: aa_file_perm+0x119/0x1100 security/apparmor/file.c:607
 #2: ffff888020842108 (&group->lock){..-.}-{2:2}, at: _snd_pcm_stream_lock_irqsave+0x9f/0xd0 sound/core/pcm_native.c:170
 #3: ffff888013b00130 (&runtime->sleep){..-.}-{2:2}, at: __wake_up_common_lock+0xb4/0x130 kernel/sched/wait.c:137

stack backtrace:
CPU: 1 PID: 10241 Comm: syz-executor.0 Not tainted 5.11.0-syzkaller #0
Hardware name: Google Google Compute Engine/Google Compute Engine, BIOS Google 01/01/2011
Call Trace:
 <IRQ>
 __dump_stack lib/dump_stack.c:79 [inline]
 dump_stack+0xfa/0x151 lib/dump_stack.c:120
"""

# kernel test robot, https://lore.kernel.org/oe-lkp/202401031032.b7d5324-oliver.sang@intel.com
# (printk caller ids "[  T141]", decoded stack lines). Frames and the backtrace trimmed; the
# backtrace's "? lock_sync" frame is kept: it is a stack frame, not a chain link.
LKP_INCONSISTENT = """[   75.968288][  T141] WARNING: inconsistent lock state
[   75.968550][  T141] 6.7.0-rc1-00006-g30ebdbe58c5b #1 Tainted: G        W        N
[   75.968946][  T141] --------------------------------
[   75.969208][  T141] inconsistent {IN-HARDIRQ-R} -> {HARDIRQ-ON-W} usage.
[   75.969556][  T141] systemd-udevd/141 [HC0[0]:SC0[0]:HE0:SE1] takes:
[ 75.969889][ T141] ffff888113a9d958 (&ep->lock){+-.-}-{2:2}, at: ep_start_scan (include/linux/list.h:373 (discriminator 31) include/linux/list.h:571 (discriminator 31) fs/eventpoll.c:628 (discriminator 31))
[   75.970329][  T141] {IN-HARDIRQ-R} state was registered at:
[ 75.970620][ T141] __lock_acquire (kernel/locking/lockdep.c:5090)
[ 75.970873][ T141] lock_acquire (kernel/locking/lockdep.c:467 kernel/locking/lockdep.c:5755)
[ 75.971113][ T141] _raw_read_lock_irqsave (include/linux/rwlock_api_smp.h:161 kernel/locking/spinlock.c:236)
[ 75.971387][ T141] ep_poll_callback (include/net/busy_poll.h:37 fs/eventpoll.c:434 fs/eventpoll.c:1178)
[   75.978644][  T141] irq event stamp: 226426
[ 75.978866][ T141] hardirqs last enabled at (226425): syscall_enter_from_user_mode_prepare (arch/x86/include/asm/irqflags.h:42 arch/x86/include/asm/irqflags.h:77 kernel/entry/common.c:122)
[ 75.979436][ T141] hardirqs last disabled at (226426): _raw_write_lock_irq (include/linux/rwlock_api_smp.h:193 kernel/locking/spinlock.c:326)
[   75.980892][  T141]
[   75.980892][  T141] other info that might help us debug this:
[   75.981299][  T141]  Possible unsafe locking scenario:
[   75.981299][  T141]
[   75.981676][  T141]        CPU0
[   75.981848][  T141]        ----
[   75.982019][  T141]   lock(&ep->lock);
[   75.982224][  T141]   <Interrupt>
[   75.982405][  T141]     lock(&ep->lock);
[   75.982617][  T141]
[   75.982617][  T141]  *** DEADLOCK ***
[   75.982617][  T141]
[   75.983028][  T141] 2 locks held by systemd-udevd/141:
[ 75.983299][ T141] #0: ffff888113a9d868 (&ep->mtx){+.+.}-{3:3}, at: ep_send_events (fs/eventpoll.c:1695)
[ 75.983758][ T141] #1: ffff888113a9d958 (&ep->lock){+-.-}-{2:2}, at: ep_start_scan (include/linux/list.h:373 (discriminator 31) include/linux/list.h:571 (discriminator 31) fs/eventpoll.c:628 (discriminator 31))
[   75.984215][  T141]
[   75.984215][  T141] stack backtrace:
[   75.984517][  T141] CPU: 1 PID: 141 Comm: systemd-udevd Tainted: G        W        N 6.7.0-rc1-00006-g30ebdbe58c5b #1
[   75.985777][  T141] Call Trace:
[   75.985950][  T141]  <TASK>
[ 75.986105][ T141] dump_stack_lvl (lib/dump_stack.c:107)
[ 75.986344][ T141] mark_lock_irq (kernel/locking/lockdep.c:4216)
[ 75.989473][ T141] ? lock_sync (kernel/locking/lockdep.c:5721)
[ 75.989706][ T141] do_raw_write_lock_irq (include/asm-generic/qrwlock.h:115 kernel/locking/spinlock_debug.c:217)
"""

# Upstream commit 3a70e0d4c9d7 ("net: lan966x: ..." , via the 6.2 stable review), commit message.
LAN966X_IRQ_INVERSION = """When doing timestamping in lan966x and having PROVE_LOCKING
enabled the following warning is shown.

========================================================
WARNING: possible irq lock inversion dependency detected
6.2.0-rc7-01749-gc54e1f7f7e36 #2786 Tainted: G                 N
--------------------------------------------------------
swapper/0/0 just changed the state of lock:
c2609f50 (_xmit_ETHER#2){+.-.}-{2:2}, at: sch_direct_xmit+0x16c/0x2e8
but this lock took another, SOFTIRQ-unsafe lock in the past:
 (&lan966x->ptp_ts_id_lock){+.+.}-{2:2}

and interrupts could create inverse lock ordering between them.

other info that might help us debug this:
 Possible interrupt unsafe locking scenario:

       CPU0                    CPU1
       ----                    ----
  lock(&lan966x->ptp_ts_id_lock);
                               local_irq_disable();
                               lock(_xmit_ETHER#2);
                               lock(&lan966x->ptp_ts_id_lock);
  <Interrupt>
    lock(_xmit_ETHER#2);

 *** DEADLOCK ***

"""

# syzbot, "Re: [syzbot] [fs?] possible deadlock in input_event (2)", Message-ID
# <0000000000009fe71c0616842b53@google.com>. Stacks trimmed; the per-class dependency listing
# after the held locks left out.
SYZBOT_HARDIRQ_SAFE_UNSAFE = """=====================================================
WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected
6.9.0-rc4-syzkaller-00214-g13a2e429f644-dirty #0 Not tainted
-----------------------------------------------------
syz-executor.0/5495 [HC0[0]:SC0[0]:HE0:SE1] is trying to acquire:
ffffffff8e00a058 (tasklist_lock){.+.+}-{2:2}, at: send_sigurg+0xee/0x3c0 fs/fcntl.c:851

and this task is already holding:
ffff88801c7f4398 (&f->f_owner.lock){....}-{2:2}, at: send_sigurg+0x29/0x3c0 fs/fcntl.c:835
which would create a new lock dependency:
 (&f->f_owner.lock){....}-{2:2} -> (tasklist_lock){.+.+}-{2:2}

but this new dependency connects a HARDIRQ-irq-safe lock:
 (&dev->event_lock#2){-...}-{2:2}

.. which became HARDIRQ-irq-safe at:
  lock_acquire+0x1ed/0x550 kernel/locking/lockdep.c:5754
  _raw_spin_lock_irqsave+0xd5/0x120 kernel/locking/spinlock.c:162
  input_event+0x91/0xd0 drivers/input/input.c:434

to a HARDIRQ-irq-unsafe lock:
 (tasklist_lock){.+.+}-{2:2}

.. which became HARDIRQ-irq-unsafe at:
..
  lock_acquire+0x1ed/0x550 kernel/locking/lockdep.c:5754
  _raw_read_lock+0x36/0x50 kernel/locking/spinlock.c:228
  __do_wait+0x12d/0x850 kernel/exit.c:1587

other info that might help us debug this:

Chain exists of:
  &dev->event_lock#2 --> &f->f_owner.lock --> tasklist_lock

 Possible interrupt unsafe locking scenario:

       CPU0                    CPU1
       ----                    ----
  lock(tasklist_lock);
                               local_irq_disable();
                               lock(&dev->event_lock#2);
                               lock(&f->f_owner.lock);
  <Interrupt>
    lock(&dev->event_lock#2);

 *** DEADLOCK ***

2 locks held by syz-executor.0/5495:
 #0: ffff88802b50d058 (sk_lock-AF_INET6){+.+.}-{0:0}, at: lock_sock include/net/sock.h:1671 [inline]
 #0: ffff88802b50d058 (sk_lock-AF_INET6){+.+.}-{0:0}, at: tcp_sendmsg+0x22/0x50 net/ipv4/tcp.c:1341
 #1: ffff88801c7f4398 (&f->f_owner.lock){....}-{2:2}, at: send_sigurg+0x29/0x3c0 fs/fcntl.c:835

"""

# syzbot report, Reported-by: syzbot+52343d77314d6c0447fe@syzkaller.appspotmail.com (mremap).
SYZBOT_BAD_UNLOCK = """=====================================
WARNING: bad unlock balance detected!
6.16.0-rc2-next-20250616-syzkaller #0 Not tainted
-------------------------------------
syz-executor359/6969 is trying to release lock (&mapping->i_mmap_rwsem) at:
[<ffffffff82104277>] i_mmap_unlock_write include/linux/fs.h:557 [inline]
[<ffffffff82104277>] maybe_drop_rmap_locks mm/mremap.c:197 [inline]
[<ffffffff82104277>] move_pgt_entry+0xfa7/0x1170 mm/mremap.c:686
but there are no more locks to release!

other info that might help us debug this:
1 lock held by syz-executor359/6969:
 #0: ffff88802f641760 (&mm->mmap_lock){++++}-{4:4}, at: mmap_write_lock_killable include/linux/mmap_lock.h:374 [inline]
 #0: ffff88802f641760 (&mm->mmap_lock){++++}-{4:4}, at: do_mremap mm/mremap.c:2371 [inline]
 #0: ffff88802f641760 (&mm->mmap_lock){++++}-{4:4}, at: __do_sys_mremap mm/mremap.c:2453 [inline]
 #0: ffff88802f641760 (&mm->mmap_lock){++++}-{4:4}, at: __se_sys_mremap+0x3c0/0xc60 mm/mremap.c:242

stack backtrace:
"""

# Upstream commit 3531b27f1f04 ("cxl/region: Fix cxl_region_rwsem lock held when returning to
# user space"), commit message (indented as quoted there).
CXL_HELD_AT_EXIT = """Fix a missed "goto out" to unlock on error to cleanup this splat:

    WARNING: lock held when returning to user space!
    6.6.0-rc3-lizhijian+ #213 Not tainted
    ------------------------------------------------
    cxl/673 is leaving the kernel with locks still held!
    1 lock held by cxl/673:
     #0: ffffffffa013b9d0 (cxl_region_rwsem){++++}-{3:3}, at: commit_store+0x7d/0x3e0 [cxl_core]

In terms of user visible impact of this bug for backports:
"""

# Upstream commit 95d848dc7e63 ("KVM: x86: Add SRCU protection for reading PDPTRs in
# __get_sregs2()"), commit message quoting a syzkaller report. Call trace trimmed.
KVM_RCU_MEMSLOTS = """Currently only vcpu->mutex is held, triggering lockdep warning:

=============================
WARNING: suspicious RCU usage in kvm_vcpu_gfn_to_memslot
6.12.59+ #3 Not tainted

include/linux/kvm_host.h:1062 suspicious rcu_dereference_check() usage!

other info that might help us debug this:

rcu_scheduler_active = 2, debug_locks = 1
1 lock held by syz.5.1717/15100:
 #0: ff1100002f4b00b0 (&vcpu->mutex){+.+.}-{3:3}, at: kvm_vcpu_ioctl+0x1d5/0x1590

Call Trace:
 <TASK>
 __dump_stack lib/dump_stack.c:94 [inline]
 dump_stack_lvl+0xf0/0x120 lib/dump_stack.c:120
 lockdep_rcu_suspicious+0x1e3/0x270 kernel/locking/lockdep.c:6824
 __kvm_memslots include/linux/kvm_host.h:1062 [inline]
 __kvm_memslots include/linux/kvm_host.h:1059 [inline]
 kvm_vcpu_memslots include/linux/kvm_host.h:1076 [inline]
 kvm_vcpu_gfn_to_memslot+0x518/0x5e0 virt/kvm/kvm_main.c:2617
 kvm_vcpu_read_guest_page+0x27/0x50 virt/kvm/kvm_main.c:3302
 load_pdptrs+0xff/0x4b0 arch/x86/kvm/x86.c:1065
"""

# Upstream commit b9e9ed90b10c ("bpf: Call free_htab_elem() after htab_unlock_bucket()"),
# commit message (indented two spaces there). Call trace trimmed.
BPF_INVALID_WAIT = """triggering the following lockdep warning:

  =============================
  [ BUG: Invalid wait context ]
  6.11.0-rc4+ #49 Not tainted
  -----------------------------
  test_maps/4881 is trying to lock:
  ffffffff84884578 (map_idr_lock){+...}-{3:3}, at: bpf_map_free_id.part.0+0x21/0x70
  other info that might help us debug this:
  context-{5:5}
  2 locks held by test_maps/4881:
   #0: ffffffff846caf60 (rcu_read_lock){....}-{1:3}, at: bpf_fd_htab_map_update_elem+0xf9/0x270
   #1: ffff888149ced148 (&htab->lockdep_key#2){....}-{2:2}, at: htab_map_update_elem+0x178/0xa80
  stack backtrace:
  CPU: 0 UID: 0 PID: 4881 Comm: test_maps Not tainted 6.11.0-rc4+ #49
  Call Trace:
   <TASK>
   dump_stack_lvl+0x6e/0xb0
"""

# Ignat Korchagin's dm-crypt report (stable@vger.kernel.org, Jan 2021) as quoted with "> "
# in Maciej S. Szmigiero's reply, Message-ID <2a187957-a6c6-4550-8ad7-570571f75a26@maciej.szmigiero.name>
# (dmesg with timestamps and printk caller ids "[    T0]").
DMCRYPT_SLEEPING_QUOTED = """On 13.01.2021 20:17, Ignat Korchagin wrote:
> On some specific hardware on early boot we occasionally get
>
> [ 1193.920255][    T0] BUG: sleeping function called from invalid context at mm/mempool.c:381
> [ 1193.936616][    T0] in_atomic(): 1, irqs_disabled(): 1, non_block: 0, pid: 0, name: swapper/69
> [ 1193.953233][    T0] no locks held by swapper/69/0.
> [ 1193.965871][    T0] irq event stamp: 575062
> [ 1193.977724][    T0] hardirqs last  enabled at (575061): [<ffffffffab73f662>] tick_nohz_idle_exit+0xe2/0x3e0
> [ 1194.079389][    T0] CPU: 69 PID: 0 Comm: swapper/69 Not tainted 5.10.6-cloudflare-kasan-2021.1.4-dev #1
>
"""

# CVE-2025-21670 description of the fix "afs: Fix merge preference rule failure condition": the
# syzbot splat as it reads once flattened onto one line of a commit/advisory text.
AFS_ONE_LINE = (
    "syzbot reported a lock held when returning to userspace[1]. [1] WARNING: lock held when "
    "returning to user space! 6.13.0-rc3-syzkaller-00209-g499551201b5f #0 Not tainted "
    "------------------------------------------------ syz-executor133/5823 is leaving the kernel "
    "with locks still held! 1 lock held by syz-executor133/5823: #0: ffff888071cffc00 "
    "(&sb->s_type->i_mutex_key#9){++++}-{4:4}, at: inode_lock include/linux/fs.h:818 [inline] "
    "#0: ffff888071cffc00 (&sb->s_type->i_mutex_key#9){++++}-{4:4}, at: "
    "afs_proc_addr_prefs_write+0x2bb/0x14e0 fs/afs/addr_prefs.c:388\n"
)

# kvm@vger.kernel.org, Maxim Levitsky, "KVM: ... use mutex_trylock_nest_lock" (References
# <20250430202311.364641-1-mlevitsk@redhat.com>): lockdep output that is not a report.
MAX_LOCK_DEPTH = """This fixes the following false lockdep warning:

[  328.171264] BUG: MAX_LOCK_DEPTH too low!
[  328.175227] turning off the locking correctness validator.
[  328.180726] Please attach the output of /proc/lock_stat to the bug report
[  328.187531] depth: 48  max: 48!
[  328.190678] 48 locks held by qemu-kvm/11664:
[  328.194957]  #0: ffff800086de5ba0 (&kvm->lock){+.+.}-{3:3}, at: kvm_ioctl_create_device+0x174/0x5b0
[  328.204048]  #1: ffff0800e78800b8 (&vcpu->mutex){+.+.}-{3:3}, at: lock_all_vcpus+0x16c/0x2a0
[  328.212521]  #2: ffff07ffeee51e98 (&vcpu->mutex){+.+.}-{3:3}, at: lock_all_vcpus+0x16c/0x2a0
"""


def splat(tmp_path: Path, text: str, *extra: object, name: str = "log.txt"):
    log = tmp_path / name
    log.write_text(text)
    return run_json("splat", log, *extra)


def reports(j: dict) -> list[dict]:
    return j.get("reports") or [j]


# -- circular, dmesg with timestamps, judged against documents -------------------------------


def test_dmesg_circular_reads_task_locks_usage_and_chain(tmp_path):
    p, j = splat(tmp_path, S390_TOD)
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "circular" and j["complete"] is True
    assert j["task"] == "qemu-system-s39/14220"
    assert j["acquiring"] == "kvm->lock"
    assert j["holding"] == ["vcpu->mutex", "kvm->srcu"]
    assert j["held"] == "vcpu->mutex"
    assert len(j["chain"]) == 2 and not any(link["sync"] for link in j["chain"])
    text = json.dumps(j["locks"])
    assert "hardirq-unsafe" in text and "softirq-unsafe" in text
    edges = {d["edge"] for d in j["dependencies"]}
    assert {"kvm->lock -> vcpu->mutex", "vcpu->mutex -> kvm->lock"} <= edges, edges
    assert j["scenario"]


def test_same_splat_gets_each_documents_verdict(tmp_path):
    log = tmp_path / "s390.txt"
    log.write_text(S390_TOD)
    agree = tmp_path / "agree.rst"
    agree.write_text(document(""))  # kvm->lock is taken outside vcpu->mutex
    reverse = tmp_path / "reverse.rst"
    reverse.write_text(document("", head=ORDERS_HEAD.replace(
        "kvm->lock is taken outside vcpu->mutex", "vcpu->mutex is taken outside kvm->lock")))
    silent = tmp_path / "silent.rst"
    silent.write_text(document("", head=ORDERS_HEAD.replace(
        "kvm->lock is taken outside vcpu->mutex", "kvm->slots_lock is taken outside kvm->irq_lock")))

    p, j = run_json("splat", log, "--doc", agree)
    assert p.returncode == 1 and j["violations"] == ["vcpu->mutex -> kvm->lock"]
    verdict = {d["edge"]: d["verdict"] for d in j["dependencies"]}
    assert verdict["kvm->lock -> vcpu->mutex"].lower() == "conforms"
    assert verdict["vcpu->mutex -> kvm->lock"].lower() == "violated"
    plain = run("splat", log, "--doc", agree).stdout
    assert f"(line {line_of(agree.read_text(), 'kvm->lock is taken outside')})" in plain

    p, j = run_json("splat", log, "--doc", reverse)
    assert p.returncode == 1 and j["violations"] == ["kvm->lock -> vcpu->mutex"]

    p, j = run_json("splat", log, "--doc", silent)
    assert p.returncode == 0 and j["violations"] == []
    assert {d["verdict"].lower() for d in j["dependencies"]} == {"undocumented"}


# -- circular in a quoted-printable mail -------------------------------------------------------


def test_quoted_printable_mail_is_decoded(tmp_path):
    p, j = splat(tmp_path, XEN_GPC_QP, name="mail.eml")
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "circular" and j["complete"] is True
    assert j["task"] == "xen_shinfo_test/13326"
    assert j["acquiring"] == "gpc->lock" and j["held"] == "rq->__lock"
    assert j["holding"] == ["vcpu->mutex", "rq->__lock", "kvm->srcu"]
    assert len(j["chain"]) == 5
    text = json.dumps(j)
    # the soft line breaks are joined back: no "=3D", no split function names
    assert "=3D" not in text and "kvm_xen_update_runstate_guest" in text
    assert "kvm_xen_updat=" not in text


# -- recursive: "> " quoting, and syzbot ---------------------------------------------------


def test_quoted_reply_recursive(tmp_path):
    p, j = splat(tmp_path, XEN_RECURSIVE_QUOTED, name="reply.eml")
    assert j["kind"] == "recursive", j
    assert j["task"] == "xen_shinfo_test/250013"
    assert j["acquiring"] == "kvm->arch.xen.xen_lock"
    assert "kvm->arch.xen.xen_lock" in j["holding"]


def test_syzbot_recursive_folds_inlined_frames(tmp_path):
    p, j = splat(tmp_path, SYZBOT_RECURSIVE, name="syzbot.txt")
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "recursive" and j["complete"] is True
    assert j["task"] == "syz-executor.0/10241"
    assert j["acquiring"] == "runtime->sleep"
    # four held locks, each once, although syzbot prints #1 once per inlined frame
    assert j["holding"] == ["ctx->uring_lock", "rcu_read_lock", "group->lock", "runtime->sleep"]


def test_syzbot_subject_line_alone_is_not_a_report(tmp_path):
    text = (
        "Subject: [syzbot] possible deadlock in io_poll_double_wake (2)\n\n"
        "syzbot has tested the proposed patch but the reproducer is still triggering an issue:\n"
        "possible deadlock in io_poll_double_wake\n"
    )
    p = run("splat", _write(tmp_path, "bot.txt", text))
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


# -- the other kinds ---------------------------------------------------------------------------


def test_inconsistent_with_printk_caller_ids(tmp_path):
    p, j = splat(tmp_path, LKP_INCONSISTENT)
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "inconsistent"
    assert j["task"] == "systemd-udevd/141"
    assert "ep->lock" in json.dumps(j["locks"])
    assert j["holding"] == ["ep->mtx", "ep->lock"]
    # the backtrace's "? lock_sync" frame is no chain link from a synchronize
    assert not any(link.get("sync") for link in j.get("chain") or [])


def test_irq_lock_inversion_from_commit_message(tmp_path):
    p, j = splat(tmp_path, LAN966X_IRQ_INVERSION)
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "irq_inversion"
    assert j["task"] == "swapper/0/0"
    text = json.dumps(j)
    assert "_xmit_ETHER" in text and "lan966x->ptp_ts_id_lock" in text
    assert j["scenario"]


def test_hardirq_safe_to_unsafe_syzbot(tmp_path):
    p, j = splat(tmp_path, SYZBOT_HARDIRQ_SAFE_UNSAFE)
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "irq_safe_unsafe"
    assert j["task"] == "syz-executor.0/5495"
    assert j["acquiring"] == "tasklist_lock"
    assert j["held"] == "f->f_owner.lock"
    assert j["holding"] == ["sk_lock-AF_INET6", "f->f_owner.lock"]
    assert "f->f_owner.lock -> tasklist_lock" in {d["edge"] for d in j["dependencies"]}


def test_bad_unlock_balance_syzbot(tmp_path):
    p, j = splat(tmp_path, SYZBOT_BAD_UNLOCK)
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "bad_unlock"
    assert j["task"] == "syz-executor359/6969"
    assert "mapping->i_mmap_rwsem" in json.dumps(j)
    assert j["holding"] == ["mm->mmap_lock"]
    assert j["violations"] == []


def test_held_at_exit_indented_in_commit_message(tmp_path):
    p, j = splat(tmp_path, CXL_HELD_AT_EXIT, name="commit.txt")
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "held_at_exit"
    assert j["task"] == "cxl/673"
    assert j["holding"] == ["cxl_region_rwsem"]


def test_invalid_wait_context(tmp_path):
    p, j = splat(tmp_path, BPF_INVALID_WAIT, name="commit.txt")
    assert p.returncode == 0, p.stderr
    assert j["kind"] == "invalid_wait"
    assert j["task"] == "test_maps/4881"
    assert j["acquiring"] == "map_idr_lock"
    assert j["holding"] == ["rcu_read_lock", "htab->lockdep_key"] or j["holding"] == [
        "rcu_read_lock", "htab->lockdep_key#2"]
    assert "{3:3}" in json.dumps(j["locks"]) or "wait" in json.dumps(j["locks"])


def test_sleeping_in_invalid_context_quoted_with_caller_ids(tmp_path):
    p, j = splat(tmp_path, DMCRYPT_SLEEPING_QUOTED, name="reply.eml")
    assert j["kind"] == "sleeping", j
    assert j["holding"] == []
    assert "mm/mempool.c:381" in json.dumps(j)


def test_suspicious_rcu_with_the_bots_title_as_headline_is_read(tmp_path):
    p, j = splat(tmp_path, KVM_RCU_MEMSLOTS, name="commit.txt")
    assert p.returncode == 0 and j["kind"] == "suspicious_rcu"
    assert j["holding"] == ["vcpu->mutex"]


def test_suspicious_rcu_memslots_judged_against_the_reference(tmp_path):
    # the headline as the kernel prints it (the commit's copy appends the bot's " in <function>")
    kernel_headline = KVM_RCU_MEMSLOTS.replace(" usage in kvm_vcpu_gfn_to_memslot", " usage")
    reference = REFERENCE + """
``kvm->srcu``
^^^^^^^^^^^^^

:Type:         srcu
:Arch:         any
:Protects:     - kvm->memslots
"""
    doc = _write(tmp_path, "locking.rst", document("", tail=reference))
    log = _write(tmp_path, "commit.txt", kernel_headline)
    p, j = run_json("splat", log)
    assert p.returncode == 0 and j["kind"] == "suspicious_rcu"
    assert j["holding"] == ["vcpu->mutex"]
    p = run("splat", log, "--doc", doc)
    assert p.returncode == 1, p.stdout
    assert "VIOLATED" in p.stdout and "kvm->memslots" in p.stdout and "kvm->srcu" in p.stdout


# -- several reports, one-line form, near-misses, truncation ---------------------------------


def test_several_reports_in_one_log_are_read_in_order(tmp_path):
    log = "boot noise\n" + S390_TOD + "\nmore noise\n" + SYZBOT_BAD_UNLOCK + "\n" + LKP_INCONSISTENT
    p, j = splat(tmp_path, log)
    assert j["count"] == 3, j.get("count")
    assert [r["kind"] for r in j["reports"]] == ["circular", "bad_unlock", "inconsistent"]
    assert j["kind"] == "circular"  # the first one's fields at the top
    assert p.returncode == 0


def test_one_line_form_in_a_commit_message(tmp_path):
    p, j = splat(tmp_path, AFS_ONE_LINE, name="commit.txt")
    assert j["kind"] == "held_at_exit", j
    assert j["task"] == "syz-executor133/5823"
    assert j["holding"] == ["sb->s_type->i_mutex_key"] or j["holding"] == [
        "sb->s_type->i_mutex_key#9"]


def test_lockdep_output_that_is_not_a_report_yields_no_splat(tmp_path):
    p = run("splat", _write(tmp_path, "depth.txt", MAX_LOCK_DEPTH))
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    p, j = splat(tmp_path, MAX_LOCK_DEPTH)
    assert p.returncode == 3 and not j.get("reports") and not j.get("kind")


def test_empty_log_yields_no_splat(tmp_path):
    assert run("splat", _write(tmp_path, "empty.txt", "")).returncode == 3
    assert run("splat", "-", stdin="").returncode == 3


def test_log_from_standard_input(tmp_path):
    p, j = run_json("splat", "-", stdin=S390_TOD)
    assert p.returncode == 0 and j["kind"] == "circular" and j["acquiring"] == "kvm->lock"


def test_truncated_report_says_incomplete(tmp_path):
    cut = S390_TOD[: S390_TOD.index("which lock already depends")]
    p, j = splat(tmp_path, cut)
    r = reports(j)[0]
    assert r["kind"] == "circular"
    assert r["complete"] is False and r.get("problems"), r


def test_truncated_report_against_a_document_is_not_a_clean_verdict(tmp_path):
    # The full report's chain link (kvm->lock -> vcpu->mutex) breaks this document; cut
    # before the chain, only the new dependency (which conforms) is left to judge.
    doc = _write(tmp_path, "locking.rst", document("", head=ORDERS_HEAD.replace(
        "kvm->lock is taken outside vcpu->mutex", "vcpu->mutex is taken outside kvm->lock")))
    p, j = splat(tmp_path, S390_TOD, "--doc", doc)
    assert p.returncode == 1 and j["violations"] == ["kvm->lock -> vcpu->mutex"]
    cut = S390_TOD[: S390_TOD.index("the existing dependency chain")]
    p, j = splat(tmp_path, cut, "--doc", doc)
    assert reports(j)[0]["complete"] is False
    assert p.returncode == 2, (p.returncode, j.get("problems"), j.get("violations"))
