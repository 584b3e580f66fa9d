"""The model card (vitkit.convert.card.ModelCard): `vitkit.load` returns the model and what the checkpoint says
about it; the model itself is a plain nn.Module; writers record the card, and resizing follows the model."""
import json
import re
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.data.preprocess import Preprocess

README = Path(__file__).resolve().parents[1] / "README.md"


def _tiny(**kw):
    torch.manual_seed(0)
    base = dict(num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
    return vitkit.create_model("ViT-Ti/16", **{**base, **kw})


def test_load_gives_the_model_and_its_card(tmp_path):
    vitkit.save_model(_tiny(in_chans=1), tmp_path / "m", class_names=["a", "b", "c"], preprocess={"normalize": "imagenet"})
    model, card = vitkit.load(tmp_path / "m")
    assert card.class_names == ["a", "b", "c"] and card.preprocess == Preprocess((16, 16), 1, "imagenet")
    assert card.source == str(tmp_path / "m") and card.report.format == "vitkit" and card.report.missing == []
    for stuck in ("class_names", "preprocess", "load_report"):  # nothing is stuck on the module
        assert not hasattr(model, stuck)
    assert not hasattr(vitkit.load_model(tmp_path / "m"), "class_names")


def test_a_new_head_drops_the_class_names_and_a_resample_is_in_the_card(tmp_path):
    vitkit.save_model(_tiny(), tmp_path / "m", class_names=["a", "b", "c"])
    _, card = vitkit.load(tmp_path / "m", num_classes=5, image_size=32)
    assert card.class_names is None and card.preprocess.image_size == (32, 32)
    assert any("head replaced: 3 -> 5" in n for n in card.report.notes)


def test_save_records_the_card_and_explicit_arguments_win(tmp_path):
    vitkit.save_model(_tiny(), tmp_path / "m", class_names=["a", "b", "c"], preprocess={"normalize": "imagenet"})
    model, card = vitkit.load(tmp_path / "m")
    vitkit.save_model(model, tmp_path / "same", card=card)
    vitkit.save_model(model, tmp_path / "renamed", card=card, class_names=["x", "y", "z"])
    vitkit.save_model(model, tmp_path / "bare")  # no card: numbered classes, Google's normalisation
    read = lambda name: json.loads((tmp_path / name / "config.json").read_text())  # noqa: E731
    assert read("same")["class_names"] == ["a", "b", "c"] and read("same")["preprocess"]["normalize"] == "imagenet"
    assert read("renamed")["class_names"] == ["x", "y", "z"] and read("renamed")["preprocess"]["normalize"] == "imagenet"
    assert read("bare")["class_names"] is None and read("bare")["preprocess"]["normalize"] == "google"


def test_for_model_follows_a_resize():
    model = _tiny()
    card = vitkit.ModelCard.of(model, ["a", "b", "c"], normalize="imagenet")
    model.set_image_size(24)
    assert card.preprocess.image_size == (16, 16)
    assert card.for_model(model).preprocess == Preprocess((24, 24), 3, "imagenet")
    assert card.for_model(model).class_names == ["a", "b", "c"]


def test_readme_weights_snippet_runs(tmp_path, monkeypatch):
    """The "Weights users already have" snippet, on small stand-ins for the files it names."""
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    vitkit.save_model(vitkit.create_model("ViT-B/16", depth=1, width=48, heads=2, mlp_dim=96, image_size=32,
                                          representation_size=48), "ViT-B_16.npz", format="npz")
    ref = timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32, num_classes=4)  # width 192: 3 heads, as ViT-Ti
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, "timm_vit.safetensors")
    hf = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                image_size=32, patch_size=16, num_labels=2, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    transformers.ViTForImageClassification(hf).save_pretrained("hf-vit-dir")
    text = README.read_text()
    section = text[text.index("## Weights users already have"):]
    code = "import vitkit\n" + re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md (Weights users already have)", "exec"), scope)  # noqa: S102 - our own README
    assert scope["card"].class_names == ["cat", "dog"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["class_names"] == ["cat", "dog"]
    from safetensors.torch import load_file

    theirs = timm.create_model("vit_tiny_patch16_224", embed_dim=32, depth=1, num_heads=2, mlp_ratio=2, img_size=32, num_classes=2)
    theirs.load_state_dict(load_file(tmp_path / "out.safetensors"))  # strict: timm reads what the snippet wrote


def test_a_checkpoint_holding_more_than_its_config_says_is_refused(tmp_path):
    """Metadata saying depth 1 over weights of 2 blocks: loading used to drop a block silently (issue 22.5)."""
    import json as _json

    from safetensors.torch import load_file, save_file

    two = _tiny(depth=2)
    vitkit.save_model(two, tmp_path / "m")
    cfg = _json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"]["depth"] = 1
    (tmp_path / "m" / "config.json").write_text(_json.dumps(cfg))
    sd = load_file(tmp_path / "m" / "model.safetensors")
    save_file(sd, str(tmp_path / "m" / "model.safetensors"), metadata={"vitkit": _json.dumps(cfg)})
    with pytest.raises(vitkit.CheckpointError, match=r"holds \d+ tensor\(s\) the model it describes has no place for, e.g. \['blocks.1"):
        vitkit.load(tmp_path / "m")
    model, card = vitkit.load(tmp_path / "m", strict=False)
    assert model.config.depth == 1 and all(k.startswith("blocks.1.") for k in card.report.unexpected)
