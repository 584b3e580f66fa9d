"""The table `vitkit models` prints (every variant's parameters and forward FLOPs), counted from the model code and
read back without importing torch: from catalog.json beside this file (written by `python -m vitkit.models.catalog`,
checked against a fresh count by the test suite), else from the user's cache, else counted once (with a progress
bar) into the cache. Either file serves only the model code it was counted from (a hash of the modules that define
the architectures)."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ARCHITECTURE = ("vit.py", "resnet.py", "axial.py", "posemb.py", "registry.py")  # what parameters and FLOPs depend on
PACKAGED = HERE / "catalog.json"
CACHE = "models.json"


def key() -> str:
    h = hashlib.sha256()
    for name in ARCHITECTURE:
        h.update(name.encode() + (HERE / name).read_bytes())
    return h.hexdigest()


def _read(path: Path, want: str) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and data.get("key") == want and isinstance(data.get("rows"), list)
    return data["rows"] if ok else None


def count() -> list[dict[str, Any]]:
    """Every named variant's row, counted now (on the meta device), in `list_models` order."""
    from vitkit import progress
    from vitkit.models.registry import describe, list_models

    return [describe(n) for n in progress.bar(list_models(), desc="counting parameters and FLOPs (once)", unit="model")]


def table() -> list[dict[str, Any]]:
    """[{"name", "params", "image_size", "gflops", "gmacs"}] for every named variant, in `list_models` order."""
    from vitkit.atomic import write_json
    from vitkit.runtime import cache_dir

    want = key()
    rows = _read(PACKAGED, want) or _read(cache_dir() / CACHE, want)
    if rows is not None:
        return rows
    rows = count()
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        write_json(cache_dir() / CACHE, {"key": want, "rows": rows})
    except OSError:  # a read-only cache: counted again next time
        pass
    return rows


def main() -> None:
    """Write catalog.json for the model code as it is (run after changing an architecture; the tests say when)."""
    from vitkit.atomic import write_json

    write_json(PACKAGED, {"key": key(), "rows": count()})
    print(f"wrote {PACKAGED}", file=sys.stderr)


if __name__ == "__main__":
    main()
