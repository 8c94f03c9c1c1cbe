"""``kvmlock lockdep SCRIPT``: validate an unmodified Python program's own threading locks.

The program runs in this process with ``threading.Lock()``/``RLock()`` instrumented, so one run
is enough for lockdep to see every order the program takes -- and to print a possible deadlock
whether or not this run happened to hit it. The exit status says whether anything was reported,
so the command drops into CI as it is.

The program ends as it would under ``python``: an exception is printed and is status 1,
``sys.exit(msg)`` prints the message, non-daemon threads are waited for and atexit handlers
run -- and only then comes the summary, so reports made that late are counted. Every report
is also appended, as it is made, to a journal that forked children share, so reports made in
a child process or just before an ``os._exit`` still reach the summary and ``--json``.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import runpy
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from typing import Any

from kvmlock import lockdep
from kvmlock.lockdep import state as _ld_state

#: Exit statuses of the command's own errors (the program's status is passed through).
USAGE, NO_SCRIPT, NOT_PYTHON, NO_MODULE, BAD_JSON = 2, 3, 4, 5, 6


class _Fail(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmlock lockdep",
        usage="kvmlock lockdep [--json FILE] [--quiet] (SCRIPT | -m MODULE) [ARGS...]",
        description="Run a Python script (or -m module) with its threading locks validated by "
        "lockdep; exit 1 when any report was made. Everything after the script or module "
        "goes to the program, as with python.",
        epilog=f"Exit statuses of its own: {USAGE} usage, {NO_SCRIPT} script not found or "
        f"unreadable, {NOT_PYTHON} not Python source, {NO_MODULE} no such module, {BAD_JSON} "
        "--json file cannot be written. Otherwise the program's status, or 1 when it was 0 "
        "and lockdep reported something or had to stop validating.",
    )
    p.add_argument("-m", dest="module", help="run a library module as a script, like python -m")
    p.add_argument("--json", metavar="FILE", help="also write the reports to FILE as JSON")
    p.add_argument("--quiet", action="store_true",
                   help="do not print splats as they happen, only the summary")
    return p


def _split(argv: list[str]) -> tuple[list[str], str | None, str | None, list[str]]:
    """Our options, then the module or script, then the program's arguments untouched."""
    takes_value = {"--json", "-m"}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            if i + 1 >= len(argv):
                raise _Fail(USAGE, "-m needs a module name")
            return argv[:i], argv[i + 1], None, argv[i + 2:]
        if a.startswith("-m") and not a.startswith("--"):
            return argv[:i], a[2:], None, argv[i + 1:]
        if a == "--":
            if i + 1 >= len(argv):
                break
            return argv[:i], None, argv[i + 1], argv[i + 2:]
        if not a.startswith("-") or a == "-":
            return argv[:i], None, a, argv[i + 1:]
        i += 2 if a in takes_value else 1
    return argv, None, None, []


def _check_script(path: str) -> None:
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "__main__.py")):
            raise _Fail(NO_SCRIPT, f"{path} is a directory without a __main__.py")
        return
    if not os.path.isfile(path):
        raise _Fail(NO_SCRIPT, f"no such script: {path}")
    _check_source(path, path)


def _check_source(path: str, shown: str) -> None:
    """A file that must be Python source the program can run: readable, not binary, valid."""
    try:
        with open(path, "rb") as fh:
            source = fh.read()
    except OSError as exc:
        raise _Fail(NO_SCRIPT, f"cannot read {shown}: {exc.strerror or exc}") from None
    if source.startswith(b"PK\x03\x04"):
        return  # a zip application: runpy runs its __main__.py
    if b"\x00" in source:
        raise _Fail(NOT_PYTHON, f"{shown} is not Python source (a binary file)")
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise _Fail(NOT_PYTHON, f"{shown} is not valid Python: {exc.msg} (line {exc.lineno})"
                    ) from None
    except ValueError as exc:  # null bytes: a binary file
        raise _Fail(NOT_PYTHON, f"{shown} is not Python source: {exc}") from None


def _check_module(name: str) -> None:
    """Find ``name`` as ``python -m`` would (the current directory first on the path), and
    check its source; its parent packages are imported, as python -m imports them."""
    sys.path.insert(0, os.getcwd())
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            main = importlib.util.find_spec(name + ".__main__")
            if main is None:
                raise _Fail(NO_MODULE, f"{name} is a package without a __main__ module: "
                            "it cannot be run")
            spec = main
    except SyntaxError as exc:  # a parent package's own source
        where = os.path.relpath(exc.filename) if exc.filename else name
        raise _Fail(NOT_PYTHON, f"{where} is not valid Python: {exc.msg} (line {exc.lineno})"
                    ) from None
    except (ImportError, ValueError) as exc:
        raise _Fail(NO_MODULE, f"cannot find module {name}: {exc}") from None
    finally:
        del sys.path[0]
    if spec is None:
        raise _Fail(NO_MODULE, f"no module named {name}")
    if spec.has_location and spec.origin and spec.origin.endswith(".py"):
        _check_source(spec.origin, os.path.relpath(spec.origin))


def _check_json(path: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write("[]\n")
    except OSError as exc:
        raise _Fail(BAD_JSON, f"cannot write --json file {path}: {exc.strerror or exc}") from None


class _Journal:
    """Reports appended as they are made, one JSON line each, by this process and its forked
    children; ``--json`` is rewritten from it after every report."""

    def __init__(self, json_path: str | None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="kvmlock-lockdep-", suffix=".jsonl")
        os.close(fd)
        self.json_path = json_path
        self.pid = os.getpid()

    def add(self, report: lockdep.Report) -> None:
        d = report.to_dict()
        d["pid"] = os.getpid()
        self._append(d)
        self.write_json()

    def add_gap(self, what: str) -> None:
        self._append({"gap": what, "pid": os.getpid()})

    def _append(self, d: dict[str, Any]) -> None:
        line = (json.dumps(d) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def gaps(self) -> list[str]:
        """What this process or a child could not validate, each once, in order."""
        return list(dict.fromkeys(d["gap"] for d in self._lines() if "gap" in d))

    def _lines(self) -> list[dict[str, Any]]:
        try:
            with open(self.path) as fh:
                lines = fh.read().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a process killed mid-write
        return out

    def entries(self) -> list[dict[str, Any]]:
        out, seen = [], set()
        for d in self._lines():
            if "gap" in d:
                continue
            key = json.dumps({k: v for k, v in d.items() if k not in ("pid", "task")},
                             sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(d)
        return out

    def write_json(self) -> None:
        if not self.json_path:
            return
        tmp = f"{self.json_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.entries(), fh, indent=2)
        os.replace(tmp, self.json_path)

    def close(self) -> None:
        if os.getpid() == self.pid:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _user_traceback(exc: BaseException) -> None:
    """Print an exception as python would: without kvmlock's and runpy's frames."""
    tb = exc.__traceback__
    skip = (os.path.abspath(__file__), os.path.abspath(runpy.__file__))
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith("<frozen ")
                              or os.path.abspath(tb.tb_frame.f_code.co_filename) in skip):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): python prints it, status 1
    return 1


def _run_main_file(script: str) -> None:
    """runpy.run_path, with python's view of its main script: ``__file__`` absolute (python
    3.9+), ``sys.argv[0]`` as given (run_path would set it to the path it ran)."""
    modified = getattr(runpy, "_ModifiedArgv0", None)
    if modified is None:
        runpy.run_path(script, run_name="__main__")
        return

    class _GivenArgv0(modified):  # type: ignore[misc, valid-type]
        def __init__(self, _value: Any) -> None:
            super().__init__(script)

    runpy._ModifiedArgv0 = _GivenArgv0  # type: ignore[attr-defined]
    try:
        runpy.run_path(os.path.abspath(script), run_name="__main__")
    finally:
        runpy._ModifiedArgv0 = modified  # type: ignore[attr-defined]


def _run(module: str | None, script: str | None, args: list[str]) -> int:
    """Run the program to its real end (threads joined, atexit run); its exit status."""
    status = 0
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    try:
        if module:
            sys.argv = [module, *args]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            assert script is not None
            sys.argv = [script, *args]
            if os.path.isdir(script):
                runpy.run_path(script, run_name="__main__")
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
                _run_main_file(script)
    except SystemExit as exc:
        status = _exit_status(exc)
    except KeyboardInterrupt as exc:
        _user_traceback(exc)
        status = 130
    except BaseException as exc:  # noqa: BLE001 - reported as python reports it
        _user_traceback(exc)
        status = 1
    # The end python gives a program: wait for non-daemon threads, then run atexit handlers
    # (both may still take locks, and what they do belongs in the summary).
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        lockdep.check_live_threads()  # daemon threads holding locks as the process ends
    except SystemExit as exc:
        status = status or _exit_status(exc)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        ours, module, script, args = _split(argv)
        opts = build_parser().parse_args(ours)
        if opts.module:  # "-m X" given in a form _split did not take apart (e.g. --json after)
            module, args = opts.module, ([script] if script else []) + args
            script = None
        if not module and not script:
            raise _Fail(USAGE, "name a script to run (or -m MODULE)")
        if script:
            _check_script(script)
        if opts.json:
            _check_json(opts.json)
    except _Fail as exc:
        print(f"kvmlock lockdep: {exc}", file=sys.stderr)
        return exc.status

    lockdep.reset()
    lockdep.set_mode("collect" if opts.quiet else "warn")
    journal = _Journal(opts.json)
    _ld_state.REPORT_HOOKS.append(journal.add)
    _ld_state.GAP_HOOKS.append(journal.add_gap)
    try:
        with lockdep.instrument_threading():
            if module:  # found with instrumentation on: a parent package's locks count
                try:
                    _check_module(module)
                except _Fail as exc:
                    print(f"kvmlock lockdep: {exc}", file=sys.stderr)
                    return exc.status
            status = _run(module, script, args)
        return _summary(journal, opts.quiet, status)
    finally:
        _ld_state.REPORT_HOOKS.remove(journal.add)
        _ld_state.GAP_HOOKS.remove(journal.add_gap)
        journal.close()


def _summary(journal: _Journal, quiet: bool, status: int) -> int:
    sys.stdout.flush()
    mine = lockdep.reports()
    entries = journal.entries()
    children = [d for d in entries if d.get("pid") != os.getpid()]
    st = lockdep.stats()
    extra = f" ({len(children)} in child processes)" if children else ""
    print(
        f"kvmlock lockdep: {len(entries)} report(s){extra}; {st.get('classes', 0)} lock "
        f"classes, {st.get('edges', 0)} dependencies, {st.get('chains', 0)} chains",
        file=sys.stderr,
    )
    if quiet:
        for r in mine:
            print(r, file=sys.stderr)
        for d in children:
            print(f"child process {d['pid']}: {d['title']} ({d.get('lock')}) in {d.get('task')}",
                  file=sys.stderr)
    gaps = journal.gaps()
    off = "validation was switched off"
    if not st.get("enabled", True) and not any(g.startswith(off) for g in gaps):
        # (an overflow notes its own gap; lockdep.disable() does not)
        gaps.insert(0, f"{off} ({_ld_state_overflow()})")
    for what in gaps:
        print(f"kvmlock lockdep: {what}; the verdict is incomplete", file=sys.stderr)
    incomplete = bool(gaps)
    journal.write_json()
    if status:
        return status
    return 1 if entries or incomplete else 0


def _ld_state_overflow() -> str:
    from kvmlock.lockdep import core

    what = core._state().overflow
    return f"too many {what}" if what else "lockdep.disable() was called"
