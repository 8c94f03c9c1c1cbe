"""Fixtures for the splat tests: short excerpts of public kernel logs, each naming its source."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
DOCS = Path(__file__).parent.parent / "spec" / "docs"


def text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")
