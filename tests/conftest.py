"""Suite-wide: the per-machine kernel verdicts (models/kernels.py) are measured once per test session into a
temporary cache, never into the user's ~/.cache; subprocesses inherit it."""
import os
import sys
import tempfile

os.environ.setdefault("VITKIT_CACHE_DIR", tempfile.mkdtemp(prefix="vitkit-test-cache-"))
if "torch" not in sys.modules:  # the `vitkit` command's thread settings (a passive OpenMP wait: no spinning on a busy machine)
    from vitkit.runtime import configure_threads_env

    configure_threads_env()


def pytest_collection_modifyitems(config, items):
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


NEEDED_IN_CI = ("timm", "transformers", "sklearn", "onnx", "onnxscript", "onnxruntime", "openvino", "ruff", "hypothesis",
                "torchmetrics", "faster_coco_eval")


_START_THREADS: list[int] = []  # torch's threads when the session began


def pytest_sessionstart(session):
    """On CI a missing test dependency is a failure, not a silent skip of every test that needs it
    (36 converter tests skip without timm): the `[test]` extra must be complete."""
    import importlib.util

    import pytest
    import torch

    _START_THREADS[:] = [torch.get_num_threads()]

    if os.environ.get("CI"):
        missing = [m for m in NEEDED_IN_CI if importlib.util.find_spec(m) is None]
        if missing:
            pytest.exit(f"CI: test dependencies missing: {', '.join(missing)}; install them with pip install -e '.[test]'",
                        returncode=1)


import pytest  # noqa: E402 - the fixtures below; the environment above is set before anything imports torch


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test starts with the threads the session began with: a run with train.threads=N (a module fixture's, in
    setup) or a test that sets them would otherwise leave them to every test after it."""
    yield
    import torch

    if _START_THREADS and torch.get_num_threads() != _START_THREADS[0]:
        torch.set_num_threads(_START_THREADS[0])


@pytest.fixture
def one_torch_thread():
    """One torch thread for a test of tiny models (on a busy two-core machine two threads spin against each other,
    up to 50x slower); the session's count is back after it (_torch_threads_restored)."""
    import torch

    torch.set_num_threads(1)
    yield


def pytest_runtest_teardown(item, nextitem):
    """Cyclic garbage (engines holding ONNX Runtime / OpenVINO sessions and their thread pools among it) collected after
    every test, on the main thread: left to the collector, it is freed in whichever thread allocates next (a tqdm
    monitor, DCP's writer, an OpenVINO callback), and the native pools do not survive being torn down from a thread of
    their own (two aborts seen in full runs: "Resource deadlock avoided" and a segmentation fault)."""
    import gc

    gc.collect()
    _check_signal_stack(item)


_STACK_SEEN: list[int] = []  # the last alternate signal stack found mapped


def _check_signal_stack(item) -> None:
    """Fail the test that leaves the main thread's alternate signal stack (sigaltstack) pointing at unmapped memory,
    rather than let the process die later without a trace: Python's signal handlers run on that stack, and the next
    signal (a child process's SIGCHLD once torch's DataLoader has set its handler) is then a SIGSEGV from the kernel.
    OpenVINO's CPU plugin installs a stack of its own per Core and unmaps it when the Core goes: engines.openvino_core
    keeps one Core per process for that reason (in a full run, one Core per engine did this, in test_engines)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    st = StackT()
    if ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) != 0 or not st.ss_sp or st.ss_flags & 2:  # 2: SS_DISABLE
        return
    if _STACK_SEEN == [st.ss_sp]:
        return
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
            if lo <= st.ss_sp and st.ss_sp + st.ss_size <= hi and line.split()[1].startswith("rw"):
                _STACK_SEEN[:] = [st.ss_sp]
                return
    import pytest

    pytest.fail(f"{item.nodeid} left the main thread's alternate signal stack at {st.ss_sp:#x} ({st.ss_size} bytes) "
                f"unmapped: the next signal handled in this process would kill it with SIGSEGV (an OpenVINO Core "
                f"released out of order? use vitkit.engines.openvino_core())", pytrace=False)
