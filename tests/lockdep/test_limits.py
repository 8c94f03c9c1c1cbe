"""Table limits: crossing one prints one clear message, stops validation, keeps running."""

import pytest

from kvmlock import lockdep
from kvmlock.sync import Mutex


@pytest.fixture
def limits():
    saved = dict(lockdep.LIMITS.as_dict())
    yield
    lockdep.configure(**saved)


def nest(locks):
    for m in locks:
        m.lock()
    for m in reversed(locks):
        m.unlock()


@pytest.mark.parametrize(
    "limit,value,what",
    [("max_classes", 3, "lock classes"), ("max_edges", 2, "lock dependencies"),
     ("max_chains", 3, "lock chains"), ("max_depth", 3, "depth")],
)
def test_overflow_turns_validation_off_once(limits, capsys, limit, value, what):
    lockdep.configure(**{limit: value})
    locks = [Mutex(f"L{i}") for i in range(6)]
    nest(locks)  # six classes, five edges, six chains, depth six: over every limit above
    nest(locks)
    err = capsys.readouterr().err
    assert err.count("kvmlock.lockdep: too many") == 1 and what in err and limit in err
    assert not lockdep.enabled()
    # the program goes on correctly: the locks still lock, and an inversion is not reported
    nest(list(reversed(locks)))
    assert lockdep.reports() == []
    assert not locks[0].locked()


def test_within_limits_no_message(limits, capsys):
    lockdep.configure(max_classes=6, max_edges=5, max_chains=6, max_depth=6)
    locks = [Mutex(f"L{i}") for i in range(6)]
    nest(locks)
    assert capsys.readouterr().err == ""
    assert lockdep.enabled() and lockdep.stats()["edges"] == 5


def test_configure_rejects_bad_input(limits):
    with pytest.raises(ValueError, match="unknown lockdep limit"):
        lockdep.configure(max_locks=3)
    with pytest.raises(ValueError, match="positive int"):
        lockdep.configure(max_edges=0)
    with pytest.raises(ValueError, match="positive int"):
        lockdep.configure(max_edges="10")
    assert lockdep.configure()["max_edges"] == lockdep.LIMITS.max_edges
