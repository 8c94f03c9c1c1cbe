"""Lock classes for locks that nobody named: one class per creation site, named like code.

The kernel makes every static initialisation site one lock class and names it after the
expression it initialises (``&kvm->lock``). Plain Python locks get the same treatment: the
site is file, line and column (two calls on one line are two classes, one call in a loop is
one class), and the name is the variable or attribute the new lock is assigned to, qualified
the way a reader finds it: ``self._lock = Lock()`` in ``Foo.__init__`` is ``Foo._lock``, a
module global is its own name, a local is ``func.name``. Where no single target can be read
off the line the name is ``file:line:col``. A name already taken by another site gets
``@file:line`` appended, so a name always means one class.

Everything that builds classes for unannotated threading locks (``kvmlock lockdep``, the
explorer running plain threading code) asks :func:`site_key` and :func:`class_name`, so the
same lock is the same class wherever it is validated.
"""

from __future__ import annotations

import linecache
import re
import threading
from types import FrameType

from kvmlock.lockdep.where import short_path

Site = tuple[str, int, "int | None", str]  # file, line, column (1-based), code qualname

_TARGET = re.compile(r"^\s*([A-Za-z_][\w.]*(?:\[[^\]=]*\])?)\s*(?::[^=]*)?=(?!=)")
_MAKERS = re.compile(r"\b(?:R?Lock|Condition|Semaphore|BoundedSemaphore|allocate_lock)\s*\(")
_names: dict[str, tuple] = {}  # class name -> the key that owns it
_by_key: dict[tuple, str] = {}
_names_lock = threading.Lock()


def column(f: FrameType) -> int | None:
    """1-based column of the call being made in frame ``f``."""
    try:
        positions = f.f_code.co_positions()
        for _ in range(f.f_lasti // 2):
            next(positions)
        col = next(positions)[2]
    except (StopIteration, AttributeError):
        return None
    return None if col is None else col + 1


def site_of(f: FrameType) -> Site:
    """The creation site of a lock made by the call frame ``f`` is executing."""
    return f.f_code.co_filename, f.f_lineno, column(f), f.f_code.co_qualname


def site_key(what: str, site: Site) -> tuple:
    """The class key of a ``what`` ("Lock", "RLock", ...) made at ``site``."""
    return (what, site[0], site[1], site[2])


def _target_name(site: Site) -> str | None:
    fn, line, _col, qual = site
    text = linecache.getline(fn, line)
    m = _TARGET.match(text)
    if m is None or len(_MAKERS.findall(text)) > 1:
        return None
    target = m.group(1)
    parts = [p for p in qual.split(".") if not p.startswith("<")]  # <locals>, <listcomp>
    head, _, attr = target.partition(".")
    if head in ("self", "cls") and attr and len(parts) >= 2:
        return f"{parts[-2]}.{attr}"  # the class whose method made it
    if not parts:  # module level (or a comprehension there)
        return target
    return f"{'.'.join(parts)}.{target}"


def class_name(key: tuple, site: Site) -> str:
    """The display name of the class ``key`` made at ``site`` (stable for a key)."""
    name = _by_key.get(key)
    if name is not None:
        return name
    fn, line, col, _q = site
    where = f"{short_path(fn)}:{line}"
    with _names_lock:
        name = _by_key.get(key)
        if name is not None:
            return name
        base = _target_name(site)
        candidates = [where + (f":{col}" if col else "")]
        if base is not None:
            candidates = [base, f"{base}@{where}", f"{base}@{where}:{col}"] + candidates
        for name in candidates:
            if _names.setdefault(name, key) == key:
                break
        else:
            name = f"{candidates[-1]}#{len(_by_key)}"
            _names[name] = key
        _by_key[key] = name
    return name
