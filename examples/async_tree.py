"""A recursive tree walk under asyncio: each walk holds its node's lock while it gathers its
children's walks -- tasks of the same coroutine taking locks of the same class. Parent before
child, always: lockdep stays silent. ``--invert`` also takes two nodes the other way round
through awaited tasks, which it reports."""

import asyncio
import sys


class Node:
    def __init__(self, name, *children):
        self.name = name
        self.lock = asyncio.Lock()
        self.children = children


async def walk(node, seen):
    async with node.lock:
        seen.append(node.name)
        await asyncio.gather(*(walk(c, seen) for c in node.children))


async def visit(node):
    async with node.lock:
        await asyncio.sleep(0)


async def hold_then_visit(held, other):
    async with held.lock:
        await asyncio.create_task(visit(other))


async def main():
    leaf = Node("leaf")
    tree = Node("root", Node("a", leaf, Node("b")), Node("c"))
    seen = []
    await walk(tree, seen)
    print("walked", " ".join(seen))
    if "--invert" in sys.argv:
        await hold_then_visit(leaf, tree)  # leaf before root: the walk's order inverted
        print("inverted: this run did not hang")


asyncio.run(main())
