"""Fixtures for the spec tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).parent / "docs"


@pytest.fixture
def docs() -> Path:
    """The project's own test documents (locking.rst layout, the project's own words)."""
    return DOCS
