"""The README's Python API and engine snippets run as written (the weights section, on stand-ins for the
user's files: tests/test_card.py)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_snippet_runs():
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)  # noqa: S102 - our own README
    assert scope["probs"].shape == (2, 37) and abs(float(scope["probs"].sum()) - 2) < 1e-3
    assert scope["out"]["attn"][0].shape == (2, 12, 577, 577)
    assert scope["fast"].precision in ("fp32", "bf16")
    assert scope["timm_named"].config.name == "ViT-S/16" and scope["timm_named"].head.out_features == 10


def test_engine_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path))  # auto measures afresh, into a cache of the test's own
    text = README.read_text()
    section = text[text.index("### Inference engines"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md (Inference engines)", "exec"), scope)  # noqa: S102 - our own README
    assert scope["logits"].shape == (256, 10) and scope["feats"].shape == (4, 128)
    assert scope["engine"].engine in ("torch", "onnxruntime", "openvino") and "auto" in scope["engine"].describe()
    assert scope["served"].class_names == [f"class {i}" for i in range(10)] and scope["onnx"]["max_abs_diff"] < 1e-4


RUN_BY_TESTS = {"### Inference engines: PyTorch, ONNX Runtime, OpenVINO": "test_engine_snippet_runs",
                "## Python API": "test_python_api_snippet_runs",
                "## Weights users already have": "tests/test_card.py::test_readme_weights_snippet_runs",
                "## Published weights by name": "tests/test_hub.py::test_readme_published_snippet_runs"}


def test_every_python_snippet_is_run_by_a_test():
    """A new ```python block under another heading fails here until a test runs it."""
    heading, seen = None, []
    for line in README.read_text().splitlines():
        if line.startswith("#"):
            heading = line.strip()
        elif line.strip() == "```python":
            seen.append(heading)
    assert seen and all(h in RUN_BY_TESTS for h in seen), [h for h in seen if h not in RUN_BY_TESTS]
    assert len(seen) == len(set(seen))  # one block per heading: each test runs the first block under its heading


def test_every_guarantee_names_tests_that_exist():
    """The "What vitkit guarantees" table cites tests by file and name: each must exist (a rename breaks the promise's
    backing silently otherwise)."""
    import re

    text = README.read_text()
    section = text[text.index("## What vitkit guarantees"):text.index("## How vitkit is tested")]
    tests = Path(__file__).parent
    cited, last = [], None
    for ref in re.findall(r"`(test_\w+\.py(?:::\w+)?|::\w+)`", section):
        file, _, name = ref.partition("::")
        if file.endswith(".py"):
            last = file
        else:
            file, name = last, ref.lstrip(":")
        assert (tests / file).is_file(), file
        if name:
            assert re.search(rf"^def {name}\(", (tests / file).read_text(), re.M), f"{file}::{name}"
        cited.append((file, name))
    assert len(cited) >= 15
