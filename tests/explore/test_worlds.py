"""One world per exploration: explorations share a process with real threads and each other.

Each exploration runs in a world of its own (its runtime and lockdep state), found through a
context variable, so real threads using kvmlock beside it keep the threads world, and several
explorations run in threads at once without seeing each other.
"""

from __future__ import annotations

import contextvars
import threading
import time

from kvmlock import explore, lockdep, runtime, spawn
from kvmlock.sync import Mutex, RWSemaphore

from .programs import abba, counter, lost_update, rwsem_fairness


def summary(res: explore.Result) -> tuple:
    return (res.runs, res.exhausted, res.pruned,
            sorted((f.kind, f.schedule) for f in res.failures))


def check_all(body) -> tuple:
    return summary(explore.check(body, stop_on_first=False, shrink=False))


BODIES = {
    "abba": lambda: abba(),
    "abba_same_order": lambda: abba(same_order=True),
    "counter": lambda: counter(2, 3),
    "lost_update": lambda: lost_update(),
    "rwsem_deadlock": lambda: rwsem_fairness(recursive=False),
}


class Hammer:
    """Real OS threads taking kvmlock locks, nested both ways (a real inversion, reported in
    the threads world) until told to stop."""

    def __init__(self, nthreads: int = 2) -> None:
        self.stop = threading.Event()
        self.a, self.b = Mutex("hammer.a"), Mutex("hammer.b")
        self.sem = RWSemaphore("hammer.sem")
        # The inversion must be seen, never suffered: a plain (unvalidated) lock keeps the two
        # nested sections apart, so the threads cannot really deadlock on a loaded machine.
        self.gate = threading.Lock()
        self.rounds = [0] * nthreads
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(nthreads)]

    def run(self, i: int) -> None:
        first, second = (self.a, self.b) if i % 2 == 0 else (self.b, self.a)
        try:
            while not self.stop.is_set():
                with self.sem.read():
                    with first:
                        pass
                    with self.gate, second:
                        with first:  # b -> a in thread 0, a -> b in thread 1
                            pass
                self.rounds[i] += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.errors.append(exc)

    def __enter__(self) -> Hammer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def test_exploration_beside_real_kvmlock_threads_gives_the_same_result_as_alone():
    alone = {name: check_all(make()) for name, make in BODIES.items()}
    with Hammer() as h:
        beside = {name: check_all(make()) for name, make in BODIES.items()}
        deadline = time.monotonic() + 60
        while min(h.rounds) < 50 and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # the threads really ran while the explorations did
        assert min(h.rounds) >= 50, h.rounds
    assert beside == alone
    assert not h.errors
    # the threads' own inversion is reported in their world, and only there
    assert [r.kind for r in lockdep.reports()] == ["circular"]
    assert {lockdep.reports()[0].lock, lockdep.reports()[0].held} == {"hammer.a", "hammer.b"}


def test_many_explorations_of_a_correct_body_while_a_thread_hammers_kvmlock():
    stop = threading.Event()
    m, n = Mutex("hammer.m"), Mutex("hammer.n")
    done = [0]

    def hammer() -> None:  # a correct order, taken as fast as the thread can
        while not stop.is_set():
            with m:
                with n:
                    pass
            done[0] += 1

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        results = [explore.check(counter(2, 2), stop_on_first=False) for _ in range(30)]
        results += [explore.check(abba(same_order=True), stop_on_first=False)
                    for _ in range(30)]
    finally:
        stop.set()
        t.join(10)
    assert done[0] > 0
    assert all(r.ok and r.exhausted for r in results), [r.failures for r in results if r.failures]
    assert {r.runs for r in results[:30]} == {6} and len({r.runs for r in results[30:]}) == 1
    assert lockdep.reports() == []  # nor did the explorations leak into the threads' world


def test_explorations_run_concurrently_in_threads():
    expected = {name: check_all(make()) for name, make in BODIES.items()}
    got: dict[str, list[tuple]] = {name: [] for name in BODIES}
    errors: list[BaseException] = []
    start = threading.Barrier(len(BODIES) * 2)

    def run(name: str) -> None:
        try:
            start.wait()
            got[name].append(check_all(BODIES[name]()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in BODIES for _ in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert got == {name: [v, v] for name, v in expected.items()}


def test_a_world_is_private_to_its_context_and_spawned_threads_inherit_it():
    seen: dict[str, object] = {}

    def child() -> None:
        seen["spawned"] = runtime.world()

    def plain() -> None:
        seen["plain"] = runtime.world()

    with lockdep.isolated():
        inner = runtime.world()
        spawn(child).join()
        t = threading.Thread(target=plain)
        t.start()
        t.join()
    assert seen["spawned"] is inner
    assert seen["plain"] is runtime.THREADS_WORLD is runtime.world()
    assert inner.lockdep is not runtime.THREADS_WORLD.lockdep


def test_the_runtime_inside_an_exploration_is_the_explorers_and_outside_it_is_not():
    inside: list[object] = []

    def body() -> None:
        inside.append(runtime.RT)
        spawn(lambda: inside.append(runtime.RT)).join()

    explore.check(body)
    assert all(isinstance(rt, explore.SimRuntime) for rt in inside) and len(inside) == 2
    assert runtime.RT is runtime.THREADS


_CV: contextvars.ContextVar[str] = contextvars.ContextVar("kvmlock_test_cv", default="unset")


def test_a_context_variable_set_by_a_task_is_not_seen_by_later_tasks():
    # Tasks run on pooled greenlets: the one the setter ran on is reused by the next task of
    # the execution, and by the tasks of the next executions.
    seen: list[tuple[str, str]] = []

    def setter() -> None:
        seen.append(("setter", _CV.get()))
        _CV.set("set by setter")

    def reader() -> None:
        seen.append(("reader", _CV.get()))

    def body() -> None:
        seen.append(("main", _CV.get()))
        spawn(setter).join()
        spawn(reader).join()
        _CV.set("set by main")

    res = explore.check(body, max_runs=3)
    assert res.ok and res.runs == 1
    explore.check(body, max_runs=3)  # a second exploration reuses the same greenlets
    assert len(seen) == 6 and set(seen) == {("main", "unset"), ("setter", "unset"),
                                            ("reader", "unset")}


def test_a_task_keeps_its_own_context_variables_across_its_steps():
    seen: list[str] = []

    def body() -> None:
        m = Mutex("cv.m")

        def worker(name: str) -> None:
            _CV.set(name)
            for _ in range(2):
                with m:  # other tasks run in between
                    seen.append(f"{name}={_CV.get()}")

        ts = [spawn(worker, n) for n in ("a", "b")]
        for t in ts:
            t.join()
        seen.append(f"main={_CV.get()}")

    res = explore.check(body)
    assert res.ok and res.exhausted and res.runs > 1
    assert set(seen) == {"a=a", "b=b", "main=unset"}
