"""expect: circular
Seventy locks held at once do not switch validation off: a real inversion afterwards is still
reported."""
import threading

pile = [threading.Lock() for _ in range(70)]
for lk in pile:
    lk.acquire()
for lk in reversed(pile):
    lk.release()

left = threading.Lock()
right = threading.Lock()
with left:
    with right:
        pass
with right:
    with left:
        pass
