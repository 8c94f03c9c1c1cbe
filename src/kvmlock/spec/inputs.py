"""Files a user names on the command line (documents, dumps, waivers, kernel logs), read with
one clear error for each way they can be wrong: missing, a directory, too large, binary, not text.

A kernel log copied from a console may hold a few stray bytes, so logs are read leniently
(undecodable bytes replaced) unless most of the file is not text; documents are read strictly.
"""

from __future__ import annotations

import os
from pathlib import Path

from kvmlock.spec.model import SpecError

#: the share of undecodable bytes above which a leniently read file is called binary
_BINARY_SHARE = 0.05


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n // 1024} KiB"


def _a(what: str) -> str:
    return ("an " if what[0] in "aeiou" else "a ") + what


def read_text(path: str | os.PathLike[str], what: str, max_bytes: int, *,
              lenient: bool = False, why_limit: str = "") -> str:
    """The text of the file ``path`` names, or :class:`SpecError` saying in one line what is
    wrong with it. ``what`` names the kind of file in the message ("document", "kernel log")."""
    p = Path(path)
    name = repr(str(p))
    try:
        if p.is_dir():
            raise SpecError(f"{name} is a directory, not {_a(what)}")
        size = p.stat().st_size
        if size > max_bytes:
            raise SpecError(f"{name} is {_size(size)}; {_a(what)} is at most {_size(max_bytes)}"
                            + (f" ({why_limit})" if why_limit else ""))
        data = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"no such {what}: {name}") from None
    except OSError as exc:
        raise SpecError(f"cannot read {name}: {exc.strerror or exc}") from None
    return decode(data, name, what, lenient=lenient)


def decode(data: bytes, name: str, what: str, *, lenient: bool = False) -> str:
    """``data`` as text, or :class:`SpecError` if it is binary (or, strictly, not UTF-8)."""
    if b"\0" in data[:65536]:
        raise SpecError(f"{name} is binary data (it holds NUL bytes), not {_a(what)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if lenient:
            text = data.decode("utf-8", "replace")
            if text.count("\ufffd") <= _BINARY_SHARE * max(len(text), 1):
                return text
            raise SpecError(f"{name} is binary data, not {_a(what)}") from None
        raise SpecError(f"cannot read {name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                        f"offset {exc.start})") from None
