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


def _memory_tracing_refused() -> str | None:
    """Why ``explore(memory=True)`` refuses on this interpreter (it reads CPython 3.11's
    frames), or None where it works."""
    from kvmlock.explore import memtrace

    try:
        memtrace.selftest()
    except memtrace.MemoryTracingUnsupported as e:
        return str(e)
    return None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "memory_tracing: needs explore(memory=True); skipped, with its refusal as "
        "the reason, on an interpreter where memory tracing refuses to run")


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if "memory_tracing" in item.keywords]
    if not marked:
        return
    why = _memory_tracing_refused()
    if why is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=why))
