"""asyncio locks validated per task: inversions between tasks' awaits, awaiting a task that
needs a lock you hold, tasks ending with locks held -- and silence for correct programs."""

import asyncio

import pytest

from kvmlock import lockdep


def run(main):
    """Run ``main`` validated; a wait that lockdep failed to catch fails after 30 s instead of
    hanging (the bound is the outer task's own: ``main``'s awaits stay unbounded)."""
    with lockdep.instrument_threading():
        asyncio.run(asyncio.wait_for(main(), 30))
    return [r.kind for r in lockdep.reports()]


def test_abba_between_two_tasks_is_reported_from_one_run():
    async def main():
        a, b = asyncio.Lock(), asyncio.Lock()

        async def one():
            async with a:
                await asyncio.sleep(0)
                async with b:
                    pass

        async def two():
            async with b:
                async with a:
                    pass

        await asyncio.create_task(one())  # one after the other: this run cannot hang
        await asyncio.create_task(two())

    assert run(main) == ["circular"]
    (r,) = lockdep.reports()
    assert r.task.endswith("(two)") and " in one" in str(r) and " in two" in str(r)
    assert "locks.py" not in r.where  # the user's line, not asyncio's


def test_same_order_in_many_tasks_and_conditions_stay_silent():
    async def main():
        a, b = asyncio.Lock(), asyncio.Lock()
        cond = asyncio.Condition()
        limit = asyncio.Semaphore(3)  # counting: not a lock
        ready = []

        async def worker(i):
            async with limit:
                async with a:
                    await asyncio.sleep(0)
                    async with b:
                        pass
                async with cond:
                    ready.append(i)
                    cond.notify_all()

        async def waiter():
            async with cond:
                await cond.wait_for(lambda: len(ready) == 5)

        w = asyncio.create_task(waiter())
        await asyncio.gather(*(worker(i) for i in range(5)))
        await w

    assert run(main) == []


def test_awaiting_a_task_that_needs_a_lock_you_hold_is_reported():
    """Reported when the awaited task asks for the lock, before it can wait: raise mode
    raises it in the task, and so at the await."""
    async def main():
        lock = asyncio.Lock()

        async def needs_lock():
            async with lock:
                pass

        await asyncio.create_task(needs_lock())  # nothing held: fine
        await lock.acquire()
        t = asyncio.create_task(needs_lock())
        with pytest.raises(lockdep.LockdepError):
            await t  # would wait forever: t waits for the lock this task holds
        lock.release()

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]
    text = str(lockdep.reports()[0])
    assert "task:" in text and "synchronize" in text and " in needs_lock" in text


def test_awaiting_a_task_that_took_a_lock_you_hold_is_reported_at_the_await():
    """The task took the lock before it was awaited (and will again): the await is the
    report, before it can hang."""
    async def main():
        lock = asyncio.Lock()
        go = asyncio.Event()

        async def takes_twice():
            async with lock:
                pass
            await go.wait()
            async with lock:
                pass

        t = asyncio.create_task(takes_twice())
        await asyncio.sleep(0)  # t took the lock once and waits for `go`
        async with lock:
            with pytest.raises(lockdep.LockdepError):
                await t
        go.set()
        await t

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]
    assert " in takes_twice" in str(lockdep.reports()[0])


def test_awaiting_a_task_without_a_shared_lock_is_silent():
    async def main():
        lock, other = asyncio.Lock(), asyncio.Lock()

        async def child(depth):
            async with other:
                pass
            if depth:
                await asyncio.create_task(child(depth - 1))  # same coroutine, nested

        async with lock:
            await asyncio.create_task(child(3))

    assert run(main) == []


def test_task_ending_with_a_lock_held_is_reported():
    async def main():
        lock = asyncio.Lock()

        async def leaky():
            await lock.acquire()

        await asyncio.create_task(leaky())
        lock.release()

    assert run(main) == ["held_at_exit"]
    assert "(leaky)" in lockdep.reports()[0].task


def test_cancelled_waiter_leaves_nothing_held():
    async def main():
        lock = asyncio.Lock()
        await lock.acquire()
        t = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        lock.release()
        async with lock:
            pass

    assert run(main) == []


def test_asyncio_is_restored():
    orig = asyncio.Lock
    with lockdep.instrument_threading():
        assert asyncio.Lock is not orig
    assert asyncio.Lock is orig


async def takes(lock):
    async with lock:
        await asyncio.sleep(0)


async def takes_other(lock):
    async with lock:
        await asyncio.sleep(0)


def abba_through(wait):
    """Two tasks: the first holds ``a`` and waits (by ``wait``) for a task taking ``b``; the
    second holds ``b`` and waits for one taking ``a``. One after the other: no hang."""
    async def main():
        a, b = asyncio.Lock(), asyncio.Lock()

        async def first():
            async with a:
                await wait(takes(b))

        async def second():
            async with b:
                await wait(takes_other(a))

        await asyncio.create_task(first())
        await asyncio.create_task(second())

    return main


def same_order_through(wait):
    async def main():
        a, b = asyncio.Lock(), asyncio.Lock()

        async def first():
            async with a:
                await wait(takes(b))

        for _ in range(2):
            await asyncio.create_task(first())
        async with b:  # b alone, and the task taking a run while nothing is held
            pass
        await wait(takes_other(a))

    return main


async def by_await(coro):
    await asyncio.create_task(coro)


async def by_gather(coro):
    await asyncio.gather(coro, asyncio.sleep(0))


async def by_wait(coro):
    await asyncio.wait([asyncio.create_task(coro)])


async def by_wait_for(coro):
    await asyncio.wait_for(asyncio.create_task(coro), None)


async def by_taskgroup(coro):
    async with asyncio.TaskGroup() as tg:
        tg.create_task(coro)


WAYS = [by_await, by_gather, by_wait, by_wait_for, by_taskgroup]


@pytest.mark.parametrize("wait", WAYS, ids=[w.__name__ for w in WAYS])
def test_abba_between_two_tasks_awaits_is_reported(wait):
    assert run(abba_through(wait)) == ["circular"]
    text = str(lockdep.reports()[0])
    assert "task:takes" in text and "task:takes_other" in text


@pytest.mark.parametrize("wait", WAYS, ids=[w.__name__ for w in WAYS])
def test_awaits_in_one_order_stay_silent(wait):
    assert run(same_order_through(wait)) == []


@pytest.mark.parametrize("wait", WAYS[1:], ids=[w.__name__ for w in WAYS[1:]])
def test_awaiting_through_gather_wait_or_wait_for_a_task_needing_your_lock_is_caught(wait):
    """Reported when the task asks for the lock, before it can wait: raise mode raises it
    in the task (which gather, wait_for and TaskGroup pass on, and asyncio.wait keeps in the
    task)."""
    async def main():
        lock = asyncio.Lock()
        await asyncio.create_task(takes(lock))  # nothing held: fine
        async with lock:
            try:
                await wait(takes(lock))
            except (lockdep.LockdepError, ExceptionGroup):  # (a TaskGroup groups it)
                pass

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]
    assert " in takes" in str(lockdep.reports()[0])


def test_bounded_or_first_completed_waits_add_no_dependency():
    async def main():
        lock = asyncio.Lock()
        await asyncio.create_task(takes(lock))
        async with lock:
            t = asyncio.create_task(takes(lock))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(t), 0.01)  # gives up: cannot hang
            done, _ = await asyncio.wait([t, asyncio.create_task(asyncio.sleep(0))],
                                         return_when=asyncio.FIRST_COMPLETED)
            assert t not in done
            await asyncio.wait([t], timeout=0.01)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    await asyncio.shield(t)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(takes(lock))
        await t

    assert run(main) == []


async def leaves_held(lock):
    await lock.acquire()


def test_a_coroutine_wait_for_runs_with_a_timeout_is_a_task_ending_with_its_lock_held():
    """wait_for(coroutine, timeout) runs it in a task of its own (CPython 3.11) or in the
    caller's task (3.12 on): either way it is validated as a task of its own."""
    async def main():
        lock = asyncio.Lock()
        await asyncio.wait_for(leaves_held(lock), 5)
        lock.release()

    assert run(main) == ["held_at_exit"]
    assert "(leaves_held)" in lockdep.reports()[0].task


def test_a_coroutine_wait_for_runs_with_a_timeout_waits_for_the_callers_lock_with_a_bound():
    """The caller's locks are not the coroutine's own: it waits for them, bounded."""
    async def main():
        lock = asyncio.Lock()
        async with lock:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(takes(lock), 0.01)

    assert run(main) == []


def make_event():
    return asyncio.Event()  # one creation site: one class, as for locks


def test_waiting_for_an_event_whose_setter_needs_your_lock_is_reported():
    async def main():
        lock = asyncio.Lock()

        async def setter(ev):
            async with lock:
                ev.set()  # the event is set only once its setter has the lock

        async def waiter(ev):
            async with lock:
                with pytest.raises(lockdep.LockdepError):
                    await ev.wait()  # would wait forever: the setter waits for the lock

        await asyncio.create_task(setter(make_event()))
        ev = make_event()
        w = asyncio.create_task(waiter(ev))
        await w
        ev.set()

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]
    (r,) = lockdep.reports()
    assert " in setter" in str(r) and " in waiter" in str(r)


async def waiting_holding(lock, ev):
    """A task that holds ``lock`` while it waits for ``ev``, started and left waiting."""
    async def waiter():
        async with lock:
            await ev.wait()

    w = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    return w


def test_the_event_case_found_from_the_other_side_too():
    async def main():
        lock = asyncio.Lock()
        ev = make_event()
        w = await waiting_holding(lock, ev)
        ev.set()  # (set by the main task, holding nothing: this run does not hang)
        await w
        async with lock:
            make_event().set()  # a setter of that class holding the lock: the cycle

    assert run(main) == ["circular"]


def test_events_set_and_waited_without_a_shared_lock_stay_silent():
    async def main():
        lock, other = asyncio.Lock(), asyncio.Lock()
        ev = make_event()
        w = await waiting_holding(lock, ev)
        async with other:
            ev.set()  # set under another lock: no cycle
        await w
        async with lock:
            free = asyncio.Event()  # another class, set under the lock ...
            free.set()
        free = asyncio.Event()
        t = asyncio.create_task(free.wait())  # ... and waited for without any lock held
        await asyncio.sleep(0)
        async with lock:
            free.set()
        await t

    assert run(main) == []


class Node:
    def __init__(self, *children):
        self.lock = asyncio.Lock()  # one creation site: every node's lock is one class
        self.children = children


async def walk(node, seen):
    """A recursive tree walk: the parent's lock is held while its children's walks (tasks of
    this same coroutine, taking their own nodes' locks of the same class) are gathered."""
    async with node.lock:
        seen.append(node)
        await asyncio.gather(*(walk(c, seen) for c in node.children))


async def walk_tasks(node, seen):
    async with node.lock:
        seen.append(node)
        for c in node.children:
            await asyncio.create_task(walk_tasks(c, seen))


@pytest.mark.parametrize("walker", [walk, walk_tasks])
def test_a_tree_walk_holding_the_parent_while_awaiting_children_is_silent(walker):
    """Same coroutine, same lock class, different locks, always parent before child: a
    consistent instance order, like nesting the locks directly."""
    async def main():
        tree = Node(Node(Node(), Node()), Node(Node()))
        for _ in range(2):
            seen = []
            await walker(tree, seen)
            assert len(seen) == 6
        async with tree.lock:  # the same order taken directly too
            async with tree.children[0].lock:
                pass

    assert run(main) == []


async def visit(node):
    async with node.lock:
        await asyncio.sleep(0)


async def hold_then_visit(held, other):
    async with held.lock:
        await asyncio.create_task(visit(other))


def test_two_locks_of_one_class_ordered_both_ways_through_awaited_tasks_are_reported():
    """Holding x while awaiting a task that takes y, then holding y while awaiting one that
    takes x: the tasks' instance-level ABBA, with both call paths."""
    async def main():
        x, y = Node(), Node()
        await hold_then_visit(x, y)
        await hold_then_visit(y, x)

    assert run(main) == ["circular"]
    r = lockdep.reports()[0]
    text = str(r)
    assert "awaited tasks" in text
    assert r.lock.startswith("test_asyncio.Node.lock[") or "Node.lock[" in r.lock
    wheres = [e.where for e in r.chain]
    assert len(r.chain) == 4 and sum(e.sync for e in r.chain) == 2  # two awaits, two takes
    assert len({w for w in wheres}) == 2  # the await line and the take line, each twice
    assert sum("hold_then_visit" in "".join(e.stack) for e in r.chain) == 2


def test_the_inversion_through_tasks_is_found_from_the_awaiting_side_too():
    """The task took its lock before it was awaited: the await makes the closing order."""
    async def main():
        x, y = Node(), Node()
        await hold_then_visit(x, y)  # x -> y
        go = asyncio.Event()

        async def visit_then_wait(node):
            async with node.lock:
                pass
            await go.wait()

        t = asyncio.create_task(visit_then_wait(x))
        await asyncio.sleep(0)  # it took x (and let it go)
        async with y.lock:
            go.set()
            await t  # y -> (the task that takes x) -> x

    assert run(main) == ["circular"]
    assert "awaited tasks" in str(lockdep.reports()[0])


def test_tasks_of_one_coroutine_inverting_two_locks_of_two_classes_are_reported():
    """One helper coroutine takes whichever lock it is given: holding ``a`` while awaiting it
    on ``b``, then ``b`` while awaiting it on ``a`` is an ABBA through two of its tasks."""
    async def main():
        a = asyncio.Lock()
        b = asyncio.Lock()
        async with a:
            await asyncio.create_task(takes(b))
        async with b:
            await asyncio.create_task(takes(a))

    assert run(main) == ["circular"]
    assert "awaited tasks" in str(lockdep.reports()[0])


def test_one_helper_coroutine_given_different_locks_in_one_order_is_silent():
    async def main():
        a = asyncio.Lock()
        b = asyncio.Lock()
        await asyncio.create_task(takes(b))  # a task of `takes` took b ...
        async with b:
            await asyncio.create_task(takes(a))  # ... which is held while another takes a
        async with b:
            await asyncio.create_task(takes(a))

    assert run(main) == []


def test_instance_orders_through_tasks_and_direct_nesting_are_one_order():
    async def main():
        x, y = Node(), Node()
        await hold_then_visit(x, y)  # x -> y, through a task
        async with y.lock:
            async with x.lock:  # y -> x, directly
                pass

    assert run(main) == ["circular"]


def test_a_chain_of_instances_in_one_direction_is_silent():
    """x before y, y before z: a linked list walked in order, never backwards."""
    async def main():
        x, y, z = Node(), Node(), Node()
        await hold_then_visit(x, y)
        await hold_then_visit(y, z)
        await hold_then_visit(x, z)
        async with x.lock:
            async with z.lock:
                pass

    assert run(main) == []


async def worker(lock):
    async with lock:
        pass


def test_a_longer_cycle_behind_a_lock_and_task_class_linked_both_ways_is_still_reported():
    """The task class and lock class b's class linked both ways (judged by instance) must not
    hide a cycle of classes through a third: a worker takes b, b's holder takes a, a's
    holder awaits a worker."""
    async def main():
        a = asyncio.Lock()
        b = asyncio.Lock()
        c = asyncio.Lock()
        async with b:
            await asyncio.create_task(worker(c))  # b -> task:worker
        async with b:
            async with a:  # b -> a
                pass
        async with a:
            await asyncio.create_task(worker(c))  # a -> task:worker
        await asyncio.create_task(worker(b))  # task:worker -> b: closes worker -> b -> a

    assert run(main) == ["circular"]
    names = {e.src.rsplit(".", 1)[-1] for e in lockdep.reports()[0].chain}
    assert names == {"task:worker", "a", "b"}


async def maybe_visit(node, take):
    if take:
        async with node.lock:
            pass


def exported(main):
    from kvmlock.lockdep import core, merge

    lockdep.reset()
    lockdep.set_mode("collect")
    assert run(main) == []
    return merge.export(core._state())


def test_merged_graphs_leave_a_lock_and_task_class_linked_both_ways_to_instances():
    """Merging processes' graphs (pytest-xdist) judges classes only: a lock class and a task
    class linked both ways, one way in each process, is the tree walk's shape, not a cycle --
    while a cycle through the task class and another lock class is still found."""
    from kvmlock.lockdep import merge

    async def awaits_under_node():
        async with Node().lock:
            await asyncio.create_task(maybe_visit(Node(), False))  # Node.lock -> task

    async def task_takes_node():
        await asyncio.create_task(maybe_visit(Node(), True))  # task -> Node.lock

    parts = [("gw0", exported(awaits_under_node)), ("gw1", exported(task_takes_node))]
    assert all(p["links"] for _, p in parts)
    assert merge.merge(parts) == []

    def other():
        return asyncio.Lock()  # one creation site: one class in every process

    async def node_then_other():
        async with Node().lock:
            async with other():
                pass

    async def other_awaits():
        async with other():
            await asyncio.create_task(maybe_visit(Node(), False))  # other -> task

    parts = [("gw0", exported(node_then_other)), ("gw1", exported(other_awaits)),
             ("gw2", exported(task_takes_node))]  # Node.lock -> other -> task -> Node.lock
    assert [r.kind for r in merge.merge(parts)] == ["circular"]


@pytest.mark.parametrize("invert", [False, True])
def test_the_tree_walk_example_under_kvmlock_lockdep(invert):
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "kvmlock.cli", "lockdep", "examples/async_tree.py",
                        *(["--invert"] if invert else [])],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert "walked root a c leaf b" in p.stdout
    assert p.returncode == int(invert), p.stderr
    assert p.stderr.count("WARNING") == int(invert)


def test_an_await_in_a_timeout_block_without_a_deadline_is_a_wait():
    async def main():
        lock = asyncio.Lock()
        async with lock:
            async with asyncio.timeout(None):  # never fires: the await can hang
                try:
                    await asyncio.create_task(takes(lock))
                except lockdep.LockdepError:
                    pass

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]


def test_a_task_taking_its_lock_in_a_loop_is_recorded_once():
    """What a task took first is kept per lock, not per acquire: a long-lived worker does not
    grow it (and the walk after it still orders by instance)."""
    from kvmlock.lockdep import asyncio_instr

    async def main():
        lock = asyncio.Lock()
        other = asyncio.Lock()

        async def worker():
            for _ in range(500):
                async with lock:
                    await asyncio.sleep(0)
            async with other:
                pass
            return asyncio_instr._STATES[asyncio.current_task()].took

        took = await asyncio.create_task(worker())
        assert len(took) == 2

    assert run(main) == []


async def gathers(coro):
    """A task that holds nothing and awaits another: whoever awaits it waits for that one."""
    await asyncio.gather(coro)


def test_awaiting_through_a_task_that_holds_nothing_a_task_needing_your_lock_is_caught():
    async def main():
        lock = asyncio.Lock()
        async with lock:
            try:
                await asyncio.create_task(gathers(gathers(takes(lock))))  # would hang
            except lockdep.LockdepError:
                pass

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]
    text = str(lockdep.reports()[0])
    assert "task:gathers" in text and " in takes" in text


def test_an_inversion_through_tasks_that_hold_nothing_is_reported():
    async def main():
        x, y = Node(), Node()
        async with x.lock:
            await asyncio.create_task(gathers(visit(y)))  # x -> y
        async with y.lock:
            await asyncio.create_task(gathers(gathers(visit(x))))  # y -> x

    assert run(main) == ["circular"]


def test_a_tree_walk_through_tasks_that_hold_nothing_is_silent():
    async def walk_via(node):
        async with node.lock:
            await asyncio.gather(*(gathers(walk_via(c)) for c in node.children))

    async def main():
        tree = Node(Node(Node(), Node()), Node(Node()))
        for _ in range(2):
            await asyncio.create_task(walk_via(tree))
        async with Node().lock:  # a lock held while awaiting a task that takes another
            await asyncio.create_task(gathers(takes(asyncio.Lock())))

    assert run(main) == []


def test_an_event_already_set_when_waited_under_a_lock_its_setter_needs_is_reported():
    """This run set it first; another day the waiter, holding the lock, comes first."""
    async def main():
        lock = asyncio.Lock()
        ev = make_event()
        async with lock:
            ev.set()  # set holding the lock
        async with lock:
            await ev.wait()  # already set: no wait today

    assert run(main) == ["circular"]


def _needs_your_lock(factory):
    """The lock held while awaiting a task that takes it, with ``factory`` making the tasks."""
    async def main():
        asyncio.get_running_loop().set_task_factory(factory)
        lock = asyncio.Lock()

        async def needs_lock():
            async with lock:
                pass

        await lock.acquire()
        t = asyncio.create_task(needs_lock())
        with pytest.raises(lockdep.LockdepError):
            await t
        lock.release()

    return main


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="CPython 3.12 on")
def test_tasks_of_the_eager_task_factory_are_watched_too():
    lockdep.set_mode("raise")
    assert run(_needs_your_lock(asyncio.eager_task_factory)) == ["circular"]


def test_a_task_factory_of_the_program_s_own_is_said_to_leave_awaits_unvalidated():
    def factory(loop, coro, **kw):
        return asyncio.Task(coro, loop=loop, **kw)

    async def main():
        asyncio.get_running_loop().set_task_factory(factory)
        lock = asyncio.Lock()
        async with lock:
            await asyncio.create_task(asyncio.sleep(0))
            await asyncio.create_task(asyncio.sleep(0))  # (said once per loop)

    with pytest.warns(RuntimeWarning, match="awaiting those tasks is not validated") as seen:
        assert run(main) == []
    assert len([w for w in seen if "task factory" in str(w.message)]) == 1


def test_no_task_factory_no_warning():
    async def main():
        lock = asyncio.Lock()
        async with lock:
            await asyncio.create_task(asyncio.sleep(0))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert run(main) == []
