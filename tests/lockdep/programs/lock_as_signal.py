"""expect: clean
A threading.Lock used as a signal: one thread takes it, another releases it, the first takes
it again (a thread blocking on a Lock it took itself is waiting for that release)."""
import threading
import time

signal = threading.Lock()
signal.acquire()


def wake_up():
    time.sleep(0.05)
    signal.release()


threading.Thread(target=wake_up).start()
signal.acquire()  # waits for wake_up's release
signal.release()
