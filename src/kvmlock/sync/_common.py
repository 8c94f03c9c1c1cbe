"""What every primitive shares: validating its name and nesting subclass."""

from __future__ import annotations

#: lockdep keeps 8 subclasses per class, as the kernel does (MAX_LOCKDEP_SUBCLASSES).
MAX_SUBCLASSES = 8


def check_name(name: object, what: str) -> str:
    """A lock's name is its lockdep class, so an empty or non-string name is a caller bug."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what}: the name must be a non-empty string naming the lock class, "
                        f"got {name!r}")
    return name


def check_subclass(subclass: object) -> int:
    if not isinstance(subclass, int) or isinstance(subclass, bool) or not (
        0 <= subclass < MAX_SUBCLASSES
    ):
        raise ValueError(
            f"lock subclass must be an integer in 0..{MAX_SUBCLASSES - 1}, got {subclass!r}"
        )
    return subclass


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
