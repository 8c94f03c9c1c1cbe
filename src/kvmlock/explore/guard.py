"""Never hung: an exploration runs in a worker thread that the caller watches.

An explored body may block on something the explorer does not run: a lock made before the
exploration or by a C extension, a socket, a pipe, a subprocess, a real thread started outside.
Every explored task shares one OS thread, so such a wait can never end, and it happens inside
C where no Python-level check can interrupt it. The caller's thread therefore only watches: the
exploration runs in a worker thread (one per calling thread, reused, so its pooled greenlets
stay warm), and the watcher samples it.

* If the current execution makes no visible operation for ``stall`` seconds, or runs past the
  ``timeout``, the watcher looks at the worker's innermost frame. When that frame has not moved
  and the thread uses no CPU, the worker is blocked in a call the explorer does not control:
  the check ends with a ``blocked`` failure that names the call and its source line, and the
  worker is abandoned (it is a daemon thread; if its wait ever ends it unwinds at its next
  visible operation). Otherwise the worker is running Python code that never reaches a visible
  operation (a busy loop over plain data, say): it is interrupted by an asynchronous exception.
* ``timeout`` is honoured either way: the check returns at most about ``timeout`` seconds (plus
  one sampling period) after it began, with what it covered.
"""

from __future__ import annotations

import _thread
import atexit
import ctypes
import linecache
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kvmlock.explore import pythreads as _pythreads
from kvmlock.explore.memtrace import _user_file

_allocate = _thread.allocate_lock
_POLL = 0.05
#: How long a stopped worker may take to take its stop before it counts as blocked after all: a
#: busy loop on a loaded machine can wait seconds for its time slice, and calling it blocked
#: would be a false verdict.
_GRACE = 5.0


class Interrupted(BaseException):
    """Raised inside the worker to stop an execution that ran out of time or never yields;
    the caller then gets one with ``reason`` ("timeout" or "stall"), ``what`` and ``where``."""

    def __init__(self, reason: str = "", what: str = "", where: str = "",
                 schedule: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.what = what
        self.where = where
        self.schedule = schedule  # the steps the stopped execution had taken


class Blocked(Exception):
    """The worker is stuck in a call the explorer does not control; ``where`` names it."""

    def __init__(self, message: str, where: str, schedule: str = "", what: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.schedule = schedule
        self.what = what  # the call, with its source line


class _Worker:
    __slots__ = ("thread", "go", "done", "sent", "job", "result", "abandoned", "interrupting")

    def __init__(self) -> None:
        self.go = _allocate()
        self.go.acquire()
        self.done = _allocate()
        self.done.acquire()
        self.sent = _allocate()
        self.sent.acquire()
        self.job: Callable[[], Any] | None = None
        self.result: tuple[bool, Any] = (False, None)
        self.abandoned = False
        self.interrupting = False
        self.thread = threading.Thread(target=self._loop, name="kvmlock-explore", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        try:
            self._serve()
            if self.interrupting:
                # The stop was sent after the job ended: take it here, before this thread ends.
                # A pending one never taken would leave the interpreter's "asynchronous
                # exception pending" flag set, which slows every thread and stalls tracing.
                self.sent.acquire()
                for _ in range(100_000):
                    pass
        except Interrupted:
            pass

    def _serve(self) -> None:
        while not self.abandoned:
            self.go.acquire()
            if self.abandoned:
                return
            job = self.job
            self.job = None
            try:
                self.result = (True, job())  # type: ignore[misc]
            except BaseException as exc:  # handed to the caller
                self.result = (False, exc)
            finally:
                job = None
                _pythreads.unbind_thread()  # whatever an interrupted execution left behind
                self.done.release()


_workers = threading.local()


def _cpu(ident: int) -> float | None:
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError, OverflowError):
        return None


def _describe(frame: Any) -> tuple[str, str]:
    """("what it is doing", "file:line") for the worker's innermost frame."""
    if frame is None:
        return "a call", "?"
    code = frame.f_code
    here = f"{os.path.basename(code.co_filename)}:{frame.f_lineno}"
    text = linecache.getline(code.co_filename, frame.f_lineno).strip()
    what = f"`{text}` in {code.co_name}() at {here}"
    uf = frame
    while uf is not None and not _user_file(uf.f_code.co_filename):
        uf = uf.f_back
    where = here
    if uf is not None and uf is not frame:
        ucode = uf.f_code
        where = f"{os.path.basename(ucode.co_filename)}:{uf.f_lineno}"
        utext = linecache.getline(ucode.co_filename, uf.f_lineno).strip()
        what += f", called from `{utext}` at {where}"
    return what, where


def _take_pending_stop() -> None:
    """A stop sent to a thread stuck in C stays pending, and with it the interpreter-wide flag
    that makes every thread look for one (and stalls per-opcode tracing). A throwaway thread
    given a stop of its own, and taking it, clears that flag; the stuck thread still gets its
    stop if it ever runs Python code again."""

    def sink() -> None:
        try:
            ready.release()
            for _ in range(10_000_000):
                pass
        except Interrupted:
            pass

    ready = _allocate()
    ready.acquire()
    t = threading.Thread(target=sink, daemon=True)
    t.start()
    ready.acquire()
    assert t.ident is not None
    _interrupt(t.ident)
    t.join(5)


def _interrupt(ident: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(Interrupted))


def run(job: Callable[[], Any], *, timeout: float | None, stall: float | None) -> Any:
    """Run ``job`` in this thread's worker and return its result, watching it as above.

    Raises :class:`Blocked` when the worker is stuck in an uncontrolled call, and
    :class:`Interrupted` (with ``.reason`` "timeout" or "stall") when it had to be stopped.
    """
    w: _Worker | None = getattr(_workers, "w", None)
    if w is None or w.abandoned or not w.thread.is_alive():
        w = _workers.w = _Worker()
    w.job = job
    t0 = time.monotonic()
    w.go.release()
    ident = w.thread.ident
    assert ident is not None
    progress: tuple = ()
    since = t0
    fsig: tuple = ()
    moved = False  # the innermost frame changed since the last visible operation
    cpu_since = _cpu(ident)
    why: tuple[str, str, str] | None = None
    interrupted_at = 0.0
    try:
        while not w.done.acquire(timeout=_POLL):
            now = time.monotonic()
            rt = _pythreads.running(ident)
            frame = sys._current_frames().get(ident)
            cpu = _cpu(ident)
            fprev, fsig = fsig, (id(frame), frame.f_lasti if frame is not None else -1)
            now_progress = (id(rt), rt.nsteps if rt is not None else -1)
            if now_progress != progress:
                progress, since, cpu_since, moved = now_progress, now, cpu, False
            elif fsig != fprev:
                moved = True
            if why is not None:
                if now - interrupted_at > _GRACE:  # it did not come back: blocked after all
                    _abandon(w, rt, blocked=True)
                    _take_pending_stop()
                    raise Blocked(*_blocked(frame, rt))
                continue
            late = timeout is not None and now - t0 > timeout
            quiet = stall is not None and now - since > stall
            if not (late or quiet):
                continue
            # Blocked: the same instruction all along, and (where the OS tells) almost no CPU
            # used meanwhile; a loop of Python code moves and burns CPU even on a busy machine.
            idle = cpu is None or cpu_since is None or cpu - cpu_since < 0.02 * (now - since)
            if not moved and idle and now - since >= 2 * _POLL:
                _abandon(w, rt, blocked=True)
                raise Blocked(*_blocked(frame, rt))
            what, where = _describe(frame)
            why = ("timeout" if late else "stall", what, where, _schedule(rt))
            # The stop may land after the job has ended, so this worker serves no other job:
            # it ends once this one is over, and the next check gets a fresh one.
            _abandon(w, None)
            w.interrupting = True
            _interrupt(ident)
            w.sent.release()
            w.go.release()  # if it is already waiting for a next job: wake it to take the stop
            interrupted_at = now
    except KeyboardInterrupt:
        _abandon(w, _pythreads.running(ident))
        raise
    ok, value = w.result
    w.result = (False, None)
    if why is not None:
        raise Interrupted(*why)
    if ok:
        return value
    raise value


def _schedule(rt: Any) -> str:
    from kvmlock.explore.schedule import encode

    return encode(list(rt.choices)) if rt is not None else ""


def _blocked(frame: Any, rt: Any) -> tuple[str, str, str, str]:
    what, where = _describe(frame)
    schedule = _schedule(rt)
    return (f"blocked in an operation the explorer does not control: {what} (a lock, socket, "
            f"pipe, subprocess or thread made outside the exploration, which nothing explored "
            f"can wake)", where, schedule, what)


def _abandon(w: _Worker, rt: Any, blocked: bool = False) -> None:
    w.abandoned = True
    if rt is not None:
        rt.aborting = True  # its next visible operation unwinds the execution
    _workers.w = None
    if blocked:  # (one that was stopped runs Python code and ends by itself)
        _ABANDONED[:] = [x for x in _ABANDONED if x.thread.is_alive()] + [w]


# ----------------------------------------------------------------------- at interpreter exit
#: Workers left blocked in a call the explorer does not control.
_ABANDONED: list[_Worker] = []


class _SigAction(ctypes.Structure):
    """glibc's ``struct sigaction`` (Linux)."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]


def _parking_signal() -> int | None:
    """A real-time signal whose handler is libc's ``pause()`` with every signal blocked: a
    thread it is sent to stops inside the handler for good, never returning to Python."""
    import signal

    if not sys.platform.startswith("linux") or not hasattr(signal, "SIGRTMAX"):
        return None
    sig = int(signal.SIGRTMAX) - 2
    if signal.getsignal(sig) not in (signal.SIG_DFL, None):
        return None  # the program uses it
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        act = _SigAction()
        act.handler = ctypes.cast(libc.pause, ctypes.c_void_p).value
        for i in range(16):
            act.mask[i] = ~0 & ((1 << 64) - 1)
        if libc.sigaction(sig, ctypes.byref(act), None) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return sig


def _park_abandoned() -> None:
    """At exit, stop for good every worker still blocked where it was abandoned.

    Interpreter finalization frees what such a call waits on (a socket's peer, say), so the
    call may return just then. CPython 3.11 makes a daemon thread that comes back while the
    interpreter finalizes exit on the spot, unwinding its C stack; the worker's stack holds
    greenlet frames whose clean-ups then free objects without the GIL, racing the
    finalizing thread (a crash at exit). A worker parked in a signal handler never comes
    back, and the process ends around it."""
    stuck = [w for w in _ABANDONED if w.thread.is_alive() and w.thread.ident is not None]
    if not stuck:
        return
    import signal

    sig = _parking_signal()
    if sig is None:
        return
    for w in stuck:
        try:
            signal.pthread_kill(w.thread.ident, sig)  # type: ignore[arg-type]
        except (OSError, ValueError):
            pass  # it ended meanwhile


atexit.register(_park_abandoned)


__all__ = ["Blocked", "Interrupted", "run"]
