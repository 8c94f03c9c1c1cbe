"""Captured places: a place keeps its code and instruction, and its line is found when shown.

The line must be the one the frame's own ``f_lineno`` gave when the place was captured, for
every instruction of every frame (a call spread over several lines included), and the text of
a captured site must name the user's line, not kvmlock's.
"""

from __future__ import annotations

import os
import sys

from kvmlock.lockdep import where


def _spread_call() -> list[tuple[object, int, int]]:
    return _frames(
        1,
        2,
    )


def _frames(*_args: object) -> list[tuple[object, int, int]]:
    out = []
    f = sys._getframe(1)
    while f is not None:
        out.append((f.f_code, f.f_lasti, f.f_lineno))
        f = f.f_back
    return out


def test_line_at_is_f_lineno_for_every_frame() -> None:
    frames = _spread_call() + [(c, lasti, line) for c, lasti, line in _frames()]
    assert len(frames) > 3
    for code, lasti, line in frames:
        assert where.line_at(code, lasti) == line, (code, lasti)


def test_line_at_of_every_instruction_matches_the_line_table() -> None:
    code = test_line_at_is_f_lineno_for_every_frame.__code__
    seen = 0
    for start, end, line in code.co_lines():
        for off in range(start, end, 2):
            assert where.line_at(code, off) == (-1 if line is None else line)
            seen += 1
    assert seen > 10
    assert where.line_at(code, -1) == code.co_firstlineno  # a frame not started yet


def test_line_at_does_not_take_one_code_objects_table_for_another() -> None:
    ns: dict = {}
    exec(compile("def f():\n    return 1\n", "<a>", "exec"), ns)
    exec(compile("\n\n\n\ndef g():\n    return 2\n", "<b>", "exec"), ns)
    a, b = ns["f"].__code__, ns["g"].__code__
    last = max(s for s, _e, ln in a.co_lines() if ln is not None)
    assert where.line_at(a, last) == 2
    assert where.line_at(b, last) == 6


def test_a_site_is_shown_as_the_user_line_it_was_taken_at() -> None:
    line = sys._getframe().f_lineno + 1
    s = where.site()
    assert isinstance(s, where.Site)
    assert str(s) == f"{where.short_path(__file__)}:{line}"
    assert s.file == __file__ and s.line == line


def test_a_stack_is_shown_as_its_user_frames() -> None:
    def inner() -> where.Stack:
        return where.user_stack()

    line = sys._getframe().f_lineno + 1
    st = inner()
    texts = list(st)
    base = os.path.basename(__file__)
    assert texts[0].endswith(" in inner") and base in texts[0]
    assert texts[1] == f"{where.short_path(__file__)}:{line} in " \
        "test_a_stack_is_shown_as_its_user_frames"
