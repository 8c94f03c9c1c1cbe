"""pytest plugin: ``--lockdep`` validates the locks of the code under test (work in progress)."""

from __future__ import annotations


def pytest_addoption(parser) -> None:  # type: ignore[no-untyped-def]
    parser.addoption("--lockdep", action="store_true", default=False,
                     help="validate threading locks with kvmlock.lockdep")
