"""Fine-tuning, few-shot evaluation and prediction on small real data."""
import json

import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.config import apply_overrides
from vitkit.recipes import get_recipe
from vitkit.train.finetune import finetune
from vitkit.train.loop import train

TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "model.patch_size=4",
        "data.image_size=8", "train.progress=false"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    train(apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=40", "model.pool=token", "model.posemb=learned"]), out=out)
    return out


def test_finetune_new_head_and_higher_resolution(pretrained, tmp_path):
    res = finetune(str(pretrained), "digits", resolution=16, out=tmp_path / "ft",
                   overrides=["train.steps=6", "train.batch_size=32", "train.progress=false"])
    assert 0 <= res["test"]["top1"] <= 1
    model, card = vitkit.load(tmp_path / "ft")
    assert model.config.image_size == 16 and model.pos_embed.shape == (1, 1 + 16, 32)
    assert card.class_names == [str(i) for i in range(10)]
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["optim"]["name"] == "sgd" and cfg["optim"]["weight_decay"] == 0 and cfg["optim"]["momentum"] == 0.9
    assert cfg["model"]["init"] == str(pretrained)
    # the architecture recorded is the checkpoint's (a modified Ti/16 here), not the recipe's placeholder ViT-B/16
    assert cfg["model"]["name"] == vitkit.load_model(pretrained).config.name and cfg["model"]["name"].startswith("ViT-Ti/16, modified")


def test_finetune_recipe_follows_the_paper():
    from vitkit.recipes.finetune import finetune as recipe

    cfg = recipe("x", "cifar10", 384)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.optim.clip_norm, cfg.optim.schedule) == (10_000, 512, 1.0, "cosine")
    assert cfg.data.crop == "inception" and recipe("x", "digits", 28).data.crop == "pad"
    assert recipe("x", "folder:/data/flowers", 384).train.steps == 500
    assert cfg.data.flip and not recipe("x", "digits", 28).data.flip  # a mirrored digit is another class


def test_finetune_lr_sweep_picks_on_validation(pretrained, tmp_path):
    res = finetune(str(pretrained), "digits", out=tmp_path / "sw", lr_sweep=[0.001, 0.03],
                   overrides=["train.steps=4", "train.batch_size=32", "train.progress=false"])
    sweep = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    runs = sweep["runs"]
    best = max(runs, key=lambda k: (runs[k]["val_top1"], -runs[k]["val_loss"]))  # a tie goes to the lower loss
    assert sweep["chosen_lr"] == float(best) == res["chosen_lr"]
    assert (tmp_path / "sw" / "checkpoint" / "model.safetensors").exists()
    assert vitkit.load_model(tmp_path / "sw").config.num_classes == 10


def test_fewshot_cli(pretrained, capsys):
    assert main(["fewshot", str(pretrained), "--data", "digits", "--shots", "1,5", "--seeds", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["shots"]) == {"1", "5"} and len(res["shots"]["5"]["runs"]) == 2
    assert res["feature_dim"] == 32 and res["test_images"] == 899
    assert main(["fewshot", str(pretrained), "--data", "digits", "--shots", "1,x"]) == 2


@pytest.mark.parametrize("mode,suffix", [("RGB", "jpg"), ("L", "png"), ("RGBA", "png"), ("P", "png")])
def test_predict_any_image(pretrained, tmp_path, mode, suffix, capsys):
    path = tmp_path / f"img.{suffix}"
    Image.new("RGB", (37, 23), (200, 30, 90)).convert(mode).save(path)
    assert main(["predict", str(pretrained), str(path), "--top-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    probs = [t["prob"] for t in res[0]["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and res[0]["top"][0]["class"] in [str(i) for i in range(10)]


def test_predict_bad_image_and_missing_file(pretrained, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["predict", str(pretrained), str(tmp_path / "bad.png")]) == 2
    assert "bad.png: cannot read this image" in capsys.readouterr().err
    assert main(["predict", str(pretrained), str(tmp_path / "none.png")]) == 2
    assert "none.png: no such image file" in capsys.readouterr().err


def test_unknown_dataset_in_finetune_and_fewshot(pretrained, tmp_path, capsys):
    assert main(["finetune", str(pretrained), "--data", "imagenet5", "--out", str(tmp_path / "x")]) == 2
    assert "unknown dataset 'imagenet5'" in capsys.readouterr().err
    assert main(["fewshot", str(pretrained), "--data", "imagenet5"]) == 2


def test_zero_initialised_head_gives_zero_logits(pretrained):
    model = vitkit.load_model(pretrained, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 8, 8)).abs().max() == 0


def test_a_shorter_finetune_derives_its_schedule(pretrained, tmp_path, capsys):
    """train.steps=20 instead of the recipe's 500: warm-up a tenth (2 steps), five validations and checkpoints over
    the run (every 4 steps), unless set explicitly; the log says what was derived."""
    finetune(str(pretrained), "digits", out=tmp_path / "ft",
             overrides=["train.steps=20", "train.batch_size=16", "train.progress=false", "train.ckpt_every=10"])
    out = capsys.readouterr().out
    assert "finetune: 20 steps (recipe: 500); derived from them: optim.warmup_steps=2, train.eval_every=4, train.log_every=1" in out
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["optim"]["warmup_steps"] == 2 and cfg["train"]["eval_every"] == 4 and cfg["train"]["ckpt_every"] == 10
    lines = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert {4, 8, 12, 16} <= {line["step"] for line in lines if line["split"] == "val"}
    lrs = [line["lr"] for line in lines if line["split"] == "train"]
    assert lrs[0] < lrs[1] == max(lrs) and lrs[-1] < lrs[1] / 10  # warm-up over two steps, then the cosine decays


def test_finetune_a_bit_resnet(tmp_path):
    """A BiT checkpoint has no ViT name; its run records the class (it crashed with an AttributeError)."""
    model = vitkit.create_model("R50x1", layers=(1, 1, 1, 1), num_classes=10, image_size=32, in_chans=1)
    src = vitkit.save_model(model, tmp_path / "bit")
    finetune(str(src), "digits", out=tmp_path / "ft", overrides=["train.steps=2", "train.batch_size=8", "train.progress=false"])
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model"]["name"] == "BiTResNet"
