"""queue operations as visible operations of their own, with dependence after the queue's
semantics: the counts a near-miss must keep, the orders a real race must still explore, and
dpor against exhaustive dfs on random queue programs (the soundness check)."""

from __future__ import annotations

import queue
import random
import threading

import pytest

from kvmlock import explore
from tests.explore.programs import assert_dpor_agrees_with_dfs
from tests.explore.threadprogs import run_all

OPTS = {"stop_on_first": False, "shrink": False, "lockdep": False}


def _pipeline(make, n: int = 3, producers: int = 1, consumers: int = 1):
    """``producers`` threads each put ``n`` items then one None per consumer... (one None per
    consumer from the main thread after the producers are joined); consumers take until None."""

    def body():
        q = make()
        got: list[list] = [[] for _ in range(consumers)]

        def producer(p):
            for i in range(n):
                q.put((p, i))

        def consumer(c):
            while True:
                v = q.get()
                if v is None:
                    return
                got[c].append(v)

        ps = [threading.Thread(target=producer, args=(p,)) for p in range(producers)]
        cs = [threading.Thread(target=consumer, args=(c,)) for c in range(consumers)]
        for t in ps + cs:
            t.start()
        for t in ps:
            t.join()
        for _ in cs:
            q.put(None)
        for t in cs:
            t.join()
        assert sorted(v for g in got for v in g) == sorted(
            (p, i) for p in range(producers) for i in range(n))

    return body


@pytest.mark.parametrize("make", [queue.Queue, lambda: queue.Queue(1), lambda: queue.Queue(2),
                                  lambda: queue.SimpleQueue()])
def test_one_producer_one_consumer_is_one_execution(make):
    """A put and a get of a FIFO queue commute unless the get takes that put's item (or, when
    bounded, the put needs the room that get made): one producer and one consumer make one
    trace, whether the consumer waited in get or came late."""
    res = explore.check(_pipeline(make), **OPTS)
    assert res.ok and res.exhausted and res.runs == 1 and res.pruned == 0


def test_a_stack_orders_puts_against_gets():
    """LifoQueue: a get takes the newest item, so a put and a get of a non-empty stack do not
    commute: the consumer sees different items in different executions."""
    seen = set()

    def body():
        q = queue.LifoQueue()
        q.put("first")
        got = []
        run_all(lambda: q.put("second"), lambda: got.append(q.get()))
        seen.add(got[0])

    res = explore.check(body, **OPTS)
    assert res.ok and res.exhausted and res.runs == 2
    assert seen == {"first", "second"}
    # the same on a FIFO queue: the get takes "first" either way, one execution
    seen.clear()

    def fifo():
        q = queue.Queue()
        q.put("first")
        got = []
        run_all(lambda: q.put("second"), lambda: got.append(q.get()))
        seen.add(got[0])

    res = explore.check(fifo, **OPTS)
    assert res.ok and res.runs == 1 and seen == {"first"}


def test_two_producers_race_for_the_order():
    """Two puts of one queue never commute: the consumer sees both orders, and an assertion
    that one producer's item comes first is caught."""

    def body():
        q = queue.Queue()
        got = []
        run_all(lambda: q.put("a"), lambda: q.put("b"), lambda: got.extend([q.get(), q.get()]))
        assert got == ["a", "b"], got

    res = explore.check(body, **OPTS)
    assert res.failure is not None and res.failure.kind == "assertion"
    assert "['b', 'a']" in res.failure.message
    assert res.runs == 2 and res.exhausted


@pytest.mark.parametrize("make", [queue.Queue, queue.LifoQueue], ids=["fifo", "stack"])
def test_two_consumers_race_for_an_item(make):
    seen = set()

    def body():
        q = make()
        q.put(1)
        q.put(2)
        got = {}

        def take(name):
            got[name] = q.get()

        run_all(lambda: take("x"), lambda: take("y"))
        seen.add((got["x"], got["y"]))

    res = explore.check(body, **OPTS)
    assert res.ok and res.exhausted and res.runs == 2 and seen == {(1, 2), (2, 1)}


@pytest.mark.parametrize("putter_first", [False, True])
def test_get_nowait_racing_a_put_sees_both_outcomes(putter_first):
    seen = set()

    def body():
        q = queue.Queue()
        got = []

        def poll():
            try:
                got.append(q.get_nowait())
            except queue.Empty:
                got.append("empty")

        run_all(*((lambda: q.put(1), poll) if putter_first else (poll, lambda: q.put(1))))
        seen.add(got[0])

    res = explore.check(body, **OPTS)
    assert res.ok and res.exhausted and res.runs == 2 and seen == {1, "empty"}


def test_qsize_is_ordered_against_puts_and_gets():
    seen = set()

    def body():
        q = queue.Queue()
        q.put(0)
        sizes = []
        run_all(lambda: q.put(1), q.get, lambda: sizes.append(q.qsize()))
        seen.add(sizes[0])

    res = explore.check(body, **OPTS)
    assert res.ok and res.exhausted and seen == {0, 1, 2}
    # the put and the get commute; the look is ordered against each: 3 positions x 2 = 6,
    # minus the orders where put and get swap around nothing: 4 traces
    assert res.runs == 4


@pytest.mark.parametrize("getter_first", [False, True])
def test_put_nowait_on_a_bounded_queue_sees_full_or_the_room_a_get_made(getter_first):
    seen = set()

    def body():
        q = queue.Queue(maxsize=1)
        q.put(0)
        got = []

        def try_put():
            try:
                q.put_nowait(1)
                got.append("put")
            except queue.Full:
                got.append("full")

        run_all(*((q.get, try_put) if getter_first else (try_put, q.get)))
        seen.add(got[0])

    res = explore.check(body, **OPTS)
    assert res.ok and res.exhausted and res.runs == 2 and seen == {"put", "full"}


@pytest.mark.parametrize("putter_first", [False, True])
def test_task_done_racing_the_put_of_its_item(putter_first):
    seen = set()

    def body():
        q = queue.Queue()
        got = []

        def done():
            try:
                q.task_done()
                got.append("done")
            except ValueError:
                got.append("too many")

        run_all(*((lambda: q.put(1), done) if putter_first else (done, lambda: q.put(1))))
        seen.add(got[0])

    res = explore.check(body, **OPTS)
    assert res.ok and res.exhausted and res.runs == 2 and seen == {"done", "too many"}


def test_a_get_with_nobody_to_put_is_a_deadlock_naming_the_queue():
    def body():
        q = queue.Queue()
        run_all(q.get)

    res = explore.check(body, **OPTS)
    assert res.failure is not None and res.failure.kind == "deadlock"
    msg = res.failure.message
    assert "waits for: get test_a_get_with_nobody_to_put_is_a_deadlock_naming_the_queue.body.q" \
        in msg and "Thread-1 (get)" in msg


def test_task_done_and_join():
    """join returns once every item is done; a task_done too many is ValueError, as for the
    real queue; and the main thread's join is ordered only against puts and task_dones."""

    def body():
        q = queue.Queue()

        def worker():
            while True:
                v = q.get()
                q.task_done()
                if v is None:
                    return

        t = threading.Thread(target=worker)
        t.start()
        q.put(1)
        q.put(None)
        q.join()
        assert q.unfinished_tasks == 0
        t.join()

    res = explore.check(body, **OPTS)
    assert res.ok and res.exhausted

    def too_many():
        q = queue.Queue()
        q.put(1)
        q.get()
        q.task_done()
        q.task_done()

    res = explore.check(too_many, **OPTS)
    assert res.failure is not None and res.failure.kind == "exception"
    assert "task_done() called too many times" in res.failure.message


def test_the_real_queue_s_errors_and_results():
    def body():
        q = queue.Queue(2)
        assert q.empty() and not q.full() and q.qsize() == 0
        with pytest.raises(queue.Empty):
            q.get_nowait()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.5)
        with pytest.raises(ValueError, match="non-negative"):
            q.get(timeout=-1)
        q.put(1)
        q.put_nowait(2)
        assert q.full() and q.qsize() == 2
        with pytest.raises(queue.Full):
            q.put(3, timeout=1)
        with pytest.raises(queue.Full):
            q.put_nowait(3)
        assert [q.get(), q.get()] == [1, 2]
        p = queue.PriorityQueue()
        for v in (3, 1, 2):
            p.put(v)
        assert [p.get() for _ in range(3)] == [1, 2, 3]
        s = queue.SimpleQueue()
        s.put(1)
        assert s.qsize() == 1 and not s.empty() and s.get_nowait() == 1
        with pytest.raises(queue.Empty):
            s.get(timeout=0)
        assert isinstance(q, queue.Queue) and isinstance(s, queue.SimpleQueue)

    res = explore.check(body, **OPTS)
    assert res.ok, res


# ---------------------------------------------------------------------------- cross-check
_KINDS = [lambda: queue.Queue(), lambda: queue.Queue(1), lambda: queue.Queue(2),
          queue.LifoQueue, queue.PriorityQueue, lambda: queue.SimpleQueue()]


def _program(seed: int):
    rng = random.Random(seed)
    kind = rng.randrange(len(_KINDS))
    simple = kind == 5
    ntasks = rng.choice([2, 2, 3])
    pre = rng.randrange(3)
    menu = ["put", "put", "get_nowait", "put_nowait", "qsize", "empty", "full",
            "get_timeout", "put_timeout", "get"]
    if not simple:
        menu += ["task_done"]
    scripts = [[rng.choice(menu) for _ in range(rng.randint(1, 3 if ntasks == 2 else 2))]
               for _ in range(ntasks)]

    def body(out: set):
        q = _KINDS[kind]()
        for i in range(pre):
            q.put(100 + i) if simple else q.put_nowait(100 + i)
        seen: list[list] = [[] for _ in scripts]

        def task(i):
            for n, op in enumerate(scripts[i]):
                v = 10 * i + n
                try:
                    if op == "put":
                        q.put(v)
                    elif op == "get":
                        seen[i].append(q.get())
                    elif op == "get_nowait":
                        seen[i].append(q.get_nowait())
                    elif op == "put_nowait":
                        q.put_nowait(v)
                    elif op == "get_timeout":
                        seen[i].append(q.get(timeout=1))
                    elif op == "put_timeout":
                        q.put(v, timeout=1)
                    elif op == "qsize":
                        seen[i].append(q.qsize())
                    elif op == "empty":
                        seen[i].append(q.empty())
                    elif op == "full":
                        seen[i].append(q.full() if not simple else None)
                    elif op == "task_done":
                        q.task_done()
                except (queue.Empty, queue.Full, ValueError) as e:
                    seen[i].append(type(e).__name__)

        run_all(*[lambda i=i: task(i) for i in range(len(scripts))])
        rest = []
        while not q.empty():
            rest.append(q.get_nowait())
        out.add((tuple(map(tuple, seen)), tuple(rest)))

    return body


@pytest.mark.parametrize("seed", range(60))
def test_dpor_sees_every_outcome_dfs_sees_on_queues(seed):
    assert_dpor_agrees_with_dfs(_program(seed))


def test_a_queue_kept_after_its_execution_is_a_real_queue_with_its_items():
    kept = []

    def body():
        q, s = queue.Queue(2), queue.SimpleQueue()
        for v in (1, 2):
            q.put(v)
            s.put(v)
        q.get()
        s.get()
        kept.extend([q, s])

    assert explore.check(body, **OPTS).ok
    q, s = kept
    assert q.qsize() == 1 and not q.full() and q.unfinished_tasks == 2
    q.put(3)
    assert [q.get(), q.get()] == [2, 3] and q.empty()
    q.task_done()
    q.task_done()
    s.put(3)
    assert [s.get(), s.get(timeout=1)] == [2, 3] and s.empty()
    with pytest.raises(queue.Empty):
        s.get(timeout=0)


def test_a_kept_queue_s_conditions_work_across_real_threads():
    kept = []

    def body():
        kept.append(queue.Queue(1))

    assert explore.check(body, **OPTS).ok
    (q,) = kept
    got = []
    t = threading.Thread(target=lambda: got.extend([q.get(), q.get()]))
    t.start()  # waits on the queue's not_empty condition, then its put waits on not_full
    q.put(1)
    q.put(2)
    t.join(5)
    q.task_done()
    q.task_done()
    q.join()
    assert got == [1, 2] and not t.is_alive()


@pytest.mark.skipif(not hasattr(queue.Queue, "shutdown"), reason="Queue.shutdown: 3.13 on")
def test_shutdown_inside_an_exploration_is_refused_by_name_and_works_on_a_kept_queue():
    kept = []

    def body():
        q = queue.Queue()
        kept.append(q)
        q.put(1)
        q.shutdown()

    res = explore.check(body, **OPTS)
    assert res.failure is not None and res.failure.kind == "exception"
    assert "Queue.shutdown() under the explorer" in res.failure.message
    q = kept[-1]  # after the exploration: the real shutdown, as 3.13 defines it
    q.shutdown()
    assert q.get() == 1
    with pytest.raises(queue.ShutDown):
        q.get()
    with pytest.raises(queue.ShutDown):
        q.put(2)


def test_conditions_made_without_their_init_are_what_the_constructor_makes(monkeypatch):
    import _thread

    from kvmlock.explore import pyqueue

    lock = _thread.allocate_lock()
    made = pyqueue._Condition(lock)
    assert type(made) is threading.Condition
    assert vars(made) == vars(threading.Condition(lock))

    class Richer(threading.Condition):  # a Python whose Condition keeps more
        def __init__(self, lock=None):
            super().__init__(lock)
            self.extra = 1

    monkeypatch.setattr(threading, "Condition", Richer)
    assert pyqueue._condition_maker() is Richer  # then the real constructor is used
