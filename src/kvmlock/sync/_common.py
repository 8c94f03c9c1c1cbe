"""What every primitive shares: validating its name and nesting subclass."""

from __future__ import annotations

from kvmlock.lockdep.state import check_subclass


def check_name(name: object, what: str) -> str:
    """A lock's name is its lockdep class, so an empty or non-string name is a caller bug."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what}: the name must be a non-empty string naming the lock class, "
                        f"got {name!r}")
    return name


class Nested:
    """``with lock.nested(n):`` -- take a lock of an already-held class on purpose."""

    __slots__ = ("_lock", "_subclass")

    def __init__(self, lock: object, subclass: int) -> None:
        self._lock = lock
        self._subclass = check_subclass(subclass)

    def __enter__(self) -> object:
        self._lock.lock(self._subclass)  # type: ignore[attr-defined]
        return self._lock

    def __exit__(self, *exc: object) -> None:
        self._lock.unlock()  # type: ignore[attr-defined]


class Section:
    """A context manager made of a lock and an unlock call (``with rw.read():``)."""

    __slots__ = ("_enter", "_exit")

    def __init__(self, enter, exit) -> None:  # noqa: A002 - mirrors __exit__
        self._enter = enter
        self._exit = exit

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()
