"""Converter parity in the directions test_convert.py leaves open, each checked against the other library or an
independent computation: vitkit -> timm read by timm itself, loading at another image size against timm's and
transformers' own position-embedding interpolation and against scipy's zoom (what the official code uses),
vitkit -> Hugging Face config fields and pooler as transformers reads them, Google .npz GAP models against NumPy."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.models.resnet import ResNetConfig

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
scipy_ndimage = pytest.importorskip("scipy.ndimage")

from test_convert import hybrid_for_timm, jitter, max_diff  # noqa: E402
from test_converter_bugs import numpy_vit_logits  # noqa: E402

TOL = 1e-4

# vitkit model (name, overrides) -> the timm model that must hold the same weights
VITKIT_TO_TIMM = {
    "class-token": (("ViT-B/16", dict(image_size=32, patch_size=8)),
                    ("vit_base_patch16_224", dict(img_size=32, patch_size=8)), 3),
    "gap-no-class-token": (("ViT-B/16", dict(image_size=32, patch_size=8, class_token=False, pool="gap", fc_norm=True)),
                           ("vit_base_patch16_224", dict(img_size=32, patch_size=8, class_token=False, global_pool="avg")), 3),
    "gap-with-class-token": (("ViT-B/16", dict(image_size=32, patch_size=8, pool="gap", fc_norm=True, class_token=True)),
                             ("vit_base_patch16_224", dict(img_size=32, patch_size=8, global_pool="avg")), 3),
    "no-qkv-bias-grayscale": (("ViT-B/16", dict(image_size=28, patch_size=4, in_chans=1, qkv_bias=False)),
                              ("vit_base_patch16_224", dict(img_size=28, patch_size=4, in_chans=1, qkv_bias=False)), 1),
    "r-ti-hybrid": (("R+ViT-Ti/16", dict(image_size=64, resnet=ResNetConfig(layers=(), ws_eps=1e-8, gn_eps=1e-5))),
                    ("vit_tiny_r_s16_p8_224", dict(img_size=64)), 3),
    "r50-hybrid": (("R50+ViT-B/16", dict(image_size=64, **hybrid_for_timm())), ("vit_base_r50_s16_224", dict(img_size=64)), 3),
    # 80 px: the root's 40 x 40 output needs 1 pixel of SAME padding before the 3x3/2 max-pool (/3 would need 2)
    "r50-hybrid-80px": (("R50+ViT-B/16", dict(image_size=80, **hybrid_for_timm())), ("vit_base_r50_s16_224", dict(img_size=80)), 3),
}


@pytest.mark.parametrize("case", sorted(VITKIT_TO_TIMM))
def test_vitkit_to_timm_read_by_timm(case, tmp_path):
    (name, kw), (arch, tkw), chans = VITKIT_TO_TIMM[case]
    torch.manual_seed(0)
    model = jitter(vitkit.create_model(name, width=64, depth=2, heads=4, mlp_dim=128, num_classes=5, **kw))
    path = vitkit.save_model(model, tmp_path / "m.safetensors", format="timm")
    ref = timm.create_model(arch, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2, num_classes=5, **tkw).eval()
    ref.load_state_dict(load_file(str(path)), strict=True)  # every tensor timm has, no extras
    size = kw["image_size"]
    assert max_diff(ref, model, torch.randn(2, chans, size, size)) <= TOL


def test_vitkit_pre_logits_to_timm_is_dropped_with_a_note(tmp_path):
    model = jitter(vitkit.create_model("ViT-B/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=8,
                                       num_classes=3, representation_size=32))
    with pytest.warns(UserWarning, match="m.safetensors: timm's VisionTransformer has no pre-logits layer: pre_logits dropped"):
        path = vitkit.save_model(model, tmp_path / "m.safetensors", format="timm")
    keys = load_file(str(path)).keys()
    assert not any(k.startswith("pre_logits") for k in keys) and {"head.weight", "head.bias", "norm.weight"} <= keys


# --- another image size: each library's own interpolation is the reference ---------------------------------


@pytest.mark.parametrize("no_embed_class", [False, True])
def test_timm_at_larger_image_size_matches_timms_resampling(no_embed_class, tmp_path):
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    torch.manual_seed(0)
    small = jitter(VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2,
                                     num_classes=3, no_embed_class=no_embed_class), scale=0.5)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    big = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2, num_classes=3,
                            no_embed_class=no_embed_class).eval()
    big.load_state_dict(checkpoint_filter_fn(small.state_dict(), big))  # timm resamples bicubic, class row kept
    model = vitkit.load_model(path, heads=2, image_size=32, resample_mode="bicubic-antialias").eval()
    assert model.pos_embed.shape == (1, 65, 32)
    assert max_diff(big, model, torch.randn(2, 3, 32, 32)) <= TOL


def test_hf_at_larger_image_size_matches_interpolate_pos_encoding(tmp_path):
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4, num_labels=3)
    ref = jitter(transformers.ViTForImageClassification(cfg), scale=0.5)
    ref.save_pretrained(tmp_path / "hf")
    model = vitkit.load_model(tmp_path / "hf", image_size=32, resample_mode="bicubic").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x, interpolate_pos_encoding=True).logits, atol=TOL, rtol=0)


def test_npz_at_larger_image_size_is_scipy_zoom_order_1(tmp_path):
    """The official fine-tuning code resizes the grid with scipy.ndimage.zoom(order=1); vitkit's default is that."""
    model = jitter(vitkit.create_model("ViT-B/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=4,
                                       num_classes=3), scale=0.5)
    path = vitkit.save_model(model, tmp_path / "m.npz", format="npz")
    big = vitkit.load_model(path, image_size=28)  # 4x4 -> 7x7: a zoom factor that is no integer
    pe = model.pos_embed.detach().numpy()[0]
    grid = pe[1:].reshape(4, 4, 32)
    zoomed = scipy_ndimage.zoom(grid, (7 / 4, 7 / 4, 1), order=1).reshape(49, 32)
    expected = np.concatenate([pe[:1], zoomed])
    np.testing.assert_allclose(big.pos_embed.detach().numpy()[0], expected, atol=1e-5)


# --- vitkit -> Hugging Face: what transformers reads -----------------------------------------------------


def test_vitkit_to_hf_config_fields_as_transformers_reads_them(tmp_path):
    model = jitter(vitkit.create_model("ViT-B/16", width=32, depth=2, heads=2, mlp_dim=48, image_size=24, patch_size=8,
                                       num_classes=3, ln_eps=1e-3, dropout=0.1, attn_dropout=0.25, qkv_bias=False,
                                       in_chans=1), scale=0.5)
    vitkit.save_model(model, tmp_path / "out", format="hf")
    c = transformers.ViTConfig.from_pretrained(tmp_path / "out")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (32, 2, 2, 48)
    assert (c.image_size, c.patch_size, c.num_channels, c.qkv_bias) == (24, 8, 1, False)
    assert (c.layer_norm_eps, c.hidden_dropout_prob, c.attention_probs_dropout_prob) == (1e-3, 0.1, 0.25)
    ref = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert max_diff(ref, model.eval(), torch.randn(2, 1, 24, 24)) <= TOL  # eps 1e-3 matters at this scale


def test_vitkit_pre_logits_without_head_to_hf_pooler(tmp_path):
    model = jitter(vitkit.create_model("ViT-B/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=8,
                                       num_classes=0, representation_size=32), scale=0.5).eval()
    vitkit.save_model(model, tmp_path / "out", format="hf")
    ref = transformers.ViTModel.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ref(x).pooler_output, model(x), atol=TOL, rtol=0)


# --- Google .npz, GAP classifier: NumPy from the paper's equations -----------------------------------------


def test_npz_gap_model_matches_numpy(tmp_path):
    from test_converter_bugs import vit_jax_arrays

    rng = np.random.default_rng(3)
    w = vit_jax_arrays(rng)
    del w["cls"], w["pre_logits/kernel"], w["pre_logits/bias"]
    w["Transformer/posembed_input/pos_embedding"] = w["Transformer/posembed_input/pos_embedding"][:, 1:]
    w["head/kernel"] = (rng.standard_normal((16, 5)) * 0.3).astype(np.float32)
    np.savez(tmp_path / "gap.npz", **w)
    model = vitkit.load_model(tmp_path / "gap.npz").eval()
    assert not model.config.class_token and model.config.pool == "gap"
    images = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, numpy_vit_logits(w, images, patch=4), atol=1e-4)


# --- models whose position embedding is not a learned table -----------------------------------------------


@pytest.mark.parametrize("posemb", ["none", "sincos2d", "learned2d"])
def test_fixed_or_no_position_embedding_to_every_outside_format(posemb, tmp_path):
    # learned2d (appendix D.4's X and Y tables) goes out as the 1-D table it adds: the same logits in every library
    from timm.models.vision_transformer import _load_weights

    model = jitter(vitkit.create_model("ViT-B/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=8,
                                       num_classes=3, posemb=posemb), scale=0.5)
    x = torch.randn(2, 3, 16, 16)
    kw = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2, img_size=16, patch_size=8, num_classes=3)
    vitkit.save_model(model, tmp_path / "hf", format="hf")
    assert max_diff(transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval(), model, x) <= TOL
    vitkit.save_model(model, tmp_path / "t.safetensors", format="timm")
    ref = timm.create_model("vit_base_patch16_224", **kw).eval()
    ref.load_state_dict(load_file(str(tmp_path / "t.safetensors")), strict=True)
    assert max_diff(ref, model, x) <= TOL
    vitkit.save_model(model, tmp_path / "m.npz", format="npz")
    ref = timm.create_model("vit_base_patch16_224", **kw).eval()
    _load_weights(ref, str(tmp_path / "m.npz"))
    assert max_diff(ref, model, x) <= TOL
    back = vitkit.load_model(tmp_path / "m.npz")
    assert back.config.image_size == 16 and max_diff(back.eval(), model, x) <= 1e-6


# --- Hugging Face: the files transformers itself writes ----------------------------------------------------


@pytest.mark.parametrize("head", [True, False])
def test_hf_files_have_transformers_own_tensor_names(head, tmp_path):
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=8, num_labels=3)
    ref = transformers.ViTForImageClassification(cfg) if head else transformers.ViTModel(cfg)
    ref.save_pretrained(tmp_path / "ref")
    model = vitkit.load_model(tmp_path / "ref")
    vitkit.save_model(model, tmp_path / "out", format="hf")
    assert load_file(str(tmp_path / "out" / "model.safetensors")).keys() == load_file(str(tmp_path / "ref" / "model.safetensors")).keys()


def test_hf_refuses_what_it_cannot_hold(tmp_path):
    from vitkit.convert import CheckpointError

    small = dict(width=32, depth=1, heads=2, mlp_dim=64, image_size=32, num_classes=2)
    cases = [
        (vitkit.create_model("R+ViT-Ti/16", **small), r"^Hugging Face's ViT has no hybrid \(ResNet\) stem; save hybrids as vitkit, timm or npz$"),
        (vitkit.create_model("ViT-Ti/16", pool="gap", **small),
         r"^Hugging Face's ViT has no global-average-pooling head \(pool='gap'\).*a GAP model cannot be written in its format; "
         r"save it as vitkit, timm or npz"),
        (vitkit.create_model("ViT-Ti/16", pool="gap", class_token=True, fc_norm=True, **small), "a GAP model cannot"),
        (vitkit.create_model("ViT-Ti/16", pool="gap", class_token=True, **small), "a GAP model cannot"),  # no fc_norm either
        (vitkit.create_model("ViT-Ti/16", representation_size=32, **small),
         r"no pre-logits layer; load with drop_pre_logits=True or save with num_classes=0 \(a ViTModel whose pooler"),
    ]
    for model, msg in cases:
        with pytest.raises(CheckpointError, match=msg):
            vitkit.save_model(model, tmp_path / "hf", format="hf")
        assert not (tmp_path / "hf").exists()


def test_hf_unknown_tensors_are_reported_not_dropped(tmp_path):
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=8, num_labels=3)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "hf")
    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    sd["vit.encoder.layer.0.attention.extra.weight"] = torch.ones(2)
    sd["vit.something_else"] = torch.ones(2)
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(vitkit.CheckpointError, match="has no place for"):
        vitkit.load(tmp_path / "hf")  # exact by default (issue 22)
    model, card = vitkit.load(tmp_path / "hf", strict=False)
    assert set(card.report.unexpected) == {"encoder.layer.0.attention.extra.weight", "something_else"}
    # labels keyed by int (as some hand-written configs have) read as well as by str
    from vitkit.convert.hf import class_names_from_hf

    assert class_names_from_hf({"id2label": {0: "a", 1: "b"}}) == ["a", "b"]
    assert class_names_from_hf({"id2label": {"0": "a", "1": "b"}}) == ["a", "b"]


def test_timm_heads_from_width():
    from vitkit.convert.timm import guess_heads

    heads = [guess_heads(w, "x") for w in (192, 384, 768, 1024, 1280, 128, 320, 2048)]
    assert heads == [3, 6, 12, 16, 16, 2, 5, 32] and all(type(h) is int for h in heads)


def test_hf_config_defaults_are_transformers_defaults():
    """A config.json that leaves fields out means transformers' defaults: vitkit reads the same numbers."""
    from vitkit.convert.hf import config_from_hf

    ref = transformers.ViTConfig()
    for given in ({}, {"model_type": "vit"}):
        c = config_from_hf(given, "config.json")
        assert (c.image_size, c.patch_size, c.in_chans) == (ref.image_size, ref.patch_size, ref.num_channels)
        assert (c.width, c.depth, c.heads, c.mlp_dim) == (ref.hidden_size, ref.num_hidden_layers, ref.num_attention_heads,
                                                          ref.intermediate_size)
        assert (c.ln_eps, c.qkv_bias) == (ref.layer_norm_eps, ref.qkv_bias)
        assert (c.dropout, c.attn_dropout) == (ref.hidden_dropout_prob, ref.attention_probs_dropout_prob)
        assert c.pool == "token" and c.class_token is True and c.num_classes == 0


def test_hf_config_refusals_are_named():
    from vitkit.convert import CheckpointError
    from vitkit.convert.hf import config_from_hf

    with pytest.raises(CheckpointError, match=r"cfg.json: model_type 'deit' is not a plain ViT \('vit'\)"):
        config_from_hf({"model_type": "deit"}, "cfg.json")
    with pytest.raises(CheckpointError, match=r"cfg.json: hidden_act 'relu' is not supported; vitkit's MLP computes GELU"):
        config_from_hf({"hidden_act": "relu"}, "cfg.json")


@pytest.mark.parametrize("head", [True, False])
def test_hf_config_written_is_what_transformers_writes(head, tmp_path):
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=8,
              encoder_stride=8, layer_norm_eps=1e-6, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2, qkv_bias=False)
    if head:
        kw.update(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    cfg = transformers.ViTConfig(**kw)
    ref = transformers.ViTForImageClassification(cfg) if head else transformers.ViTModel(cfg)
    ref.save_pretrained(tmp_path / "ref")
    model, card = vitkit.load(tmp_path / "ref")
    vitkit.save_model(model, tmp_path / "out", format="hf", card=card)
    theirs = json.loads((tmp_path / "ref" / "config.json").read_text())
    ours = json.loads((tmp_path / "out" / "config.json").read_text())
    if not head:  # a ViTModel carries no labels; transformers still writes its two defaults
        ours.pop("id2label"), ours.pop("label2id")
    assert {k: theirs.get(k) for k in ours} == ours


def test_hf_config_square_tuple_size_and_non_square_refused(tmp_path):
    from vitkit.convert import CheckpointError

    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=(16, 16), patch_size=8,
                                num_classes=2)
    vitkit.save_model(model, tmp_path / "sq", format="hf")
    assert transformers.ViTConfig.from_pretrained(tmp_path / "sq").image_size == 16
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=(16, 32), patch_size=8,
                                num_classes=2)
    with pytest.raises(CheckpointError, match=r"holds one image_size; \(16, 32\) is not square"):
        vitkit.save_model(model, tmp_path / "ns", format="hf")


def test_timm_files_vitkit_writes_read_back_without_from(tmp_path):
    """A timm .safetensors vitkit wrote carries vitkit's record too: it is read with timm's names (a hybrid's and an
    fc_norm model's differ from vitkit's), with no --from needed; .npz refuses GAP with a class token (it would come
    back as token pooling)."""
    from vitkit.convert import CheckpointError

    small = dict(width=32, depth=1, heads=2, mlp_dim=64, image_size=32, num_classes=3)
    for model in (vitkit.create_model("R+ViT-Ti/16", **small), vitkit.create_model("ViT-Ti/16", pool="gap", fc_norm=True, **small)):
        torch.manual_seed(0)
        for p in model.parameters():
            p.data.normal_(0, 0.1)
        path = vitkit.save_model(model, tmp_path / f"{id(model)}.safetensors", format="timm")
        back = vitkit.load_model(path).eval()
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(back(x), model.eval()(x), atol=1e-5)
    with pytest.raises(CheckpointError, match="pools by the class token whenever there is one"):
        vitkit.save_model(vitkit.create_model("ViT-Ti/16", pool="gap", class_token=True, **small), tmp_path / "g.npz", format="npz")


def test_tanh_gelu_round_trips_through_transformers_and_the_fast_path(tmp_path):
    """gelu="tanh" (the official code's) is transformers' gelu_pytorch_tanh: exported, transformers' own model computes
    vitkit's logits; the fast path (oneDNN dense with fused GELU) computes the same function; the erf form differs."""
    from vitkit.models.fast import InferenceModel

    model = jitter(vitkit.create_model("ViT-B/16", width=32, depth=2, heads=2, mlp_dim=64, image_size=16, patch_size=8,
                                       num_classes=3, gelu="tanh"), scale=0.5).eval()
    vitkit.save_model(model, tmp_path / "hf", format="hf")
    ref = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert ref.config.hidden_act == "gelu_pytorch_tanh"
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ref(x).logits, model(x), atol=TOL, rtol=0)
        exact = vitkit.create_model("ViT-B/16", width=32, depth=2, heads=2, mlp_dim=64, image_size=16, patch_size=8, num_classes=3)
        exact.load_state_dict(model.state_dict())
        assert (exact.eval()(x) - model(x)).abs().max() > 1e-4  # the two GELUs are told apart at this scale
        torch.testing.assert_close(InferenceModel(model, precision="fp32")(x), model(x), atol=1e-5, rtol=0)
    assert vitkit.load_model(tmp_path / "hf").config.gelu == "tanh"
