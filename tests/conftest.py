"""Suite-wide: the per-machine kernel verdicts (models/kernels.py) are measured once per test session into a
temporary cache, never into the user's ~/.cache; subprocesses inherit it."""
import os
import tempfile

os.environ.setdefault("VITKIT_CACHE_DIR", tempfile.mkdtemp(prefix="vitkit-test-cache-"))
