"""``kvmlock explore FILE::FUNCTION``: a test or a script's function under the explorer.

The function is called with no arguments, afresh for every execution, exactly as
``explore.check`` calls a body: a plain threading test runs as it is, and an ``async def``
one on the explorer's event loop (each asyncio task explored). The exit status is 0
when the exploration found nothing, 1 when it found a failure (printed with its trace table
and the command that replays it), 2 for bad input.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kvmlock.explore import STRATEGIES, check, replay


class _BadInput(Exception):
    pass


def load(target: str) -> Callable[[], Any]:
    """The function ``FILE::NAME`` (or ``FILE::Class::method`` of a no-argument class)."""
    path, sep, name = target.partition("::")
    if not sep or not name:
        raise _BadInput(f"expected FILE::FUNCTION, got {target!r}")
    if not os.path.isfile(path):
        raise _BadInput(f"no such file: {path}")
    modname = "_kvmlock_explore_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise _BadInput(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec.loader.exec_module(module)
    obj: Any = module
    for part in name.split("::"):
        if not hasattr(obj, part):
            raise _BadInput(f"{path} has no {name!r}")
        obj = getattr(obj, part)
        if isinstance(obj, type):
            obj = obj()
    if not callable(obj):
        raise _BadInput(f"{target} is not callable")
    needs = _required(obj)
    if needs:
        raise _BadInput(f"{target} takes arguments ({', '.join(needs)}) and the explorer calls "
                        f"it with none; a test that needs pytest fixtures runs under "
                        f"@pytest.mark.explore instead")
    return obj


def _required(fn: Any) -> list[str]:
    """The parameters ``fn`` cannot be called without."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # (a builtin without a signature: let the call decide)
        return []
    return [n for n, p in sig.parameters.items() if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def replay_command(target: str, schedule: str, memory: bool) -> str:
    mem = " --memory" if memory else ""
    return f"kvmlock explore {shlex.quote(target)} --replay {shlex.quote(schedule)}{mem}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvmlock explore", description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="FILE::FUNCTION (a test, or any function taking no arguments)")
    p.add_argument("--strategy", default="dpor", choices=STRATEGIES)
    p.add_argument("--max-runs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None, help="seconds for the whole check")
    p.add_argument("--memory", action="store_true",
                   help="data loads and stores are visible operations too")
    p.add_argument("--no-lockdep", action="store_true", help="ignore lockdep reports")
    p.add_argument("--replay", metavar="SCHEDULE", help="run one schedule and show its trace")
    a = p.parse_args(argv)
    try:
        body = load(a.target)
        if a.replay is not None:
            res = replay(body, a.replay, lockdep=not a.no_lockdep, memory=a.memory,
                         timeout=a.timeout)
        else:
            res = check(body, a.strategy, max_runs=a.max_runs, seed=a.seed, timeout=a.timeout,
                        memory=a.memory, lockdep=not a.no_lockdep)
    except _BadInput as e:
        print(f"kvmlock explore: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:
        print(f"kvmlock explore: {e}", file=sys.stderr)
        return 2
    print(res)
    if res.failures:
        f = res.failures[0]
        if f.schedule or f.kind != "blocked":
            print(f"replay: {replay_command(a.target, f.schedule, a.memory)}")
        return 1
    return 0
