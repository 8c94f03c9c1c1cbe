"""Give a document back the layout reStructuredText needs before docutils reads it.

Two ways of obtaining locking.rst break its layout without changing its words:

* a **blame view** copied from a web page or ``git blame`` interleaves commit subjects, authors
  and dates with the lines (or prefixes each line with them), and drops the indentation, so a
  bullet's second line and a field's body start at column 0;
* **re-indenting** (an editor's tabs, a continuation indented deeper than the bullet text)
  turns a bullet's second line into a block quote that docutils reports and the reader skips.

Both are repaired here, line by line, and the original line number of every kept line is
returned, so rules still name the line a user sees in their file. A clean document passes
through unchanged.
"""

from __future__ import annotations

import re

_GIT_BLAME = re.compile(
    r"^\^?[0-9a-f]{7,40} (?:\S+ +)?\((?P<who>[^()]*?) +\d{4}-\d\d-\d\d[ T][\d:]+(?: [+-]\d{4})?"
    r" +\d+\) ?(?P<text>.*)$"
)
_DATE = re.compile(
    r"^(?:\d+ (?:years?|months?|weeks?|days?|hours?|minutes?) ago|(?:last|a|an) "
    r"(?:year|month|week|day|hour) ago|last (?:year|month|week)|yesterday|today"
    r"|\d{4}-\d\d-\d\d(?:[ T]\d\d:\d\d(?::\d\d)?)?(?: ?[+-]\d\d:?\d\d|Z)?"
    r"|(?:[A-Z][a-z]{2} )?[A-Z][a-z]{2,8} \d{1,2},? \d{4}|\d{1,2} [A-Z][a-z]{2,8},? \d{4})$",
    re.I,
)
_HASH = re.compile(r"^[0-9a-f]{7,40}$")
#: web blame tables copied as text: "commit<TAB>line<TAB>text"
_HASH_PREFIX = re.compile(r"^\^?[0-9a-f]{7,40}(?:\t| +)(?:\d{1,5}(?:\t| ))?(?P<text>.*)$")
_LINENO = re.compile(r"^\s*\d{1,5}\s*$")
_SUBJECT = re.compile(
    r"^(?:[\w./+-]+: )+\S|^Merge (?:tag|branch|remote)|^Revert \"|^Documentation/\S+:"
)
_AUTHOR = re.compile(r"^[A-Z][\w'.-]+(?: [A-Z][\w'.-]*){1,3}$")
_STRUCTURE = re.compile(r"^(?:[-*+] |\d+[.)] |:\w|\.\. |``|[=^~`'\"#*+-]{3,}$)")
_BULLET = re.compile(r"^(\s*)([-*+]|\d+[.)]|#\.) +(?=\S)")
_FIELD = re.compile(r"^(\s*):(?!:)[^:`]+:(?:\s+|$)")
_UNDERLINE = re.compile(r"^([=\-`:'\"~^_*+#<>])\1{2,}\s*$")


def _is_meta(line: str) -> bool:
    s = line.strip()
    return bool(s) and bool(_DATE.match(s) or _HASH.match(s))


def strip_blame(lines: list[str]) -> tuple[list[str], list[int]]:
    """Drop a blame view's commit, author and date lines; keep each kept line's number."""
    for prefix in (_GIT_BLAME, _HASH_PREFIX):
        if sum(1 for s in lines if prefix.match(s)) > len(lines) // 2:
            out = [(m["text"] if (m := prefix.match(s)) else s) for s in lines]
            return out, list(range(1, len(lines) + 1))
    numbers = [i for i, s in enumerate(lines) if _LINENO.match(s)]
    values = [int(lines[i]) for i in numbers]
    numbered = len(numbers) > len(lines) // 4 and values == sorted(values)
    dates = [i for i, s in enumerate(lines) if _is_meta(s)]
    if len(dates) < 3 and not numbered:  # a document that merely mentions a date or two
        return lines, list(range(1, len(lines) + 1))
    drop = set(dates) | (set(numbers) if numbered else set())
    for i in dates:
        for j in (i - 1, i - 2, i - 3, i + 1):
            if 0 <= j < len(lines) and j not in drop:
                s = lines[j].strip()
                if s and not _STRUCTURE.match(s) and (_SUBJECT.match(s) or _AUTHOR.match(s)):
                    drop.add(j)
    kept = [i for i in range(len(lines)) if i not in drop]
    return [lines[i] for i in kept], [i + 1 for i in kept]


def _heading_at(lines: list[str], i: int) -> bool:
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    return bool(_UNDERLINE.match(lines[i]) or (_UNDERLINE.match(nxt) and lines[i].strip()))


def repair_indentation(lines: list[str]) -> list[str]:
    """Re-indent a bullet's or a field's continuation lines, and literal blocks, to fit RST."""
    out: list[str] = []
    body = None  # column the current bullet's text or field's body starts at
    field = False
    literal = None  # indent for the lines of a literal block whose "::" was just seen
    started = False  # the literal block has had a line
    owner = 0  # column of the bullet or field marker that ``body`` belongs to
    blank = True
    for raw in lines:
        line = raw.expandtabs(8).rstrip()
        s = line.strip()
        i = len(out)
        if not s:
            out.append("")
            blank = True
            continue
        indent = len(line) - len(line.lstrip())
        if literal is not None and (indent >= literal or (blank and not started)
                                    or (started and not blank)):
            if not started and indent > literal - 4:
                literal = indent  # indented as it should be: keep the drawing's own indents
            if indent < literal:
                line = " " * literal + s  # the block lost its indentation
            out.append(line)
            started, blank = True, False
            continue
        literal, started = None, False
        if _UNDERLINE.match(line) or (_heading_at(lines, i) if i < len(lines) else False):
            body, field = None, False
        elif m := _BULLET.match(line):
            if field and indent == 0 and body is not None and not blank:
                line = " " * body + s  # a field body's own list, flattened to column 0
                m = _BULLET.match(line)
            body, field = len(m.group(0)), field and line.startswith(" ")
            owner = len(m.group(1))
        elif m := _FIELD.match(line):
            body, field = len(m.group(0)) if len(m.group(0)) > len(m.group(1)) + 2 else 16, True
            owner = len(m.group(1))
            if line.strip().endswith(":") and len(m.group(0).rstrip()) == len(line):
                body = 16
        elif (body is not None and not blank and indent != body and not (field and indent > 0)
              and (indent > owner or owner == 0)):
            line = " " * body + s  # continuation of the bullet (or field) above it
        elif blank and indent == 0:
            body, field = None, False
        if s.endswith("::"):
            literal = (len(line) - len(line.lstrip())) + 4
            if _BULLET.match(line):
                literal = len(_BULLET.match(line).group(0)) + 4
            elif body is not None and not field:
                literal = body + 4
        out.append(line)
        blank = False
    return out


_OLD_FIELD = re.compile(r"^:?(Name|Type|Arch|Protects|Comment):\s+(\S.*)$")


def old_reference(lines: list[str], numbers: list[int]) -> tuple[list[str], list[int]]:
    """The earlier releases' Reference ("Name: kvm_lock" records, then ":Name: kvm_lock" field
    lists) as headings and field lists, the layout later releases use."""
    if sum(1 for s in lines if re.match(r"^:?Name:\s", s)) < 2:
        return lines, numbers
    out: list[str] = []
    nums: list[int] = []
    for s, n in zip(lines, numbers, strict=True):
        m = _OLD_FIELD.match(s)
        if m and m.group(1) == "Name":
            head = f"``{m.group(2).strip()}``"
            out += [head, "^" * len(head), ""]
            nums += [n, n, n]
        elif m:
            out.append(f":{m.group(1)}: {m.group(2)}")
            nums.append(n)
        else:
            out.append(s)
            nums.append(n)
    return out, nums


def restore(text: str) -> tuple[str, list[int]]:
    """The document with its layout repaired, and the original line of each of its lines."""
    lines = text.split("\n")
    lines, numbers = strip_blame(lines)
    lines, numbers = old_reference(lines, numbers)
    return "\n".join(repair_indentation(lines)), numbers
