"""Masked patch prediction as the paper defines it."""
import json
import math

import pytest
import torch

import vitkit
from vitkit.config import apply_overrides
from vitkit.objectives.mpp import MaskedPatchPrediction, colour_classes, corrupt
from vitkit.recipes import get_recipe
from vitkit.train.finetune import finetune
from vitkit.train.loop import train


def test_corruption_statistics_match_the_rates():
    torch.manual_seed(0)
    patches = torch.randn(64, 49, 8)
    mask = torch.full((1, 1, 8), 7.0)
    counts = torch.zeros(4)
    for _ in range(50):
        out, chosen, kind = corrupt(patches, mask, rate=0.5, mask_frac=0.8, random_frac=0.1)
        assert (chosen.sum(1) == 24).all()  # exactly round(0.5 * 49) per image
        assert torch.equal(kind > 0, chosen)
        counts += torch.bincount(kind.flatten(), minlength=4)
        assert torch.equal(out[kind == 0], patches[kind == 0]) and torch.equal(out[kind == 3], patches[kind == 3])
        assert (out[kind == 1] == 7.0).all()
    frac = counts[1:] / counts[1:].sum()
    torch.testing.assert_close(frac, torch.tensor([0.8, 0.1, 0.1]), atol=0.01, rtol=0)
    _, chosen, _ = corrupt(patches, mask, rate=0.15, mask_frac=0.8, random_frac=0.1)
    assert (chosen.sum(1) == 7).all()


def test_random_replacements_are_other_patches():
    torch.manual_seed(1)
    patches = torch.randn(4, 16, 8)
    out, _, kind = corrupt(patches, torch.zeros(1, 1, 8), 1.0, 0.0, 1.0)
    pool = patches.reshape(-1, 8)
    for row in out[kind == 2]:
        assert (pool == row).all(1).any()
    moved = (out[kind == 2] != patches[kind == 2]).any(1).float().mean()
    assert moved > 0.9  # replaced by patches drawn from the whole batch: nearly all of them another one


def test_one_corrupted_patch_and_unit_range_clamps_and_keeps_dtype():
    _, chosen, _ = corrupt(torch.randn(3, 10, 4), torch.zeros(1, 1, 4), 0.1, 1.0, 0.0)
    assert chosen.sum(1).tolist() == [1, 1, 1]  # round(0.1 * 10) = 1 position per image
    from vitkit.objectives.mpp import to_unit_range

    x = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0]).reshape(1, 1, 1, 5)  # "google": x * 0.5 + 0.5, then [0, 1]
    assert to_unit_range(x, "google").flatten().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    for dt in (torch.float64, torch.bfloat16):
        assert to_unit_range(x.to(dt), "google").dtype == dt
    with pytest.raises(ValueError, match="patch size 6 is not divisible into 4 x 4 cells"):
        colour_classes(torch.zeros(1, 3, 12, 12), 6, cells=4)


def test_colour_targets_of_hand_made_patches():
    x = torch.zeros(1, 3, 8, 8)  # patch 4: a 2 x 2 grid
    x[:, 0, :4, :4] = 1.0  # top-left pure red
    x[:, :, :4, 4:] = 0.5  # top-right mid grey
    x[:, 2, 4:, :4] = 0.99  # bottom-left blue
    # bottom-right black
    idx = colour_classes(x, patch=4)[0, :, 0].tolist()
    assert idx == [7 * 64, 4 * 64 + 4 * 8 + 4, 7, 0]
    gray = torch.full((1, 1, 4, 4), 0.3)
    assert colour_classes(gray, 4).item() == 2  # floor(0.3 * 8)
    # mean over the patch, not a pixel: half white, half black -> 0.5 -> level 4
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2] = 1.0
    assert colour_classes(half, 4).item() == 4
    cells = colour_classes(half, 4, cells=2)[0, 0].tolist()
    assert cells == [7, 0, 7, 0]


def make(target="mean", channels=1):
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, patch_size=4, image_size=16,
                                in_chans=channels, num_classes=0)
    return model, MaskedPatchPrediction(32, 4, channels, target=target)


def test_classes_per_channel_count():
    assert make(channels=1)[1].num_classes == 8 and make(channels=3)[1].num_classes == 512
    assert make(target="mean4x4", channels=3)[1].head.out_features == 16 * 512


def test_loss_ignores_uncorrupted_positions():
    torch.manual_seed(0)
    model, mpp = make()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    loss_a, _ = mpp(model, x, None, gen())
    _, chosen, _ = corrupt(model.patch_embed(x), mpp.mask_token, mpp.rate, mpp.mask_frac, mpp.random_frac, gen())
    real = mpp.targets

    def scrambled(images):
        t = real(images).clone()
        t[~chosen] = (t[~chosen] + 3) % mpp.num_classes  # change every target that is not scored
        return t

    mpp.targets = scrambled
    loss_b, _ = mpp(model, x, None, gen())
    assert torch.equal(loss_a, loss_b)

    def scrambled_chosen(images):
        t = real(images).clone()
        t[chosen] = (t[chosen] + 3) % mpp.num_classes
        return t

    mpp.targets = scrambled_chosen
    loss_c, _ = mpp(model, x, None, gen())
    assert not torch.equal(loss_a, loss_c)


@pytest.mark.parametrize("target", ["mean4x4", "l2"])
def test_alternative_targets_run(target):
    model, mpp = make(target, channels=3)
    loss, metrics = mpp(model, torch.rand(2, 3, 16, 16))
    assert loss.ndim == 0 and loss > 0 and metrics


def test_hybrid_is_refused():
    cfg = get_recipe("mpp-fashion-mnist")
    hybrid = vitkit.create_model("R+ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=64, num_classes=0)
    with pytest.raises(ValueError, match="not hybrids"):
        MaskedPatchPrediction.from_config(cfg, hybrid)


def test_tiny_mpp_run_learns_and_transfers(tmp_path):
    sets = ["data.name=digits", "data.image_size=8", "model.patch_size=2", "model.width=32", "model.depth=2",
            "model.heads=2", "model.mlp_dim=64", "train.steps=80", "train.batch_size=64", "train.log_every=2",
            "train.progress=false", "optim.lr=2e-3"]
    res = train(apply_overrides(get_recipe("mpp-fashion-mnist"), sets), out=tmp_path / "mpp")
    lines = [json.loads(l) for l in (tmp_path / "mpp" / "metrics.jsonl").read_text().splitlines()]
    losses = [l["loss"] for l in lines if l["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < math.log(8)  # below chance for 8 grey levels
    assert 0 < res["test"]["mpp_acc"] <= 1 and "top1" not in res["test"]
    encoder, card = vitkit.load(tmp_path / "mpp")
    assert encoder.config.num_classes == 0 and "mask_token" not in encoder.state_dict()
    assert card.class_names is None  # an encoder has no classifier: its card names no classes
    ft = finetune(str(tmp_path / "mpp"), "digits", out=tmp_path / "ft",
                  overrides=["train.steps=5", "train.batch_size=32", "train.progress=false"])
    assert 0 <= ft["test"]["top1"] <= 1


def test_quantisation_boundaries_are_floors():
    """3 bits per channel: level = floor(mean * 8), clamped to 7 (a rounding bug moves 0.1 to level 1)."""
    def level(v):
        return colour_classes(torch.full((1, 1, 4, 4), v), 4).item()

    assert [level(v) for v in (0.0, 0.1, 0.124, 0.125, 0.2, 0.49, 0.5, 0.874, 0.875, 0.99, 1.0)] == [0, 0, 0, 1, 1, 3, 4, 6, 7, 7, 7]
    rgb = torch.empty(1, 3, 4, 4)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 0.5, 0.2, 0.9  # levels 4, 1, 7 -> (4 * 8 + 1) * 8 + 7
    assert colour_classes(rgb, 4).item() == 271


def test_l2_target_is_each_patch_row_by_row_channels_last():
    """The l2 target of patch n is its pixels in (row, column, channel) order, as the flattened patches of eq. 1."""
    _, mpp = make("l2", channels=2)
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)  # patch 4: a 2 x 2 grid
    t = mpp.targets(x)
    assert t.shape == (1, 4, 4 * 4 * 2)
    for n, (r0, c0) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        want = [x[0, ch, r0 + i, c0 + j].item() for i in range(4) for j in range(4) for ch in range(2)]
        assert t[0, n].tolist() == want


def test_mean4x4_target_is_sixteen_cells_in_reading_order():
    """mean4x4: the patch downsized to 4 x 4 cells, each cell's mean colour quantised, cells row by row."""
    _, mpp = make("mean4x4", channels=1)
    x01 = torch.zeros(1, 1, 4, 4)
    levels = torch.arange(16).reshape(4, 4) % 8  # cell (i, j) gets level (4i + j) mod 8
    x01[0, 0] = (levels.float() + 0.5) / 8  # a 4 x 4 patch: each cell is one pixel
    t = mpp.targets(x01 * 2 - 1)  # inputs are normalised to [-1, 1]
    assert t.shape == (1, 1, 16) and t[0, 0].tolist() == levels.flatten().tolist()


def test_objective_options_are_checked_and_shaped():
    for kw, msg in ((dict(target="rgb"), r"^mpp.target='rgb' is not one of \('mean', 'mean4x4', 'l2'\)$"),
                    (dict(rate=0.0), r"^corruption rates must satisfy 0 < rate <= 1 and mask \+ random <= 1; got 0.0, 0.8, 0.1$"),
                    (dict(rate=1.5), "got 1.5"), (dict(mask_frac=0.9, random_frac=0.2), "got 0.5, 0.9, 0.2"),
                    (dict(mask_frac=1.0, random_frac=1.5), "got 0.5, 1.0, 1.5")):
        with pytest.raises(ValueError, match=msg):
            MaskedPatchPrediction(768, 16, 3, **kw)
    MaskedPatchPrediction(32, 4, 3, rate=1.0, mask_frac=0.0, random_frac=1.0)  # the edges are allowed
    torch.manual_seed(0)
    mean = MaskedPatchPrediction(768, 16, 3)
    assert mean.target == "mean" and mean.main_metric == "mpp_acc"
    assert mean.head.out_features == 512  # 3 bits per channel: 8 ** 3 colours, one cell
    assert mean.mask_token.shape == (1, 1, 768) and abs(mean.mask_token.std().item() - 0.02) < 0.002
    assert MaskedPatchPrediction(768, 16, 3, target="mean4x4").head.out_features == 16 * 512
    l2 = MaskedPatchPrediction(768, 16, 3, target="l2")
    assert l2.main_metric == "mpp_mse" and l2.head.out_features == 16 * 16 * 3


def test_accuracy_and_metric_names_worked_by_hand():
    """Black images are colour class 0 everywhere; a head that always says 0 is right on every patch."""
    model = vitkit.create_model("ViT-Ti/16", num_classes=0, image_size=16, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64)
    x = torch.full((2, 3, 16, 16), -1.0)  # "google" normalisation: -1 is black
    mpp = MaskedPatchPrediction(32, 4, 3)
    with torch.no_grad():
        mpp.head.weight.zero_()
        mpp.head.bias.zero_()
        mpp.head.bias[0] = 1.0
    loss, metrics = mpp(model, x)
    assert set(metrics) == {"mpp_acc"} and metrics["mpp_acc"].item() == 1.0
    assert set(MaskedPatchPrediction(32, 4, 3, target="l2")(model, x)[1]) == {"mpp_mse"}
    # corruption keeps the patches' dtype (a float32 mask token into bf16 embeddings)
    out, _, _ = corrupt(torch.randn(2, 8, 4).bfloat16(), torch.zeros(1, 1, 4), 0.5, 1.0, 0.0)
    assert out.dtype == torch.bfloat16


def test_from_config_passes_every_option_and_refuses_hybrids():
    cfg = apply_overrides(get_recipe("mpp-fashion-mnist"), ["mpp.target=l2", "mpp.rate=0.25", "mpp.bits=2"])
    model = vitkit.create_model("ViT-Ti/16", num_classes=0, image_size=16, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64)
    obj = MaskedPatchPrediction.from_config(cfg, model)
    assert (obj.target, obj.rate, obj.bits) == ("l2", 0.25, 2)
    hybrid = vitkit.create_model("R+ViT-Ti/16", num_classes=0, image_size=32, width=32, depth=1, heads=2, mlp_dim=64)
    with pytest.raises(ValueError, match="^masked patch prediction corrupts raw patch embeddings; it is defined for plain ViTs, not hybrids$"):
        MaskedPatchPrediction.from_config(cfg, hybrid)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_checkpointing_reaches_masked_patch_prediction(checkpointing):
    """With train.activation_checkpointing the objective's encoder pass recomputes each block in the backward pass
    (the block runs twice per step), as classification's does; without it, once. The gradients are the same."""
    torch.manual_seed(0)
    model, mpp = make()
    model.train().set_grad_checkpointing(checkpointing)
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # (a recompute may stop before the end)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    loss, _ = mpp(model, x, None, torch.Generator().manual_seed(1))
    loss.backward()
    assert len(calls) == (2 if checkpointing else 1)
    grad = model.blocks[0].mlp.fc1.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(not checkpointing)
    loss2, _ = mpp(model, x, None, torch.Generator().manual_seed(1))
    loss2.backward()
    assert torch.allclose(model.blocks[0].mlp.fc1.weight.grad, grad, atol=1e-6)
