"""timm's and Hugging Face's model names as aliases of vitkit's variants, checked against sources other than vitkit's
table: timm's own registry and models (built on the meta device, no weights) and transformers' ViTConfig with the
values of Google's published config.json files."""
import re

import pytest
import torch

import vitkit
from vitkit.models.registry import HF_NAMES, TIMM_NAMES, TIMM_TAGS, count_params, model_config, resolve_alias

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def on_meta(build):
    with torch.device("meta"):
        return build()


def timm_model(name):
    return on_meta(lambda: timm.create_model(name, pretrained=False))


# --- timm ------------------------------------------------------------------------------------------------------

PLAIN = re.compile(r"vit_(tiny|small|base|large|huge)_patch(8|14|16|32)_(224|384)")
HYBRID = re.compile(r"vit_(tiny|small|base|large)_r(50|26|)_s(16|32)(_p8)?_(224|384)")


def test_timm_names_are_exactly_timms():
    """Every alias is in timm's registry, and every plain or R-hybrid ViT timm registers is an alias."""
    theirs = {n for n in timm.list_models("vit_*") if PLAIN.fullmatch(n) or HYBRID.fullmatch(n)}
    assert set(TIMM_NAMES) == theirs


def test_timm_defaults_are_timms_default_tags():
    """Without a tag, the image size and classes of the weights timm would pick (its default pretrained config)."""
    from timm.models import get_pretrained_cfg

    for name in TIMM_NAMES:
        ref = get_pretrained_cfg(name)
        cfg = model_config(name)
        assert (cfg.image_size, cfg.num_classes, resolve_alias(name).tag) == (ref.input_size[-1], ref.num_classes, ref.tag), name


def test_timm_tags_have_timms_classes():
    from timm.models import get_pretrained_cfg

    tagged = [n for n in timm.list_models("vit_*", pretrained=True) if n.split(".")[0] in TIMM_NAMES]
    assert {n.split(".", 1)[1] for n in tagged} | {"untrained"} == set(TIMM_TAGS)
    for name in tagged:
        cfg = model_config(name)
        ref = get_pretrained_cfg(name)
        assert (cfg.num_classes, cfg.image_size) == (ref.num_classes, ref.input_size[-1]), name


REPRESENTATIVE = ["vit_tiny_patch16_224", "vit_small_patch32_384", "vit_base_patch8_224", "vit_base_patch16_224",
                  "vit_large_patch16_384", "vit_huge_patch14_224", "vit_base_patch16_224.augreg_in21k",
                  "vit_base_r50_s16_384", "vit_large_r50_s32_224", "vit_small_r26_s32_384", "vit_tiny_r_s16_p8_224"]


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_timm_alias_builds_timms_architecture(name):
    ref = timm_model(name)
    ours = on_meta(lambda: vitkit.create_model(name))
    cfg = ours.config
    assert count_params(ours) == sum(p.numel() for p in ref.parameters())
    assert (cfg.width, cfg.depth, cfg.heads) == (ref.embed_dim, len(ref.blocks), ref.blocks[0].attn.num_heads)
    assert (cfg.patch_size, cfg.image_size, cfg.num_classes) == (ref.patch_embed.patch_size[0], ref.patch_embed.img_size[0],
                                                                 ref.num_classes)


def test_timm_tag_and_hub_prefix_are_kept():
    alias = resolve_alias("timm/vit_base_patch16_224.augreg_in21k")  # timm's weights on the Hugging Face Hub
    assert (alias.variant, alias.library, alias.name, alias.tag, alias.num_classes) == (
        "ViT-B/16", "timm", "vit_base_patch16_224", "augreg_in21k", 21843)
    assert resolve_alias("vit_base_patch16_224").tag == "augreg2_in21k_ft_in1k"
    assert resolve_alias("ViT-B/16") is None and resolve_alias("B_16") is None


# --- Hugging Face: Google's published configs ---------------------------------------------------------------------

B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
H = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120)
# config.json of each (ImageNet-1k fine-tuned: ViTForImageClassification with 1000 labels; -in21k: ViTModel, no labels)
PUBLISHED = {
    "google/vit-base-patch16-224": dict(B, patch_size=16, image_size=224, num_labels=1000),
    "google/vit-base-patch16-384": dict(B, patch_size=16, image_size=384, num_labels=1000),
    "google/vit-base-patch32-384": dict(B, patch_size=32, image_size=384, num_labels=1000),
    "google/vit-large-patch16-224": dict(L, patch_size=16, image_size=224, num_labels=1000),
    "google/vit-large-patch16-384": dict(L, patch_size=16, image_size=384, num_labels=1000),
    "google/vit-large-patch32-384": dict(L, patch_size=32, image_size=384, num_labels=1000),
    "google/vit-base-patch16-224-in21k": dict(B, patch_size=16, image_size=224),
    "google/vit-base-patch32-224-in21k": dict(B, patch_size=32, image_size=224),
    "google/vit-large-patch16-224-in21k": dict(L, patch_size=16, image_size=224),
    "google/vit-large-patch32-224-in21k": dict(L, patch_size=32, image_size=224),
    "google/vit-huge-patch14-224-in21k": dict(H, patch_size=14, image_size=224),
}


def test_hf_names_are_the_published_ones():
    assert set(HF_NAMES) == set(PUBLISHED) == set(vitkit.list_models("google/*", aliases=True))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_hf_alias_matches_the_published_config(name):
    ref = transformers.ViTConfig(**PUBLISHED[name])
    cfg = model_config(name)
    assert (cfg.width, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.patch_size, cfg.image_size) == (
        ref.hidden_size, ref.num_hidden_layers, ref.num_attention_heads, ref.intermediate_size, ref.patch_size, ref.image_size)
    head = "num_labels" in PUBLISHED[name]
    assert cfg.num_classes == (1000 if head else 0)
    # the same tensors: the classifier, or (in21k) the pooler vitkit holds as its pre-logits layer
    hf = on_meta(lambda: transformers.ViTForImageClassification(ref) if head else transformers.ViTModel(ref))
    assert count_params(on_meta(lambda: vitkit.create_model(name))) == sum(p.numel() for p in hf.parameters())


# --- arguments win, unknown names, listing ------------------------------------------------------------------------


def test_explicit_arguments_win():
    assert model_config("vit_base_patch16_224", num_classes=10).num_classes == 10
    assert model_config("vit_base_patch16_384", image_size=224).image_size == 224
    cfg = model_config("google/vit-base-patch16-224-in21k", num_classes=5, representation_size=None)
    assert (cfg.num_classes, cfg.representation_size, cfg.name) == (5, None, "ViT-B/16")
    model = vitkit.create_model("vit_tiny_patch16_384", num_classes=3, image_size=32, depth=1)
    assert (model.config.image_size, model.config.num_classes, model.config.width) == (32, 3, 192)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("name, words", [
    ("vit_bsae_patch16_224", ["unknown model 'vit_bsae_patch16_224'", "close to it: vit_base_patch16_224"]),
    ("google/vit-base-patch16-244", ["close to it: google/vit-base-patch16-224"]),
    ("ViT-B/61", ["close to it: ViT-B/16", "list_models(aliases=True)"]),
    ("vit_base_patch16_224.augreg_in22k", ["unknown timm pretrained tag 'augreg_in22k'", "vit_base_patch16_224.augreg_in21k?"]),
])
def test_unknown_names_suggest_close_ones(name, words):
    with pytest.raises(ValueError) as err:
        vitkit.create_model(name)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_list_models_filters_and_keeps_aliases_apart():
    ours = vitkit.list_models()
    assert not set(ours) & (set(TIMM_NAMES) | set(HF_NAMES))  # `vitkit models` lists each architecture once
    assert vitkit.list_models("ViT-B*") == ["ViT-B/8", "ViT-B/14", "ViT-B/16", "ViT-B/32"]
    assert vitkit.list_models("vit_base*") == []
    base = vitkit.list_models("vit_base*", aliases=True)
    assert base == [n for n in TIMM_NAMES if n.startswith("vit_base")] and "vit_base_r50_s16_384" in base
    every = vitkit.list_models(aliases=True)
    assert every[:len(ours)] == ours and len(every) == len(ours) + len(TIMM_NAMES) + len(HF_NAMES)
    for name in every:
        model_config(name)  # every listed name builds
