"""``memory=True``: loads and stores of the program's own data become visible operations.

A lost update on a plain list, dict or object has no lock operation to stop at, so the explorer
needs the data accesses themselves. The interpreter's per-opcode tracing (``sys.settrace`` with
``f_trace_opcodes``) stops before every instruction of the user's code (code outside the
standard library, installed packages and kvmlock; those frames are never traced), and these
instructions become visible operations:

===========================================  ===============================================
instruction                                  location, access
===========================================  ===============================================
``LOAD_ATTR``/``STORE_ATTR``/``DELETE_ATTR``  (object, attribute name), read/write
``BINARY_SUBSCR``/``STORE_SUBSCR``/...       the container, read/write
``LOAD_METHOD`` on a list/dict/set/deque     the container: write for mutating methods
``CONTAINS_OP``                              the container, read
``LOAD_GLOBAL``/``STORE_GLOBAL``             (module globals, name), read/write
``LOAD_DEREF``/``STORE_DEREF``               the closure cell, read/write
===========================================  ===============================================

Reads of names bound to functions, classes and modules are left out: they are code, not data.
A subscript's location is the whole container (``d[1]`` and ``d[2]`` are one location): coarser
than needed, never missing a conflict. Two reads of one location commute, so partial-order
reduction does not multiply executions for data that is only read.

The operands sit on the interpreter's value stack, which Python does not expose; they are read
from the frame's memory with ``ctypes`` at the layout of CPython 3.11 to 3.13 (the stack pointer
is stored in the frame while a trace function runs). A self-test at first use checks the layout
on a probe function; where it does not hold, ``memory=True`` refuses with a clear error instead
of guessing. Switching tasks from inside the trace function needs the thread's "inside a trace
function" counter put back as it was outside it, so the task switched to is traced too; that
counter is adjusted the same way, and checked by the same self-test.
"""

from __future__ import annotations

import ctypes
import dis
import os
import sys
import sysconfig
from collections import deque
from typing import Any

import greenlet
from greenlet import getcurrent

from kvmlock.explore.runtime import ACQ_NONE, SimRuntime

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATHS = sysconfig.get_paths()
_SKIP = tuple(sorted({
    os.path.abspath(p) + os.sep
    for k in ("stdlib", "platstdlib", "purelib", "platlib") if (p := _PATHS.get(k))
} | {_PKG + os.sep}))

_VP = ctypes.c_void_p
_FRAME_F_FRAME = 24  # PyFrameObject: ob_refcnt, ob_type, f_back, f_frame
_IFRAME_STACKTOP = 64  # _PyInterpreterFrame: eight pointers, then int stacktop
_IFRAME_LOCALSPLUS = 72
_TS_TRACING = 44  # PyThreadState (3.11): ..., recursion_headroom, tracing, tracing_what, cframe
_TS_CFRAME = 56

_MUTATING = frozenset((
    "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "update",
    "setdefault", "popitem", "add", "discard", "difference_update", "intersection_update",
    "symmetric_difference_update", "appendleft", "extendleft", "popleft", "rotate", "__setitem__",
    "__delitem__", "__iadd__",
))
_CONTAINERS = (list, dict, set, deque, bytearray)
_CODEISH = (type(sys), type, type(len), type(_MUTATING.__contains__))
_SLOT = type(_CONTAINERS.__class__.__dict__["__doc__"]) if False else type(
    type("_S", (), {"__slots__": ("x",)}).__dict__["x"])  # member descriptor of a __slots__ entry

# per code object: {instruction offset: (kind, argument)}; kinds below
_A_LOAD, _A_STORE, _A_DEL, _S_LOAD, _S_STORE, _METHOD, _CONTAINS, _G_LOAD, _G_STORE, \
    _C_LOAD, _C_STORE, _READ1, _READ2, _BINOP, _CALL = range(15)
_KINDS = {
    "LOAD_ATTR": _A_LOAD, "STORE_ATTR": _A_STORE, "DELETE_ATTR": _A_DEL,
    "BINARY_SUBSCR": _S_LOAD, "STORE_SUBSCR": _S_STORE, "DELETE_SUBSCR": _S_STORE,
    "LOAD_METHOD": _METHOD, "CONTAINS_OP": _CONTAINS,
    "LOAD_GLOBAL": _G_LOAD, "STORE_GLOBAL": _G_STORE, "DELETE_GLOBAL": _G_STORE,
    "LOAD_DEREF": _C_LOAD, "STORE_DEREF": _C_STORE, "DELETE_DEREF": _C_STORE,
    "LOAD_CLASSDEREF": _C_LOAD,
    "GET_ITER": _READ1, "UNPACK_SEQUENCE": _READ1, "FORMAT_VALUE": _READ1,
    "COMPARE_OP": _READ2, "BINARY_OP": _BINOP, "CALL": _CALL,
}
#: Builtins that only read the containers they are given; any other call into code that is
#: not traced (C functions, the standard library) counts as writing them.
_READERS = frozenset(
    id(f) for f in (len, sum, min, max, sorted, list, tuple, set, frozenset, dict, any, all,
                    enumerate, iter, str, repr, print, bool, reversed, zip, map, filter, format,
                    isinstance, hash, id, type, bytes, next))
_INPLACE = frozenset(i for i, (name, _sym) in enumerate(getattr(dis, "_nb_ops", ()))
                     if name.startswith("NB_INPLACE"))
_code_ops: dict[Any, dict[int, tuple[int, Any]] | None] = {}
_user_cache: dict[str, bool] = {}


def _user_file(fn: str) -> bool:
    hit = _user_cache.get(fn)
    if hit is None:
        hit = _user_cache[fn] = not (
            fn.startswith("<frozen") or os.path.abspath(fn).startswith(_SKIP)
            or "greenlet" in os.path.basename(os.path.dirname(fn)))
    return hit


def _ops(code: Any) -> dict[int, tuple[int, Any]] | None:
    ops = _code_ops.get(code, False)
    if ops is not False:
        return ops  # type: ignore[return-value]
    table: dict[int, tuple[int, Any]] = {}
    if _user_file(code.co_filename):
        for ins in dis.get_instructions(code):
            k = _KINDS.get(ins.opname)
            if k is None:
                continue
            if k == _BINOP:
                table[ins.offset] = (k, ins.arg in _INPLACE)
            elif k in (_C_LOAD, _C_STORE):
                table[ins.offset] = (k, (ins.arg, ins.argval))
            else:
                table[ins.offset] = (k, ins.argval)
    ops = _code_ops[code] = table or None
    return ops


_PO = ctypes.py_object
_INT = ctypes.c_int


def _top(frame: Any) -> int:
    """The address just above the top of ``frame``'s value stack."""
    iframe = _VP.from_address(id(frame) + _FRAME_F_FRAME).value
    return iframe + _IFRAME_LOCALSPLUS + 8 * _INT.from_address(iframe + _IFRAME_STACKTOP).value


def _value(addr: int) -> Any:
    """The object a stack or local slot at ``addr`` refers to (None for an empty slot)."""
    try:
        return _PO.from_address(addr).value
    except ValueError:  # NULL
        return None


def _stack(frame: Any, depth: int) -> Any:
    """The value ``depth`` entries below the top of ``frame``'s value stack (1 = top)."""
    return _value(_top(frame) - 8 * depth)


def _slot(frame: Any, i: int) -> Any:
    """Local slot ``i`` of ``frame`` (a closure cell for LOAD_DEREF's argument)."""
    iframe = _VP.from_address(id(frame) + _FRAME_F_FRAME).value
    return _value(iframe + _IFRAME_LOCALSPLUS + 8 * i)


class _Loc:
    """A traced location: what the trace table names and the explorer keys it by."""

    __slots__ = ("obj", "name")

    def __init__(self, obj: object, name: str) -> None:
        self.obj = obj  # kept alive so its id is not reused within the execution
        self.name = name


class Tracer:
    """Per-opcode tracing of one execution; ``close()`` puts the previous trace function back."""

    def __init__(self, rt: SimRuntime) -> None:
        selftest()
        self.rt = rt
        self.locs: dict[tuple[int, Any], tuple[int, str]] = {}
        self.ops = 0
        self._ts = _tstate()
        self._parked: set[Any] = set()  # greenlets stopped inside the trace function
        self._prev = sys.gettrace()
        self._prev_switch = greenlet.gettrace()
        self._untraced_stops(rt)
        self._op = self._opcode  # (one bound method, returned by every opcode event)
        greenlet.settrace(self._switched)
        sys.settrace(self._call)

    def _untraced_stops(self, rt: SimRuntime) -> None:
        """The scheduler runs untraced at every visible operation, not only at data accesses.

        A thread start, a join, a lock operation or a task's end reaches the scheduler from
        traced code; there the interpreter would trace every call of the scheduler's (to find
        it is not the user's) and run its code unspecialised. The task is parked for the
        length of its stop instead, as at a data access (see _switched)."""
        ts = self._ts
        parked = self._parked
        enter, leave, tsp = _ENTER_TRACING, _LEAVE_TRACING, ctypes.addressof(ts)
        stop, pick, spawn = rt.stop, rt._pick, rt.spawn

        def untraced_stop(t: Any, op: Any, pred: Any, wq: Any) -> None:
            if ts.tracing:  # inside the trace function already (a data access)
                stop(t, op, pred, wq)
                return
            me = getcurrent()
            parked.add(me)
            enter(tsp)
            try:
                stop(t, op, pred, wq)
            finally:
                parked.discard(me)
                leave(tsp)

        def untraced_spawn(fn: Any, args: tuple = (), name: str | None = None) -> Any:
            if ts.tracing:
                return spawn(fn, args, name)
            me = getcurrent()
            parked.add(me)  # (the child starts traced: it is not parked)
            enter(tsp)
            try:
                return spawn(fn, args, name)
            finally:
                parked.discard(me)
                leave(tsp)

        def untraced_pick(cur: Any) -> Any:  # (a task's end; it switches nowhere itself)
            if ts.tracing:
                return pick(cur)
            enter(tsp)
            try:
                return pick(cur)
            finally:
                leave(tsp)

        rt.stop = untraced_stop  # type: ignore[method-assign]
        rt._pick = untraced_pick  # type: ignore[method-assign]
        rt.spawn = untraced_spawn  # type: ignore[method-assign]

    def close(self) -> None:
        greenlet.settrace(self._prev_switch)
        ts = self._ts
        ts.tracing = 0  # (the hub runs outside any trace function)
        sys.settrace(self._prev)

    def _switched(self, event: str, args: tuple) -> None:
        """A task was switched to: the thread's tracing state becomes the one it stopped in.

        One thread state serves every greenlet. A task stopped inside the trace function (at
        a data access) expects the "inside a trace function" state, which also keeps the
        scheduler it runs untraced; any other task expects tracing on, so that its code is
        traced from its first instruction.
        """
        ts = self._ts
        parked = self._parked
        origin, target = args
        # greenlet calls this hook as a trace function: "inside" it by some count, which it
        # takes back (and recomputes whether to trace) when the hook returns
        guard = ts.tracing - (origin in parked)
        ts.tracing = guard + (target in parked)
        prev = self._prev_switch
        if prev is not None:
            prev(event, args)

    # ------------------------------------------------------------------ trace functions
    def _call(self, frame: Any, event: str, arg: Any) -> Any:
        ops = _code_ops.get(frame.f_code, False)
        if ops is None:
            return None
        if ops is False and _ops(frame.f_code) is None:
            return None
        frame.f_trace_lines = False
        frame.f_trace_opcodes = True
        return self._op

    def _opcode(self, frame: Any, event: str, arg: Any) -> Any:
        if event != "opcode":
            return self._op
        op = _code_ops[frame.f_code].get(frame.f_lasti)  # type: ignore[union-attr]
        if op is None:
            return self._op
        kind, a = op
        if kind == _A_LOAD:
            obj = _stack(frame, 1)
            if isinstance(obj, _CODEISH):
                return self._op
            d = getattr(obj, "__dict__", None)
            if type(d) is dict and a in d:
                v = d[a]
            elif isinstance(getattr(type(obj), a, None), _SLOT):
                v = None
            else:
                return self._op  # a method, a class attribute, a property: code
            if isinstance(v, _CODEISH) or callable(v):
                return self._op
            self._access(obj, a, False, f"{type(obj).__name__}.{a}")
        elif kind in (_A_STORE, _A_DEL):
            obj = _stack(frame, 1)
            if isinstance(obj, _CODEISH):
                return self._op
            self._access(obj, a, True, f"{type(obj).__name__}.{a}")
        elif kind in (_S_LOAD, _S_STORE):
            c = _stack(frame, 2)
            self._access(c, None, kind == _S_STORE, f"{type(c).__name__}[]")
        elif kind == _METHOD:
            c = _stack(frame, 1)
            if isinstance(c, _CONTAINERS):
                self._access(c, None, a in _MUTATING, f"{type(c).__name__}.{a}()")
        elif kind == _CONTAINS:
            c = _stack(frame, 1)
            if isinstance(c, _CONTAINERS):
                self._access(c, None, False, f"in {type(c).__name__}")
        elif kind == _READ1:
            c = _stack(frame, 1)
            if isinstance(c, _CONTAINERS):
                self._access(c, None, False, f"{type(c).__name__} contents")
        elif kind == _READ2 or kind == _BINOP:
            top = _top(frame)
            x, y = _value(top - 16), _value(top - 8)
            if isinstance(x, _CONTAINERS):
                self._access(x, None, kind == _BINOP and a, f"{type(x).__name__} contents")
            if isinstance(y, _CONTAINERS) and y is not x:
                self._access(y, None, False, f"{type(y).__name__} contents")
        elif kind == _CALL:
            self._call_args(frame, a)
        elif kind == _G_LOAD:
            g = frame.f_globals
            v = g.get(a, g)
            if v is g or isinstance(v, _CODEISH) or callable(v):
                return self._op  # a builtin, function, class or module
            self._access(g, a, False, a)
        elif kind == _G_STORE:
            self._access(frame.f_globals, a, True, a)
        else:  # closure cells
            i, name = a
            cell = _slot(frame, i)
            if kind == _C_LOAD:
                try:
                    v = cell.cell_contents
                except ValueError:
                    v = None
                if isinstance(v, _CODEISH) or callable(v):
                    return self._op
            self._access(cell, None, kind == _C_STORE, name)
        return self._op

    def _call_args(self, frame: Any, argc: int) -> None:
        """Containers handed to code that is not traced: read by a known reader, else
        possibly written."""
        top = _top(frame)
        args = [_value(top - 8 * i) for i in range(1, argc + 2)]
        meth = _value(top - 8 * (argc + 2))  # a method and its self, or NULL and a callable
        fn = args.pop() if meth is None else meth
        conts = [c for c in args if isinstance(c, _CONTAINERS)]
        if not conts:
            return
        code = getattr(fn, "__code__", None)
        if code is not None and _user_file(code.co_filename):
            return  # user code: its own accesses are traced
        write = id(fn) not in _READERS
        name = getattr(fn, "__name__", "call")
        seen: set[int] = set()
        for c in conts:
            if id(c) not in seen:
                seen.add(id(c))
                self._access(c, None, write, f"{name}({type(c).__name__})")

    def _access(self, obj: object, name: Any, write: bool, label: str) -> None:
        rt = self.rt
        t = rt.current
        if t is None or rt.aborting:
            return
        k = (id(obj), name)
        got = self.locs.get(k)
        if got is None:
            got = self.locs[k] = (rt.key(_Loc(obj, name)), label)
        self.ops += 1
        if len(rt.live) < 2:
            return  # no other task could run in between: not a scheduling point
        me = getcurrent()
        parked = self._parked
        parked.add(me)  # see _switched
        try:
            rt.visible(t, got[0], "store" if write else "load", write, None, got[1],
                       ACQ_NONE, None)
        finally:
            parked.discard(me)


class _CFrame(ctypes.Structure):
    _fields_ = [("use_tracing", ctypes.c_uint8)]


class _TState(ctypes.Structure):
    _fields_ = [("_pad", ctypes.c_char * _TS_TRACING), ("tracing", ctypes.c_int),
                ("tracing_what", ctypes.c_int), ("_pad2", ctypes.c_char * 4),
                ("cframe", ctypes.POINTER(_CFrame))]


_ENTER_TRACING = ctypes.pythonapi.PyThreadState_EnterTracing
_ENTER_TRACING.argtypes = (ctypes.c_void_p,)
_ENTER_TRACING.restype = None
_LEAVE_TRACING = ctypes.pythonapi.PyThreadState_LeaveTracing
_LEAVE_TRACING.argtypes = (ctypes.c_void_p,)
_LEAVE_TRACING.restype = None


def _tstate() -> _TState:
    get = ctypes.pythonapi.PyThreadState_Get
    get.restype = ctypes.c_void_p
    return _TState.from_address(get())


_checked: str | None = None  # None: not yet; "": fine; else why memory tracing cannot work


class MemoryTracingUnsupported(RuntimeError):
    """memory=True cannot read operands on this Python build."""


def selftest() -> None:
    """Check the frame and thread-state layout on a probe before trusting it."""
    global _checked
    if _checked is None:
        _checked = _probe()
    if _checked:
        raise MemoryTracingUnsupported(
            f"explore(memory=True) is not supported on Python "
            f"{sys.version.split()[0]} ({sys.implementation.name}): {_checked}")


def _probe() -> str:
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 11):
        return "its frame layout is not the one this tracer reads (CPython 3.11 is)"
    seen: list[Any] = []

    class Box:
        pass

    box = Box()
    ts = _tstate()
    if ctypes.c_int.from_address(ctypes.addressof(ts) + 36).value != sys.getrecursionlimit():
        return "the thread state layout differs"

    def probe(b: Any) -> None:
        b.field = 7

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            op = (_ops(frame.f_code) or {}).get(frame.f_lasti)
            if op is not None and op[0] == _A_STORE:
                seen.append((_stack(frame, 1), _stack(frame, 2), ts.tracing))
        return local

    def call(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is probe.__code__:
            frame.f_trace_opcodes = True
            return local
        return None

    _user_cache[probe.__code__.co_filename] = True
    old = sys.gettrace()
    sys.settrace(call)
    try:
        probe(box)
    finally:
        sys.settrace(old)
        _user_cache.pop(probe.__code__.co_filename, None)
        _code_ops.pop(probe.__code__, None)
    if seen != [(box, 7, 1)]:
        return "reading the value stack gave unexpected values"
    return ""
