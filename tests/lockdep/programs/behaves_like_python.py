"""expect: clean
Instrumented locks behave like the real ones: errors, timeouts, repr, pickling, the private
methods the standard library calls."""
import pickle
import threading

lk = threading.Lock()
rl = threading.RLock()
try:
    lk.acquire(timeout=-5)
except ValueError:
    pass
else:
    raise AssertionError("acquire(timeout=-5) must raise ValueError")
assert lk.acquire(timeout=0.01) and not lk.acquire(blocking=False)
assert "locked" in repr(lk)
lk.release()
try:
    lk.release()
except RuntimeError:
    pass
else:
    raise AssertionError("releasing an unlocked lock must raise RuntimeError")
for obj in (lk, rl):
    try:
        pickle.dumps(obj)
    except TypeError:
        pass
    else:
        raise AssertionError("locks cannot be pickled")
with rl:
    with rl:
        assert rl._recursion_count() == 2 and rl._is_owned()
cond = threading.Condition(rl)
with cond:
    assert not cond.wait(0.01)
try:
    type(lk)()
except TypeError:
    pass
