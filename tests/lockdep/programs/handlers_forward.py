"""expect: clean
A logging handler that forwards to another (MemoryHandler to a StreamHandler): one handler's
lock held while the next one's is taken, always in that order."""
import io
import logging
import logging.handlers

sink = logging.StreamHandler(io.StringIO())
buffered = logging.handlers.MemoryHandler(10, target=sink)
log = logging.getLogger("forward")
log.addHandler(buffered)
log.setLevel(logging.INFO)
for i in range(25):
    log.info("message %d", i)
buffered.close()
sink.close()
