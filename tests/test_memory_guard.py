"""A job that cannot fit is refused before it runs (issue 22.7: `eval --resolution 20000` was killed by the kernel's
out-of-memory killer, taking the machine with it)."""
import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.train import memory


@pytest.fixture()
def ckpt(tmp_path):
    model = vitkit.create_model("ViT-Ti/16", num_classes=10, image_size=8, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64,
                                in_chans=1)
    return vitkit.save_model(model, tmp_path / "m")


def test_the_estimate_by_hand():
    """ViT-Ti/16 at 224 px, one image: 197 tokens x max(5 x 192, 768 + 384) floats for a block, the input twice,
    the position table's share; explicit attention adds 2 x 3 heads x 197^2 floats."""
    cfg = vitkit.create_model("ViT-Ti/16").config
    by_hand = 2 * 3 * 224 * 224 * 4 + 197 * 1152 * 4 + 197 * 192 * 4
    assert memory.inference_bytes(cfg, 1) == by_hand
    assert memory.inference_bytes(cfg, 3, explicit_attention=True) == 3 * (by_hand + 2 * 3 * 197 * 197 * 4)


def test_eval_at_an_absurd_resolution_is_refused_with_a_batch_that_fits(ckpt, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**30)  # 1 GiB free: the same verdict on any machine
    ran = []
    monkeypatch.setattr("vitkit.evaluate.run.evaluate", lambda *a, **k: ran.append(1))
    assert main(["eval", str(ckpt), "--data", "digits", "--resolution", "1024", "--engine", "torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    per_image = memory.inference_bytes(vitkit.load_model(ckpt, image_size=1024).config, 1)
    fits = int(0.9 * 2**30 // per_image)
    assert err.startswith(f"vitkit eval: error: {ckpt} at 1024 px: about ") and "1.0 GiB available on cpu" in err, err
    assert f"use --batch-size {fits} or less" in err and not ran
    assert vitkit.load_engine(ckpt, "torch", resolution=1024, batch_size=fits).engine == "torch"  # the batch it names fits
    with pytest.raises(MemoryError):
        vitkit.load_engine(ckpt, "torch", resolution=1024, batch_size=fits + 1)


def test_even_one_image_too_many_says_so(ckpt, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10**6)
    with pytest.raises(MemoryError, match="even one image does not fit: use a lower --resolution"):
        vitkit.load_engine(ckpt, "torch", resolution=512, batch_size=1)


def test_auto_keeps_to_torch_when_explicit_attention_would_not_fit(ckpt, monkeypatch):
    cfg = vitkit.load_model(ckpt, image_size=256).config
    fused, explicit = memory.inference_bytes(cfg, 8), memory.inference_bytes(cfg, 8, explicit_attention=True)
    monkeypatch.setattr(memory, "available_bytes", lambda device: int((fused + explicit) / 2 / 0.9))  # between the two
    eng = vitkit.load_engine(ckpt, "auto", resolution=256, batch_size=8, images=10**6)
    assert eng.engine == "torch" and "explicit attention would not fit" in eng.describe()["auto"]["why"]
    assert eng(torch.randn(2, 1, 256, 256)).shape == (2, 10)
