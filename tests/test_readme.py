"""The README's Python API snippet runs as written (the weights section needs the user's files: its
calls are covered by tests/test_convert.py)."""
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
