import json
import math
import re

import pytest
import torch

import vitkit
from vitkit.models import ViTConfig, list_models, model_config
from vitkit.models.posemb import resample_posemb, sincos_2d
from vitkit.models.resnet import ResNetConfig, StdConv2d, pad_same

TINY = dict(width=32, depth=2, heads=2, mlp_dim=64)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ViT-B/16", 86_567_656),
        ("ViT-L/16", 304_326_632),
        ("ViT-H/14", 632_045_800),
        ("ViT-S/16", 22_050_664),
        ("ViT-Ti/16", 5_717_416),
        ("R50+ViT-B/16", 98_659_112),
    ],
)
def test_param_counts_match_official(name, expected):
    # the official code's own test, at 224 px, 3 channels, 1000 classes; built on meta, nothing allocated
    assert vitkit.describe(name)["params"] == expected


def test_flops_vit_b16():
    # ViT-B/16 is 17.6 GMACs per 224 image (anchors.md)
    assert vitkit.describe("ViT-B/16")["gmacs"] == pytest.approx(17.56, abs=0.01)


@pytest.mark.parametrize("name", list_models())
def test_every_variant_shapes_on_meta(name):
    with torch.device("meta"):
        model = vitkit.create_model(name, num_classes=7)
        out = model.eval()(torch.empty(2, 3, 224, 224))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", [n for n in list_models() if "ViT" in n])
def test_every_vit_variant_runs_tiny(name):
    cfg = model_config(name)
    stride = cfg.patch_size * (cfg.resnet.stride if cfg.resnet else 1)
    model = vitkit.create_model(name, num_classes=5, image_size=2 * stride, **TINY).eval()
    x = torch.randn(2, 3, 2 * stride, 2 * stride)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5)
    assert model.forward_features(x).shape == (2, 4 + model.num_prefix_tokens, 32)  # Axial-ViT: no class token


def test_bit_r50x1_runs():
    assert vitkit.create_model("R50x1", num_classes=3, zero_head=False).head.weight.abs().sum() > 0
    model = vitkit.create_model("R50x1", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
        # head is zero-initialised, so logits start at zero
        assert model(torch.randn(1, 3, 64, 64)).abs().max() == 0


def test_grayscale_28px_patch4():
    model = vitkit.create_model("ViT-Ti/16", patch_size=4, image_size=28, in_chans=1, num_classes=10, **TINY)
    assert model.config.grid == (7, 7)
    assert model.pos_embed.shape == (1, 50, 32)
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)


def test_name_aliases():
    assert model_config("vit-b/16").name == "ViT-B/16"
    assert model_config("ViT-B_16").name == "ViT-B/16"
    assert model_config("B/16").patch_size == 16
    assert model_config("R50+ViT-B_16").resnet.layers == (3, 4, 9)


def test_bad_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'ViT-Q/16'.*ViT-B/16"):
        vitkit.create_model("ViT-Q/16")


def test_bad_config_values_are_named():
    for kw, msg in ((dict(pool="max"), r"pool='max' is not one of \('token', 'gap'\)"),
                    (dict(pool="token", class_token=False), r"^pool='token' needs class_token=True; use pool='gap' for a model without one$"),
                    (dict(width=30, heads=4), "width 30 is not divisible by heads 4")):
        with pytest.raises(ValueError, match=msg):
            vitkit.create_model("ViT-Ti/16", **kw)
    assert vitkit.create_model("ViT-Ti/16", pool="gap", **TINY).cls_token is None  # gap: no class token by default


def test_normal_forward_uses_fused_attention_and_analysis_the_explicit_one(monkeypatch):
    import vitkit.models.vit as vit

    model = vitkit.create_model("ViT-Ti/16", image_size=16, patch_size=8, **TINY).eval()
    fused = []
    real = vit.F.scaled_dot_product_attention
    monkeypatch.setattr(vit.F, "scaled_dot_product_attention", lambda *a, **k: fused.append(1) or real(*a, **k))
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 16))
        assert len(fused) == 2
        model.forward_intermediates(torch.randn(1, 3, 16, 16))
        assert len(fused) == 2  # the softmax is computed explicitly there, for its weights


def test_grayscale_hybrid_and_std_conv_defaults():
    model = vitkit.create_model("R+ViT-Ti/16", image_size=32, in_chans=1, num_classes=2, **TINY)
    assert model.patch_embed.backbone.conv_root.weight.shape[1] == 1
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2)
    conv = StdConv2d(3, 4, 3)
    assert conv.eps == 1e-5 and conv.same is False and conv.padding == (1, 1)  # the official eps, symmetric padding


def test_bad_option_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown option.*'widht'.*valid options"):
        vitkit.create_model("ViT-B/16", widht=3)


def test_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match="image size 100 is not divisible by the patch size 16; valid sizes near it: 80, 96, 112, 128$"):
        vitkit.create_model("ViT-B/16", image_size=100)
    with pytest.raises(ValueError, match=r"image size \(96, 100\) is not divisible"):  # the width alone
        vitkit.create_model("ViT-B/16", image_size=(96, 100))
    with pytest.raises(ValueError, match="valid sizes near it: 16, 32, 48$"):  # never below one patch
        vitkit.create_model("ViT-B/16", image_size=20)
    with pytest.raises(ValueError, match="hybrid's total stride 16"):
        vitkit.create_model("R50+ViT-B/16", image_size=40)


def test_wrong_input_size_is_explained():
    model = vitkit.create_model("ViT-Ti/16", image_size=32, **TINY)
    with pytest.raises(ValueError, match=r"input is \(48, 40\) pixels but the model was built for \(32, 32\).*"
                                         r"set_image_size\(\(48, 40\)\)"):
        model(torch.randn(1, 3, 48, 40))


@pytest.mark.parametrize("kw", [{}, dict(pool="gap", fc_norm=True, class_token=True)])
def test_fast_path_equals_analysis_path(kw):
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Ti/16", image_size=32, patch_size=8, num_classes=4, zero_head=False, **TINY, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # LayerNorms away from the identity: a skipped norm shows
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = model(x)
        inter = model.forward_intermediates(x)
    torch.testing.assert_close(inter["logits"], fast, atol=1e-5, rtol=1e-5)
    assert len(inter["attn"]) == 2 and inter["attn"][0].shape == (2, 2, 17, 17)
    assert len(inter["tokens"]) == 3 and inter["tokens"][-1].shape == (2, 17, 32)
    torch.testing.assert_close(inter["attn"][1].sum(-1), torch.ones(2, 2, 17))


def test_gap_and_token_pooling():
    torch.manual_seed(0)
    tok = vitkit.create_model("ViT-Ti/16", image_size=32, patch_size=8, zero_head=False, **TINY).eval()
    gap = vitkit.create_model("ViT-Ti/16", image_size=32, patch_size=8, pool="gap", zero_head=False, **TINY).eval()
    assert tok.cls_token is not None and gap.cls_token is None
    assert gap.pos_embed.shape[1] == 16 and tok.pos_embed.shape[1] == 17
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = gap.forward_features(x)
        torch.testing.assert_close(gap.forward_head(feats, pre_logits=True), feats.mean(1))
        feats = tok.forward_features(x)
        torch.testing.assert_close(tok.forward_head(feats, pre_logits=True), feats[:, 0])
    # GAP with a class token (timm style): the mean excludes the class token
    both = vitkit.create_model("ViT-Ti/16", image_size=32, patch_size=8, pool="gap", class_token=True, **TINY).eval()
    with torch.no_grad():
        feats = both.forward_features(x)
        torch.testing.assert_close(both.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))


def test_pre_logits_layer_and_zero_head():
    model = vitkit.create_model("ViT-Ti/16", image_size=32, representation_size=24, num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        rep = model.forward_head(model.forward_features(x), pre_logits=True)
        assert rep.shape == (2, 24) and rep.abs().max() <= 1  # tanh
        assert model(x).abs().max() == 0  # zero-initialised head
    model.reset_head(num_classes=6, zero=False)
    with torch.no_grad():
        assert model(x).shape == (2, 6) and model(x).abs().max() > 0


def test_posemb_options():
    x = torch.randn(1, 3, 32, 32)
    sc = vitkit.create_model("ViT-Ti/16", image_size=32, patch_size=8, posemb="sincos2d", **TINY)
    assert sc.pos_embed is None and sc.pos_embed_fixed.shape == (1, 17, 32)
    assert "pos_embed_fixed" not in sc.state_dict()  # fixed, rebuilt from the config
    none = vitkit.create_model("ViT-Ti/16", image_size=32, patch_size=8, posemb="none", **TINY)
    assert none.pos_embed is None
    for m in (sc, none):
        assert m(x).shape == (1, 1000)
    with pytest.raises(ValueError, match="posemb='rope' is not one of"):
        vitkit.create_model("ViT-Ti/16", posemb="rope")


def test_sincos_table():
    # big_vision's posemb_sincos_2d written out: omega_k = 1 / 10000^(k / (width/4 - 1)), the row of patch (y, x)
    # is [sin(x w_k)..., cos(x w_k)..., sin(y w_k)..., cos(y w_k)...]; width 12: w = 1, 1e-2, 1e-4
    pe = sincos_2d((2, 3), 12).double()
    assert pe.shape == (6, 12)
    for y in range(2):
        for x in range(3):
            w = [1.0, 1e-2, 1e-4]
            want = ([math.sin(x * o) for o in w] + [math.cos(x * o) for o in w]
                    + [math.sin(y * o) for o in w] + [math.cos(y * o) for o in w])
            torch.testing.assert_close(pe[y * 3 + x], torch.tensor(want, dtype=torch.float64), atol=2e-7, rtol=0)
    # width 4: one frequency, 1
    torch.testing.assert_close(sincos_2d((1, 2), 4)[1], torch.tensor([math.sin(1), math.cos(1), 0.0, 1.0]))
    with pytest.raises(ValueError, match="width divisible by 4, got 10"):
        sincos_2d((2, 2), 10)


def test_resample_keeps_dtype_takes_2d_and_non_square_grids():
    ys, xs = torch.meshgrid(torch.arange(2.0), torch.arange(3.0), indexing="ij")
    field = torch.stack([ys, xs], -1).reshape(6, 2)  # a linear field over a 2 x 3 grid, no batch dimension
    pe = torch.cat([torch.full((1, 2), 5.0), field]).to(torch.float64)
    out = resample_posemb(pe, (3, 5), old_grid=(2, 3))
    assert out.shape == (1, 16, 2) and out.dtype == torch.float64
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 3), torch.linspace(0, 2, 5), indexing="ij")
    torch.testing.assert_close(out[0, 1:], torch.stack([ys, xs], -1).reshape(15, 2).double())
    assert resample_posemb(pe.bfloat16(), (3, 5), old_grid=(2, 3)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"has 6 patch rows but old_grid \(2, 4\) holds 8"):
        resample_posemb(pe, (3, 5), old_grid=(2, 4))
    # nearest: each new cell copies the old cell it falls in (torch's nearest takes no align_corners)
    near = resample_posemb(pe, (4, 6), old_grid=(2, 3), mode="nearest")[0, 1:].reshape(4, 6, 2)
    assert torch.equal(near[::2, ::2], field.reshape(2, 3, 2).double()) and torch.equal(near[1::2, 1::2], near[::2, ::2])


def test_resample_same_grid_is_identity_and_larger_keeps_class_token():
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 16, 8)
    torch.testing.assert_close(resample_posemb(pe, (4, 4)), pe)
    big = resample_posemb(pe, (8, 8))
    assert big.shape == (1, 65, 8)
    assert torch.equal(big[:, 0], pe[:, 0])
    # corners are kept exactly (corner-aligned bilinear, as scipy zoom order 1)
    g, bg = pe[0, 1:].reshape(4, 4, 8), big[0, 1:].reshape(8, 8, 8)
    for (i, j), (bi, bj) in [((0, 0), (0, 0)), ((0, 3), (0, 7)), ((3, 0), (7, 0)), ((3, 3), (7, 7))]:
        torch.testing.assert_close(bg[bi, bj], g[i, j])


def test_resample_interpolates_a_linear_field_exactly():
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")
    field = torch.stack([ys, xs, 2 * ys - xs], -1).reshape(1, 9, 3)
    pe = torch.cat([torch.full((1, 1, 3), 7.0), field], 1)
    out = resample_posemb(pe, (5, 5))
    ys, xs = torch.meshgrid(torch.linspace(0, 2, 5), torch.linspace(0, 2, 5), indexing="ij")
    want = torch.stack([ys, xs, 2 * ys - xs], -1).reshape(1, 25, 3)
    torch.testing.assert_close(out[:, 1:], want)
    assert torch.equal(out[:, :1], pe[:, :1])


def test_resample_rejects_non_square_without_grid():
    with pytest.raises(ValueError, match="not a square grid"):
        resample_posemb(torch.randn(1, 1 + 12, 4), (4, 4))
    with pytest.raises(ValueError, match="unknown position-embedding resample mode"):
        resample_posemb(torch.randn(1, 1 + 16, 4), (8, 8), mode="cubic")


def test_set_image_size_resamples_and_runs():
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Ti/16", image_size=32, patch_size=8, **TINY)
    cls_row = model.pos_embed[:, 0].clone()
    model.set_image_size(64)
    assert model.config.image_size == 64 and model.config.grid == (8, 8)
    assert model.pos_embed.shape == (1, 65, 32)
    assert torch.equal(model.pos_embed[:, 0], cls_row)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    model.set_image_size((32, 48))
    assert model(torch.randn(1, 3, 32, 48)).shape == (1, 1000)
    with pytest.raises(ValueError, match="not divisible"):
        model.set_image_size(30)


@pytest.mark.parametrize("need_weights", [False, True])  # torch's fused attention, and the explicit softmax
def test_attention_dropout_only_in_training(need_weights):
    torch.manual_seed(0)
    attn = vitkit.models.vit.Attention(16, 2, qkv_bias=True, attn_drop=0.5, proj_drop=0.0)
    x = torch.randn(2, 5, 16)
    attn.eval()
    ref, w = attn(x, need_weights=need_weights)
    assert (w is None) != need_weights
    torch.testing.assert_close(attn(x, need_weights=need_weights)[0], ref)  # eval: deterministic, no dropout
    if need_weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 5))
    attn.train()
    a, b = attn(x, need_weights=need_weights)[0], attn(x, need_weights=need_weights)[0]
    assert not torch.allclose(a, b) and not torch.allclose(a, ref)  # training: random masks
    attn.attn_drop = 0.0
    torch.testing.assert_close(attn(x, need_weights=need_weights)[0], ref)  # p = 0 in training: nothing dropped


def test_grad_checkpointing_recomputes_blocks_only_when_training_with_grad():
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Ti/16", image_size=16, patch_size=8, num_classes=3, zero_head=False, **TINY)
    calls = []
    for blk in model.blocks:
        blk.register_forward_pre_hook(lambda *_: calls.append(1))  # a recompute may stop early: count starts
    x = torch.randn(2, 3, 16, 16)

    def run(train, ckpt):
        calls.clear()
        model.train(train)
        model.set_grad_checkpointing(ckpt)
        model.zero_grad()
        torch.manual_seed(1)
        model(x).sum().backward()
        return len(calls), [p.grad.clone() for p in model.parameters()]

    assert model.grad_checkpointing is False
    model.set_grad_checkpointing()  # on, as timm's
    assert model.grad_checkpointing is True
    n_plain, g_plain = run(True, False)
    n_ckpt, g_ckpt = run(True, True)
    assert n_plain == 2 and n_ckpt == 4  # each block recomputed once in the backward pass
    for a, b in zip(g_plain, g_ckpt):
        torch.testing.assert_close(a, b)
    assert run(False, True)[0] == 2  # evaluation never checkpoints
    with torch.no_grad():
        model.train()
        calls.clear()
        model(x)
        assert len(calls) == 2


def test_dropout_and_drop_path_only_in_training():
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Ti/16", image_size=32, patch_size=8, dropout=0.2, attn_dropout=0.1,
                                drop_path=0.3, zero_head=False, **TINY)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    assert model.blocks[0].drop_path.p == 0 and model.blocks[-1].drop_path.p == pytest.approx(0.3)


def test_qkv_bias_and_ln_eps_options():
    model = vitkit.create_model("ViT-Ti/16", image_size=32, qkv_bias=False, ln_eps=1e-12, **TINY)
    assert model.blocks[0].attn.qkv.bias is None
    assert model.norm.eps == 1e-12


def test_config_round_trips_through_json():
    cfg = model_config("R26+ViT-S/32", image_size=(64, 96), num_classes=3)
    back = ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(ValueError, match="unknown ViT config keys"):
        ViTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_official_init():
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-S/16", image_size=32)
    assert model.cls_token.abs().max() == 0
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.head.weight.abs().max() == 0
    # Xavier-uniform per q/k/v: bound sqrt(6 / (D + D))
    bound = (6 / (2 * 384)) ** 0.5
    assert model.blocks[0].attn.qkv.weight.abs().max() <= bound


def test_std_conv_standardises_weights():
    torch.manual_seed(0)
    conv = StdConv2d(3, 4, 3, eps=0.0)
    w = conv.standardized_weight()
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.std(dim=(1, 2, 3), unbiased=False), torch.ones(4))
    # vit_jax's (w - mean) / (std + eps), worked by hand: a filter +-a has std a; with eps = a it becomes +-1/2
    small = StdConv2d(2, 1, 1, eps=1e-3)
    with torch.no_grad():
        small.weight.copy_(torch.tensor([1e-3, -1e-3]).reshape(1, 2, 1, 1))
    torch.testing.assert_close(small.standardized_weight().flatten(), torch.tensor([0.5, -0.5]))


def test_pad_same_matches_tf():
    x = torch.zeros(1, 1, 224, 224)
    assert pad_same(x, 7, 2).shape[-2:] == (229, 229)  # 2 left, 3 right
    assert pad_same(torch.zeros(1, 1, 56, 56), 3, 2).shape[-2:] == (57, 57)  # 0 left, 1 right
    assert pad_same(torch.zeros(1, 1, 56, 56), 1, 2).shape[-2:] == (56, 56)
    # only the width needs a pixel here (h 4, w 3, kernel 2, stride 2): it goes right, with the value given
    out = pad_same(torch.ones(1, 1, 4, 3), 2, 2, value=-1.0)
    assert out.shape[-2:] == (4, 4) and (out[..., :3] == 1).all() and (out[..., 3] == -1).all()


def _timm_bit_to_vitkit(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace("stem.conv.", "conv_root.").replace("head.fc.", "head.").replace(".downsample.conv.", ".downsample.")
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.norm(\d)\.", r"stages.\1.\2.gn\3.", k)
        out[re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)] = v
    return out


@pytest.mark.parametrize("size", [32, 45])  # 45: odd sizes through every stride-2 stage
def test_bit_matches_timms_resnetv2(size):
    """The paper's BiT baseline against timm's ResNet-v2 (BiT) with the same weights, head included."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("resnetv2_50x1_bit", num_classes=5).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = vitkit.create_model("R50x1", num_classes=5, zero_head=False).eval()
    model.load_state_dict(_timm_bit_to_vitkit(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True), atol=5e-4, rtol=1e-3)


def test_resnet_eps_options_reach_every_layer():
    cfg = ResNetConfig(layers=(1, 1), ws_eps=3e-7, gn_eps=4e-6)
    model = vitkit.create_model("R50+ViT-B/16", image_size=32, num_classes=2, resnet=cfg, **TINY)
    convs = [m for m in model.modules() if isinstance(m, StdConv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(convs) == 1 + 2 * 3 + 2 and {m.eps for m in convs} == {3e-7}  # root, 3 per unit, 2 projections
    assert len(norms) == 1 + 2 * 3 + 2 and {m.eps for m in norms} == {4e-6}
    bit = vitkit.create_model("R50x1", num_classes=2, ws_eps=2e-7)
    assert {m.eps for m in bit.modules() if isinstance(m, StdConv2d)} == {2e-7}
    assert {m.eps for m in bit.modules() if isinstance(m, torch.nn.GroupNorm)} == {1e-5}  # BiT's GroupNorm


def test_hybrid_feature_grid():
    model = vitkit.create_model("R50+ViT-B/16", image_size=64, num_classes=2, **TINY).eval()
    assert model.patch_embed.backbone.out_channels == 1024
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 17, 32)


def test_drop_path_keeps_the_expectation():
    """Stochastic depth drops a sample's branch with probability p and scales the rest by 1 / (1 - p), so the
    expected output is the input (without the rescale it would be 0.7 of it for p = 0.3)."""
    from torchvision.ops import StochasticDepth

    torch.manual_seed(0)
    dp = StochasticDepth(0.3, mode="row").train()  # what every Block holds as drop_path
    y = dp(torch.ones(200_000, 2, 3))
    kept = y[:, 0, 0] != 0
    assert abs(y.mean().item() - 1.0) < 0.01 and abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))  # whole samples, one factor
    assert torch.equal(dp.eval()(torch.ones(4, 2, 3)), torch.ones(4, 2, 3))
    # the rate grows linearly with depth, from 0 at the first block to drop_path at the last
    model = vitkit.create_model("ViT-Ti/16", image_size=16, patch_size=8, drop_path=0.2, dropout=0.3, width=32, depth=3,
                                heads=2, mlp_dim=64)
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    assert model.blocks[0].attn.proj_drop.p == 0.3 and model.grad_checkpointing is False
    for bad in (dict(drop_path=1.0), dict(dropout=-0.1), dict(attn_dropout=1.5)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=.* is a probability in \\[0, 1\\)"):
            vitkit.create_model("ViT-Ti/16", **bad)


def test_non_square_image():
    model = vitkit.create_model("ViT-Ti/16", image_size=(16, 40), patch_size=8, num_classes=2, **TINY)
    assert model.pos_embed.shape == (1, 1 + 2 * 5, 32) and model.patch_embed.grid == (2, 5)
    assert model(torch.randn(1, 3, 16, 40)).shape == (1, 2)
    model.set_image_size((24, 40))
    assert model.patch_embed.grid == (3, 5) and model(torch.randn(1, 3, 24, 40)).shape == (1, 2)



def test_a_modified_variant_is_not_recorded_under_the_variants_name():
    assert vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=32, pool="gap", dropout=0.1).config.name == "ViT-Ti/16"
    assert vitkit.create_model("ViT-Ti/16", width=192, depth=12).config.name == "ViT-Ti/16"  # the variant's own values
    name = vitkit.create_model("ViT-Ti/16", width=32, depth=2, heads=2, mlp_dim=64, image_size=16).config.name
    assert name == "ViT-Ti/16, modified (width=32, depth=2, heads=2, mlp_dim=64)"


def test_hybrid_resnet_convolutions_start_as_the_official_code_s():
    """Flax's default kernel init (lecun_normal): std sqrt(1 / fan_in), truncated at 2 std of the untruncated normal
    (sqrt(1 / fan_in) / 0.8796); PyTorch's default uniform would give std 0.577 x that."""
    import math

    torch.manual_seed(0)
    stem = vitkit.create_model("R50+ViT-B/16", num_classes=10).patch_embed.backbone
    convs = {"conv_root": stem.conv_root, "stage 3 conv2": stem.stages[2][0].conv2, "stage 1 proj": stem.stages[0][0].conv_proj}
    for where, conv in convs.items():
        w = conv.weight.detach()
        fan_in = w[0].numel()
        want = math.sqrt(1 / fan_in)
        assert abs(w.std().item() / want - 1) < 0.03, where
        assert w.abs().max().item() <= 2 * want / 0.8796 + 1e-6, where


def test_std_conv_on_a_one_pixel_map_trains_in_bf16():
    # a 3 x 3 stride-2 conv on a (B, C, 1, 1) channels_last input: oneDNN's bf16 weight gradient was NaN there (torch
    # 2.14), which made bf16 BiT training on 16 px digits diverge; vitkit computes it as the centre tap's 1 x 1 conv
    torch.manual_seed(0)
    conv = StdConv2d(64, 64, 3, stride=2)
    x = torch.randn(8, 64, 1, 1).to(memory_format=torch.channels_last)
    ref = torch.nn.functional.conv2d(x, conv.standardized_weight(), None, 2, 1)  # fp32, the padded form
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x.bfloat16().to(memory_format=torch.channels_last))
    y.float().square().sum().backward()
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0
    model = vitkit.create_model("R50x1", num_classes=10, image_size=16, in_chans=1, layers=(1, 1, 1, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
    for _ in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
