"""The table `vitkit models` prints (every variant's parameters and forward FLOPs), counted once per version of the
model code and torch and cached in cache_dir()/models.json, so that listing it again needs no torch at all."""
from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CACHE = "models.json"


def _key() -> str:
    """What the table depends on: the model code (every module of vitkit.models) and torch's version."""
    h = hashlib.sha256()
    for src in sorted(HERE.glob("*.py")):
        h.update(src.name.encode() + src.read_bytes())
    try:
        h.update(version("torch").encode())
    except PackageNotFoundError:
        pass
    return h.hexdigest()


def table() -> list[dict[str, Any]]:
    """[{"name", "params", "image_size", "gflops", "gmacs"}] for every named variant, in `list_models` order."""
    from vitkit.atomic import write_json
    from vitkit.runtime import cache_dir

    path, key = cache_dir() / CACHE, _key()
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("rows"), list):
            return cached["rows"]
    except (OSError, ValueError):
        pass
    from vitkit import progress
    from vitkit.models.registry import describe, list_models

    rows = [describe(n) for n in progress.bar(list_models(), desc="counting parameters and FLOPs (once)", unit="model")]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "rows": rows})
    except OSError:  # a read-only cache: counted again next time
        pass
    return rows
