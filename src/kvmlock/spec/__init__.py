"""kvmlock.spec: read a locking.rst-style document and check a lock graph against it.

Linux keeps KVM's locking rules in prose (Documentation/virt/kvm/locking.rst) that changes from
release to release. This package makes such a document executable::

    from kvmlock import spec, lockdep
    rules = spec.load("locking.rst")          # docutils parse -> rules, Reference, unread text
    conf = spec.check(rules, lockdep.graph()) # held / violated / not exercised, per rule
    print(conf.render()); assert conf.ok

``spec.lint(rules)`` finds contradictions inside the document itself,
``spec.conformance(path)`` checks the KVM model's own run against a document, and
``spec.diff(old, new)`` says what changed between two versions of one.
``spec.model_spec()`` is the model's own locking document (``kvmlock/kvm/locking.rst``), the one
source of the rules its scenarios check; ``kvmlock spec check DOC`` diffs DOC against it.
"""

from __future__ import annotations

import os
from typing import Any

from kvmlock.spec.check import Conformance, RuleResult, TypeResult, check
from kvmlock.spec.design import model_spec
from kvmlock.spec.diff import SpecDiff, diff
from kvmlock.spec.graphview import (
    Edge,
    GraphView,
    load_graph,
    merge,
    save_graph,
    snapshot,
    view,
)
from kvmlock.spec.lint import Finding, lint
from kvmlock.spec.model import RefEntry, Rule, Spec, SpecError, Unread
from kvmlock.spec.names import normalise
from kvmlock.spec.reader import load, parse
from kvmlock.spec.render import render_reference

__all__ = [
    "Conformance",
    "Edge",
    "Finding",
    "GraphView",
    "ModelUnavailable",
    "RefEntry",
    "Rule",
    "RuleResult",
    "Spec",
    "SpecDiff",
    "SpecError",
    "TypeResult",
    "Unread",
    "check",
    "conformance",
    "diff",
    "lint",
    "load",
    "load_graph",
    "merge",
    "model_graph",
    "model_spec",
    "normalise",
    "parse",
    "render_reference",
    "save_graph",
    "snapshot",
    "view",
]


class ModelUnavailable(RuntimeError):
    """The KVM model's graph was asked for, but the model cannot produce one."""


def model_graph() -> Any:
    """The dependency graph of the KVM model's correct scenarios and workload, run once.

    ``kvmlock.scenarios.verify.collect_graph`` runs the model and returns ``lockdep.graph()``
    from inside its isolated lockdep state, refused edges and held-lock chains included.
    """
    try:
        from kvmlock.scenarios.verify import collect_graph
    except ImportError as exc:
        raise ModelUnavailable(
            "cannot run the KVM model to obtain its lock graph: "
            f"kvmlock.scenarios.verify.collect_graph is not available ({exc}); "
            "pass a graph instead (spec check DOC --graph saved.json)"
        ) from None
    return collect_graph()


def conformance(doc_path: str | os.PathLike[str], graph: Any = None) -> Conformance:
    """Check ``graph`` -- by default the KVM model's own run -- against the document."""
    spec = load(doc_path)
    if graph is not None:
        return check(spec, graph)
    from kvmlock.spec.design import model_undeclared

    return check(spec, model_graph(), reasons=model_undeclared())
