"""``atomic64_t``: a 64-bit word whose every operation is indivisible.

Under the explorer each operation is one visible step, so lockless code built on it (the fast
page fault's cmpxchg on an SPTE) is interleaved at exactly the points the hardware allows.
Values are unsigned 64-bit; arguments outside that range are an error, not silently wrapped.
"""

from __future__ import annotations

from kvmlock import runtime

MASK64 = (1 << 64) - 1


def _u64(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not (0 <= v <= MASK64):
        raise ValueError(f"Atomic64.{what}: {v!r} is not an unsigned 64-bit integer")
    return v


class Atomic64:
    __slots__ = ("name", "_v", "_wq", "__weakref__")

    def __init__(self, value: int = 0, *, name: str = "atomic64") -> None:
        self.name = name
        # (_u64's test inlined for the plain int every caller passes: a model builds many)
        self._v = value if type(value) is int and 0 <= value <= MASK64 else _u64(value,
                                                                                  "__init__")
        self._wq = runtime.active().waitq(self)

    def load(self) -> int:
        # A plain read of one attribute is already indivisible on threads; only the explorer
        # needs the scheduling point.
        self._wq.point("load", False)
        return self._v

    read = load

    def store(self, value: int) -> None:
        if type(value) is not int or not 0 <= value <= MASK64:
            value = _u64(value, "store")
        wq = self._wq
        with wq:
            wq.point("store")
            self._v = value

    set = store

    def cmpxchg(self, old: int, new: int) -> int:
        """Store ``new`` if the value is ``old``; returns the value found (== old on success)."""
        if type(new) is not int or not 0 <= new <= MASK64:
            new = _u64(new, "cmpxchg")
        wq = self._wq
        with wq:
            wq.point("cmpxchg")
            cur = self._v
            if cur == old:
                self._v = new
            return cur

    def xchg(self, value: int) -> int:
        if type(value) is not int or not 0 <= value <= MASK64:
            value = _u64(value, "xchg")
        wq = self._wq
        with wq:
            wq.point("xchg")
            cur, self._v = self._v, value
            return cur

    def fetch_or(self, mask: int) -> int:
        if type(mask) is not int or not 0 <= mask <= MASK64:
            mask = _u64(mask, "fetch_or")
        wq = self._wq
        with wq:
            wq.point("fetch_or")
            cur = self._v
            self._v = cur | mask
            return cur

    def fetch_and(self, mask: int) -> int:
        if type(mask) is not int or not 0 <= mask <= MASK64:
            mask = _u64(mask, "fetch_and")
        wq = self._wq
        with wq:
            wq.point("fetch_and")
            cur = self._v
            self._v = cur & mask
            return cur

    def fetch_add(self, delta: int) -> int:
        """Add (wrapping modulo 2**64, as the hardware does); ``delta`` may be negative."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise ValueError(f"Atomic64.fetch_add: {delta!r} is not an integer")
        wq = self._wq
        with wq:
            wq.point("fetch_add")
            cur = self._v
            self._v = (cur + delta) & MASK64
            return cur

    def peek(self) -> int:
        """The value without a visible operation: for assertions after all tasks joined."""
        return self._v

    def __repr__(self) -> str:
        return f"<Atomic64 {self.name}={self._v:#x}>"
