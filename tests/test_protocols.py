"""The paper's evaluation protocols beyond top-1: ImageNet ReaL (evaluate/real.py), on a folder and labels file the
test writes, with the accuracy worked by hand."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main


@pytest.fixture
def val_folder(tmp_path):
    """ImageNet's layout in miniature: train/ and val/ class folders a, b, c (classes 0, 1, 2); val/ (the test split) holds
    six ImageNet-named validation images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for cls in "abc":
        (root / "train" / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "train" / cls / "t.png")
    for number, cls in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")]:
        (root / "val" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "val" / cls / f"ILSVRC2012_val_{number:08d}.png")
    return root


def always(tmp_path, cls: int):
    """A 3-class model that predicts class `cls` for every image (zero weights, the head's bias alone)."""
    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 0.0]).index_fill_(0, torch.tensor([cls]), 5.0))
    return vitkit.save_model(model, tmp_path / f"always{cls}")


def test_real_accuracy_by_hand(tmp_path, val_folder, capsys):
    # images 1..6; 3 has no ReaL label (skipped); 4 is multi-label
    real = [[1], [0], [], [0, 1], [2], [1, 2]] + [[5]] * 4  # more entries than images: the rest are never looked up
    (tmp_path / "real.json").write_text(json.dumps(real))
    src = always(tmp_path, 1)  # predicts 1: right for images 1, 4, 6 of the five labelled
    assert main(["eval", str(src), "--data", f"folder:{val_folder}", "--split", "test", "--real-labels", str(tmp_path / "real.json"),
                 "--json", "--device", "cpu", "--engine", "torch"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["real_top1"], res["real_n"], res["real_skipped"]) == (3 / 5, 5, 1)
    assert res["n"] == 6 and abs(res["top1"] - 2 / 6) < 1e-9  # plain top-1: the two images of folder b


def test_real_labels_refusals(tmp_path, val_folder, capsys):
    src = always(tmp_path, 0)
    (tmp_path / "bad.json").write_text(json.dumps({"1": [0]}))
    (tmp_path / "short.json").write_text(json.dumps([[0], [0]]))
    cases = [(["--real-labels", str(tmp_path / "nope.json")], "no such file"),
             (["--real-labels", str(tmp_path / "bad.json")], "not ReaL's format"),
             (["--real-labels", str(tmp_path / "short.json")], "image number 3 is beyond the 2 entries")]  # images 1, 2 are in it
    for extra, why in cases:
        assert main(["eval", str(src), "--data", f"folder:{val_folder}", "--split", "test", "--device", "cpu", *extra]) == 2
        assert why in capsys.readouterr().err
    (val_folder / "val" / "a" / "holiday.png").write_bytes((val_folder / "val" / "a" / "ILSVRC2012_val_00000001.png").read_bytes())
    (tmp_path / "real.json").write_text(json.dumps([[0]] * 6))
    assert main(["eval", str(src), "--data", f"folder:{val_folder}", "--split", "test", "--device", "cpu",
                 "--real-labels", str(tmp_path / "real.json")]) == 2
    assert "holiday.png: not an ImageNet validation file name" in capsys.readouterr().err
    assert main(["eval", str(src), "--data", "digits", "--device", "cpu", "--real-labels", str(tmp_path / "real.json")]) == 2
    assert "evaluate a folder of them" in capsys.readouterr().err
