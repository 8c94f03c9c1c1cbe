"""expect: circular
logging's real inversion: dictConfig() holds the module lock and closes the old handlers
(taking each one's lock); FileHandler.close() takes its own lock, then the module lock."""
import logging
import logging.config
import os
import tempfile

d = tempfile.mkdtemp()
logging.getLogger().addHandler(logging.FileHandler(os.path.join(d, "a.log")))
logging.config.dictConfig({"version": 1})
h = logging.FileHandler(os.path.join(d, "b.log"))
h.close()
