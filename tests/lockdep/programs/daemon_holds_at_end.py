"""expect: held_at_exit
A daemon thread is still inside its critical section when the program ends: nothing will
release that lock."""
import threading
import time

cache_lock = threading.Lock()
inside = threading.Event()


def refresher():
    with cache_lock:
        inside.set()
        time.sleep(30)


threading.Thread(target=refresher, daemon=True).start()
inside.wait()
