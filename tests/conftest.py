"""Every test starts from a clean validator in collect mode, so one test's report never leaks."""

import pytest

from kvmlock import lockdep, runtime


@pytest.fixture(autouse=True)
def _fresh_lockdep():
    lockdep.reset()
    lockdep.set_mode("collect")
    yield
    runtime.current_task().irq = 0  # a failed test may leave its interrupt context behind
    lockdep.reset()
    lockdep.set_mode("warn")


@pytest.fixture
def raw_nesting():
    """lockdep.prove_raw_nesting() for one test (wait types as on PREEMPT_RT)."""
    lockdep.prove_raw_nesting(True)
    yield
    lockdep.prove_raw_nesting(False)
