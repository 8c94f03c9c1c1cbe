"""Held-out cases for `kvmlock spec check` and `kvmlock splat`, written from the documentation.

Every document, lock graph and kernel report here was written for these tests in this file's own
words; the reports follow the layout of the kernel's lockdep output (kernel/locking/lockdep.c)
but are not copies of any kernel log. Each case states what the documentation promises before it
looks at the tool's answer, so a change that reads less, or passes what it did not read, fails.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from kvmlock.cli import main


def run(*args: str | Path) -> tuple[int, str]:
    """Run the `kvmlock` command in this process (a subprocess per case is too slow here)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
    return code or 0, out.getvalue() + err.getvalue()


def run_json(*args: str | Path) -> tuple[int, dict]:
    code, text = run(*args, "--json")
    start = text.find("{")
    return code, json.loads(text[start:text.rindex("}") + 1]) if start >= 0 else {}


# ---------------------------------------------------------------------------------------------
# Documents: four orders, each in a different wording.
#   kvm->slots_lock before kvm->lock; kvm->lock outside vcpu->mutex; kvm->lock outside
#   kvm->mmu_lock; cpus_read_lock() (cpu_hotplug_lock) outside kvm_lock.
# ---------------------------------------------------------------------------------------------

EXPECTED_RULES = [
    "kvm->slots_lock is taken outside kvm->lock",
    "kvm->lock is taken outside vcpu->mutex",
    "kvm->lock is taken outside kvm->mmu_lock",
    "cpu_hotplug_lock is taken outside kvm_lock",
]

PLAIN = """\
Notes on how my VM code locks
=============================

Acquisition orders
------------------

- kvm->slots_lock must be acquired before kvm->lock.

- vcpu->mutex nests inside kvm->lock.

- kvm->lock -> kvm->mmu_lock

- cpus_read_lock() is taken outside kvm_lock.
"""

# The same four rules, each bullet broken over lines whose continuation is a tab or a deep indent.
TABS = (
    "Notes on how my VM code locks\n"
    "=============================\n"
    "\n"
    "Acquisition orders\n"
    "------------------\n"
    "\n"
    "- kvm->slots_lock must be\n"
    "\tacquired before kvm->lock.\n"
    "\n"
    "- vcpu->mutex\n"
    "\t\tnests inside\n"
    "\t\tkvm->lock.\n"
    "\n"
    "- kvm->lock ->\n"
    "        kvm->mmu_lock\n"
    "\n"
    "- cpus_read_lock() is taken\n"
    "          outside kvm_lock.\n"
)

# A copy from a web blame page: author, commit subject and date around each block, no indentation.
BLAME = """\
Alice Hacker
KVM: start writing down the locking
3 years ago
Notes on how my VM code locks
=============================

Acquisition orders
------------------

Bob Maintainer
KVM: document the memslot lock against the VM lock
Jan 5, 2023
- kvm->slots_lock must be acquired
before kvm->lock.

- vcpu->mutex nests
inside kvm->lock.
Carol Reviewer
KVM: x86/mmu: say where mmu_lock sits
2023-07-14
- kvm->lock -> kvm->mmu_lock

Alice Hacker
KVM: hotplug before the VM list
8 months ago
- cpus_read_lock() is taken
outside kvm_lock.
"""

# What the graphs give: one that keeps every rule, one that breaks the first two.
GOOD_DUMP = """\
all lock classes:
ffffffffa0001000 FD:    3 BD:    1 +.+.: &kvm->slots_lock
 -> [ffffffffa0002000] &kvm->lock

ffffffffa0002000 FD:    2 BD:    2 +.+.: &kvm->lock
 -> [ffffffffa0003000] &vcpu->mutex
 -> [ffffffffa0004000] &kvm->mmu_lock

ffffffffa0003000 FD:    1 BD:    3 +.+.: &vcpu->mutex

ffffffffa0004000 FD:    1 BD:    3 +.+.: &kvm->mmu_lock

ffffffffa0005000 FD:    2 BD:    1 ++++: cpu_hotplug_lock
 -> [ffffffffa0006000] kvm_lock

ffffffffa0006000 FD:    1 BD:    2 +.+.: kvm_lock
"""

BAD_DUMP = """\
all lock classes:
ffffffffa0002000 FD:    3 BD:    2 +.+.: &kvm->lock
 -> [ffffffffa0001000] &kvm->slots_lock
 -> [ffffffffa0004000] &kvm->mmu_lock

ffffffffa0001000 FD:    1 BD:    2 +.+.: &kvm->slots_lock

ffffffffa0003000 FD:    3 BD:    1 +.+.: &vcpu->mutex
 -> [ffffffffa0002000] &kvm->lock

ffffffffa0004000 FD:    1 BD:    3 +.+.: &kvm->mmu_lock

ffffffffa0005000 FD:    2 BD:    1 ++++: cpu_hotplug_lock
 -> [ffffffffa0006000] kvm_lock

ffffffffa0006000 FD:    1 BD:    2 +.+.: kvm_lock
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, text in {
        "plain.rst": PLAIN, "tabs.rst": TABS, "blame.txt": BLAME,
        "good.lockdep": GOOD_DUMP, "bad.lockdep": BAD_DUMP,
    }.items():
        (tmp_path / name).write_text(text)
        out[name] = tmp_path / name
    return out


@pytest.mark.parametrize("doc", ["plain.rst", "tabs.rst", "blame.txt"])
def test_own_wording_is_read_and_held_on_a_conforming_graph(files, doc):
    # Expected: all four rules read (as orders), all held, OK, exit 0, complete.
    code, out = run_json("spec", "check", files[doc], "--proc-lockdep", files["good.lockdep"])
    rules = {r["rule"]: r for r in out["rules"] if r["kind"] == "order"}
    assert sorted(rules) == sorted(EXPECTED_RULES)
    assert {r["status"] for r in rules.values()} == {"held"}
    assert out["ok"] is True and out["complete"] is True
    assert out["not_understood"] == []
    assert code == 0


@pytest.mark.parametrize("doc", ["plain.rst", "tabs.rst", "blame.txt"])
def test_own_wording_is_judged_violated_on_a_breaking_graph(files, doc):
    # Expected: slots_lock-before-kvm->lock and vcpu->mutex-inside-kvm->lock violated, the other
    # two held; exit 1, not ok.
    code, out = run_json("spec", "check", files[doc], "--proc-lockdep", files["bad.lockdep"])
    stated = [r for r in out["rules"] if "(implied" not in r["rule"]]
    implied = [r for r in out["rules"] if "(implied" in r["rule"]]
    # an order implied by two stated ones (slots_lock outside vcpu->mutex) is broken by the path
    # vcpu->mutex -> kvm->lock -> kvm->slots_lock too; it may be listed, but only as violated.
    assert all(r["status"] == "violated" for r in implied)
    status = {r["rule"]: r["status"] for r in stated if r["kind"] == "order"}
    assert status == {
        EXPECTED_RULES[0]: "violated",
        EXPECTED_RULES[1]: "violated",
        EXPECTED_RULES[2]: "held",
        EXPECTED_RULES[3]: "held",
    }
    assert out["ok"] is False
    assert code == 1


def test_rules_keep_the_line_the_user_wrote(files):
    # Expected: each rule names the line of its bullet in the user's file (blame lines counted).
    good = files["good.lockdep"]
    _, plain = run_json("spec", "check", files["plain.rst"], "--proc-lockdep", good)
    _, blame = run_json("spec", "check", files["blame.txt"], "--proc-lockdep", good)
    assert {r["rule"]: r["line"] for r in plain["rules"]} == {
        EXPECTED_RULES[0]: 7, EXPECTED_RULES[1]: 9, EXPECTED_RULES[2]: 11, EXPECTED_RULES[3]: 13,
    }
    assert {r["rule"]: r["line"] for r in blame["rules"]} == {
        EXPECTED_RULES[0]: 13, EXPECTED_RULES[1]: 16, EXPECTED_RULES[2]: 21, EXPECTED_RULES[3]: 26,
    }


def test_taken_outside_wording_with_a_remark(tmp_path, files):
    # Expected: "X is taken outside Y, though ..." (remark naming no lock) is the order X outside Y.
    doc = tmp_path / "outside.rst"
    doc.write_text(
        "Acquisition orders\n------------------\n\n"
        "- kvm->lock is taken outside vcpu->mutex, though only on the ioctl path.\n"
    )
    code, out = run_json("spec", "check", doc, "--proc-lockdep", files["bad.lockdep"])
    assert [(r["rule"], r["status"]) for r in out["rules"]] == [
        ("kvm->lock is taken outside vcpu->mutex", "violated")
    ]
    assert code == 1


# ---------------------------------------------------------------------------------------------
# Prose that must never pass.
# ---------------------------------------------------------------------------------------------

README_LIKE = """\
myvmm
=====

A tiny virtual machine monitor. It uses KVM and takes care to be fast.

Building
--------

Run ``make`` and then ``./myvmm --help``.
"""

PROSE_ORDERS = """\
Acquisition orders
------------------

The relationship between kvm->lock and vcpu->mutex is subtle, and kvm->slots_lock adds its own
twists; in practice it depends on which ioctl is being served.

Please ask on the list before touching kvm->mmu_lock.
"""

MARKDOWN_README = """\
# myvmm

A tiny virtual machine monitor.

## Locking

We are careful with `kvm->lock` and `vcpu->mutex`.
"""


@pytest.mark.parametrize(
    "text", [README_LIKE, PROSE_ORDERS, MARKDOWN_README, ""],
    ids=["readme-rst", "prose-orders", "readme-md", "empty"],
)
def test_prose_never_passes(tmp_path, files, text):
    # Expected: exit 2 and "ok": false, "complete": false, on a conforming and a breaking graph.
    doc = tmp_path / "prose.rst"
    doc.write_text(text)
    for graph in ("good.lockdep", "bad.lockdep"):
        code, out = run_json("spec", "check", doc, "--proc-lockdep", files[graph])
        assert code == 2, out
        assert out.get("ok") is False and out.get("complete") is False
        code, plain = run("spec", "check", doc, "--proc-lockdep", files[graph])
        assert code == 2
        assert "OK:" not in plain


def test_unparseable_rule_like_sentence_is_counted_unread(tmp_path, files):
    # Expected: the two readable rules are read and held; the odd sentence (two known locks and
    # "grabs") is listed as not understood at its line 9, and the verdict is incomplete (exit 2).
    doc = tmp_path / "odd.rst"
    doc.write_text(
        "Acquisition orders\n------------------\n\n"
        "- kvm->slots_lock must be acquired before kvm->lock.\n\n"
        "- vcpu->mutex nests inside kvm->lock.\n\n"
        "- Whoever grabs kvm->mmu_lock had better ponder kvm->lock beforehand, mostly.\n"
    )
    # line numbers: 4 slots_lock rule, 6 vcpu->mutex rule, 8 odd sentence
    code, out = run_json("spec", "check", doc, "--proc-lockdep", files["good.lockdep"])
    assert sorted(r["rule"] for r in out["rules"]) == sorted(EXPECTED_RULES[:2])
    assert {r["status"] for r in out["rules"]} == {"held"}
    assert out["ok"] is False and out["complete"] is False
    assert len(out["not_understood"]) == 1
    assert "8" in json.dumps(out["not_understood"][0])
    assert code == 2
    _, plain = run("spec", "check", doc, "--proc-lockdep", files["good.lockdep"])
    assert "1 sentence(s) not understood" in plain
    assert "INCOMPLETE" in plain


# ---------------------------------------------------------------------------------------------
# Splats, written by hand in the layout of lockdep's reports.
# ---------------------------------------------------------------------------------------------

CIRCULAR = """\
======================================================
WARNING: possible circular locking dependency detected
6.8.0-test #1 Not tainted
------------------------------------------------------
myvmm/4242 is trying to acquire lock:
ffff888104a2c0d8 (&kvm->slots_lock){+.+.}-{3:3}, at: kvm_set_memory_region+0x1f/0x50 [kvm]

but task is already holding lock:
ffff888104a2c0a0 (&kvm->lock){+.+.}-{3:3}, at: kvm_vm_ioctl+0x3a1/0x9d0 [kvm]

which lock already depends on the new lock.


the existing dependency chain (in reverse order) is:

-> #1 (&kvm->lock){+.+.}-{3:3}:
       __mutex_lock+0x8e/0x8f0
       kvm_arch_sync_dirty_log+0x44/0x90 [kvm]
       kvm_vm_ioctl+0x5c2/0x9d0 [kvm]

-> #0 (&kvm->slots_lock){+.+.}-{3:3}:
       __lock_acquire+0x1532/0x2a10
       lock_acquire+0xc8/0x2f0
       __mutex_lock+0x8e/0x8f0
       kvm_set_memory_region+0x1f/0x50 [kvm]
       kvm_vm_ioctl+0x3f0/0x9d0 [kvm]

other info that might help us debug this:

 Possible unsafe locking scenario:

       CPU0                    CPU1
       ----                    ----
  lock(&kvm->lock);
                               lock(&kvm->slots_lock);
                               lock(&kvm->lock);
  lock(&kvm->slots_lock);

 *** DEADLOCK ***

1 lock held by myvmm/4242:
 #0: ffff888104a2c0a0 (&kvm->lock){+.+.}-{3:3}, at: kvm_vm_ioctl+0x3a1/0x9d0 [kvm]

stack backtrace:
CPU: 3 PID: 4242 Comm: myvmm Not tainted 6.8.0-test #1
Call Trace:
 <TASK>
 dump_stack_lvl+0x5b/0x80
 __lock_acquire+0x1532/0x2a10
 </TASK>
"""

RECURSIVE = """\
============================================
WARNING: possible recursive locking detected
6.8.0-test #1 Not tainted
--------------------------------------------
myvmm/777 is trying to acquire lock:
ffff8881102a10b0 (&vcpu->mutex){+.+.}-{3:3}, at: kvm_lock_all_vcpus+0x41/0x90 [kvm]

but task is already holding lock:
ffff8881102a00b0 (&vcpu->mutex){+.+.}-{3:3}, at: kvm_lock_all_vcpus+0x41/0x90 [kvm]

other info that might help us debug this:
 Possible unsafe locking scenario:

       CPU0
       ----
  lock(&vcpu->mutex);
  lock(&vcpu->mutex);

 *** DEADLOCK ***

 May be due to missing lock nesting notation

1 lock held by myvmm/777:
 #0: ffff8881102a00b0 (&vcpu->mutex){+.+.}-{3:3}, at: kvm_lock_all_vcpus+0x41/0x90 [kvm]

stack backtrace:
CPU: 0 PID: 777 Comm: myvmm Not tainted 6.8.0-test #1
Call Trace:
 <TASK>
 dump_stack_lvl+0x5b/0x80
 </TASK>
"""

INCONSISTENT = """\
================================
WARNING: inconsistent lock state
6.8.0-test #1 Not tainted
--------------------------------
inconsistent {HARDIRQ-ON-W} -> {IN-HARDIRQ-W} usage.
swapper/2/0 [HC1[1]:SC0[0]:HE0:SE1] takes:
ffff888105c3e240 (&kvm->arch.pvclock_gtod_sync_lock){?.+.}-{2:2}, at: pvclock_work+0x22/0x60 [kvm]
{HARDIRQ-ON-W} state was registered at:
  lock_acquire+0xc8/0x2f0
  _raw_spin_lock+0x2f/0x40
  kvm_gen_update_masterclock+0x51/0x120 [kvm]
irq event stamp: 5321
hardirqs last  enabled at (5320): [<ffffffff81e2a1b4>] default_idle_call+0x54/0x120
hardirqs last disabled at (5321): [<ffffffff81e1f0b1>] sysvec_irq_work+0x11/0xa0

other info that might help us debug this:
 Possible unsafe locking scenario:

       CPU0
       ----
  lock(&kvm->arch.pvclock_gtod_sync_lock);
  <Interrupt>
    lock(&kvm->arch.pvclock_gtod_sync_lock);

 *** DEADLOCK ***

no locks held by swapper/2/0.

stack backtrace:
CPU: 2 PID: 0 Comm: swapper/2 Not tainted 6.8.0-test #1
"""

# Lockdep chatter at boot and a mail sentence quoting lockdep words, but no report.
NEAR_MISS = """\
[    0.000000] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar
[    0.000000] ... MAX_LOCKDEP_SUBCLASSES:  8
[    0.000000] ... MAX_LOCK_DEPTH:          48
[    0.000000] ... MAX_LOCKDEP_KEYS:        8192
[    0.000000] ... CLASSHASH_SIZE:          4096
[    0.000000]  memory used by lock dependency info: 4125 kB
[    5.123456] kvm: loaded, kvm->lock and vcpu->mutex initialised
[   12.000001] myvmm/4242 is running with 1 lock held: (&kvm->lock){+.+.}-{3:3}
> I think kvm->lock is taken while holding vcpu->mutex here, lockdep may complain.
[   13.000000] INFO: lockdep is turned off.
"""


def dmesg(text: str) -> str:
    """Prefix every line as `dmesg` with caller ids prints it."""
    return "".join(
        f"[{100 + i / 1000:12.6f}] [T4242] {line}\n" for i, line in enumerate(text.splitlines())
    )


SPLAT_DOC = PLAIN  # the same four orders


@pytest.fixture
def logs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, text in {
        "circular.txt": CIRCULAR, "recursive.txt": RECURSIVE, "inconsistent.txt": INCONSISTENT,
        "circular.dmesg": dmesg(CIRCULAR), "nearmiss.log": NEAR_MISS, "doc.rst": SPLAT_DOC,
    }.items():
        (tmp_path / name).write_text(text)
        out[name] = tmp_path / name
    return out


@pytest.mark.parametrize("log", ["circular.txt", "circular.dmesg"])
def test_circular_two_link_chain(logs, log):
    # Expected: kind circular, acquiring kvm->slots_lock, holding [kvm->lock]; no violations
    # without a document; exit 0.
    code, out = run_json("splat", logs[log])
    assert out["kind"] == "circular"
    assert out["acquiring"] == "kvm->slots_lock"
    assert out["holding"] == ["kvm->lock"]
    assert out["task"].startswith("myvmm")
    assert out["violations"] == []
    assert code == 0


@pytest.mark.parametrize("log", ["circular.txt", "circular.dmesg"])
def test_circular_judged_against_my_document(logs, log):
    # Expected: the chain's link kvm->slots_lock -> kvm->lock conforms to "slots_lock must be
    # acquired before kvm->lock"; the new dependency kvm->lock -> kvm->slots_lock violates it.
    code, out = run_json("splat", logs[log], "--doc", logs["doc.rst"])
    assert out["violations"] == ["kvm->lock -> kvm->slots_lock"]
    verdicts = {d["edge"].split(" (")[0]: d["verdict"].lower() for d in out["dependencies"]}
    assert verdicts == {
        "kvm->slots_lock -> kvm->lock": "conforms",
        "kvm->lock -> kvm->slots_lock": "violated",
    }
    assert code == 1


def test_recursive(logs):
    # Expected: kind recursive, acquiring and holding vcpu->mutex; one class, so no rule of the
    # document is broken; exit 0.
    code, out = run_json("splat", logs["recursive.txt"], "--doc", logs["doc.rst"])
    assert out["kind"] == "recursive"
    assert out["acquiring"] == "vcpu->mutex"
    assert out["holding"] == ["vcpu->mutex"]
    assert out["violations"] == []
    assert code == 0


def test_inconsistent_lock_state(logs):
    # Expected: kind inconsistent, the lock taken is the pvclock lock, nothing held, no order.
    code, out = run_json("splat", logs["inconsistent.txt"])
    assert out["kind"] == "inconsistent"
    assert out["acquiring"] == "kvm->arch.pvclock_gtod_sync_lock"
    assert out["holding"] == []
    assert out["violations"] == []
    assert out["task"].startswith("swapper/2")
    assert code == 0


def test_near_miss_log_yields_no_splat(logs):
    # Expected: lockdep-like lines without a report headline: no report, exit 3.
    code, text = run("splat", logs["nearmiss.log"])
    assert code == 3, text
    assert "circular" not in text


def test_both_reports_in_one_log(tmp_path, logs):
    # Expected: a log with the circular and the recursive report gives two readings, first first.
    log = tmp_path / "two.log"
    log.write_text(dmesg(CIRCULAR) + NEAR_MISS + dmesg(RECURSIVE))
    code, out = run_json("splat", log, "--doc", logs["doc.rst"])
    assert out["count"] == 2
    assert [r["kind"] for r in out["reports"]] == ["circular", "recursive"]
    assert out["violations"] == ["kvm->lock -> kvm->slots_lock"]
    assert code == 1


def test_prose_document_makes_the_splat_verdict_incomplete(logs, tmp_path):
    # Expected: judging against a document of prose is a guess: exit 2, complete false.
    doc = tmp_path / "prose.rst"
    doc.write_text(PROSE_ORDERS)
    code, out = run_json("splat", logs["circular.txt"], "--doc", doc)
    assert code == 2
    assert out.get("complete") is False


# ---------------------------------------------------------------------------------------------
# More wordings and export forms.
# ---------------------------------------------------------------------------------------------

MORE_WORDINGS = """\
Acquisition orders
------------------

- kvm->lock -> vcpu->mutex -> kvm->mmu_lock

- kvm_lock is taken under cpus_read_lock().

- kvm->slots_lock can taken outside kvm->lock.

- kvm_lock must not be taken while holding kvm->mmu_lock.
"""


def test_arrow_chain_under_sic_and_must_not(tmp_path, files):
    # Expected: five orders/forbids read; on the breaking graph kvm->slots_lock outside kvm->lock
    # and kvm->lock outside vcpu->mutex are violated; nothing unread.
    doc = tmp_path / "more.rst"
    doc.write_text(MORE_WORDINGS)
    code, out = run_json("spec", "check", doc, "--proc-lockdep", files["bad.lockdep"])
    stated = {r["rule"]: r for r in out["rules"] if "(implied" not in r["rule"]}
    orders = {k for k, r in stated.items() if r["kind"] == "order"}
    assert orders == {
        "kvm->lock is taken outside vcpu->mutex",
        "vcpu->mutex is taken outside kvm->mmu_lock",
        "cpu_hotplug_lock is taken outside kvm_lock",
        "kvm->slots_lock is taken outside kvm->lock",
    }
    assert [r["kind"] for r in stated.values()].count("forbidden") == 1
    assert stated["kvm->lock is taken outside vcpu->mutex"]["status"] == "violated"
    assert stated["kvm->slots_lock is taken outside kvm->lock"]["status"] == "violated"
    assert stated["cpu_hotplug_lock is taken outside kvm_lock"]["status"] == "held"
    assert out["not_understood"] == []
    assert code == 1


def test_forbidden_is_violated_by_the_nesting_it_forbids(tmp_path):
    # Expected: "kvm_lock must not be taken while holding kvm->mmu_lock" is broken by
    # kvm->mmu_lock -> kvm_lock.
    doc = tmp_path / "forbid.rst"
    doc.write_text(
        "Acquisition orders\n------------------\n\n"
        "- kvm_lock must not be taken while holding kvm->mmu_lock.\n"
    )
    dump = tmp_path / "forbid.lockdep"
    dump.write_text(
        "all lock classes:\n"
        "ffffffffa0004000 FD:    2 BD:    1 +.+.: &kvm->mmu_lock\n"
        " -> [ffffffffa0006000] kvm_lock\n\n"
        "ffffffffa0006000 FD:    1 BD:    2 +.+.: kvm_lock\n"
    )
    code, out = run_json("spec", "check", doc, "--proc-lockdep", dump)
    assert [r["status"] for r in out["rules"]] == ["violated"]
    assert code == 1


def git_blame(text: str) -> str:
    return "".join(
        f"^1a2b3c4d (Alice Hacker 2023-01-05 10:00:{i % 60:02d} +0000 {i + 1:3d}) {line}\n"
        for i, line in enumerate(text.splitlines())
    )


def web_table(text: str) -> str:
    return "".join(
        f"{'9f8e7d6c' if i % 3 else '0a1b2c3d'}\t{i + 1}\t{line}\n"
        for i, line in enumerate(text.splitlines())
    )


@pytest.mark.parametrize("form", [git_blame, web_table], ids=["git-blame", "web-table"])
def test_blame_prefixed_exports(tmp_path, files, form):
    # Expected: the prefixes are dropped, the four rules read at their original lines and judged.
    doc = tmp_path / "export.txt"
    doc.write_text(form(PLAIN))
    code, out = run_json("spec", "check", doc, "--proc-lockdep", files["bad.lockdep"])
    stated = {r["rule"]: r for r in out["rules"] if "(implied" not in r["rule"]}
    assert sorted(stated) == sorted(EXPECTED_RULES)
    assert [stated[k]["line"] for k in EXPECTED_RULES] == [7, 9, 11, 13]
    assert stated[EXPECTED_RULES[0]]["status"] == "violated"
    assert code == 1


def quoted_printable_mail(text: str) -> str:
    """A reply quoting the report: `> ` on each line, `=` as `=3D`, long lines soft-broken."""
    body = []
    for line in text.splitlines():
        line = "> " + line.replace("=", "=3D")
        while len(line) > 76:
            body.append(line[:75] + "=")
            line = line[75:]
        body.append(line)
    return (
        "From: someone@example.org\nSubject: Re: [PATCH] KVM: memslot locking\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        "On Monday somebody wrote:\n" + "\n".join(body) + "\n\nLooks like a real bug to me.\n"
    )


def test_quoted_printable_reply(tmp_path, logs):
    # Expected: the same reading as the bare report.
    mail = tmp_path / "reply.eml"
    mail.write_text(quoted_printable_mail(CIRCULAR))
    code, out = run_json("splat", mail, "--doc", logs["doc.rst"])
    assert out["kind"] == "circular"
    assert out["acquiring"] == "kvm->slots_lock"
    assert out["holding"] == ["kvm->lock"]
    assert out["violations"] == ["kvm->lock -> kvm->slots_lock"]
    assert code == 1


def test_undocumented_dependencies_are_not_violations(tmp_path, logs):
    # Expected: a document silent on these locks calls both dependencies undocumented, exit 0.
    doc = tmp_path / "other.rst"
    doc.write_text("Acquisition orders\n------------------\n\n- cpus_read_lock() -> kvm_lock\n")
    code, out = run_json("splat", logs["circular.txt"], "--doc", doc)
    assert out["violations"] == []
    assert {d["verdict"].lower() for d in out["dependencies"]} == {"undocumented"}
    assert code == 0


def test_report_cut_short_reads_as_incomplete(tmp_path):
    # Expected: a report cut after the lock being acquired is read, and says it is incomplete.
    log = tmp_path / "cut.txt"
    log.write_text(CIRCULAR.split("but task is already holding lock:")[0])
    _, out = run_json("splat", log)
    assert out["kind"] == "circular"
    assert out["acquiring"] == "kvm->slots_lock"
    assert out["complete"] is False
    assert out["problems"]


def test_report_cut_short_judged_against_a_document_is_not_ok(tmp_path, logs):
    # Expected: with the held lock and the chain missing, the new dependency (which the whole
    # report shows to violate the document) cannot be judged: the verdict is a guess, exit 2.
    log = tmp_path / "cut.txt"
    log.write_text(CIRCULAR.split("but task is already holding lock:")[0])
    code, out = run_json("splat", log, "--doc", logs["doc.rst"])
    assert out["complete"] is False
    assert out["violations"] == []
    assert code == 2


# ---------------------------------------------------------------------------------------------
# A rule-like statement in an orders section, in other reStructuredText constructs: the tool may
# read it (vcpu->mutex outside kvm->lock, which the conforming graph breaks: exit 1) or count it
# unread (exit 2), but never drop it and say OK.
# ---------------------------------------------------------------------------------------------

ORDERS_HEAD = (
    "Acquisition orders\n------------------\n\n"
    "- kvm->slots_lock must be acquired before kvm->lock.\n\n"
)

DROPPED_FORMS = {
    "bullet-read": "- vcpu->mutex must be acquired before kvm->lock.\n",
    "block-quote": "    vcpu->mutex must be acquired before kvm->lock.\n",
    "literal-diagram": "The order of the VM-wide locks is::\n\n  vcpu->mutex -> kvm->lock\n",
    "definition-list": "vcpu->mutex\n    must be acquired before kvm->lock.\n",
    "line-block": "| vcpu->mutex must be acquired before kvm->lock.\n",
    "field-list": ":Order: vcpu->mutex must be acquired before kvm->lock.\n",
}


@pytest.mark.parametrize("form", list(DROPPED_FORMS))
def test_rule_like_statement_is_never_dropped(tmp_path, files, form):
    doc = tmp_path / "form.rst"
    doc.write_text(ORDERS_HEAD + DROPPED_FORMS[form])
    code, out = run_json("spec", "check", doc, "--proc-lockdep", files["good.lockdep"])
    assert out["ok"] is False
    read = {r["rule"]: r["status"] for r in out["rules"]}
    if code == 1:
        assert read.get("vcpu->mutex is taken outside kvm->lock") == "violated"
    else:
        assert code == 2 and out["complete"] is False
        assert any("vcpu->mutex" in json.dumps(u) for u in out["not_understood"])
    assert not any(name.startswith("must ") for name in read)


# ---------------------------------------------------------------------------------------------
# More input forms of the circular report, and a report whose chain is missing.
# ---------------------------------------------------------------------------------------------

def syslog(text: str) -> str:
    return "".join(
        f"Dec  1 10:00:{i % 60:02d} myhost kernel: [  100.{i:06d}] {line}\n"
        for i, line in enumerate(text.splitlines())
    )


def nested_quote(text: str) -> str:
    return "".join(f"> > {line}\n" for line in text.splitlines())


def relative_stamps(text: str) -> str:
    return "".join(f"[  +0.{i:06d}] {line}\n" for i, line in enumerate(text.splitlines()))


@pytest.mark.parametrize("form", [syslog, nested_quote, relative_stamps])
def test_other_log_forms(tmp_path, logs, form):
    # Expected: the same reading and verdict as the bare report.
    log = tmp_path / "form.log"
    log.write_text(form(CIRCULAR))
    code, out = run_json("splat", log, "--doc", logs["doc.rst"])
    assert (out["kind"], out["acquiring"], out["holding"]) == (
        "circular", "kvm->slots_lock", ["kvm->lock"]
    )
    assert out["violations"] == ["kvm->lock -> kvm->slots_lock"]
    assert out["complete"] is True
    assert code == 1


HEAD_ONLY = CIRCULAR.split("the existing dependency chain")[0]


def test_flattened_into_a_commit_message(tmp_path):
    # Expected: a report's head flattened onto one line of a commit message is still read.
    msg = tmp_path / "fix.commit"
    flat = " ".join(line.strip() for line in HEAD_ONLY.splitlines() if line.strip())
    msg.write_text(
        f"KVM: fix the memslot lock order\n\nLockdep said:\n\n  {flat}\n\nSigned-off-by: A\n"
    )
    _, out = run_json("splat", msg)
    assert (out["kind"], out["acquiring"], out["holding"]) == (
        "circular", "kvm->slots_lock", ["kvm->lock"]
    )
    assert out["complete"] is False


def test_new_dependency_is_judged_without_the_chain(tmp_path, logs):
    # Expected: held -> acquiring is the report's new dependency (docs/splat.md), which the
    # document forbids: listed as a violation, exit 1, and complete false since the chain is gone.
    log = tmp_path / "head.txt"
    log.write_text(HEAD_ONLY)
    code, out = run_json("splat", log, "--doc", logs["doc.rst"])
    assert out["complete"] is False
    assert out["violations"] == ["kvm->lock -> kvm->slots_lock"]
    assert code == 1
