"""`vitkit models`' table: counted once and cached by the model code's hash, read back with no torch; a ViT's FLOPs
extrapolated from one and two blocks equal the full count."""
import json
import os
import subprocess
import sys

import pytest
import torch

import vitkit
from vitkit.models import catalog
from vitkit.models.registry import _forward_flops, create_model


@pytest.mark.parametrize("name,kw", [("ViT-L/16", {}), ("R50+ViT-B/16", {}), ("ViT-Ti/16", dict(depth=5, image_size=64))])
def test_extrapolated_flops_equal_the_full_count(name, kw):
    with torch.device("meta"):
        full = _forward_flops(create_model(name, **kw))
    assert vitkit.describe(name, **kw)["gflops"] * 1e9 == full


def test_vit_l16_macs_are_timms():
    assert vitkit.describe("ViT-L/16")["gmacs"] == pytest.approx(61.6, abs=0.05)  # timm's vit_large_patch16_224: 61.6 GMACs


def test_the_packaged_table_is_the_model_codes(monkeypatch):
    """catalog.json (what `vitkit models` prints without torch) was counted from the model code as it is now."""
    packaged = json.loads(catalog.PACKAGED.read_text())
    assert packaged["key"] == catalog.key(), "the architectures changed: run `python -m vitkit.models.catalog` and commit catalog.json"
    from vitkit.models.registry import describe, list_models

    assert [r["name"] for r in packaged["rows"]] == list_models()
    rows = {r["name"]: r for r in packaged["rows"]}
    for name in ("ViT-Ti/16", "ViT-H/14", "R50+ViT-B/16", "R50x1", "Axial-ViT-B/32"):  # one of each family, counted now
        assert rows[name] == describe(name), name


def test_the_table_is_cached_and_read_back_without_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(catalog, "PACKAGED", tmp_path / "absent.json")  # as a checkout whose catalog.json is stale
    monkeypatch.setattr(vitkit.models.registry, "list_models", lambda: ["ViT-Ti/16", "R50x1"])  # two rows: fast
    rows = catalog.table()
    assert [r["name"] for r in rows] == ["ViT-Ti/16", "R50x1"] and rows[0]["params"] == 5_717_416
    cached = json.loads((tmp_path / "models.json").read_text())
    assert cached["rows"] == rows and cached["key"] == catalog.key()
    code = ("import sys; import vitkit.models.catalog as c; from pathlib import Path; c.PACKAGED = Path('absent'); "
            "rows = c.table(); print(len(rows), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VITKIT_CACHE_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr
    # other model code (another key): counted again, not served stale
    monkeypatch.setattr(catalog, "key", lambda: "another version of the model code")
    monkeypatch.setattr(vitkit.models.registry, "list_models", lambda: ["ViT-S/16"])
    assert [r["name"] for r in catalog.table()] == ["ViT-S/16"]
