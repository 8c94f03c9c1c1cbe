"""expect: circular status 1 stderr bye for now
An inversion, then sys.exit with a message: the message is printed, the status kept."""
import sys
import threading

a = threading.RLock()
b = threading.RLock()
with a, b:
    pass
with b, a:
    pass
sys.exit("bye for now")
