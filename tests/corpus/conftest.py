"""The corpus: other people's test suites run under lockdep, compared with plain Python.

Slow (minutes) and needing PyPI, so it runs only when asked: ``KVMLOCK_CORPUS=1 pytest
tests/corpus`` (``.ci/run`` does, after installing the ``corpus`` extra).
"""

import os

collect_ignore_glob = [] if os.environ.get("KVMLOCK_CORPUS") else ["test_*.py"]
