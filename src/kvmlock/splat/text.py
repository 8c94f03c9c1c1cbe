"""Kernel log text as it reaches a user, turned back into the lines the kernel printed.

A lockdep report is rarely read from a clean console. It comes from ``dmesg`` (timestamps,
``[T1234]`` caller ids, relative ``[  +0.000004]`` stamps), from syslog files (host prefixes,
``#012`` for a newline), from mail archives (quoted-printable ``=3D`` and soft line breaks,
``> `` quoting, lines wrapped after ``at:``) and from commit messages, where a splat is
sometimes pasted as one long line. Every later step sees only the kernel's own lines.
"""

from __future__ import annotations

import quopri
import re

_QUOTE = re.compile(r"^(?:[ \t]*>)+ ?")
_SYSLOG = re.compile(
    r"^(?:\d{4}-\d\d-\d\dT\S+|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) \S+ kernel: ?"
)
_STAMP = re.compile(
    r"^\s*(?:\[\s*[+]?\d+\.\d+\]|\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d [\d:]{8} \d{4}\])"
    r"(?:\s*\[\s*[TC]\d+\])?\s?"
)
_CALLER = re.compile(r"^\s*\[\s*[TC]\d+\]\s?")
#: where a report flattened onto one line is cut back into the kernel's lines
_BREAKS = re.compile(
    r"\s+(?=(?:WARNING|BUG|INFO): |\[ (?:INFO|BUG): |-{5,}|={5,}|\S+/\d+ (?:is trying|just changed"
    r"|is leaving|\[HC)|but task is already holding|which lock already depends|the existing "
    r"dependency chain|-> #\d+ \(|other info that might|Possible unsafe locking|Possible interrupt"
    r"|\*\*\* DEADLOCK|\d+ locks? held by|no locks held by|#\d+: [0-9a-f]{8,16} \(|stack backtrace"
    r"|but there are no more locks|and this task is already holding|which would create a new lock"
    r"|but this new dependency|CPU0\s|lock\(|\[<[0-9a-f]+>\]|context-\{"
    r"|[\w.]+\+0x[0-9a-f]+/0x|\S+ #\d+ (?:Not tainted|Tainted))"
    # a lock's address starts a line, except after a held-lock index ("#0: ffff... (")
    r"|(?<!#\d:)(?<!#\d\d:)\s+(?=[0-9a-f]{8,16} \()"
)


def _qp(text: str) -> str:
    """Undo quoted-printable mail encoding when the text shows its marks (``=3D``, ``=20``)."""
    if not re.search(r"=3D|=20$|=[0-9A-F]{2}=\r?$", text, re.M):
        return text
    raw = text.encode("utf-8", "surrogateescape")
    return quopri.decodestring(raw).decode("utf-8", "replace")


def _strip(line: str) -> str:
    line = line.rstrip("\r\n")
    line = _QUOTE.sub("", line)
    line = _SYSLOG.sub("", line)
    line = _STAMP.sub("", line)
    line = _CALLER.sub("", line)
    return line.replace("\u00a0", " ").rstrip()


def _unflatten(line: str) -> list[str]:
    """A report pasted as one line: cut it where the kernel started a new line."""
    if len(line) < 160 or len(_BREAKS.findall(line)) < 3:
        return [line]
    return [p for p in _BREAKS.split(line) if p.strip()]


_WRAPPED_AT = re.compile(r"(?:, at:|^\s*(?:#\d+: )?[0-9a-f]{8,16}| -> \()\s*$")


def kernel_lines(text: str) -> list[str]:
    """The kernel's own lines, in order, with every transport's decoration removed."""
    text = _qp(text.replace("\r\n", "\n"))
    out: list[str] = []
    for raw in text.split("\n"):
        for part in raw.split("#012"):
            out += _unflatten(_strip(part))
    # a mail client wrapped a lock line after "at:" or after the lock's address
    joined: list[str] = []
    for line in out:
        if joined and _WRAPPED_AT.search(joined[-1]) and line.strip():
            joined[-1] = joined[-1].rstrip() + " " + line.strip()
        else:
            joined.append(line)
    return joined
