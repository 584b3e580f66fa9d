"""The paper's pre-training recipes resolved for the model chosen (table 3 of the paper, by hand below): every variant's
learning rate, epochs, pre-logits width, clipping; the BiT baselines trainable by them."""
import pytest

from vitkit.config import validate
from vitkit.models.registry import list_models
from vitkit.recipes import build, get_recipe
from vitkit.train.loop import train

WIDTH = {"Ti": 192, "S": 384, "B": 768, "L": 1024, "H": 1280}  # the paper's table 1 (Ti, S: DeiT's)
# Table 3 of the paper, as printed: (dataset, model) -> (epochs, base LR)
PAPER = {("jft", "ViT-B/16"): (7, 8e-4), ("jft", "ViT-B/32"): (7, 8e-4), ("jft", "ViT-L/32"): (7, 6e-4),
         ("jft", "ViT-L/16"): (7, 4e-4), ("jft", "ViT-H/14"): (14, 3e-4), ("jft", "R50x1"): (7, 1e-3),
         ("jft", "R101x1"): (7, 8e-4), ("jft", "R50+ViT-B/16"): (7, 8e-4), ("jft", "R50+ViT-L/32"): (7, 2e-4),
         ("imagenet21k", "ViT-B/16"): (90, 1e-3), ("imagenet21k", "ViT-B/32"): (90, 1e-3), ("imagenet21k", "ViT-L/16"): (30, 1e-3),
         ("imagenet1k", "ViT-B/16"): (300, 3e-3), ("imagenet1k", "ViT-L/16"): (300, 3e-3), ("imagenet1k", "ViT-S/32"): (300, 3e-3)}


@pytest.mark.parametrize("recipe,model", sorted(PAPER))
def test_table3_rows(recipe, model):
    cfg = build(recipe, [f"model.name={model}"])
    assert (cfg.train.epochs, cfg.optim.lr) == PAPER[recipe, model]
    assert cfg.optim.clip_norm == (1.0 if recipe == "imagenet1k" else 0.0)  # table 3's caption: clipping for ImageNet only
    assert cfg.optim.weight_decay == {"jft": 0.1, "imagenet21k": 0.03, "imagenet1k": 0.3}[recipe]


@pytest.mark.parametrize("recipe", ["jft", "imagenet21k", "imagenet1k"])
def test_every_variant_resolves_and_validates(recipe):
    """Each of `vitkit models`' names builds a valid config: a ViT's pre-logits layer as wide as the model, dropout per
    the dataset; a ResNet without the ViT-only options (they raised ValueError before)."""
    for name in list_models():
        cfg = validate(build(recipe, [f"model.name={name}", "data.name=digits"]))
        m = cfg.model
        if (name.startswith("R") and "+" not in name) or name == "AxialResNet50":
            assert m.representation_size is None and m.dropout is None and m.head_bias_init is None, name
        else:
            size = name.split("ViT-")[1].split("/")[0]
            assert m.representation_size == WIDTH[size], name
            assert m.dropout == (0.0 if recipe == "jft" else 0.1), name
            assert m.head_bias_init == (0.0 if recipe == "imagenet1k" else -10.0), name


def test_overrides_win_over_the_resolved_settings():
    cfg = build("jft", ["model.name=ViT-L/16", "optim.lr=1e-4", "model.representation_size=0"])
    assert cfg.optim.lr == 1e-4 and cfg.model.representation_size == 0
    assert get_recipe("jft", "ViT-H/14").optim.lr == 3e-4 and get_recipe("jft").model.representation_size == 768
    with pytest.raises(ValueError, match="model.name='ViT-Q/16': unknown model"):
        build("jft", ["model.name=ViT-Q/16"])


def test_a_bit_resnet_trains_by_the_jft_recipe(tmp_path):
    sets = ["model.name=R50x1", "data.name=digits", "data.image_size=32", "data.crop=none", "data.workers=0",
            "data.val_fraction=0", "train.steps=2", "train.batch_size=8", "train.micro_batch_size=0",
            "train.eval_every=2", "train.ckpt_every=2", "train.log_every=1", "train.progress=false", "optim.warmup_steps=1"]
    res = train(build("jft", sets), out=tmp_path / "run")
    assert res["steps"] == 2 and 0 <= res["test"]["top1"] <= 1
