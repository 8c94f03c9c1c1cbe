"""The mutation catalogue: every protection of the model, declared where it is applied.

A *mutant* is the model with one protection removed or weakened, the way a kernel patch might
do it: a cmpxchg made a load and a store, a retry check skipped, a flush left out, a wait not
waited, a lock not taken. Each one is declared with :func:`mutant` in the module whose code it
weakens, right above that code, and the code asks ``if X in owner.hazards`` where the protection
is. ``kvmlock verify --mutants`` applies them one at a time and requires every one to make some
*correct* scenario fail: a protection no scenario misses is a protection the verdicts do not
cover.

Which objects are mutated: a :class:`~kvmlock.kvm.vm.VM`, :class:`~kvmlock.kvm.machine.Machine`
or :class:`~kvmlock.kvm.host.Host` carries the set of mutants it was built with
(``hazards=``), and every one built while :func:`applied` is active carries those too. The
set is read once, at construction, so a mutant never changes behind a running model.

A mutant may be *pending*: declared, with the reason it cannot be applied yet (for instance a
lock-kind change whose harm only interrupt-context tracking can see). Pending mutants are
listed with their reason and never counted as caught.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

__all__ = ["CATALOGUE", "Hazards", "Mutant", "applied", "hazards_of", "lock_kind", "mutant",
           "unless"]


class Mutant(str):
    """One weakened protection.

    ``removes`` says what the mutant takes away, ``breaks`` the locking.rst rule or hazard that
    protection stands for; ``where`` (file:line of the declaration) is filled in by
    :func:`mutant`. ``pending``, when not empty, is why the mutant cannot be applied yet.

    A mutant is its name (a ``str``) with those fields: the model asks ``X in vm.hazards`` at
    every protected spot, millions of times in ``kvmlock verify``, and a set of names answers
    that for a string without a Python call. Its fields cannot be changed.
    """

    _FIELDS = ("removes", "breaks", "where", "pending")

    def __new__(cls, name: str, removes: str, breaks: str, where: str = "",
                pending: str = "") -> Mutant:
        self = super().__new__(cls, name)
        self.__dict__["_fields"] = (removes, breaks, where, pending)
        return self

    @property
    def name(self) -> str:
        return str.__str__(self)

    @property
    def removes(self) -> str:
        return self._fields[0]  # type: ignore[attr-defined]

    @property
    def breaks(self) -> str:
        return self._fields[1]  # type: ignore[attr-defined]

    @property
    def where(self) -> str:
        return self._fields[2]  # type: ignore[attr-defined]

    @property
    def pending(self) -> str:
        return self._fields[3]  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"mutant {self.name!r} cannot be changed")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in zip(self._FIELDS, self._fields, strict=True))  # type: ignore[attr-defined]
        return f"Mutant(name={self.name!r}, {fields})"


_PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # .../src, holding kvmlock/

#: every declared mutant by name, in declaration order
CATALOGUE: dict[str, Mutant] = {}

_APPLIED: frozenset[str] = frozenset()


def mutant(name: str, *, removes: str, breaks: str, pending: str = "") -> Mutant:
    """Declare a mutant beside the code it weakens; returns the handle that code tests."""
    if not name.isidentifier():
        raise ValueError(f"mutant name must be an identifier, got {name!r}")
    if name in CATALOGUE:
        raise ValueError(f"mutant {name!r} is declared twice")
    frame = sys._getframe(1)  # noqa: SLF001 - the declaring module is the mutant's address
    path = Path(frame.f_code.co_filename).resolve()
    try:  # relative to the package's parent, whatever the checkout's own directory is called
        rel = path.relative_to(_PACKAGE_PARENT).as_posix()
    except ValueError:
        rel = path.name
    m = Mutant(name, removes, breaks, f"{rel}:{frame.f_lineno}", pending)
    CATALOGUE[name] = m
    return m


class Hazards(frozenset):
    """The mutants one model object was built with (a frozenset of names).

    ``X in hazards`` takes a :class:`Mutant` or its name (a mutant is its name, so the set's
    own test answers); ``hazards.name`` is the same test by attribute, so
    ``vm.hazards.fast_pf_indirect`` reads as a switch.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> bool:
        if name in CATALOGUE:
            return name in self
        raise AttributeError(f"no mutant named {name!r}")

    @staticmethod
    def names() -> list[str]:
        return list(CATALOGUE)


def hazards_of(value: Hazards | dict[str, bool] | Iterable[str] | None) -> Hazards:
    """Normalise a ``hazards=`` argument and add the mutants :func:`applied` now.

    A dict maps names to on/off (the switches' historical form); an unknown name is a
    ValueError naming the known ones.
    """
    if value is None:
        names: set[str] = set()
    elif isinstance(value, dict):
        names = {k for k, on in value.items() if on} | set()
        unknown = sorted(set(value) - set(CATALOGUE))
        if unknown:
            raise ValueError(f"unknown hazard(s) {unknown}; known: {sorted(CATALOGUE)}")
    elif isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"hazards must be a Hazards, a dict or a set of names, "
                        f"got {type(value).__name__}")
    else:
        names = {getattr(v, "name", v) for v in value}
        unknown = sorted(str(n) for n in names - set(CATALOGUE))
        if unknown:
            raise ValueError(f"unknown hazard(s) {unknown}; known: {sorted(CATALOGUE)}")
    return Hazards(names | _APPLIED)


@contextmanager
def applied(*names: str | Mutant) -> Iterator[None]:
    """Every model object built inside the block carries these mutants too."""
    global _APPLIED
    wanted = {getattr(n, "name", n) for n in names}
    unknown = sorted(str(n) for n in wanted - set(CATALOGUE))
    if unknown:
        raise ValueError(f"unknown mutant(s) {unknown}")
    pending = sorted(n for n in wanted if CATALOGUE[n].pending)
    if pending:
        raise ValueError(f"mutant(s) {pending} cannot be applied yet: "
                         f"{CATALOGUE[pending[0]].pending}")
    before = _APPLIED
    _APPLIED = before | wanted
    try:
        yield
    finally:
        _APPLIED = before


def lock_kind(hazards: Hazards, default: type, *changes: tuple[Mutant, type]) -> type:
    """The class a lock is built with: ``default``, or another kind a mutant changes it to."""
    for m, kind in changes:
        if m in hazards:
            return kind
    return default


def unless(m: Mutant, hazards: Hazards, lock: Any) -> AbstractContextManager[Any]:
    """``with unless(M, vm.hazards, lock):`` -- the lock, or nothing when ``M`` is applied."""
    return nullcontext() if m in hazards else lock
