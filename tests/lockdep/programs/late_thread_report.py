"""expect: circular
The inversion is made by a non-daemon thread after the script's body has returned: it still
counts, before the summary."""
import threading
import time

a = threading.Lock()
b = threading.Lock()
with a:
    with b:
        pass


def later():
    time.sleep(0.2)
    with b:
        with a:
            pass


threading.Thread(target=later).start()
