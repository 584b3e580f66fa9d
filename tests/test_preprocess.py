"""One owner for preprocessing (vitkit.data.preprocess.Preprocess): recorded with the weights, and a resized model
writes and serves its new size, whichever verb resized it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.data.preprocess import Preprocess


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2,
                                mlp_dim=64, in_chans=1)
    vitkit.save_model(model, tmp_path / "m", class_names=["a", "b", "c"], preprocess={"normalize": "imagenet"})
    Image.fromarray((np.arange(20 * 20) % 251).astype(np.uint8).reshape(20, 20)).save(tmp_path / "x.png")
    return tmp_path


def test_the_recorded_normalisation_and_the_models_own_size(ckpt):
    model, card = vitkit.load(ckpt / "m")
    assert card.preprocess == Preprocess((16, 16), 1, "imagenet")
    model.set_image_size(24)  # resized after loading: what is written follows the model
    vitkit.save_model(model, ckpt / "m24", card=card)
    written = json.loads((ckpt / "m24" / "config.json").read_text())["preprocess"]
    assert written == {"image_size": 24, "normalize": "imagenet", "in_chans": 1}


def test_convert_with_a_new_size_predicts(ckpt, capsys):
    assert main(["convert", str(ckpt / "m"), str(ckpt / "m32"), "--image-size", "32"]) == 0
    assert json.loads((ckpt / "m32" / "config.json").read_text())["preprocess"]["image_size"] == 32
    capsys.readouterr()
    assert main(["predict", str(ckpt / "m32"), str(ckpt / "x.png"), "--json", "--engine", "torch"]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    assert sorted(t["class"] for t in res["top"]) == ["a", "b", "c"]
    assert vitkit.load(ckpt / "m32").card.preprocess == Preprocess((32, 32), 1, "imagenet")


def test_export_at_a_new_resolution_records_it(ckpt, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(ckpt / "m"), str(ckpt / "m.onnx"), "--resolution", "24", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == [24, 24]
    from vitkit import engines

    served = engines.load_engine(ckpt / "m.onnx", "onnxruntime")
    assert served.preprocess == Preprocess((24, 24), 1, "imagenet") and served.class_names == ["a", "b", "c"]
    assert main(["predict", str(ckpt / "m.onnx"), str(ckpt / "x.png"), "--engine", "onnxruntime", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["top"]) == 3


def test_eval_transform_resizes_normalises_and_matches_channels():
    t = Preprocess((4, 6), 3, "google").eval_transform()
    x = t(Image.fromarray(np.full((8, 12), 255, np.uint8)))  # a white grayscale image
    assert x.shape == (3, 4, 6) and torch.allclose(x, torch.ones_like(x))  # (1 - 0.5) / 0.5
    mean, std = Preprocess(8, 3, "imagenet").mean_std()
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))


def test_bad_preprocessing_is_named():
    with pytest.raises(ValueError, match="normalize='inception' is not one of"):
        Preprocess(8, 3, "inception")
    with pytest.raises(ValueError, match="must be positive"):
        Preprocess(0, 3)


def test_timms_crop_and_interpolation_are_recorded_only_when_used():
    from vitkit.data.preprocess import Preprocess

    assert Preprocess(224).to_dict() == {"image_size": 224, "normalize": "google", "in_chans": 3}  # vitkit's records as before
    timm_like = Preprocess(224, crop_pct=0.9, interpolation="bicubic")
    assert timm_like.to_dict() == {"image_size": 224, "normalize": "google", "in_chans": 3, "crop_pct": 0.9, "interpolation": "bicubic"}
    assert Preprocess.from_dict(timm_like.to_dict()) == timm_like
    for bad in (dict(crop_pct=0), dict(crop_pct=1.5), dict(interpolation="lanczos")):
        with pytest.raises(ValueError, match="preprocess (crop_pct|interpolation)"):
            Preprocess(224, **bad)
