"""Find the line of *user* code behind a lock operation.

A report that points into kvmlock's own wrappers tells the reader nothing, so the frames of the
primitives, the validator, the runtime and the standard library's locking helpers are skipped
and the first frame outside them is named as ``file:line``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any

_getframe = sys._getframe

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP_DIRS = tuple(os.path.join(_PKG, d) + os.sep for d in ("sync", "explore"))
_LOCKDEP_DIR = os.path.join(_PKG, "lockdep") + os.sep
_KEEP = {os.path.join(_LOCKDEP_DIR, f) for f in ("selftest.py", "selftest_cases.py")}
_SKIP_FILES = {
    os.path.join(_PKG, "runtime.py"),
    os.path.join(_PKG, "irq.py"),
    os.path.abspath(threading.__file__),
    os.path.abspath(contextlib.__file__),
    *(os.path.join(os.path.dirname(os.path.abspath(threading.__file__)), "asyncio", f)
      for f in ("locks.py", "events.py", "base_events.py", "tasks.py", "runners.py")),
    os.path.join(_PKG, "script.py"),  # kvmlock lockdep's runner
    os.path.join(_PKG, "cli.py"),
}
_internal_cache: dict[str, bool] = {}
_PYTEST_CALL = os.path.join("_pytest", "python.py")  # pytest_pyfunc_call runs each test
_BOTTOM = {"<frozen runpy>",
           os.path.join(os.path.dirname(os.path.abspath(threading.__file__)), "asyncio",
                        "events.py")}


def _internal(filename: str) -> bool:
    hit = _internal_cache.get(filename)
    if hit is None:
        path = os.path.abspath(filename)
        hit = (
            filename.startswith("<frozen ")  # runpy and importlib, running the program
            or path.startswith(_SKIP_DIRS)
            or (path.startswith(_LOCKDEP_DIR) and path not in _KEEP)
            or path in _SKIP_FILES
        )
        _internal_cache[filename] = hit
    return hit


_short_cache: dict[tuple[str, str], str] = {}


def short_path(filename: str) -> str:
    """A path relative to the working directory when the file is under it, else as given."""
    cwd = os.getcwd()
    hit = _short_cache.get((cwd, filename))
    if hit is None:
        try:
            rel = os.path.relpath(filename, cwd)
        except ValueError:
            rel = ".."
        hit = _short_cache[(cwd, filename)] = filename if rel.startswith("..") else rel
    return hit


#: id(code) -> (code, its line at each instruction offset), for :func:`line_at`; the code
#: object is kept so that its id cannot be another's while the entry lives.
_LINES: dict[int, tuple[Any, dict[int, int]]] = {}


def line_at(code: Any, lasti: int) -> int:
    """The line a frame running ``code`` at instruction offset ``lasti`` is at: what its
    ``f_lineno`` says (-1 for an instruction with no line). Found when a place is shown,
    not when it is captured: ``f_lineno`` walks the code's line table from its start at
    every call, while this reads a table made once per code object."""
    if lasti < 0:
        return code.co_firstlineno
    hit = _LINES.get(id(code))
    if hit is None or hit[0] is not code:
        if len(_LINES) >= 1 << 14:
            _LINES.clear()
        table = {}
        for start, end, ln in code.co_lines():
            for off in range(start, end, 2):
                table[off] = -1 if ln is None else ln
        hit = _LINES[id(code)] = (code, table)
    return hit[1].get(lasti, -1)


class Site:
    """A user code line as captured on a chain-cache miss: the code and instruction only. It
    becomes ``file:line`` (relative to the working directory) when a report, a held-lock list
    or a graph snapshot needs the text, so a miss makes no system call, looks up no line and
    formats nothing."""

    __slots__ = ("code", "lasti")

    def __init__(self, code: Any, lasti: int) -> None:
        self.code = code
        self.lasti = lasti

    @property
    def file(self) -> str:
        return self.code.co_filename

    @property
    def line(self) -> int:
        return line_at(self.code, self.lasti)

    def __str__(self) -> str:
        return f"{short_path(self.code.co_filename)}:{line_at(self.code, self.lasti)}"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


UNKNOWN = "<unknown>"


def site(skip: int = 1) -> Site | str:
    """The innermost frame that is not kvmlock or stdlib locking machinery, as a :class:`Site`
    (formatted when it is read as text)."""
    f = sys._getframe(skip)
    cache = _internal_cache
    while f is not None:
        code = f.f_code
        fn = code.co_filename
        hit = cache.get(fn)
        if hit is None:
            hit = _internal(fn)
        if not hit:
            return Site(code, f.f_lasti)
        f = f.f_back
    return UNKNOWN


def user_site(skip: int = 1) -> str:
    """``file:line`` of the innermost frame that is not kvmlock or stdlib locking machinery."""
    return str(site(skip + 1))


NOWHERE = (None, -1)


def taken_here(skip: int = 2) -> tuple:
    """Where a lock is being taken, as every acquire records it (the kernel's ``acquire_ip``):
    the innermost user frame's code object and instruction offset -- no line lookup and no
    text, which :func:`taken_at` makes only when a report lists the lock among those held.

    The cached path of ``LockMap.lock()`` records the same pair with the frame itself in place
    of its code (one attribute load fewer): the frame that called the primitive, which the held
    entry keeps until the lock is released."""
    try:
        f = _getframe(skip)
    except ValueError:  # the stack is not that deep
        return NOWHERE
    cache = _internal_cache
    while f is not None:
        code = f.f_code
        hit = cache.get(code.co_filename)
        if hit is None:
            hit = _internal(code.co_filename)
        if not hit:
            return code, f.f_lasti
        f = f.f_back
    return NOWHERE


def taken_at(code: Any, lasti: int) -> str | None:
    """``file:line`` of a place recorded as :func:`taken_here` does (``code`` may be the frame
    running it), or None when there is none or it is kvmlock's own."""
    if code is None:
        return None
    if not hasattr(code, "co_lines"):
        code = code.f_code
    if _internal(code.co_filename):
        return None
    line = code.co_firstlineno
    for start, end, ln in code.co_lines():
        if start <= lasti < end:
            if ln is not None:
                line = ln
            break
    return f"{short_path(code.co_filename)}:{line}"


class Stack:
    """User frames as captured (code, instruction offset), innermost first; iterating gives
    the ``file:line in function`` texts, looked up and formatted then (see :class:`Site`)."""

    __slots__ = ("frames",)

    def __init__(self, frames: tuple[tuple[Any, int], ...]) -> None:
        self.frames = frames

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (f"{short_path(code.co_filename)}:{line_at(code, lasti)} in {code.co_name}"
                for code, lasti in self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __bool__(self) -> bool:
        return bool(self.frames)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other)  # type: ignore[arg-type]

    def __hash__(self) -> int:
        return hash(tuple(self))


def user_stack(skip: int = 1, limit: int = 4) -> Stack:
    """The innermost ``limit`` user frames, innermost first: the call path that made a
    dependency, as the kernel's stack under each chain entry (text when iterated)."""
    out: list[tuple[Any, int]] = []
    f = sys._getframe(skip)
    cache = _stack_cache
    while f is not None and len(out) < limit:
        code = f.f_code
        fn = code.co_filename
        what = cache.get(fn)
        if what is None:
            what = cache[fn] = _frame_kind(fn)
        if what is _USER:
            out.append((code, f.f_lasti))
        elif what is _BELOW:
            break  # an event loop running a task, runpy running the program, pytest calling a
            # test: nothing above is the user's
        f = f.f_back
    return Stack(tuple(out))


#: What a frame of a file is to :func:`user_stack`, decided once per file name.
_USER, _SKIPPED, _BELOW = "user", "skipped", "below"
_stack_cache: dict[str, str] = {}


def _frame_kind(fn: str) -> str:
    if fn in _BOTTOM or fn.endswith(_PYTEST_CALL):
        return _BELOW
    return _SKIPPED if _internal(fn) else _USER
