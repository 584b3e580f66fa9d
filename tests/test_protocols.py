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


# --- fine-tuning protocols: VTAB-1k and the paper's (train/finetune.py) ---------------------------------------------

TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "model.patch_size=4", "data.image_size=8",
        "train.progress=false"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from vitkit.config import apply_overrides
    from vitkit.recipes import get_recipe
    from vitkit.train.loop import train

    out = tmp_path_factory.mktemp("pre") / "run"
    train(apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=20"]), out=out)
    return out


def test_vtab1k_selects_on_800_200_then_trains_on_all_1000(pretrained, tmp_path):
    from vitkit.train.finetune import finetune

    short = ["train.steps=3", "train.batch_size=32", "train.progress=false"]
    res = finetune(str(pretrained), "digits", out=tmp_path / "vtab", lr_sweep=[0.001, 0.03], overrides=short, protocol="vtab1k")
    sweep = json.loads((tmp_path / "vtab" / "sweep.json").read_text())
    assert sweep["protocol"] == "vtab1k" and sweep["chosen_lr"] in (0.001, 0.03)
    assert all(r["val_images"] == 200 for r in sweep["runs"].values())  # 200 of the 1,000 held out while choosing
    cfg = json.loads((tmp_path / "vtab" / "config.json").read_text())
    assert cfg["data"]["train_subset"] == 1000 and cfg["data"]["val_size"] == 0 and cfg["data"]["val_fraction"] == 0
    assert cfg["optim"]["lr"] == sweep["chosen_lr"] and res["chosen_lr"] == sweep["chosen_lr"]
    assert "val" not in res and 0 <= res["test"]["top1"] <= 1  # the final run trains on all 1,000: nothing held out
    log = (tmp_path / "vtab" / "metrics.jsonl").read_text()
    assert log and not (tmp_path / "vtab" / "final").exists()


def test_vtab1k_without_a_sweep_is_the_papers_fixed_lr_and_2500_steps(pretrained, tmp_path, monkeypatch):
    import vitkit.train.finetune as module

    seen = []
    monkeypatch.setattr(module, "train", lambda cfg, out=None, overwrite=False: seen.append(cfg) or {"test": {"top1": 0.5}})
    module.finetune(str(pretrained), "digits", out=tmp_path / "v", protocol="vtab1k")
    (cfg,) = seen  # one run: no selection
    assert (cfg.optim.lr, cfg.train.steps, cfg.data.train_subset, cfg.data.val_fraction) == (0.01, 2500, 1000, 0)


def test_the_papers_protocol_uses_table4s_grid_and_dev_split(pretrained, tmp_path, monkeypatch):
    import vitkit.train.finetune as module

    runs = []
    def fake_train(cfg, out=None, overwrite=False):
        runs.append((cfg.optim.lr, cfg.data.val_fraction, str(out)))
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"test": {"top1": 0.5}}))
        return {"val": {"top1": cfg.optim.lr, "loss": 1.0, "n": 10}, "test": {"top1": 0.5}}  # the highest LR "wins"
    monkeypatch.setattr(module, "train", fake_train)
    res = module.finetune(str(pretrained), "digits", out=tmp_path / "p", protocol="paper")
    assert [lr for lr, _, _ in runs] == [0.001, 0.003, 0.01, 0.03, 0.03]  # table 4's grid, then the chosen LR once more
    assert [v for _, v, _ in runs] == [0.1] * 4 + [0]  # a 10% dev split while choosing, then the whole training set
    assert runs[-1][2].endswith("final") and res["chosen_lr"] == 0.03
    assert module.PAPER_GRID["imagenet"] == [0.003, 0.01, 0.03, 0.06] and module.DEV_FRACTION["imagenet"] == 0.02


def test_the_papers_protocol_fine_tunes_imagenet_scale_models_at_384(tmp_path, monkeypatch):
    import vitkit.train.finetune as module

    src = vitkit.save_model(vitkit.create_model("ViT-Ti/16", num_classes=10, depth=1), tmp_path / "ti224")  # 224 px
    seen = []

    def fake_train(cfg, out=None, overwrite=False):  # records the config; leaves what a run leaves
        seen.append(cfg)
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"test": {"top1": 0.5}}))
        return {"val": {"top1": 0.5, "loss": 1.0, "n": 10}, "test": {"top1": 0.5}}
    monkeypatch.setattr(module, "train", fake_train)
    module.finetune(str(src), "digits", out=tmp_path / "a", protocol="vtab1k")  # not "paper": the model's own 224
    module.finetune(str(src), "digits", out=tmp_path / "b", protocol="paper", lr_sweep=[0.01], overrides=["train.steps=1"])
    assert seen[0].data.image_size == 224 and seen[1].data.image_size == 384
