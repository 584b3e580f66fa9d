"""The oneDNN dense layer (models/kernels.py): same results as PyTorch's own ops, forward and backward,
fused forms at inference, pre-blocked weights that are never stale, and the switches that turn it off."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vitkit
from vitkit.evaluate.classify import evaluate
from vitkit.models import kernels
from vitkit.models.fast import InferenceModel, bf16_copy
from vitkit.models.kernels import dense, pack_dense_weights, plain_kernels

needs_onednn = pytest.mark.skipif(not kernels.onednn_available(), reason="this torch build has no oneDNN dense op")


def _layer(i=24, o=40, bias=True, dtype=torch.float32):
    torch.manual_seed(0)
    layer = nn.Linear(i, o, bias=bias)
    with torch.no_grad():
        layer.bias.normal_() if bias else None
    return layer.to(dtype)


@needs_onednn
@pytest.mark.parametrize("act,res", [(None, False), ("gelu", False), (None, True)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_fused_inference_forms_equal_pytorch(act, res, dtype, tol):
    layer = _layer(dtype=dtype)
    x = torch.randn(3, 7, 24).to(dtype)
    r = torch.randn(3, 7, 40).to(dtype) if res else None
    want = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    want = F.gelu(want) if act else want
    want = want + r.float() if res else want
    with torch.no_grad():
        got = dense(x, layer, act=act, residual=r)
    assert got.dtype == dtype and got.shape == want.shape
    assert (got.float() - want).abs().max() <= tol * want.abs().max()


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_training_gradients_equal_pytorch(bias):
    layer = _layer(bias=bias)
    x = torch.randn(5, 6, 24, requires_grad=True)
    g = torch.randn(5, 6, 40)
    (dense(x, layer, act="gelu") * g).sum().backward()
    got = [x.grad.clone(), layer.weight.grad.clone()] + ([layer.bias.grad.clone()] if bias else [])
    assert "OneDNN" in type(dense(x, layer).grad_fn).__name__  # the custom backward is the one that ran
    x.grad = None
    layer.zero_grad()
    with plain_kernels():
        (dense(x, layer, act="gelu") * g).sum().backward()
        assert "OneDNN" not in type(dense(x, layer).grad_fn).__name__
    want = [x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_switches_turn_it_off(monkeypatch):
    layer = _layer()
    x = torch.randn(4, 24)
    with torch.no_grad():
        with plain_kernels():
            assert not kernels.onednn_available()
            assert torch.equal(dense(x, layer), F.linear(x, layer.weight, layer.bias))
        monkeypatch.setenv("VITKIT_ONEDNN", "0")
        assert not kernels.onednn_available()
        assert torch.equal(dense(x, layer, act="gelu"), F.gelu(F.linear(x, layer.weight, layer.bias)))
    with pytest.raises(ValueError, match="act='relu'"):
        dense(x, layer, act="relu")


@needs_onednn
def test_packed_weights_are_used_until_the_weight_changes():
    layer = _layer(dtype=torch.bfloat16)
    x = torch.randn(6, 24).to(torch.bfloat16)
    with torch.no_grad():
        plain = dense(x, layer)
        assert pack_dense_weights(layer) == 1 and kernels._packed(layer, layer.weight) is not layer.weight
        assert torch.equal(dense(x, layer), plain)
        layer.weight.mul_(2)  # an in-place update makes the blocked copy stale: it must not be used
        assert kernels._packed(layer, layer.weight) is layer.weight
        assert torch.allclose(dense(x, layer).float(), F.linear(x, layer.weight, layer.bias).float(), atol=0.05)


def test_eval_mode_fusion_equals_the_training_path():
    """Evaluation adds the residuals inside the GEMMs; with no dropout the training-mode path must agree."""
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Ti/16", num_classes=5, image_size=16, patch_size=4, width=32, depth=2, heads=2,
                                mlp_dim=64, zero_head=False)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        fused = model.eval()(x)
        unfused = model.train()(x)
    assert torch.allclose(fused, unfused, atol=1e-5)


def test_bf16_inference_model_keeps_the_wrapped_model_and_evaluates():
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Ti/16", num_classes=4, image_size=16, patch_size=4, width=32, depth=2, heads=2,
                                mlp_dim=64, zero_head=False)
    fast = InferenceModel(model, "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the user's model is untouched
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    assert list(fast.state_dict()) == ["model." + k for k in model.state_dict()]
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    with torch.no_grad():
        want = model(x)
    assert (fast(x) - want).abs().max() < 0.05 * want.abs().max()
    res = evaluate(fast, [(x, y)])  # evaluate() switches modes back and forth: must not trip the training guard
    assert res["n"] == 8 and res["top1"] == (fast(x).argmax(1) == y).float().mean().item()
    copy = bf16_copy(model)
    assert copy is not model and copy.head.weight.dtype == torch.bfloat16 and model.head.weight.dtype == torch.float32
