"""expect: clean
A process forks while another thread logs; the child logs too (logging reinitialises its
locks at fork, and so must lockdep's view of them)."""
import logging
import os
import sys
import threading

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
stop = threading.Event()


def chatter():
    while not stop.is_set():
        logging.info("parent thread")


t = threading.Thread(target=chatter)
t.start()
pid = os.fork()
if pid == 0:
    logging.info("child")
    os._exit(0)
stop.set()
t.join()
_, status = os.waitpid(pid, 0)
assert status == 0
