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
``CONTAINS_OP``, a container's truth value   the container, read
``LOAD_GLOBAL``/``STORE_GLOBAL``             (module globals, name), read/write
``LOAD_DEREF``/``STORE_DEREF``               the closure cell, read/write
===========================================  ===============================================

Reads of names bound to functions, classes and modules are left out: they are code, not data.
A subscript's location is the whole container (``d[1]`` and ``d[2]`` are one location): coarser
than needed, never missing a conflict. Two reads of one location commute, so partial-order
reduction does not multiply executions for data that is only read.

The operands sit on the interpreter's value stack, which Python does not expose; they are read
from the frame's memory with ``ctypes`` at CPython 3.11's layout (3.11 stores the stack pointer
in the frame while a trace function runs; 3.12 and 3.13 leave it at -1 during a
``sys.monitoring`` instruction event). A self-test at first use checks the layout on a probe
function; where it does not hold, ``memory=True`` refuses with a clear error instead
of guessing. The explorer's own code runs "inside a trace function" (the thread's tracing
count raised, which the same self-test checks), and every task switch happens there, so the
count a task resumes with is the one it stopped with.
"""

from __future__ import annotations

import ctypes
import dis
import os
import sys
import sysconfig
import threading
import weakref as _weakref
from collections import deque
from typing import Any

from kvmlock.explore.records import ACQ_NONE, pending
from kvmlock.explore.runtime import SimRuntime

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
_SLOT = type(type("_S", (), {"__slots__": ("x",)}).__dict__["x"])  # a __slots__ entry's descriptor

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
    # a container's truth (``if items:``, ``not items``) reads whether it is empty
    "POP_JUMP_FORWARD_IF_FALSE": _READ1, "POP_JUMP_BACKWARD_IF_FALSE": _READ1,
    "POP_JUMP_FORWARD_IF_TRUE": _READ1, "POP_JUMP_BACKWARD_IF_TRUE": _READ1,
    "JUMP_IF_FALSE_OR_POP": _READ1, "JUMP_IF_TRUE_OR_POP": _READ1, "UNARY_NOT": _READ1,
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
_CODES_MAX = 1 << 16  # (code made afresh by every execution, e.g. by exec, is not kept forever)


def _default_user(fn: str) -> bool:
    return not (fn.startswith("<frozen") or os.path.abspath(fn).startswith(_SKIP)
                or "greenlet" in os.path.basename(os.path.dirname(fn)))


class Scope:
    """Which code a tracer traces, with the tables made for it once per code object.

    ``memory=True`` traces the user's code: everything outside the standard library,
    installed packages and kvmlock (:data:`USER`). The race audit (``audit.py``) traces a
    chosen package instead, kvmlock's own model among them. ``user(filename)`` says whether a
    file's code is traced; ``quiet(filename)``, whether a call into a function of that file
    hands it containers without counting as an access of them (traced code's own accesses are
    traced; by default, exactly the traced files)."""

    def __init__(self, user: Any, quiet: Any = None) -> None:
        self.user = user
        self.quiet = quiet
        self.cache: dict[str, bool] = {}
        self.quiet_cache: dict[str, bool] = {}
        #: id(code) -> {instruction offset: (kind, argument)}, or None for code that is not
        #: traced. Keyed by id (a code object's hash is recomputed from its fields at every
        #: lookup); the code objects are kept in ``codes`` so an id is not reused while it
        #: is a key.
        self.code_ops: dict[int, dict[int, tuple[int, Any]] | None] = {}
        self.codes: list[Any] = []
        #: id(code) -> the trace function of its frames (kept, and cleared, with
        #: ``code_ops``'s entry): made once per code object, not once per execution.
        self.code_fns: dict[int, Any] = {}

    def traced(self, fn: str) -> bool:
        hit = self.cache.get(fn)
        if hit is None:
            hit = self.cache[fn] = bool(self.user(fn))
        return hit

    def quiet_callee(self, fn: str) -> bool:
        if self.quiet is None:
            return self.traced(fn)
        hit = self.quiet_cache.get(fn)
        if hit is None:
            hit = self.quiet_cache[fn] = self.traced(fn) or bool(self.quiet(fn))
        return hit

    def trim(self) -> None:
        """Forget the tables when too many code objects were seen (between executions: no
        frame is traced now)."""
        if len(self.codes) > _CODES_MAX:
            self.codes.clear()
            self.code_ops.clear()
            self.code_fns.clear()


USER = Scope(_default_user)


def _user_file(fn: str) -> bool:
    return USER.traced(fn)


def _ops(code: Any, scope: Scope = USER) -> dict[int, tuple[int, Any]] | None:
    ops = scope.code_ops.get(id(code), False)
    if ops is not False:
        return ops  # type: ignore[return-value]
    table: dict[int, tuple[int, Any]] = {}
    if scope.traced(code.co_filename):
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
    scope.codes.append(code)
    ops = scope.code_ops[id(code)] = table or None
    return ops


#: The process's memory as 8-byte words, 4-byte ints and object pointers, indexed by address
#: divided by the item's size: a frame's fields are read with an index where ``from_address``
#: would make a ctypes object per read (every traced instruction reads two or three).
_WORD = (ctypes.c_size_t * (sys.maxsize // 8)).from_address(0)
_INT32 = (ctypes.c_int * (sys.maxsize // 4)).from_address(0)
_OBJ = (ctypes.py_object * (sys.maxsize // 8)).from_address(0)
_LOCALSPLUS_WORD = _IFRAME_LOCALSPLUS // 8


def _top(frame: Any) -> int:
    """The index in ``_OBJ`` just above the top of ``frame``'s value stack."""
    iframe = _WORD[(id(frame) + _FRAME_F_FRAME) >> 3]
    return (iframe >> 3) + _LOCALSPLUS_WORD + _INT32[(iframe + _IFRAME_STACKTOP) >> 2]


def _value(i: int) -> Any:
    """The object a stack or local slot (an ``_OBJ`` index) refers to; None for an empty one."""
    try:
        return _OBJ[i]
    except ValueError:  # NULL
        return None


def _stack(frame: Any, depth: int) -> Any:
    """The value ``depth`` entries below the top of ``frame``'s value stack (1 = top)."""
    return _value(_top(frame) - depth)


def _slot(frame: Any, i: int) -> Any:
    """Local slot ``i`` of ``frame`` (a closure cell for LOAD_DEREF's argument)."""
    iframe = _WORD[(id(frame) + _FRAME_F_FRAME) >> 3]
    return _value((iframe >> 3) + _LOCALSPLUS_WORD + i)


def _frame_tracer(code: Any, scope: Scope = USER) -> Any:
    """The trace function of ``code``'s frames: its instruction table bound in, so an
    instruction that touches no data costs one lookup (returning None keeps a frame's trace
    function). A data access goes to the tracer of the thread it runs in."""
    table = _ops(code, scope)
    if table is None:
        return None
    get = table.get
    here = _this_thread

    def opcode(frame: Any, event: str, arg: Any) -> None:
        op = get(frame.f_lasti)
        if op is not None and event == "opcode":
            here.tracer._on_op(frame, op)

    scope.code_fns[id(code)] = opcode
    return opcode


class _Loc:
    """A traced location: what the explorer keys it by (its object is kept alive by the
    tracer's ``seen`` table, so its id is not reused within the execution)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


# How a location's label is made from its object's type name and an argument, on its first
# access (labels are for trace tables; most accesses are to a location already seen).
_L_ATTR, _L_ITEM, _L_METHOD, _L_IN, _L_CONTENTS, _L_CALL, _L_NAME = (
    "{0}.{1}", "{0}[]", "{0}.{1}()", "in {0}", "{0} contents", "{1}({0})", "{1}")


class Tracer:
    """Per-opcode tracing of one execution; ``close()`` puts the previous trace function back."""

    #: the code traced (a subclass traces another)
    scope = USER

    def __init__(self, rt: SimRuntime) -> None:
        if _checked != "":  # (the layout checked once; a tracer is made every execution)
            selftest()
        scope = self.scope
        if len(scope.codes) > _CODES_MAX:
            scope.trim()
        self._code_ops = scope.code_ops
        self._code_fns = scope.code_fns
        self.rt = rt
        #: (id(object), name) -> [location key, label, {tid: load record}, {tid: store record}]
        self.locs: dict[tuple[int, Any], list[Any]] = {}
        #: id(object) -> [the object, the one task that accessed it so far, or -1]: every
        #: object accessed, kept alive so its id stays its own (see :func:`_private`)
        self.seen: dict[int, list[Any]] = {}
        self._ts = _tstate()
        self._outer = getattr(_this_thread, "tracer", None)
        _this_thread.tracer = self  # (the one the per-code trace functions report to)
        self._tsp = _this_thread.addr
        self._prev = sys.gettrace()
        self._stop = rt.stop  # (the runtime's own: data accesses are inside the trace function)
        self._untraced_stops(rt)
        # Nothing is traced while one task runs alone (none of its accesses could be
        # interleaved with another's): tracing starts when a second task does.
        self._on = False
        sys.settrace(None)
        # The explorer's own code (this greenlet, the hub, and each task's greenlet outside
        # the task's function) runs as if inside a trace function: no call of its is traced.
        _ENTER_TRACING(self._tsp)

    def task(self, fn: Any, spawner: Any = None) -> Any:
        """``fn`` as an explored task's function: traced while it runs, and only then (the
        explorer's code around it, which starts and ends the task, is not). ``spawner``: the
        frame that started the task (tracing starts with the second task, for both)."""
        if not callable(fn):
            return fn  # (for the runtime to refuse)
        tsp, live = self._tsp, self.rt.live

        def task(*args: Any) -> Any:  # (named as fn, for the runtime to name the task)
            if not self._on and len(live) > 1:
                self._trace_on(spawner)
            _LEAVE_TRACING(tsp)
            try:
                return fn(*args)
            finally:
                _ENTER_TRACING(tsp)
                if self._on and len(live) <= 2:  # one task goes on alone (this one ends)
                    self._on = False
                    sys.settrace(None)

        task.__name__ = getattr(fn, "__name__", "")
        return task

    def _untraced_stops(self, rt: SimRuntime) -> None:
        """The scheduler runs untraced at every visible operation, not only at data accesses.

        A thread start, a join or a lock operation reaches the scheduler from traced code;
        there the interpreter would trace every call of the scheduler's (to find it is not the
        user's) and run its code unspecialised. The task is parked for the length of its stop
        instead, as at a data access; a task started or an interrupt injected runs its
        function traced (see task).

        So every switch between the explorer's greenlets (at a stop, at a task's start or end,
        to or from the hub) happens inside a trace function, where the thread's "tracing"
        count is the same on both sides: the count belongs to the thread, not to a greenlet,
        and a greenlet resumes with the count it was switched away with. No switch hook has to
        put anything back."""
        # (bound methods, not closures made per execution: making five closures cost more
        # than everything else a tracer's set-up does)
        rt.stop = self._untraced_stop  # type: ignore[method-assign]
        rt.spawn = self._untraced_spawn  # type: ignore[method-assign]
        rt.inject = self._untraced_inject  # type: ignore[method-assign]

    #: a subclass learns of every visible operation in its own ``_sim_stop`` (set for each
    #: subclass; the base goes to the runtime's stop without that frame between)
    _told = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls._told = cls._sim_stop is not Tracer._sim_stop

    def _untraced_stop(self, t: Any, op: Any, pred: Any, wq: Any) -> None:
        # (0 inside the trace function already, at a data access: nothing to enter)
        tsp = 0 if self._ts.tracing else self._tsp
        if tsp:
            _ENTER_TRACING(tsp)
        try:
            if self._told:
                self._sim_stop(t, op, pred, wq)
            else:
                _SIM_STOP(self.rt, t, op, pred, wq)
        finally:
            if tsp:
                _LEAVE_TRACING(tsp)

    def _sim_stop(self, t: Any, op: Any, pred: Any, wq: Any) -> None:
        """Stop ``t`` at ``op`` (untraced); returns when the operation executes. (A subclass
        learns here of every visible operation executed.)"""
        _SIM_STOP(self.rt, t, op, pred, wq)

    def _started(self, spawner: Any, make: Any, fn: Any, *rest: Any) -> Any:
        """Start a task (``make``: the runtime's spawn or inject; ``spawner``: the frame that
        asked); a second live task turns tracing on for the spawner too (the new task's own
        code turns it on when it starts, which an interrupt's does only when it fires)."""
        h = make(self.rt, self.task(fn, spawner), *rest)
        if not self._on and len(self.rt.live) > 1:
            self._trace_on(spawner)
        return h

    def _untraced_spawn(self, fn: Any, args: tuple = (), name: str | None = None) -> Any:
        # (tracing is entered before anything else is called: from traced code, every call
        # made before that would be a trace event; and a thread start is common enough for
        # _started's frame to be spelled out here)
        tsp = 0 if self._ts.tracing else self._tsp
        if tsp:
            _ENTER_TRACING(tsp)
        try:
            spawner = sys._getframe(1)
            h = _SIM_SPAWN(self.rt, self.task(fn, spawner), args, name)
            if not self._on and len(self.rt.live) > 1:
                self._trace_on(spawner)
            return h
        finally:
            if tsp:
                _LEAVE_TRACING(tsp)

    def _untraced_inject(self, fn: Any, args: tuple, victim: Any, name: str | None,
                         soft: bool = False) -> Any:
        tsp = 0 if self._ts.tracing else self._tsp
        if tsp:
            _ENTER_TRACING(tsp)
        try:
            return self._started(sys._getframe(1), _SIM_INJECT, fn, args, victim,
                                 name or f"irq {getattr(fn, '__name__', 'handler')}", soft)
        finally:
            if tsp:
                _LEAVE_TRACING(tsp)

    def close(self) -> None:
        ts = self._ts
        ts.tracing = 0  # (the hub runs outside any trace function)
        sys.settrace(self._prev)
        _this_thread.tracer = self._outer
        # The runtime's own methods again: its wrappers are this tracer's bound methods, a
        # reference cycle that would leave the execution to the cyclic collector.
        d = self.rt.__dict__
        for name in ("stop", "spawn", "inject"):
            d.pop(name, None)

    # ------------------------------------------------------------------ trace functions
    def _call(self, frame: Any, event: str, arg: Any) -> Any:
        """Every new frame: the user's code gets its per-code trace function, with opcode
        events and no line events; any other code (the standard library, installed packages,
        kvmlock) is not traced at all."""
        code = frame.f_code
        if self._code_ops.get(id(code), _MISS) is None:
            return None  # (most calls: code known not to be the user's)
        fn = self._code_fns.get(id(code)) or _frame_tracer(code, self.scope)
        if fn is None:
            return None
        frame.f_trace_lines = False
        frame.f_trace_opcodes = True
        return fn

    def _trace_on(self, frame: Any) -> None:
        """A second task starts: trace every new frame from now on, and the frames of the
        user's code its spawner is inside already (from ``frame`` outwards)."""
        self._on = True
        sys.settrace(self._call)
        while frame is not None:
            code = frame.f_code
            if self._code_ops.get(id(code), _MISS) is not None:
                fn = self._code_fns.get(id(code)) or _frame_tracer(code, self.scope)
                if fn is not None:
                    frame.f_trace = fn
                    frame.f_trace_lines = False
                    frame.f_trace_opcodes = True
            frame = frame.f_back

    def _on_op(self, frame: Any, op: tuple[int, Any]) -> None:
        kind, a = op
        iframe = _WORD[(id(frame) + _FRAME_F_FRAME) >> 3]
        base = (iframe >> 3) + _LOCALSPLUS_WORD
        top = base + _INT32[(iframe + _IFRAME_STACKTOP) >> 2]  # (just above the stack's top)
        access = self._access
        if kind == _A_LOAD:
            obj = _OBJ[top - 1]
            if isinstance(obj, _CODEISH):
                return
            d = getattr(obj, "__dict__", None)
            if type(d) is dict and a in d:
                v = d[a]
            elif isinstance(getattr(type(obj), a, None), _SLOT):
                v = None
            else:
                return  # a method, a class attribute, a property: code
            if isinstance(v, _CODEISH) or callable(v):
                return
            access(obj, a, False, _L_ATTR, a, base, top)
        elif kind == _A_STORE or kind == _A_DEL:
            obj = _OBJ[top - 1]
            if isinstance(obj, _CODEISH):
                return
            access(obj, a, True, _L_ATTR, a, base, top)
        elif kind == _S_LOAD or kind == _S_STORE:
            obj = _OBJ[top - 2]
            access(obj, None, kind == _S_STORE, _L_ITEM, None, base, top)
        elif kind == _METHOD:
            obj = _OBJ[top - 1]
            if isinstance(obj, _CONTAINERS):
                access(obj, None, a in _MUTATING, _L_METHOD, a, base, top)
        elif kind == _CONTAINS:
            obj = _OBJ[top - 1]
            if isinstance(obj, _CONTAINERS):
                access(obj, None, False, _L_IN, None, base, top)
        elif kind == _READ1:
            obj = _OBJ[top - 1]
            if isinstance(obj, _CONTAINERS):
                access(obj, None, False, _L_CONTENTS, None, base, top)
        elif kind == _READ2 or kind == _BINOP:
            x, y = _OBJ[top - 2], _OBJ[top - 1]
            if isinstance(x, _CONTAINERS):  # (two references here: no private test)
                access(x, None, kind == _BINOP and a, _L_CONTENTS, None)
            if isinstance(y, _CONTAINERS) and y is not x:
                access(y, None, False, _L_CONTENTS, None)
        elif kind == _CALL:
            self._call_args(base, top, a)
        elif kind == _G_LOAD:
            g = frame.f_globals
            v = g.get(a, g)
            if v is g or isinstance(v, _CODEISH) or callable(v):
                return  # a builtin, function, class or module
            access(g, a, False, _L_NAME, a)
        elif kind == _G_STORE:
            access(frame.f_globals, a, True, _L_NAME, a)
        else:  # closure cells
            i, name = a
            cell = _value(base + i)
            if kind == _C_LOAD:
                try:
                    v = cell.cell_contents
                except ValueError:
                    v = None
                if isinstance(v, _CODEISH) or callable(v):
                    return
            access(cell, None, kind == _C_STORE, _L_NAME, name)

    def _call_args(self, base: int, top: int, argc: int) -> None:
        """Containers handed to code that is not traced: read by a known reader, else
        possibly written. (The stack holds a method and its self, or NULL and a callable,
        then the arguments; ``top`` is the index just above them.)"""
        conts = None
        meth = _value(top - argc - 2)
        last = top - argc - (1 if meth is None else 2)  # (the callable is no argument)
        for i in range(top - 1, last, -1):  # innermost first, as the stack is read
            c = _value(i)
            if isinstance(c, _CONTAINERS):
                if conts is None:
                    conts = [c]
                elif all(c is not x for x in conts):
                    conts.append(c)
        if conts is None:
            return
        fn = _value(top - argc - 1) if meth is None else meth
        code = getattr(fn, "__code__", None)
        if code is not None and self.scope.quiet_callee(code.co_filename):
            return  # traced code: its own accesses are traced
        name = getattr(fn, "__name__", "call")
        # a container's own method that changes nothing (``dict.get``, ``list.index``) only
        # reads what it is given, as its _METHOD access already said of its container
        write = id(fn) not in _READERS and not (
            getattr(fn, "__objclass__", None) in _CONTAINERS and name not in _MUTATING)
        for c in conts:  # (``c`` and ``conts`` are two references of ours more)
            self._access(c, None, write, _L_CALL, name, base, top, 6)

    def _access(self, obj: object, name: Any, write: bool, fmt: str, arg: Any,
                base: int = 0, top: int = -1, ours: int = 5) -> None:
        """An access of ``obj`` (at ``name``) by the running task; ``base``/``top``: the
        accessing frame's slots (``_OBJ`` indices) when it may be private, ``ours`` the
        references the tracer holds to it meanwhile (see :func:`_private`)."""
        rt = self.rt
        t = rt.current
        if t is None or rt.aborting:
            return
        oid = id(obj)
        seen = self.seen.get(oid)
        if seen is None:
            seen = self.seen[oid] = [obj, t.tid]
        elif seen[1] != t.tid:
            seen[1] = -1
        if len(rt.live) < 2:
            return  # no other task could run in between: not a scheduling point
        if top >= 0 and seen[1] == t.tid and _private(obj, oid, base, top, ours):
            return  # no other task can reach it, nor ever did: no race is possible
        k = (oid, name)
        loc = self.locs.get(k)
        if loc is None:
            loc = self.locs[k] = [rt.key(_Loc(name)), fmt.format(type(obj).__name__, arg),
                                  {}, {}]
        made = loc[3 if write else 2]
        op = made.get(t.tid)
        if op is None:
            op = made[t.tid] = pending(t.tid, loc[0], "store" if write else "load", write,
                                       loc[1], ACQ_NONE, False)
        self._stop(t, op, None, None)


def _private(obj: object, oid: int, base: int, top: int, ours: int) -> bool:
    """Whether only the accessing frame can reach ``obj`` (its references are the frame's
    own slots, locals and value stack, ``_OBJ[base:top]``, and no weak reference exists).

    An object that only the running task has accessed so far, and that nothing but this
    frame refers to, cannot take part in a race: no other task's access came before this
    one, and any later one must first get a reference, which this task has to publish
    (store it somewhere reachable, hand it to a thread or a queue); that publication is a
    visible operation after this access, so the other task's access happens after this one.
    Such an access need not be a scheduling point (the body's loop over a list of its own
    threads, a worker's scratch object). ``ours``: the references the tracer holds besides
    the frame's (its ``seen`` entry, its callers' locals, this argument and ``getrefcount``'s:
    5 from ``_on_op``, 6 from ``_call_args``)."""
    n = _refcount(obj) - ours
    if n > top - base or _weakrefs(obj):
        return False
    # (one slice of the frame's words, counted in C: reading them one by one cost twice as
    # much for a frame of a few slots)
    return _WORD[base:top].count(oid) == n


_refcount = sys.getrefcount
_weakrefs = _weakref.getweakrefcount
_MISS = object()
_SIM_STOP, _SIM_SPAWN, _SIM_INJECT = SimRuntime.stop, SimRuntime.spawn, SimRuntime.inject


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


_THREAD_STATE = ctypes.pythonapi.PyThreadState_Get
_THREAD_STATE.restype = ctypes.c_void_p
_tstates: dict[int, _TState] = {}


_this_thread = threading.local()  # its state's view and address, once looked up


def _tstate() -> _TState:
    """This thread's state (one view per state's address; an exploration makes a tracer
    per execution, and asking ctypes for the state each time cost more than the rest of
    setting one up)."""
    ts = getattr(_this_thread, "ts", None)
    if ts is None:
        addr = _THREAD_STATE()
        ts = _tstates.get(addr)
        if ts is None:
            ts = _tstates[addr] = _TState.from_address(addr)
        _this_thread.ts = ts
        _this_thread.addr = addr
    return ts


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

    USER.cache[probe.__code__.co_filename] = True
    old = sys.gettrace()
    sys.settrace(call)
    try:
        probe(box)
    finally:
        sys.settrace(old)
        USER.cache.pop(probe.__code__.co_filename, None)
        if USER.code_ops.pop(id(probe.__code__), False) is not False:
            USER.codes.remove(probe.__code__)
    if seen != [(box, 7, 1)]:
        return "reading the value stack gave unexpected values"
    return ""
