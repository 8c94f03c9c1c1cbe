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

A watcher and its worker stay paired whatever the interleaving. A job carries its own
completion signal, so no watcher can take another job's; a worker is handed a new job only
after its watcher saw the last one end, and any other end of a watch (an error in the watcher,
Ctrl-C, a stop) stops and abandons it; the asynchronous stop may land anywhere in the worker,
its own bookkeeping included, and the worker still gives the job's completion; and a stop
that is lost (dropped by a finalizer it landed in) still ends the job at its next execution.

Handing a job over costs two thread wake-ups. Where the OS lets a thread be placed (Linux), both
happen on the CPU the caller is on: the worker is pinned there to be woken, and the caller, which
is about to wait, is pinned there until its wait ends. A wake-up on an idle CPU costs several
times more, most of all in a virtual machine (on a 2-CPU one, a hand-over around a 17 us job
took 64 us of CPU time with the OS placing both threads, 50 us with the worker alone pinned,
whose caller was then woken on the other CPU, and 19 us with both). The worker takes its own
CPUs back before it runs the job, so the body sees them and the job may move; the caller takes
its own back when the wait ends, however it ends.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
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
#: how long the exit waits for abandoned workers that are unwinding, all together
_EXIT_WAIT = 2.0


def _cpu_getter() -> Callable[[], int] | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (AttributeError, OSError):
        return None
    getcpu.restype = ctypes.c_int
    getcpu.argtypes = ()
    return getcpu


_getcpu = _cpu_getter()
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


class _Job:
    """One job handed to a worker, with a completion signal of its own.

    The watcher waits on the job it handed over, never on a lock the worker shares between
    jobs: a completion can then only be taken by the watcher of that job, whatever happened
    to an earlier one (a watch that ended early, a stop that landed after the job), and it is
    given at most once (only the worker gives it, and only while nobody has taken it).
    """

    __slots__ = ("fn", "done", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn: Callable[[], Any] | None = fn
        self.done = _allocate()
        self.done.acquire()
        self.result: tuple[bool, Any] = (False, None)

    def finish(self) -> None:
        """The job is over (its worker's side; may be called again, see _Worker._loop)."""
        self.fn = None  # its closure, and the exploration it holds, is garbage now
        if self.done.locked():  # (only the worker releases, so nothing comes in between)
            self.done.release()


class _Worker:
    __slots__ = ("thread", "go", "sent", "job", "current", "abandoned", "interrupting", "cpus",
                 "steered", "stuck_in")

    def __init__(self) -> None:
        self.go = _allocate()
        self.go.acquire()
        self.sent = _allocate()
        self.sent.acquire()
        self.job: _Job | None = None  # the job handed over, until the worker takes it
        self.current: _Job | None = None  # the job taken, until it is over
        self.abandoned = False
        self.interrupting = False
        #: where it was left blocked: the kernel's line for the system call it waited in
        self.stuck_in: str | None = None
        #: the worker's own CPUs (a new thread gets its creator's), and whether it was last
        #: woken pinned to one of them (see the module's docstring)
        self.cpus: set[int] | None = None
        if _getcpu is not None:
            try:
                self.cpus = os.sched_getaffinity(0)
            except OSError:  # (not allowed here: it is woken where the OS likes)
                pass
        self.steered = False
        self.thread = threading.Thread(target=self._loop, name="kvmlock-explore", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        _serving.w = self
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
        finally:
            # A stop may land anywhere in the worker, its own bookkeeping included (after the
            # job returned, before its completion was given): whatever it skipped is done
            # here. At most one stop is ever sent to a worker, and it has been taken by now
            # (above, or where it landed), so nothing can interrupt this.
            _pythreads.unbind_thread()
            if self.current is not None:
                self.current.finish()

    def _serve(self) -> None:
        while not self.abandoned:
            self.go.acquire()
            if self.steered:
                self.steered = False
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(0, self.cpus)  # type: ignore[arg-type]
            if self.abandoned:
                return
            job = self.current = self.job
            self.job = None
            assert job is not None and job.fn is not None
            try:
                job.result = (True, job.fn())
            except BaseException as exc:  # handed to the caller
                job.result = (False, exc)
            finally:
                _pythreads.unbind_thread()  # whatever an interrupted execution left behind
                job.finish()
            self.current = job = None


_workers = threading.local()  # each calling thread's worker
_serving = threading.local()  # in a worker thread: its worker


def stopping() -> bool:
    """Whether the calling thread is a worker its watcher has stopped or given up on. The stop is
    sent as an asynchronous exception, and one can be lost: landing in a collector callback or a
    finalizer, it is printed and dropped (a WeakSet's, say, now that the collector runs at the
    end of each execution), and the job would run on. The explorer asks here before each
    execution, so a stopped job ends at the latest there (its current execution unwinds at its
    next visible operation: the stop aborts it too)."""
    w = getattr(_serving, "w", None)
    # (an abandoned worker whose blocking call returned has nobody waiting for its result:
    # it ends there too, instead of exploring on unwatched)
    return w is not None and (w.interrupting or w.abandoned)


def _cpu(ident: int) -> float | None:
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError, OverflowError):
        return None


def _line(frame: Any) -> int:
    """The frame's line. An instruction the compiler gave none (in 3.11 the jump back at the
    end of many loops: in a loop without calls, the one place where other threads get to run,
    so where the watcher finds a busy loop) counts as the line it jumps to, the loop's own;
    any other as the last line before it."""
    line = frame.f_lineno
    if line is not None:
        return line
    import dis

    code, at = frame.f_code, frame.f_lasti
    for ins in dis.get_instructions(code):
        if ins.offset == at:
            if ins.opcode in dis.hasjrel or ins.opcode in dis.hasjabs:
                at = ins.argval
            break
    line = code.co_firstlineno
    for start, _end, ln in code.co_lines():
        if start <= at and ln is not None:
            line = ln
    return line


def _describe(frame: Any) -> tuple[str, str]:
    """("what it is doing", "file:line") for the worker's innermost frame."""
    if frame is None:
        return "a call", "?"
    code = frame.f_code
    line = _line(frame)
    here = f"{os.path.basename(code.co_filename)}:{line}"
    text = linecache.getline(code.co_filename, line).strip()
    what = f"`{text}` in {code.co_name}() at {here}"
    uf = frame
    while uf is not None and not _user_file(uf.f_code.co_filename):
        uf = uf.f_back
    where = here
    if uf is not None and uf is not frame:
        ucode = uf.f_code
        uline = _line(uf)
        where = f"{os.path.basename(ucode.co_filename)}:{uline}"
        utext = linecache.getline(ucode.co_filename, uline).strip()
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
    j = w.job = _Job(job)
    mine = _steer(w)
    try:
        return _watch(w, j, timeout, stall)
    finally:
        if mine is not None:
            with contextlib.suppress(OSError):  # (a CPU of its own went offline meanwhile)
                os.sched_setaffinity(0, mine)


def _watch(w: _Worker, j: _Job, timeout: float | None, stall: float | None) -> Any:
    t0 = time.monotonic()
    w.go.release()
    ident = w.thread.ident
    assert ident is not None
    progress: tuple = ()
    since = t0
    fsig: tuple = ()
    moved = False  # the innermost frame changed since the last visible operation
    # (the first poll sees progress, and reads the worker's CPU time then: a check that ends
    # before it never asks the OS)
    cpu_since: float | None = None
    why: tuple[str, str, str] | None = None
    interrupted_at = 0.0
    blocked: tuple[Any, Any] | None = None
    try:
        while not j.done.acquire(timeout=_POLL):
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
                    blocked = frame, rt
                    break
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
                blocked = frame, rt
                break
            what, where = _describe(frame)
            why = ("timeout" if late else "stall", what, where, _schedule(rt))
            _stop(w, ident)
            interrupted_at = now
    except BaseException:
        # The watch ended before the job did (Ctrl-C, or an error in the watcher itself): the
        # job must not run on unwatched in a worker still on offer. Kept on, the next check's
        # job would queue behind this one, its watcher would take this job's completion for
        # its own and return before its job ran, every later check would be judged one job
        # late, and a second such exit would have the worker signal twice. So it is stopped
        # (a worker blocked in a call takes its stop if it ever comes back) and abandoned.
        if why is None and not w.abandoned:
            _stop(w, ident)
        raise
    if blocked is not None:
        raise Blocked(*_blocked(*blocked))
    ok, value = j.result
    j.result = (False, None)
    if why is not None:
        raise Interrupted(*why)
    if ok:
        return value
    raise value


def _steer(w: _Worker) -> set[int] | None:
    """Have the worker woken on this thread's CPU, and this thread woken there when the job
    ends (see the module's docstring): the CPUs this thread had, to be given back, or None."""
    if _getcpu is None or w.cpus is None:
        return None
    cpu = _getcpu()
    if cpu not in w.cpus:  # (-1: the OS did not say)
        return None
    try:
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(w.thread.native_id, {cpu})  # type: ignore[arg-type]
    except OSError:  # (the thread is gone, or the OS refuses: it is woken where it may be)
        return None
    w.steered = True
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return None
    return mine


def _stop(w: _Worker, ident: int) -> None:
    """Stop the worker's job with an asynchronous :class:`Interrupted`, and abandon it.

    The stop may land after the job has ended, so this worker serves no other job: it ends
    once this one is over, and the next check gets a fresh one. It is told it will be stopped
    before it is told it is abandoned: a worker that sees the one sees the other, so it never
    ends without taking its stop (which would leave the stop pending, or send it to whichever
    thread gets that ident next)."""
    w.interrupting = True
    _abandon(w, _pythreads.running(ident))
    if w.thread.is_alive():
        _interrupt(ident)
    w.sent.release()
    w.go.release()  # if it is already waiting for a next job: wake it to take the stop


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
        w.stuck_in = _syscall(w)
        _ABANDONED[:] = [x for x in _ABANDONED if x.thread.is_alive()] + [w]


def _syscall(w: _Worker) -> str | None:
    """The system call the worker's thread waits in, as Linux shows it (number, arguments,
    stack and instruction pointers), or None where it is running or the OS does not say."""
    try:
        with open(f"/proc/self/task/{w.thread.native_id}/syscall") as f:
            line = f.read().strip()
    except (OSError, ValueError):
        return None
    return line if line[:1].isdigit() else None  # ("running", or "-1 ...": in no call)


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
    back, and the process ends around it.

    Only a worker seen still inside the very system call it was left in is parked. One whose
    call has returned runs Python code, or waits for the GIL to run it: parked there, it
    could keep its turn at the GIL asked for, and the interpreter would wait for it to take
    the GIL, for ever (a hang at exit). Such a worker is unwinding (its execution aborts at
    its next visible operation), so it is waited for instead, up to a bound; one that blocks
    again meanwhile, in any call, is parked there."""
    stuck = [w for w in _ABANDONED if w.thread.is_alive() and w.thread.ident is not None]
    if not stuck:
        return
    import signal

    sig = _parking_signal()
    if sig is None:
        return
    deadline = time.monotonic() + _EXIT_WAIT
    for w in stuck:
        seen: tuple[str | None, float | None] = (None, None)
        while w.thread.is_alive():
            # The read and the signal come microseconds apart. A call that returns in between
            # leaves the worker waiting for the GIL far less than the switch interval (5 ms)
            # it waits before asking for its turn, and the signal's handler runs before any
            # more of its code: parked there, it has asked for nothing. (So does one whose
            # call has ended but that the OS has not run since: it still shows the call.)
            now = _syscall(w)
            if now is not None and now == w.stuck_in:
                try:
                    signal.pthread_kill(w.thread.ident, sig)  # type: ignore[arg-type]
                except (OSError, ValueError):
                    pass  # it ended meanwhile
                break
            if time.monotonic() > deadline:
                break  # running on: left to the interpreter, as any daemon thread
            w.thread.join(_POLL)
            # Blocked again elsewhere: in the same call at two looks, using no CPU.
            look = (_syscall(w), _cpu(w.thread.ident))  # type: ignore[arg-type]
            if look[0] is not None and look == seen:
                w.stuck_in = look[0]
            seen = look


atexit.register(_park_abandoned)


__all__ = ["Blocked", "Interrupted", "run", "stopping"]
