"""Reading documents as users get them, never passing what was not read, waivers, diffs and
a kernel's own graph (/proc/lockdep dumps)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from spec_helpers import rules_doc

from kvmlock import spec
from kvmlock.spec.accept import apply, load_waivers
from kvmlock.spec.cli import main
from kvmlock.spec.graphview import GraphView
from kvmlock.spec.procfs import (
    read_proc_chains,
    read_proc_lockdep,
    write_proc_chains,
    write_proc_lockdep,
)

DOCS = Path(__file__).parent / "docs"
README = Path(__file__).parents[2] / "README.md"


def rules(d: spec.Spec, kind: str = "order") -> list[tuple[str, str]]:
    return [(r.outer, r.inner) for r in d.rules if r.kind == kind]


def graph(*edges: tuple[str, str], chains: list | None = None) -> GraphView:
    return spec.view({"classes": {}, "edges": [list(e) for e in edges],
                      "chains": [] if chains is None else chains})


# --------------------------------------------------------------------------- phrasings


@pytest.mark.parametrize("sentence, expected", [
    ("kvm->slots_lock must always be acquired before kvm->lock.", ("kvm->slots_lock", "kvm->lock")),
    ("cpus_read_lock() must be acquired before kvm_lock", ("cpu_hotplug_lock", "kvm_lock")),
    ("vcpu->mutex nests inside kvm->lock", ("kvm->lock", "vcpu->mutex")),
    ("kvm->mn_invalidate_lock is taken after kvm->slots_arch_lock",
     ("kvm->slots_arch_lock", "kvm->mn_invalidate_lock")),
    ("kvm->irq_lock is taken under kvm->slots_lock", ("kvm->slots_lock", "kvm->irq_lock")),
    ("kvm_usage_lock can taken outside cpus_read_lock()", ("kvm_usage_lock", "cpu_hotplug_lock")),
    ("For spinlocks, kvm_lock is taken outside kvm->mmu_lock.", ("kvm_lock", "kvm->mmu_lock")),
    ("Taking cpus_read_lock() outside of kvm_lock is problematic, despite that being the "
     "official ordering, as it is easy to get wrong.", ("cpu_hotplug_lock", "kvm_lock")),
])
def test_real_phrasings_are_orders(sentence: str, expected: tuple[str, str]) -> None:
    d = spec.parse(rules_doc(sentence))
    assert rules(d) == [expected] and not d.not_understood


def test_arrows_are_a_chain_of_orders() -> None:
    d = spec.parse(rules_doc("kvm->lock -> kvm->slots_lock -> kvm->irq_lock"))
    assert rules(d) == [("kvm->lock", "kvm->slots_lock"), ("kvm->slots_lock", "kvm->irq_lock")]


def test_same_class_nesting_with_qualifiers() -> None:
    d = spec.parse(rules_doc("when VMs have several planes, vcpu->mutex for plane 0 can taken "
                             "outside vcpu->mutex for the same id and another plane"))
    [r] = d.rules
    assert (r.kind, r.outer, r.inner) == ("same_class", "vcpu->mutex", "vcpu->mutex")
    assert not d.incomplete()


def test_near_misses_are_not_orders() -> None:
    # released-before is not an order, and "taking X outside Y is forbidden" is the opposite
    d = spec.parse(rules_doc("kvm->lock must be released before kvm->slots_lock"))
    assert not rules(d) and d.not_understood
    d = spec.parse(rules_doc("Taking kvm->lock outside of vcpu->mutex is forbidden"))
    assert rules(d, "forbidden") == [("kvm->lock", "vcpu->mutex")] and not rules(d)


def test_own_document_with_every_new_phrasing() -> None:
    d = spec.load(DOCS / "phrasings.rst")
    assert not d.not_understood and not d.incomplete()
    assert ("kvm->lock", "vcpu->mutex") in rules(d)
    assert ("kvm->slots_arch_lock", "kvm->mn_invalidate_lock") in rules(d)


def test_first_layout_name_type_records_are_read() -> None:
    d = spec.load(DOCS / "oldest.txt")
    assert [(e.name, e.kinds) for e in d.reference] == [
        ("kvm_lock", ("spinlock",)), ("kvm->mmu_lock", ("spinlock",))]
    assert ("kvm_lock", "kvm->mmu_lock") in rules(d)
    # the invalid example in a section without rules is a warning, not a failure
    assert any("Unexpected indentation" in w for w in d.warnings)


# --------------------------------------------------------------------------- never a false OK


def test_unfamiliar_phrasing_of_a_broken_rule_fails() -> None:
    d = spec.parse(rules_doc("kvm->slots_lock must always be acquired before kvm->lock."))
    conf = spec.check(d, graph(("kvm->lock", "kvm->slots_lock")))
    assert not conf.ok and len(conf.violations) == 1


@pytest.fixture
def saved(tmp_path: Path) -> str:
    """A saved graph that conforms to every ordering the test documents state."""
    path = tmp_path / "g.json"
    spec.save_graph(graph(("kvm->lock", "vcpu->mutex")), path)
    return str(path)


def test_prose_never_passes(capsys, saved: str) -> None:
    assert main(["check", str(DOCS / "prose.rst"), "--graph", saved, "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["complete"] is False
    assert len([w for w in out["incomplete"] if "looks like a rule" in w]) == 2


def test_a_document_without_rules_is_incomplete() -> None:
    ref = "``kvm_lock``\n^^^^^^^^^^^^\n\n:Type: mutex\n"
    d = spec.parse("Reference\n---------\n\n" + ref)
    assert d.incomplete() and not spec.check(d, graph()).ok


def test_the_readme_is_not_a_locking_document(capsys, saved: str) -> None:
    assert main(["check", str(README), "--graph", saved, "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out == {"ok": False, "complete": False, "error": out["error"]}


def test_unread_prose_that_is_not_rule_like_does_not_block() -> None:
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex",
                             "Prefer call_srcu when the wait cannot move after kvm->lock."))
    assert len(d.not_understood) == 1 and not d.incomplete()
    assert spec.check(d, graph(("kvm->lock", "vcpu->mutex"))).ok


# --------------------------------------------------------------------------- layouts


def _blame(text: str) -> str:
    """A web blame view as copied: subjects and dates between hunks, indentation gone."""
    out = []
    for i, line in enumerate(text.splitlines()):
        if i % 7 == 0:
            out += [f"KVM: x86: example change number {i}", f"{i % 5 + 1} years ago"]
        out.append(line.lstrip())
    return "\n".join(out) + "\n"


#: every document in the layout of the kernel's, the four restated releases included
LAYOUT_DOCS = ["current.rst", "older.rst", "versions/newest.rst", "versions/v6.3.rst",
               "versions/v5.4.rst", "versions/v4.txt"]


@pytest.mark.parametrize("name", LAYOUT_DOCS)
def test_blame_view_reads_like_the_clean_file(name: str) -> None:
    clean = (DOCS / name).read_text()
    a, b = spec.parse(clean), spec.parse(_blame(clean))
    assert len(a.rules) >= (25 if name in ("current.rst", "versions/newest.rst") else 10)
    assert [r.key for r in b.rules] == [r.key for r in a.rules]
    assert [e.name for e in b.reference] == [e.name for e in a.reference]
    assert not b.incomplete()
    # line numbers name the line of the file the user has
    lines = _blame(clean).splitlines()
    assert all(r.text.split()[0].strip("`") in lines[r.line - 1] for r in b.rules if r.text)


def test_git_blame_prefixes_are_removed() -> None:
    clean = (DOCS / "current.rst").read_text()
    blamed = "\n".join(f"0bf50497f03b (Jane Doe 2023-01-05 10:00:00 +0100 {i}) {s}"
                       for i, s in enumerate(clean.splitlines(), 1))
    assert [r.key for r in spec.parse(blamed).rules] == [r.key for r in spec.parse(clean).rules]


@pytest.mark.parametrize("name", LAYOUT_DOCS)
def test_web_blame_table_with_commits_and_line_numbers(name: str) -> None:
    clean = (DOCS / name).read_text()
    table = "\n".join(f"{'0bf50497f03b' if i % 3 else 'a1b2c3d4e5f6'}\t{i}\t{s}"
                      for i, s in enumerate(clean.splitlines(), 1))
    assert [r.key for r in spec.parse(table).rules] == [r.key for r in spec.parse(clean).rules]


@pytest.mark.parametrize("name", LAYOUT_DOCS)
def test_line_numbers_and_authors_between_the_lines(name: str) -> None:
    clean = (DOCS / name).read_text()
    out = []
    for i, s in enumerate(clean.splitlines(), 1):
        if i % 9 == 1:
            out += ["Jane Doe", "Documentation: KVM: rework the rules", "Jan 5, 2023"]
        out += [str(i), s.lstrip()]
    b = spec.parse("\n".join(out))
    assert [r.key for r in b.rules] == [r.key for r in spec.parse(clean).rules]


def test_a_document_that_mentions_dates_keeps_its_lines() -> None:
    text = rules_doc("kvm->lock is taken outside vcpu->mutex",
                     "kvm->lock is taken outside kvm->irq_lock") + "\n2023-01-05\n\n"
    assert len(spec.parse(text).rules) == 2


@pytest.mark.parametrize("name", LAYOUT_DOCS)
@pytest.mark.parametrize("indent", ["\t", "      ", "    "])
def test_tabs_and_deep_continuations_keep_every_rule(indent: str, name: str) -> None:
    clean = (DOCS / name).read_text()
    moved = re.sub(r"(?m)^  (?=\S)", indent, clean)
    assert moved != clean
    a, b = spec.parse(clean), spec.parse(moved)
    assert [r.key for r in b.rules] == [r.key for r in a.rules]
    assert [u.text for u in b.not_understood] == [u.text for u in a.not_understood]
    assert not b.incomplete()


def test_size_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.rst"
    big.write_text(rules_doc("kvm->lock is taken outside vcpu->mutex") + "x" * (5 * 2**20))
    with pytest.raises(spec.SpecError, match="a locking document is at most"):
        spec.load(big)
    small = tmp_path / "small.rst"
    small.write_text(rules_doc("kvm->lock is taken outside vcpu->mutex"))
    assert spec.load(small).rules


def test_lint_finds_one_cycle_per_knot_in_a_large_document() -> None:
    n = 10_000
    rs = [spec.Rule("order", f"l{i}", inner=f"l{i + 1}", line=i) for i in range(n)]
    assert spec.lint(spec.Spec(rules=rs)) == []
    rs.append(spec.Rule("order", f"l{n}", inner="l0", line=n))
    [f] = spec.lint(spec.Spec(rules=rs))
    assert f.kind == "cycle" and len(f.nodes) == n + 1


# --------------------------------------------------------------------------- accept, diff


def test_accepted_violations_do_not_fail_but_new_ones_do(tmp_path: Path, capsys) -> None:
    doc = tmp_path / "d.rst"
    doc.write_text(rules_doc("kvm->lock is taken outside vcpu->mutex",
                             "kvm->lock is taken outside kvm->irq_lock"))
    g = tmp_path / "g.json"
    spec.save_graph(graph(("vcpu->mutex", "kvm->lock")), g)
    acc = tmp_path / "accept.txt"
    acc.write_text("# known\nvcpu->mutex -> kvm->lock: the s390 TOD path, fix pending\n")
    assert main(["check", str(doc), "--graph", str(g), "--accept", str(acc)]) == 0
    out = capsys.readouterr().out
    assert "Accepted violations" in out and "the s390 TOD path" in out
    spec.save_graph(graph(("vcpu->mutex", "kvm->lock"), ("kvm->irq_lock", "kvm->lock")), g)
    assert main(["check", str(doc), "--graph", str(g), "--accept", str(acc), "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert sorted(r["status"] for r in res["rules"]) == ["accepted", "violated"]


def test_an_accept_line_without_a_reason_is_an_error(tmp_path: Path) -> None:
    acc = tmp_path / "a.txt"
    acc.write_text("vcpu->mutex -> kvm->lock\n")
    with pytest.raises(spec.SpecError, match="reason"):
        load_waivers(acc)


def test_accept_by_rule_line() -> None:
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex"))
    conf = spec.check(d, graph(("vcpu->mutex", "kvm->lock")))
    line = conf.violations[0].rule.line
    from kvmlock.spec.accept import Waiver

    assert apply(conf, [Waiver(f"line {line + 1}", "wrong line", 1)])  # unused: names nothing
    assert not conf.ok
    apply(conf, [Waiver(f"line {line}", "known", 1)])
    assert conf.ok


def test_diff_shows_the_srcu_reversal(capsys) -> None:
    d = spec.diff(spec.load(DOCS / "older.rst"), spec.load(DOCS / "current.rst"))
    rev = [c for c in d.changes if c.kind == "reversed"]
    assert [(c.old.kind, c.new.kind, c.new.outer) for c in rev] == [
        ("srcu_read_ok", "srcu_sync_inside", "kvm->lock")]
    assert "now a violation: kvm->srcu(read) -> kvm->lock" in rev[0].meaning
    assert main(["diff", str(DOCS / "older.rst"), str(DOCS / "current.rst")]) == 0
    assert "reversed" in capsys.readouterr().out
    # near miss: a document against itself has no changes
    assert spec.diff(spec.load(DOCS / "current.rst"), spec.load(DOCS / "current.rst")).changes == []


def test_diff_on_a_graph_shows_verdicts_moving() -> None:
    g = spec.view({"classes": {"kvm->srcu": "srcu"}, "chains": [],
                   "edges": [{"src": "kvm->lock", "dst": "kvm->srcu", "dst_read": 0}]})
    d = spec.diff(spec.load(DOCS / "older.rst"), spec.load(DOCS / "current.rst"), g)
    [rev] = [c for c in d.changes if c.kind == "reversed"]
    assert rev.verdicts == ("violated", "held")


# --------------------------------------------------------------------------- /proc/lockdep

PROC = """all lock classes:
ffffffffc0b1b2a0 FD:    3 BD:    1 +.+.: &kvm->lock
 -> [ffffffffc0b1b2b0] &vcpu->mutex
 -> [ffffffffc0b1b2c0] &kvm->slots_lock

ffffffffc0b1b2b0 FD:    2 BD:    2 +.+.: &vcpu->mutex
 -> [ffffffffc0b1b2d0] &kvm->irq_lock

ffffffffc0b1b2c0 FD:    1 BD:    2 +.+.: &kvm->slots_lock

ffffffffc0b1b2d0 FD:    1 BD:    3 +.+.: &kvm->irq_lock
"""


def test_hand_written_proc_lockdep_dump() -> None:
    g = read_proc_lockdep(PROC)
    assert {(e.src, e.dst) for e in g.edges} == {
        ("kvm->lock", "vcpu->mutex"), ("kvm->lock", "kvm->slots_lock"),
        ("vcpu->mutex", "kvm->irq_lock")}
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex",
                             "kvm->lock is taken outside kvm->slots_lock"))
    assert spec.check(d, g).ok
    bad = PROC.replace(" -> [ffffffffc0b1b2d0] &kvm->irq_lock",
                       " -> [ffffffffc0b1b2a0] &kvm->lock")
    assert not spec.check(d, read_proc_lockdep(bad)).ok


def test_proc_lockdep_cli_reports_unmentioned_dependencies(tmp_path: Path, capsys) -> None:
    dump = tmp_path / "lockdep"
    dump.write_text(PROC)
    doc = tmp_path / "d.rst"
    doc.write_text(rules_doc("kvm->lock is taken outside vcpu->mutex and kvm->slots_lock",
                             "kvm->irq_lock is a leaf"))
    assert main(["check", str(doc), "--proc-lockdep", str(dump), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unmentioned_dependencies"] == ["vcpu->mutex -> kvm->irq_lock"]
    # a dump records no lock kinds: a type rule cannot be checked, so the verdict is incomplete
    doc.write_text(rules_doc("kvm->lock is taken outside vcpu->mutex", "kvm->irq_lock is a mutex"))
    assert main(["check", str(doc), "--proc-lockdep", str(dump), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["complete"] is False
    assert main(["check", str(doc), "--chains", str(dump)]) == 2  # --chains needs the dump


def test_an_empty_chains_dump_is_refused(tmp_path: Path, capsys) -> None:
    # a dump with dependencies but no chains would turn every "only with X held" rule from
    # unchecked into merely not exercised: refused, with the reason
    dump, chains = tmp_path / "lockdep", tmp_path / "lockdep_chains"
    dump.write_text(PROC)
    chains.write_text("")
    doc = tmp_path / "d.rst"
    doc.write_text(rules_doc("kvm->lock is taken outside vcpu->mutex"))
    assert main(["check", str(doc), "--proc-lockdep", str(dump), "--chains", str(chains)]) == 2
    assert "no lock chains found" in capsys.readouterr().err
    # near miss: a real chains dump is read
    chains.write_text(write_proc_chains(graph(("kvm->lock", "vcpu->mutex"),
                                              chains=[["kvm->lock", "vcpu->mutex"]])))
    assert main(["check", str(doc), "--proc-lockdep", str(dump), "--chains", str(chains)]) == 0


def test_model_graph_round_trips_through_kernel_dumps() -> None:
    model = spec.model_graph()
    g = read_proc_lockdep(write_proc_lockdep(model))
    chains = read_proc_chains(write_proc_chains(model))
    assert {(e.src, e.dst) for e in g.edges} == {(e.src, e.dst) for e in spec.view(model).edges}
    full = GraphView(g.classes, g.edges, chains)
    doc = spec.model_spec()  # the document the model follows (current.rst calls kvm_lock a leaf)
    direct, dumped = spec.check(doc, model), spec.check(doc, full)
    assert direct.ok and not dumped.violations
    # the dump does not say which SRCU acquisitions were synchronize: those rules are unchecked,
    # so the verdict is incomplete rather than OK
    srcu = [r for r in dumped.results if r.rule.kind == "srcu_sync_inside"]
    assert srcu and all(r.status == "unchecked" for r in srcu) and not dumped.ok


def test_a_dump_that_is_not_one_is_refused() -> None:
    with pytest.raises(spec.SpecError, match="not a /proc/lockdep line"):
        read_proc_lockdep("hello world\n")
    with pytest.raises(spec.SpecError, match="no lock classes"):
        read_proc_lockdep("all lock classes:\n")


def test_name_field_reference_layout() -> None:
    ref = (":Name:\t\tkvm_lock\n:Type:\t\tmutex\n:Arch:\t\tany\n:Protects:\t- vm_list\n"
           "\t\t- the usage count\n\n:Name:\t\tkvm->srcu\n:Type:\t\tsrcu lock\n:Arch:\t\tany\n\n"
           "``vendor_module_lock``\n^^^^^^^^^^^^^^^^^^^^^^\n:Type:\t\tmutex\n")
    d = spec.parse(rules_doc("kvm->lock is taken outside vcpu->mutex", reference=ref))
    assert [(e.name, e.kinds) for e in d.reference] == [
        ("kvm_lock", ("mutex",)), ("kvm->srcu", ("srcu",)), ("vendor_module_lock", ("mutex",))]
    assert d.reference[0].protects == ["vm_list", "the usage count"]


def test_an_architecture_lead_scopes_the_sentence() -> None:
    d = spec.parse(rules_doc("On x86, vcpu->mutex is taken outside kvm->arch.hyperv.hv_lock."))
    [r] = d.rules
    assert (r.outer, r.inner, r.arch) == ("vcpu->mutex", "kvm->arch.hyperv.hv_lock", "x86")
    assert spec.check(d, graph(("kvm->arch.hyperv.hv_lock", "vcpu->mutex")), arch="arm64").ok


def test_struct_members_count_as_lock_names_in_unread_rules() -> None:
    d = spec.parse(rules_doc("dev->a is taken outside dev->b",
                             "Whoever holds dev->cfg may go on to grab dev->queue."))
    assert [u.names for u in d.not_understood] == [["dev->cfg", "dev->queue"]]
    assert d.incomplete()
    # near miss: a field and a function, no ordering word
    d = spec.parse(rules_doc("dev->a is taken outside dev->b",
                             "dev->count ensures that start() and end() use one array."))
    assert d.not_understood and not d.incomplete()
