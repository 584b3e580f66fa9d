"""ONNX export (`vitkit export`) and the fast inference wrapper."""
import json

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.models.fast import InferenceModel

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize("name, kw", [
    ("ViT-Ti/16", dict(pool="token", posemb="learned")),
    ("ViT-Ti/16", dict(pool="gap", posemb="sincos2d", in_chans=1)),
    ("R+ViT-Ti/16", dict()),
])
def test_export_matches_pytorch_with_a_dynamic_batch(tmp_path, capsys, name, kw):
    torch.manual_seed(0)
    model = vitkit.create_model(name, num_classes=5, image_size=32, width=32, depth=2, heads=2, mlp_dim=64,
                                **({"patch_size": 8} if name.startswith("ViT") else {}), **kw)
    with torch.no_grad():
        model.head.weight.normal_()
    vitkit.save_model(model, tmp_path / "m", class_names=list("abcde"))
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "m.onnx"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["max_abs_diff"] < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(4, model.config.in_chans, 32, 32)
    got = sess.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - model.eval()(x).numpy()).max() < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["vitkit"])["class_names"] == list("abcde")


def test_export_refuses_to_overwrite_and_names_bad_output(tmp_path, capsys):
    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
    vitkit.save_model(model, tmp_path / "m")
    (tmp_path / "taken.onnx").write_text("mine")
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "taken.onnx")]) != 0
    assert (tmp_path / "taken.onnx").read_text() == "mine" and "--force" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "m.pt")]) != 0
    assert ".onnx" in capsys.readouterr().err


def test_inference_model_matches_eager_and_refuses_training():
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Ti/16", num_classes=4, image_size=16, patch_size=4, width=32, depth=2, heads=2, mlp_dim=64)
    with torch.no_grad():
        model.head.weight.normal_()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = model.eval()(x)
    assert torch.allclose(InferenceModel(model, "fp32")(x), want, atol=1e-5)
    assert (InferenceModel(model, "bf16")(x) - want).abs().max() < 0.1 * want.abs().max()
    with pytest.raises(RuntimeError, match="inference only"):
        InferenceModel(model).train()
    with pytest.raises(ValueError, match="precision"):
        InferenceModel(model, "fp8")


def test_export_without_the_onnx_extra_says_what_to_install(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "onnxscript" else real(name, *a, **k))
    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
    vitkit.save_model(model, tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'vitkit[onnx]'" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
