"""Checkpoint parity with the libraries the weights come from; reference models are built randomly here."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.convert import CheckpointError, detect_format
from vitkit.convert.google_npz import from_vitkit as npz_from_vitkit
from vitkit.models.resnet import ResNetConfig

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def jitter(model, scale=0.02):
    """Random non-zero values everywhere (a zero head or zero class token would hide a wrong mapping)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def max_diff(a, b, x):
    with torch.no_grad():
        ya, yb = a(x), b(x)
        ya = getattr(ya, "logits", ya)
        return (ya - yb).abs().max().item()


def save_timm(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


TIMM_CASES = {
    "class-token": ("vit_base_patch16_224", dict(img_size=32, patch_size=8), 3),
    "gap": ("vit_base_patch16_224", dict(img_size=32, patch_size=8, global_pool="avg", class_token=False), 3),
    "gap-with-cls-fc-norm": ("vit_base_patch16_224", dict(img_size=32, patch_size=8, global_pool="avg"), 3),
    "grayscale": ("vit_base_patch16_224", dict(img_size=28, patch_size=4, in_chans=1), 1),
    "r50-hybrid": ("vit_base_r50_s16_224", dict(img_size=64), 3),
    "r26-hybrid": ("vit_small_r26_s32_224", dict(img_size=64), 3),
    "r-ti-hybrid": ("vit_tiny_r_s16_p8_224", dict(img_size=64), 3),
    "no-qkv-bias": ("vit_base_patch16_224", dict(img_size=32, patch_size=8, qkv_bias=False), 3),
    "no-position-embedding": ("vit_base_patch16_224", dict(img_size=32, patch_size=8, pos_embed="none"), 3),
}


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_timm_to_vitkit_logits_equal(case, tmp_path):
    arch, kw, chans = TIMM_CASES[case]
    torch.manual_seed(0)
    ref = jitter(timm.create_model(arch, embed_dim=64, depth=2, num_heads=4, num_classes=5, **kw))
    path = save_timm(ref, tmp_path / "model.safetensors")
    assert detect_format(path) == "timm"
    size = kw["img_size"]
    # a table-less timm model records no image size: the caller gives it
    model, card = vitkit.load(path, heads=4, **({"image_size": size} if kw.get("pos_embed") == "none" else {}))
    model.eval()
    assert card.report.missing == [] and card.report.unexpected == []
    assert max_diff(ref, model, torch.randn(2, chans, size, size)) <= TOL


def test_timm_pth_weights_only(tmp_path):
    ref = jitter(timm.create_model("vit_base_patch16_224", embed_dim=64, depth=1, num_heads=4, img_size=32, patch_size=8, num_classes=3))
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    model = vitkit.load_model(tmp_path / "ckpt.pth", heads=4).eval()
    assert max_diff(ref, model, torch.randn(2, 3, 32, 32)) <= TOL


def test_timm_heads_guessed_for_paper_widths(tmp_path):
    ref = jitter(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32, num_classes=2))  # width 192: 3 heads
    model = vitkit.load_model(save_timm(ref, tmp_path / "ti.safetensors")).eval()
    assert model.config.heads == 3
    assert max_diff(ref, model, torch.randn(1, 3, 32, 32)) <= TOL


def test_timm_unknown_heads_is_explained(tmp_path):
    ref = timm.create_model("vit_base_patch16_224", embed_dim=40, depth=1, num_heads=4, img_size=32, num_classes=2)
    with pytest.raises(CheckpointError, match="odd.safetensors: cannot tell the number of attention heads of a width-40 model.*heads=N"):
        vitkit.load_model(save_timm(ref, tmp_path / "odd.safetensors"))


def hf_model(**kw):
    cfg = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                 image_size=32, patch_size=8, **kw)
    return jitter(transformers.ViTForImageClassification(cfg))


@pytest.mark.parametrize("kw", [
    dict(num_labels=4),
    dict(num_labels=3, layer_norm_eps=1e-6, qkv_bias=False, num_channels=1, id2label={0: "cat", 1: "dog", 2: "eel"}),
])
def test_hf_to_vitkit_honours_config(kw, tmp_path):
    ref = hf_model(**kw)
    ref.save_pretrained(tmp_path / "hf")
    assert detect_format(tmp_path / "hf") == "hf"
    model, card = vitkit.load(tmp_path / "hf")
    model.eval()
    c = ref.config
    assert model.config.ln_eps == c.layer_norm_eps and model.config.qkv_bias == c.qkv_bias
    assert model.config.in_chans == c.num_channels and model.config.num_classes == c.num_labels
    assert card.class_names == [c.id2label[i] for i in range(c.num_labels)]
    assert max_diff(ref, model, torch.randn(2, c.num_channels, 32, 32)) <= TOL
    # and back out: transformers reads what vitkit writes
    vitkit.save_model(model, tmp_path / "out", format="hf", card=card)
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert again.config.id2label == c.id2label
    assert max_diff(again, model, torch.randn(2, c.num_channels, 32, 32)) <= TOL


def test_hf_vitmodel_pooler_is_pre_logits(tmp_path):
    cfg = transformers.ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, intermediate_size=96,
                                 image_size=32, patch_size=8)
    ref = jitter(transformers.ViTModel(cfg))
    ref.save_pretrained(tmp_path / "hf")
    model = vitkit.load_model(tmp_path / "hf").eval()
    assert model.config.representation_size == 48 and model.config.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x).pooler_output, atol=TOL, rtol=0)


def hybrid_for_timm():
    # timm's hybrids use GroupNorm eps 1e-5 and weight-standardisation eps 1e-8 (the official code 1e-6 / 1e-5)
    return dict(resnet=ResNetConfig(layers=(3, 4, 9), ws_eps=1e-8, gn_eps=1e-5))


@pytest.mark.parametrize("kind", ["vit", "hybrid"])
def test_vitkit_to_npz_read_by_timm(kind, tmp_path):
    from timm.models.vision_transformer import _load_weights

    size = 64 if kind == "hybrid" else 32
    extra = hybrid_for_timm() if kind == "hybrid" else dict(patch_size=8)
    model = jitter(vitkit.create_model("R50+ViT-B/16" if kind == "hybrid" else "ViT-B/16", width=64, depth=2, heads=4,
                                       mlp_dim=128, image_size=size, num_classes=5, **extra))
    path = vitkit.save_model(model, tmp_path / "m.npz", format="npz")
    arch = "vit_base_r50_s16_224" if kind == "hybrid" else "vit_base_patch16_224"
    ref = timm.create_model(arch, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2, img_size=size, num_classes=5,
                            **({} if kind == "hybrid" else dict(patch_size=8))).eval()
    _load_weights(ref, str(path))
    x = torch.randn(2, 3, size, size)
    assert max_diff(ref, model, x) <= TOL
    back = vitkit.load_model(path, **({"resnet": extra["resnet"]} if kind == "hybrid" else {})).eval()
    assert max_diff(back, model, x) == 0


def test_npz_paper_hybrid_uses_official_eps(tmp_path):
    model = jitter(vitkit.create_model("R50+ViT-B/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, num_classes=2))
    back = vitkit.load_model(vitkit.save_model(model, tmp_path / "h.npz", format="npz"))
    assert back.config.resnet.ws_eps == 1e-5 and back.config.resnet.gn_eps == 1e-6
    assert max_diff(back, model, torch.randn(1, 3, 32, 32)) == 0


def big_vision_variant(arrays, prefix="params/", scanned=True):
    """Rewrite a vit_jax-style dict the way big_vision stores it."""
    out = {}
    depth = len({k.split("/")[1] for k in arrays if k.startswith("Transformer/encoderblock_")})
    rename = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "MlpBlock_3": "MlpBlock_0", "LayerNorm_2": "LayerNorm_1"}
    blocks = {}
    for k, v in arrays.items():
        if k.startswith("Transformer/encoderblock_"):
            _, blk, rest = k.split("/", 2)
            for a, b in rename.items():
                rest = rest.replace(a, b)
            blocks.setdefault(rest, [None] * depth)[int(blk.split("_")[1])] = v
        elif k == "Transformer/posembed_input/pos_embedding":
            out[prefix + "pos_embedding"] = v[:, 1:]  # big_vision: no class-token row
        else:
            out[prefix + k] = v
    for rest, vs in blocks.items():
        if scanned:
            out[f"{prefix}Transformer/encoderblock/{rest}"] = np.stack(vs)
        else:
            for i, v in enumerate(vs):
                out[f"{prefix}Transformer/encoderblock_{i}/{rest}"] = v
    return out


@pytest.mark.parametrize("prefix,scanned", [("params/", True), ("params/", False), ("opt/target/", False), ("", True), ("", False)])
def test_npz_big_vision_naming_prefixes_and_scan(prefix, scanned, tmp_path):
    model = jitter(vitkit.create_model("ViT-S/16", width=32, depth=3, heads=2, mlp_dim=64, image_size=32, patch_size=8, num_classes=4,
                                       gelu="tanh"))  # a Google file's weights: the official code's GELU
    with torch.no_grad():
        model.pos_embed[:, 0] = 0  # big_vision adds no position embedding to the class token
    arrays = npz_from_vitkit(model.state_dict(), model.config)
    if prefix == "opt/target/":
        arrays = {prefix + k: v for k, v in arrays.items()}
    else:
        arrays = big_vision_variant(arrays, prefix, scanned)
    np.savez(tmp_path / "bv.npz", **arrays)
    back, card = vitkit.load(tmp_path / "bv.npz")
    back.eval()
    assert back.config.depth == 3 and back.config.heads == 2
    assert max_diff(back, model, torch.randn(2, 3, 32, 32)) <= 1e-6
    notes = card.report.notes
    assert (f"prefix {prefix!r}" in notes) == bool(prefix)
    assert ("scanned blocks (depth 3) unstacked" in notes) == scanned
    assert ("vit_jax naming" if prefix == "opt/target/" else "big_vision naming") in notes
    assert ("position embedding had no class-token row (big_vision): a zero row added" in notes) == (prefix != "opt/target/")


def test_npz_written_by_todays_official_code_flax_linen_names(tmp_path):
    """Today's vit_jax (flax.linen) numbers modules per class (LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
    MlpBlock_0: what flax's convert_pre_linen turns the released names into) under the released top level (no prefix,
    Transformer/posembed_input with the class token's row). Read exactly; an unknown block layout is one clear error."""
    model = jitter(vitkit.create_model("ViT-S/16", width=32, depth=2, heads=2, mlp_dim=64, image_size=32, patch_size=8, num_classes=4,
                                       gelu="tanh"))
    linen = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}
    arrays = {}
    for k, v in npz_from_vitkit(model.state_dict(), model.config).items():
        parts = k.split("/")
        arrays["/".join(linen.get(part, part) for part in parts)] = v
    assert "Transformer/encoderblock_0/LayerNorm_1/scale" in arrays and "Transformer/posembed_input/pos_embedding" in arrays
    np.savez(tmp_path / "linen.npz", **arrays)
    back, card = vitkit.load(tmp_path / "linen.npz")
    assert max_diff(back.eval(), model, torch.randn(2, 3, 32, 32)) <= 1e-6 and "flax.linen naming" in card.report.notes
    odd = {k.replace("MlpBlock_0", "FeedForward_0"): v for k, v in arrays.items()}
    np.savez(tmp_path / "odd.npz", **odd)
    with pytest.raises(CheckpointError, match=r"odd.npz: its encoder blocks hold \['FeedForward_0', 'LayerNorm_0', 'LayerNorm_1', "
                                              r"'MultiHeadDotProductAttention_0'\] .* without \['MlpBlock_0'\]"):
        vitkit.load(tmp_path / "odd.npz")


def test_npz_hybrid_layers_width_old_gn_shapes_and_unknown_arrays(tmp_path):
    """A hybrid of another depth and width factor round-trips through .npz; GroupNorm scales stored (1, 1, 1, C), as
    old checkpoints have them, read the same; arrays vitkit has no place for are reported, and the rest still loads."""
    model = jitter(vitkit.create_model("R50+ViT-B/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, num_classes=2,
                                       resnet=ResNetConfig(layers=(1, 2), width_factor=2), gelu="tanh"))  # as Google's files
    path = vitkit.save_model(model, tmp_path / "h.npz", format="npz")
    arrays = dict(np.load(path, allow_pickle=False))
    old = {k: (v.reshape(1, 1, 1, -1) if "/gn" in k and v.ndim == 1 else v) for k, v in arrays.items()}
    assert any(v.ndim == 4 and "/gn" in k for k, v in old.items())
    old["Transformer/encoderblock_0/extra/kernel"] = np.ones(3, np.float32)
    old["zzz_unknown"] = np.ones(2, np.float32)
    old["block1/unit1/extra/kernel"] = np.ones(2, np.float32)  # an unknown array inside the first unit: the rest still read
    np.savez(tmp_path / "old.npz", **old)
    with pytest.raises(vitkit.CheckpointError, match=r"holds 3 tensor\(s\) the model it describes has no place for"):
        vitkit.load(tmp_path / "old.npz")  # exact by default (issue 22): unknown arrays are an error
    back, card = vitkit.load(tmp_path / "old.npz", strict=False)
    back.eval()
    assert back.config.resnet.layers == (1, 2) and back.config.resnet.width_factor == 2
    assert set(card.report.unexpected) == {"zzz_unknown", "Transformer/encoderblock_0/extra/kernel", "block1/unit1/extra/kernel"}
    assert max_diff(back, model, torch.randn(1, 3, 32, 32)) == 0


def test_npz_refusals_are_named(tmp_path):
    np.savez(tmp_path / "obj.npz", **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="obj.npz: not a readable .npz archive.*pickle"):
        vitkit.load_model(tmp_path / "obj.npz")  # never unpickled
    np.savez(tmp_path / "none.npz", x=np.ones(2))
    with pytest.raises(CheckpointError, match=r"none.npz: no 'embedding/kernel' under any known prefix "
                                              r"\('opt/target/', 'params/img/', 'params/'\): not a ViT .npz checkpoint"):
        vitkit.load_model(tmp_path / "none.npz")
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=8, num_classes=2)
    arrays = npz_from_vitkit(model.state_dict(), model.config)
    arrays["MAPHead_0/probe"] = np.ones((1, 1, 32), np.float32)
    np.savez(tmp_path / "map.npz", **arrays)
    with pytest.raises(CheckpointError, match="map.npz: a MAP-head \\(attention pooling\\) checkpoint; vitkit supports"):
        vitkit.load_model(tmp_path / "map.npz")


FORMAT_PATHS = {"vitkit": "m", "vitkit-file": "m.safetensors", "timm": "m.safetensors", "hf": "m", "npz": "m.npz"}


@pytest.mark.parametrize("fmt", sorted(FORMAT_PATHS))
def test_round_trips_are_exact(fmt, tmp_path):
    model = jitter(vitkit.create_model("ViT-Ti/16", width=32, depth=2, heads=2, mlp_dim=64, image_size=32, patch_size=8,
                                       num_classes=3, qkv_bias=fmt != "npz"))
    path = vitkit.save_model(model, tmp_path / FORMAT_PATHS[fmt], format=fmt.split("-")[0])
    back = vitkit.load_model(path).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    if fmt.startswith("vitkit"):
        assert back.config == model.config


def test_round_trip_hybrid_and_bit_vitkit(tmp_path):
    for name, size in (("R26+ViT-S/32", 64), ("R50x1", 32)):
        kw = dict(width=32, depth=1, heads=2, mlp_dim=64) if "ViT" in name else {}
        model = jitter(vitkit.create_model(name, image_size=size, num_classes=2, **kw))
        back = vitkit.load_model(vitkit.save_model(model, tmp_path / name.replace("/", "_").replace("+", "_"))).eval()
        assert max_diff(back, model, torch.randn(1, 3, size, size)) == 0


def test_sincos_model_exports_its_table(tmp_path):
    model = jitter(vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8,
                                       posemb="sincos2d", num_classes=2))
    back = vitkit.load_model(vitkit.save_model(model, tmp_path / "s.npz", format="npz"))
    assert back.config.posemb == "learned"
    assert max_diff(back.eval(), model, torch.randn(1, 3, 32, 32)) <= 1e-6


def test_load_at_larger_image_size_keeps_class_token(tmp_path):
    model = jitter(vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8, num_classes=2))
    path = vitkit.save_model(model, tmp_path / "m")
    big, card = vitkit.load(path, image_size=64)
    assert big.pos_embed.shape == (1, 65, 32)
    assert torch.equal(big.pos_embed[:, 0], model.pos_embed[:, 0])
    assert card.report.resampled and "(1, 17, 32) -> (1, 65, 32)" in card.report.resampled[0]
    assert card.preprocess.image_size == (64, 64)  # the card has the size the model was loaded at
    assert big(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_num_classes_replaces_head_with_zeros_and_pre_logits_can_be_dropped(tmp_path):
    model = jitter(vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8,
                                       num_classes=7, representation_size=32))
    path = vitkit.save_model(model, tmp_path / "m.npz", format="npz")
    kept = vitkit.load_model(path)
    assert kept.config.representation_size == 32 and kept.config.num_classes == 7
    new, card = vitkit.load(path, num_classes=3, drop_pre_logits=True)
    new.eval()
    assert isinstance(new.pre_logits, torch.nn.Identity) and new.head.weight.shape == (3, 32)
    assert new(torch.randn(2, 3, 32, 32)).abs().max() == 0
    assert any("head replaced" in n for n in card.report.notes) or any("pre-logits" in n for n in card.report.notes)


def test_zeroed_head_is_reported(tmp_path):
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8, num_classes=2)
    card = vitkit.load(vitkit.save_model(model, tmp_path / "raw.npz", format="npz")).card
    assert "the head is all zeros (a raw pre-training checkpoint): its predictions mean nothing until fine-tuned" in card.report.notes


# --- bad input -------------------------------------------------------------------------------------


def test_truncated_files_are_clear_errors(tmp_path):
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8)
    for fmt, name in (("npz", "m.npz"), ("timm", "m.safetensors")):
        path = vitkit.save_model(model, tmp_path / name, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=f"{name}.*(complete|readable)"):
            vitkit.load_model(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt: not a checkpoint vitkit knows"):
        vitkit.load_model(tmp_path / "notes.txt")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a ViT .npz checkpoint"):
        vitkit.load_model(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        vitkit.load_model(tmp_path / "missing.npz")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match="emptydir.*without config.json"):
        vitkit.load_model(tmp_path / "emptydir")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pth_needing_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "hook": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load.*unpickling"):
        vitkit.load_model(path)
    with open(tmp_path / "plain.pth", "wb") as f:
        pickle.dump({"x": 1}, f)
    with pytest.raises(CheckpointError):
        vitkit.load_model(tmp_path / "plain.pth")


def test_head_of_another_size_names_tensor_and_shapes(tmp_path):
    ref = hf_model(num_labels=4)
    ref.save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["id2label"] = {str(i): f"c{i}" for i in range(10)}  # config says 10 classes, the classifier holds 4
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    want = r"hf: tensor 'head\.bias' has shape \(4,\) in the checkpoint but \(10,\) in the model; pass num_classes"
    with pytest.raises(CheckpointError, match=want):
        vitkit.load_model(tmp_path / "hf")


def test_wrong_model_name(tmp_path):
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8)
    path = vitkit.save_model(model, tmp_path / "m.safetensors", format="timm")
    with pytest.raises(ValueError, match="unknown model 'ViT-X/16'; valid names"):
        vitkit.load_model(path, model="ViT-X/16")


def test_nothing_written_on_failure_and_nothing_clobbered(tmp_path):
    gap = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8, pool="gap")
    with pytest.raises(CheckpointError, match="class token"):
        vitkit.save_model(gap, tmp_path / "hfdir", format="hf")
    assert list(tmp_path.iterdir()) == []
    path = vitkit.save_model(gap, tmp_path / "m")
    before = (path / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        vitkit.save_model(gap, path)
    assert (path / "model.safetensors").read_bytes() == before
    vitkit.save_model(gap, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_report_text_and_dict():
    from vitkit.convert.common import LoadReport

    r = LoadReport("m.npz", "npz", missing=["head.bias"], resampled=["pos_embed a -> b"], notes=["n1", "n2"])
    assert str(r) == ("loaded m.npz (npz)\n  missing (kept as initialised):\n    head.bias\n"
                      "  resampled:\n    pos_embed a -> b\n  notes:\n    n1\n    n2")
    assert str(LoadReport("x", "timm", unexpected=["u"])) == "loaded x (timm)\n  unexpected (ignored):\n    u"
    assert str(LoadReport("x", "hf")) == "loaded x (hf)\n  every tensor matched"
    assert json.loads(json.dumps(r.to_dict())) == {"source": "m.npz", "format": "npz", "missing": ["head.bias"], "unexpected": [],
                                                   "resampled": ["pos_embed a -> b"], "notes": ["n1", "n2"]}


def test_timm_hybrid_eps_headless_and_missing_tensors(tmp_path):
    ref = timm.create_model("vit_base_r50_s16_224", embed_dim=64, depth=1, num_heads=4, img_size=64, num_classes=0)
    model = vitkit.load_model(save_timm(ref, tmp_path / "h.safetensors"), heads=4)
    stem = ref.patch_embed.backbone.stem
    assert (model.config.resnet.ws_eps, model.config.resnet.gn_eps) == (stem.conv.eps, stem.norm.eps)  # timm's own
    assert model.config.resnet.width_factor == 1 and model.config.num_classes == 0
    assert max_diff(ref.eval(), model.eval(), torch.randn(1, 3, 64, 64)) <= TOL
    sd = {k: v for k, v in ref.state_dict().items() if k != "blocks.0.mlp.fc2.bias"}
    save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(CheckpointError, match=r"cut.safetensors: the checkpoint lacks 1 tensor\(s\) the model needs, e.g. "
                                              r"\['blocks.0.mlp.fc2.bias'\]; is it a checkpoint of this architecture\?"):
        vitkit.load_model(tmp_path / "cut.safetensors", heads=4)
    cut = [k for k in sd if k.startswith("blocks.0.") and "norm1" not in k][:7]  # seven more gone: five are named
    save_file({k: v for k, v in sd.items() if k not in cut}, str(tmp_path / "cut7.safetensors"))
    with pytest.raises(CheckpointError, match=r"lacks 7 tensor\(s\) the model needs, e.g. \[('[^']+', ){4}'[^']+'\];"):
        vitkit.load_model(tmp_path / "cut7.safetensors", heads=4)
    with pytest.raises(CheckpointError, match="x.safetensors: no 'patch_embed.proj.weight' tensor: not a ViT state dict"):
        save_file({"w": torch.ones(1)}, str(tmp_path / "x.safetensors"))
        vitkit.load_model(tmp_path / "x.safetensors", format="timm")


def test_vitkit_named_hybrid_without_metadata(tmp_path):
    """A vitkit state dict saved by hand (no vitkit metadata) reads through the timm reader, pre-logits and all."""
    model = jitter(vitkit.create_model("R50+ViT-B/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, num_classes=3,
                                       representation_size=24, resnet=ResNetConfig(layers=(1, 1), width_factor=2, ws_eps=1e-8, gn_eps=1e-5)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    back = vitkit.load_model(tmp_path / "plain.safetensors", heads=2).eval()
    assert back.config.representation_size == 24 and back.config.resnet.width_factor == 2
    assert max_diff(back, model, torch.randn(1, 3, 32, 32)) == 0


def test_npz_layout_is_the_official_one_and_what_it_cannot_hold(tmp_path):
    from test_converter_bugs import vit_jax_arrays

    official = vit_jax_arrays(np.random.default_rng(0))  # width 16, 2 heads, mlp 32, patch 4, image 8, pre-logits 24, 5 classes
    model = vitkit.create_model("ViT-B/16", width=16, depth=1, heads=2, mlp_dim=32, patch_size=4, image_size=8,
                                representation_size=24, num_classes=5)
    arrays = dict(np.load(vitkit.save_model(model, tmp_path / "m.npz", format="npz"), allow_pickle=False))
    assert {k: v.shape for k, v in arrays.items()} == {k: v.shape for k, v in official.items()}
    fc = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=8, num_classes=2,
                             pool="gap", fc_norm=True)
    with pytest.raises(CheckpointError, match=r"^the official .npz format has no LayerNorm after the pooling \(fc_norm\); "
                                              r"save this model as vitkit or timm$"):
        vitkit.save_model(fc, tmp_path / "fc.npz", format="npz")


def test_npz_grayscale_headless_and_without_position_embedding(tmp_path):
    model = jitter(vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=8,
                                       num_classes=0, in_chans=1, gelu="tanh"))
    arrays = npz_from_vitkit(model.state_dict(), model.config)
    np.savez(tmp_path / "g.npz", **arrays)
    back = vitkit.load_model(tmp_path / "g.npz")
    assert back.config.in_chans == 1 and back.config.num_classes == 0 and back.config.posemb == "learned"
    assert max_diff(back.eval(), model, torch.randn(2, 1, 16, 16)) == 0
    del arrays["Transformer/posembed_input/pos_embedding"]
    np.savez(tmp_path / "nope.npz", **arrays)
    assert vitkit.load_model(tmp_path / "nope.npz", image_size=16).config.posemb == "none"


def test_a_safetensors_checkpoint_is_read_once(tmp_path, monkeypatch):
    """Detection and the preprocessing look-up read the header only; the tensors are read once."""
    import safetensors

    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
    vitkit.save_model(model, tmp_path / "m.safetensors")
    reads = []
    real = safetensors.safe_open

    class Counting:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def get_tensor(self, k):
            reads.append(k)
            return self.inner.get_tensor(k)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    import vitkit.convert.files as load

    monkeypatch.setattr(load, "safe_open", Counting)
    _, card = vitkit.load(tmp_path / "m.safetensors")
    assert sorted(reads) == sorted(model.state_dict()) and len(reads) == len(set(reads))
    assert card.preprocess.image_size == (16, 16)
