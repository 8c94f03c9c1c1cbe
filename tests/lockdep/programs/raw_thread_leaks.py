"""expect: held_at_exit
A thread started with _thread.start_new_thread returns holding a lock."""
import _thread
import threading

registry_lock = threading.Lock()
done = threading.Event()


def register():
    registry_lock.acquire()
    done.set()


_thread.start_new_thread(register, ())
done.wait()
threading.Event().wait(0.2)
