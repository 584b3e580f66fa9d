"""Compute accounting (the paper's Figure 5 axis): every run's training FLOPs in metrics.json, checked against a count
worked by hand."""
import json

from vitkit.config import apply_overrides
from vitkit.recipes import get_recipe
from vitkit.train.loop import train

TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "model.patch_size=4", "data.image_size=8",
        "model.pool=token", "model.posemb=learned", "model.representation_size=0", "train.progress=false"]


def test_metrics_json_holds_the_runs_training_flops(tmp_path):
    """By hand, in multiply-adds for one 8x8 digit (1 channel): T = 4 patches + the class token = 5 tokens, D = 32.
    Forward: patch embedding 4 x 16 x 32 = 2,048; per block qkv 5 x 32 x 96 = 15,360, scores and the weighted sum
    2 x 5 x 5 x 32 = 1,600, projection 5 x 32 x 32 = 5,120, MLP 2 x 5 x 32 x 64 = 20,480: 42,560, two blocks 85,120;
    head 32 x 10 = 320. Backward: twice each (gradients of inputs and weights), but the patch embedding's input needs
    none: once. 3 x (85,120 + 320) + 2 x 2,048 = 260,416 multiply-adds = 520,832 FLOPs."""
    res = train(apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=3", "train.batch_size=16"]), out=tmp_path / "run")
    compute = json.loads((tmp_path / "run" / "metrics.json").read_text())["compute"]
    assert compute["flops_per_image"] == 520_832
    assert compute["images_seen"] == 3 * 16 and compute["train_flops"] == 520_832 * 48 == res["compute"]["train_flops"]
    assert abs(compute["exaflops"] - 520_832 * 48 / 1e18) < 1e-24
