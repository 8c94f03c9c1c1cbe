"""Tiny locking.rst-style documents built around a few rule sentences, for the spec tests."""

from __future__ import annotations


def rules_doc(*bullets: str, prose: str = "", reference: str = "") -> str:
    """A minimal document whose Acquisition Orders list holds ``bullets``."""
    items = "\n".join(f"- {b}\n" for b in bullets)
    ref = f"\nReference\n---------\n\n{reference}\n" if reference else ""
    return (
        "Overview\n========\n\nAcquisition Orders\n------------------\n\n"
        f"{items}\n{prose}\n{ref}"
    )
