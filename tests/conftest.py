"""Suite-wide: the per-machine kernel verdicts (models/kernels.py) are measured once per test session into a
temporary cache, never into the user's ~/.cache; subprocesses inherit it."""
import os
import tempfile

os.environ.setdefault("VITKIT_CACHE_DIR", tempfile.mkdtemp(prefix="vitkit-test-cache-"))


def pytest_collection_modifyitems(config, items):
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
