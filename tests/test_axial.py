"""Axial attention models (appendix D.7): Axial-ViT and AxialResNet on tiny configs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.convert.common import CheckpointError
from vitkit.models.axial import (AxialAttention, AxialResNet, AxialResNetConfig, AxialViTConfig, AxialVisionTransformer,
                                 columns_of, from_columns, rows_of)
from vitkit.models.fast import InferenceModel, accelerate
from vitkit.models.registry import (_canonical, config_from_dict, config_to_dict, count_params, create_model, describe,
                                    list_models, model_config)

# Axial-ViT: 16 px, patch 4 (a 4 x 4 grid, N = 16), D = 16, 2 blocks, 2 heads, MLP 32, 5 classes
TINY_VIT = dict(image_size=16, patch_size=4, width=16, depth=2, heads=2, mlp_dim=32, num_classes=5)
# AxialResNet: two stages of one unit each, 32 px (stem /4: 8 x 8 maps), 5 classes
TINY_RESNET = dict(layers=(1, 1), image_size=32, num_classes=5)


def tiny_vit(**kw) -> AxialVisionTransformer:
    torch.manual_seed(0)
    return create_model("Axial-ViT-B/16", **{**TINY_VIT, "zero_head": False, **kw})


def tiny_resnet(**kw) -> AxialResNet:
    torch.manual_seed(0)
    return create_model("AxialResNet50", **{**TINY_RESNET, "zero_head": False, **kw})


@pytest.mark.parametrize("size", [16, 24, (16, 32)])
def test_axial_vit_logits_shape(size):
    model = tiny_vit(image_size=size)
    h, w = (size, size) if isinstance(size, int) else size
    assert model(torch.randn(2, 3, h, w)).shape == (2, 5)
    assert model.forward_features(torch.randn(2, 3, h, w)).shape == (2, (h // 4) * (w // 4), 16)


@pytest.mark.parametrize("size", [32, 40, (32, 48), 16])
def test_axial_resnet_logits_shape(size):
    model = tiny_resnet(image_size=size)
    h, w = (size, size) if isinstance(size, int) else size
    assert model(torch.randn(2, 3, h, w)).shape == (2, 5)
    assert model.forward_head(model.forward_features(torch.randn(2, 3, h, w)), pre_logits=True).shape == (2, 512)


def test_axial_vit_parameter_count_by_hand():
    D, M, K, P, N = 16, 32, 5, 4, 16
    patch = D * 3 * P * P + D
    pos = N * D
    attention = (3 * D * D + 3 * D) + (D * D + D)  # qkv, proj
    mlp = (D * M + M) + (M * D + D)
    block = 4 * 2 * D + 2 * attention + 2 * mlp  # four LayerNorms, row + column attention, an MLP after each
    total = patch + pos + 2 * block + 2 * D + (D * K + K)  # + final LayerNorm, head
    assert count_params(tiny_vit()) == total == 10053


def test_axial_vit_b16_parameter_count_by_hand():
    D, M, K, P, N = 768, 3072, 1000, 16, 196
    attention = 4 * D * D + 4 * D
    mlp = 2 * D * M + M + D
    block = 8 * D + 2 * attention + 2 * mlp
    total = (3 * P * P * D + D) + N * D + 12 * block + 2 * D + (D * K + K)
    assert describe("Axial-ViT-B/16")["params"] == total == 171_620_584


def test_axial_resnet_parameter_count_by_hand():
    def bn(c):
        return 2 * c

    def attention(w, span, heads=8):  # qkv 1x1 conv (q, k: w/2 each, v: w), relative tables (2 dq + dv, 2 span - 1), BN
        dv = w // heads
        return w * 2 * w + (2 * (dv // 2) + dv) * (2 * span - 1) + bn(w)

    def unit(cin, w, span):
        cout = 4 * w
        shortcut = cin * cout + bn(cout)  # both units here project (64 -> 256, 256 -> 512 with stride 2)
        return cin * w + bn(w) + 2 * attention(w, span) + w * cout + bn(cout) + shortcut

    stem = 3 * 64 * 7 * 7 + bn(64)
    total = stem + unit(64, 64, 8) + unit(256, 128, 8) + (512 * 5 + 5)  # both first units attend over 8 x 8 maps
    assert count_params(tiny_resnet()) == total == 365_925


def test_axial_vit_forward_flops_by_hand():
    N, D, M, K, P = 16, 16, 32, 5, 4
    attention = N * D * 3 * D + N * D * D + 4 * (2 * 4 * 4 * D)  # qkv, proj; 4 sequences of 4: q k^T and a v
    block = 2 * attention + 2 * (2 * N * D * M)
    macs = N * D * 3 * P * P + 2 * block + D * K
    assert describe("Axial-ViT-B/16", **TINY_VIT)["gflops"] * 1e9 == pytest.approx(2 * macs)


def _changed(out: torch.Tensor, ref: torch.Tensor) -> set[tuple[int, int]]:
    """The (row, column) of every token (B=1, 4*4 grid) that `out` changes."""
    diff = (out - ref).abs().amax(-1)[0].reshape(4, 4)
    return {(int(r), int(c)) for r, c in (diff > 1e-6).nonzero()}


def test_row_attention_mixes_within_rows_and_column_attention_within_columns():
    """Perturb the patch at (1, 2): through the block with its column half silenced only row 1 changes; with its row
    half silenced only column 2; through the whole block every token (row, then column)."""
    model = tiny_vit(depth=1).eval()
    blk = model.blocks[0]
    x = torch.randn(1, 16, 16)
    x2 = x.clone()
    x2[0, 1 * 4 + 2] += torch.randn(16)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        assert _changed(blk(x2), blk(x)) == {(r, c) for r in range(4) for c in range(4)}
        saved = {k: v.clone() for k, v in blk.state_dict().items()}
        for lin in (blk.col_attn.proj, blk.col_mlp.fc2):
            lin.weight.zero_(), lin.bias.zero_()
        assert _changed(blk(x2), blk(x)) == {(1, c) for c in range(4)}
        blk.load_state_dict(saved)
        for lin in (blk.row_attn.proj, blk.row_mlp.fc2):
            lin.weight.zero_(), lin.bias.zero_()
        assert _changed(blk(x2), blk(x)) == {(r, 2) for r in range(4)}


def test_rows_and_columns_of_the_grid():
    x = torch.arange(6).float().reshape(1, 6, 1).expand(2, 6, 3).contiguous()  # a 2 x 3 grid, raster order
    assert rows_of(x, (2, 3))[1, :, 0].tolist() == [3, 4, 5]
    assert columns_of(x, (2, 3))[1, :, 0].tolist() == [1, 4]
    assert torch.equal(from_columns(columns_of(x, (2, 3)), (2, 3)), x)


@pytest.mark.parametrize("axis, changed", [("height", "column"), ("width", "row")])
def test_axial_resnet_attention_mixes_along_its_axis(axis, changed):
    torch.manual_seed(0)
    attn = AxialAttention(16, 2, 5, axis).eval()
    x = torch.randn(1, 16, 5, 6)  # a span of 5: the width axis's 6 clips its relative distances
    x2 = x.clone()
    x2[0, :, 3, 4] += torch.randn(16)
    with torch.no_grad():
        diff = (attn(x2) - attn(x)).abs().amax(1)[0]  # (H, W)
    where = {(int(i), int(j)) for i, j in (diff > 1e-6).nonzero()}
    assert where == ({(i, 4) for i in range(5)} if changed == "column" else {(3, j) for j in range(6)})


def test_relative_positions_are_learned_and_clipped():
    attn = AxialAttention(16, 2, 3, "height")
    rel = attn.relative(5)  # (2 dq + dv, 5, 5): distances beyond +-2 take the +-2 entries
    table = attn.rel_pos_embed
    assert torch.equal(rel[:, 4, 0], table[:, 4]) and torch.equal(rel[:, 0, 4], table[:, 0])
    assert torch.equal(rel[:, 2, 2], table[:, 2]) and torch.equal(rel[:, 3, 1], table[:, 4])


@pytest.mark.parametrize("build", [tiny_vit, tiny_resnet])
def test_a_training_step_lowers_the_loss(build):
    model = build().train()
    size = model.config.image_size
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, size, size), torch.randint(0, 5, (8,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("build", [tiny_vit, tiny_resnet])
def test_vitkit_format_round_trip_gives_identical_logits(build, tmp_path):
    model = build().eval()
    size = model.config.image_size
    x = torch.randn(2, 3, size, size)
    for path in (tmp_path / "dir", tmp_path / "one.safetensors"):
        vitkit.save_model(model, path)
        back = vitkit.load_model(path).eval()
        assert type(back) is type(model) and back.config == model.config
        assert torch.equal(back(x), model(x))
    for fmt in ("timm", "hf", "npz"):
        with pytest.raises(CheckpointError, match=f"{type(model).__name__} can be saved as vitkit only"):
            vitkit.save_model(model, tmp_path / f"out-{fmt}", format=fmt)


def test_config_records_round_trip():
    for cfg in (model_config("Axial-ViT-B/32", image_size=(32, 64)), model_config("AxialResNet50", image_size=(32, 64))):
        d = config_to_dict(cfg)
        assert d["arch"] in ("axial_vit", "axial_resnet") and config_from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"unknown Axial-ViT config keys \['foo'\]"):
        config_from_dict({**config_to_dict(model_config("Axial-ViT-B/16")), "foo": 1})
    with pytest.raises(ValueError, match=r"unknown AxialResNet config keys \['width'\]"):
        config_from_dict({**config_to_dict(model_config("AxialResNet50")), "width": 64})


def test_registry_names_and_aliases():
    assert {"Axial-ViT-B/16", "Axial-ViT-B/32", "AxialResNet50"} <= set(list_models())
    assert list_models("axial*") == ["Axial-ViT-B/16", "Axial-ViT-B/32", "AxialResNet50"]
    for alias, name in [("axial-vit-b/16", "Axial-ViT-B/16"), ("Axial-ViT-B_32", "Axial-ViT-B/32"),
                        ("axial_vit_b16", "Axial-ViT-B/16"), ("axialresnet50", "AxialResNet50"),
                        ("axial_resnet50", "AxialResNet50"), ("Axial-ResNet-50", "AxialResNet50")]:
        assert _canonical(alias) == name, alias
    assert isinstance(model_config("Axial-ViT-B/16"), AxialViTConfig) and model_config("Axial-ViT-B/16").patch_size == 16
    assert model_config("Axial-ViT-B/32").width == 768 and model_config("AxialResNet50").layers == (3, 4, 6, 3)
    assert model_config("Axial-ViT-B/16", depth=2).name == "Axial-ViT-B/16, modified (depth=2)"
    with pytest.raises(ValueError, match="close to it: Axial-ViT-B/16"):
        _canonical("Axial-ViT-B/61")
    with pytest.raises(ValueError, match=r"AxialResNet50: unknown option\(s\) \['patch_size'\]"):
        model_config("AxialResNet50", patch_size=16)


@pytest.mark.parametrize("kw, match", [
    (dict(pool="token"), "pool='token'.*use pool='gap'"),
    (dict(class_token=True), "class_token=True"),
    (dict(posemb="rope"), "posemb='rope'"),
    (dict(heads=5), "not divisible by heads 5"),
    (dict(image_size=18), "not divisible by the patch size 4"),
    (dict(width=0), "width"),
    (dict(drop_path=1.0), "drop_path"),
])
def test_axial_vit_config_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        AxialViTConfig(**{**TINY_VIT, **kw})


@pytest.mark.parametrize("kw, match", [
    (dict(heads=3), "heads=3"), (dict(layers=()), "layers"), (dict(width_factor=0), "width_factor"),
    (dict(image_size=0), "image_size"), (dict(zero_head="yes"), "zero_head"),
])
def test_axial_resnet_config_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        AxialResNetConfig(**{**TINY_RESNET, **kw})


def test_fast_paths_leave_axial_models_alone():
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    assert torch.equal(accelerate(model)(x), ref)
    assert torch.allclose(InferenceModel(model, "fp32")(x), ref, atol=1e-6)
    res = tiny_resnet().eval()
    xr = torch.randn(2, 3, 32, 32)
    assert torch.allclose(InferenceModel(res, "fp32")(xr), res(xr), atol=1e-6)


def test_axial_vit_set_image_size_resamples_the_position_embedding():
    model = tiny_vit()
    model.set_image_size(32)
    assert model.pos_embed.shape == (1, 64, 16) and model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="patch size 4"):
        model.set_image_size(30)


def test_every_recipe_resolves_for_the_axial_models():
    from vitkit.recipes import RECIPES, build

    for recipe in RECIPES:
        vit = build(recipe, ["model.name=Axial-ViT-B/16"]).model
        assert vit.name == "Axial-ViT-B/16"
        model_config(vit.name, **vit.overrides())  # the recipe's ViT options are Axial-ViT's
        if recipe.startswith("mpp"):
            with pytest.raises(ValueError, match="has no patches"):
                build(recipe, ["model.name=AxialResNet50"])
            continue
        res = build(recipe, ["model.name=AxialResNet50"]).model
        model_config(res.name, **res.overrides())
        assert res.overrides() == {}, recipe  # none of a recipe's ViT options reach a ResNet
    jft = build("jft", ["model.name=Axial-ViT-B/32"])
    assert jft.optim.lr == 8e-4 and jft.model.representation_size == 768  # ViT-B/32's row of table 3
    assert build("jft", ["model.name=AxialResNet50"]).optim.lr == 1e-3  # R50x1's


def test_masked_patch_prediction_trains_an_axial_vit():
    from vitkit.objectives.mpp import MaskedPatchPrediction

    model = tiny_vit(num_classes=0)
    mpp = MaskedPatchPrediction(16, 4, 3)
    loss, metrics = mpp(model, torch.randn(2, 3, 16, 16), None, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.patch_embed.proj.weight.grad is not None
