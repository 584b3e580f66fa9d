"""Converter regressions each checked against an independent source: NumPy from the paper's equations, or
timm / transformers themselves (randomly initialised, offline)."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitkit

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from test_convert import jitter  # noqa: E402  (random non-zero values everywhere)


# --- 1. Google .npz: the pre-logits Dense ------------------------------------------------------------


def vit_jax_arrays(rng, width=16, heads=2, mlp=32, patch=4, image=8, chans=3, rep=24, classes=5):
    """A depth-1 ViT with a pre-logits layer in the official vit_jax key names and Flax layouts
    (HWIO conv, (in, out) Dense, (D, heads, head_dim) attention); random, non-symmetric values."""
    d = width // heads
    n = (image // patch) ** 2
    r = lambda *s, scale=0.3: (rng.standard_normal(s) * scale).astype(np.float32)  # noqa: E731
    b = "Transformer/encoderblock_0/"
    a = b + "MultiHeadDotProductAttention_1/"
    w = {
        "embedding/kernel": r(patch, patch, chans, width), "embedding/bias": r(width),
        "cls": r(1, 1, width), "Transformer/posembed_input/pos_embedding": r(1, n + 1, width),
        b + "LayerNorm_0/scale": 1 + r(width), b + "LayerNorm_0/bias": r(width),
        b + "LayerNorm_2/scale": 1 + r(width), b + "LayerNorm_2/bias": r(width),
        b + "MlpBlock_3/Dense_0/kernel": r(width, mlp), b + "MlpBlock_3/Dense_0/bias": r(mlp),
        b + "MlpBlock_3/Dense_1/kernel": r(mlp, width), b + "MlpBlock_3/Dense_1/bias": r(width),
        a + "out/kernel": r(heads, d, width), a + "out/bias": r(width),
        "Transformer/encoder_norm/scale": 1 + r(width), "Transformer/encoder_norm/bias": r(width),
        "pre_logits/kernel": r(width, rep), "pre_logits/bias": r(rep),
        "head/kernel": r(rep, classes), "head/bias": r(classes),
    }
    for n_ in ("query", "key", "value"):
        w[f"{a}{n_}/kernel"] = r(width, heads, d)
        w[f"{a}{n_}/bias"] = r(heads, d)
    return w


def layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def gelu(x):
    """The official code's: Flax's nn.gelu, by default the tanh approximation (not the erf form of timm and PyTorch)."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def numpy_vit_logits(w, images, patch):
    """Eqs. 1-4 of the paper in float64 NumPy, read straight off the Flax parameters: the class token's
    output when the file has one (classifier='token'), else the mean over the patch tokens ('gap'); the
    pre-logits Dense + tanh when present."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = images.astype(np.float64).transpose(0, 2, 3, 1)  # NHWC
    B, H, W, C = x.shape
    gh, gw = H // patch, W // patch
    patches = x.reshape(B, gh, patch, gw, patch, C).transpose(0, 1, 3, 2, 4, 5).reshape(B, gh * gw, patch * patch * C)
    kernel = w["embedding/kernel"]  # (p, p, C, D): the same (row, col, channel) order as the flattened patch
    z = patches @ kernel.reshape(-1, kernel.shape[-1]) + w["embedding/bias"]  # eq. 1
    if "cls" in w:
        z = np.concatenate([np.broadcast_to(w["cls"], (B, 1, z.shape[-1])), z], 1)
    z = z + w["Transformer/posembed_input/pos_embedding"]
    b = "Transformer/encoderblock_0/"
    a = b + "MultiHeadDotProductAttention_1/"
    y = layer_norm(z, w[b + "LayerNorm_0/scale"], w[b + "LayerNorm_0/bias"])
    q, k, v = (np.einsum("btd,dhe->bhte", y, w[f"{a}{n}/kernel"]) + w[f"{a}{n}/bias"][None, :, None] for n in ("query", "key", "value"))
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    z = z + np.einsum("bhte,hed->btd", att @ v, w[a + "out/kernel"]) + w[a + "out/bias"]  # eq. 2
    y = layer_norm(z, w[b + "LayerNorm_2/scale"], w[b + "LayerNorm_2/bias"])
    h = gelu(y @ w[b + "MlpBlock_3/Dense_0/kernel"] + w[b + "MlpBlock_3/Dense_0/bias"])
    z = z + h @ w[b + "MlpBlock_3/Dense_1/kernel"] + w[b + "MlpBlock_3/Dense_1/bias"]  # eq. 3
    y = layer_norm(z, w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"])
    y = y[:, 0] if "cls" in w else y.mean(1)  # eq. 4, or global average pooling
    if "pre_logits/kernel" in w:
        y = np.tanh(y @ w["pre_logits/kernel"] + w["pre_logits/bias"])
    return y @ w["head/kernel"] + w["head/bias"]


@pytest.mark.parametrize("rep", [24, 16])  # 16 = width: a missing transpose is then no shape error, only wrong values
def test_npz_pre_logits_kernel_is_transposed(rep, tmp_path):
    """Bug guarded: the .npz reader keeping pre_logits/kernel (in, out) instead of transposing it to (out, in)."""
    rng = np.random.default_rng(0)
    w = vit_jax_arrays(rng, rep=rep)
    assert not np.allclose(w["pre_logits/kernel"][:16, :16], w["pre_logits/kernel"][:16, :16].T)
    np.savez(tmp_path / "vit.npz", **w)
    model, card = vitkit.load(tmp_path / "vit.npz")
    model.eval()
    assert model.config.representation_size == rep and model.config.num_classes == 5
    assert card.report.missing == [] and card.report.unexpected == []
    images = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = numpy_vit_logits(w, images, patch=4)
    with torch.no_grad():
        got = model(torch.from_numpy(images)).double().numpy()
    assert np.abs(expected).max() > 0.1  # logits that carry signal, not a saturated or zero head
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# --- 2. timm no_embed_class ------------------------------------------------------------------------


def test_timm_no_embed_class_zero_row_is_prepended(tmp_path):
    """Bug guarded: timm's no_embed_class position table (no class-token row) padded with a zero row appended, not prepended."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = jitter(VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2,
                                   num_classes=3, no_embed_class=True), scale=0.5)
    assert ref.pos_embed.shape == (1, 16, 32)  # 4 x 4 patches, no row for the class token
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model, card = vitkit.load(path, heads=2)
    model.eval()
    assert model.pos_embed.shape == (1, 17, 32)
    assert card.report.unexpected == []
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)


# --- 3. Hugging Face dropouts ----------------------------------------------------------------------


def tiny_hf_config(**kw):
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  image_size=16, patch_size=4, **kw)


def test_hf_dropouts_not_swapped(tmp_path):
    """Bug guarded: hidden_dropout_prob and attention_probs_dropout_prob swapped when reading or writing HF configs."""
    ref = transformers.ViTForImageClassification(tiny_hf_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2, num_labels=3))
    ref.save_pretrained(tmp_path / "hf")
    model = vitkit.load_model(tmp_path / "hf")
    assert model.config.dropout == 0.1 and model.config.attn_dropout == 0.2
    assert model.blocks[0].attn.attn_drop == 0.2 and model.blocks[0].mlp.drop.p == 0.1  # what the modules use
    # writing: a model built in vitkit (not the one just read, so a swap on both sides cannot cancel out)
    own = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=4,
                              num_classes=3, dropout=0.1, attn_dropout=0.2)
    vitkit.save_model(own, tmp_path / "out", format="hf")
    cfg = transformers.ViTConfig.from_pretrained(tmp_path / "out")
    assert cfg.hidden_dropout_prob == 0.1 and cfg.attention_probs_dropout_prob == 0.2


# --- 4. Hugging Face default label count -----------------------------------------------------------


def test_hf_default_two_labels_keep_their_head(tmp_path):
    """Bug guarded: a ViTForImageClassification with transformers' default 2 labels (no id2label written) loaded headless."""
    ref = jitter(transformers.ViTForImageClassification(tiny_hf_config()))
    assert ref.config.num_labels == 2 and ref.classifier.weight.shape == (2, 32)
    ref.save_pretrained(tmp_path / "hf")
    model, card = vitkit.load(tmp_path / "hf")
    model.eval()
    assert model.config.num_classes == 2
    assert card.report.unexpected == [] and card.report.missing == []
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x).logits, atol=1e-5, rtol=0)
    # and transformers reads vitkit's copy back as the same 2-class classifier
    vitkit.save_model(model, tmp_path / "out", format="hf")
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert again.config.num_labels == 2
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, ref(x).logits, atol=1e-5, rtol=0)
