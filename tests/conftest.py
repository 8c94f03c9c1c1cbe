"""Every test starts from a clean validator in collect mode, so one test's report never leaks."""

import pytest

from kvmlock import lockdep


@pytest.fixture(autouse=True)
def _fresh_lockdep():
    lockdep.reset()
    lockdep.set_mode("collect")
    yield
    lockdep.reset()
    lockdep.set_mode("warn")
