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


NEEDED_IN_CI = ("timm", "transformers", "sklearn", "onnx", "onnxscript", "onnxruntime", "openvino", "ruff", "hypothesis")


def pytest_sessionstart(session):
    """On CI a missing test dependency is a failure, not a silent skip of every test that needs it
    (36 converter tests skip without timm): the `[test]` extra must be complete."""
    import importlib.util

    import pytest

    if os.environ.get("CI"):
        missing = [m for m in NEEDED_IN_CI if importlib.util.find_spec(m) is None]
        if missing:
            pytest.exit(f"CI: test dependencies missing: {', '.join(missing)}; install them with pip install -e '.[test]'",
                        returncode=1)


def pytest_runtest_teardown(item, nextitem):
    """Cyclic garbage (engines holding ONNX Runtime / OpenVINO sessions and their thread pools among it) collected after
    every test, on the main thread: left to the collector, it is freed in whichever thread allocates next (a tqdm
    monitor, DCP's writer, an OpenVINO callback), and the native pools do not survive being torn down from a thread of
    their own (two aborts seen in full runs: "Resource deadlock avoided" and a segmentation fault)."""
    import gc

    gc.collect()
