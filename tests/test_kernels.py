"""The fast paths (models/kernels.py, models/fast.py): the same results as PyTorch's own ops and as the
reference model, forward and backward; swapped in from outside; chosen per machine, and every branch
forced on any machine (VITKIT_ONEDNN, VITKIT_CPU)."""
import json
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vitkit
from vitkit import runtime
from vitkit.evaluate.classify import evaluate
from vitkit.models import kernels
from vitkit.models.fast import FastBlock, InferenceModel, accelerate, bf16_copy, explicit_attention, reference
from vitkit.models.kernels import dense, pack_dense_weights, plain_kernels
from vitkit.models.vit import Block

has_op = pytest.mark.skipif(kernels._OP is None, reason="this torch build has no oneDNN dense op")
bf16_op = pytest.mark.skipif(kernels._OP is None or not runtime.onednn_bf16_runs(),
                             reason="this CPU cannot run oneDNN's bf16 kernels")


@pytest.fixture
def onednn_on(monkeypatch):
    monkeypatch.setenv("VITKIT_ONEDNN", "1")


class Spy:
    """Stands in for the oneDNN op and counts its calls (forward and binary overloads)."""

    def __init__(self, op):
        self.op, self.calls = op, []

    def __call__(self, x, *a):
        self.calls.append(("pointwise", x.dtype))
        return self.op(x, *a)

    def binary(self, x, *a):
        self.calls.append(("binary", x.dtype))
        return self.op.binary(x, *a)


@pytest.fixture
def spy(monkeypatch):
    kernels.choices()  # the per-machine measurement (once per session) is not what the spy counts
    s = Spy(kernels._OP)
    if kernels._OP is not None:
        monkeypatch.setattr(kernels, "_OP", s)
    return s


def _layer(i=24, o=40, bias=True, dtype=torch.float32):
    torch.manual_seed(0)
    layer = nn.Linear(i, o, bias=bias)
    with torch.no_grad():
        layer.bias.normal_() if bias else None
    return layer.to(dtype)


def _tiny(**kw):
    torch.manual_seed(0)
    return vitkit.create_model("ViT-Ti/16", **{**dict(num_classes=5, image_size=16, patch_size=4, width=32, depth=2, heads=2,
                                                     mlp_dim=64, zero_head=False), **kw})


@pytest.mark.parametrize("act,res", [(None, False), ("gelu", False), (None, True)])
@pytest.mark.parametrize("dtype,tol", [pytest.param(torch.float32, 1e-5, marks=has_op), pytest.param(torch.bfloat16, 3e-2, marks=bf16_op)])
def test_fused_inference_forms_equal_pytorch(act, res, dtype, tol, onednn_on, spy):
    layer = _layer(dtype=dtype)
    x = torch.randn(3, 7, 24).to(dtype)
    r = torch.randn(3, 7, 40).to(dtype) if res else None
    want = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    want = F.gelu(want) if act else want
    want = want + r.float() if res else want
    with torch.no_grad():
        got = dense(x, layer, act=act, residual=r)
    assert spy.calls  # oneDNN computed it
    assert got.dtype == dtype and got.shape == want.shape
    assert (got.float() - want).abs().max() <= tol * want.abs().max()


@has_op
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_training_gradients_equal_pytorch(bias, onednn_on):
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


def test_switches_turn_it_off(monkeypatch, spy):
    layer = _layer()
    x = torch.randn(4, 24)
    monkeypatch.setenv("VITKIT_ONEDNN", "1")
    with torch.no_grad():
        with plain_kernels():
            assert not kernels.onednn_available()
            assert torch.equal(dense(x, layer), F.linear(x, layer.weight, layer.bias))
        monkeypatch.setenv("VITKIT_ONEDNN", "0")
        assert not kernels.onednn_available()
        assert torch.equal(dense(x, layer, act="gelu"), F.gelu(F.linear(x, layer.weight, layer.bias)))
        assert kernels.choices()["fp32"]["on"] is False and "VITKIT_ONEDNN=0" in kernels.choices()["fp32"]["why"]
    assert not spy.calls
    with pytest.raises(ValueError, match="act='relu'"):
        dense(x, layer, act="relu")


@bf16_op
def test_packed_weights_are_used_until_the_weight_changes(onednn_on):
    layer = _layer(dtype=torch.bfloat16)
    x = torch.randn(6, 24).to(torch.bfloat16)
    with torch.no_grad():
        plain = dense(x, layer)
        assert pack_dense_weights(layer) == 1 and kernels._packed(layer, layer.weight) is not layer.weight
        assert torch.equal(dense(x, layer), plain)
        layer.weight.mul_(2)  # an in-place update makes the blocked copy stale: it must not be used
        assert kernels._packed(layer, layer.weight) is layer.weight
        assert torch.allclose(dense(x, layer).float(), F.linear(x, layer.weight, layer.bias).float(), atol=0.05)


def test_reference_model_has_no_fast_path(onednn_on, spy):
    """models/vit.py is the paper's model: plain nn.Linear calls, whatever the machine or the switches."""
    model = _tiny()
    assert all(type(b) is Block for b in model.blocks)
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 16, 16))
    model.train()(torch.randn(2, 3, 16, 16)).sum().backward()
    assert spy.calls == []


@pytest.mark.parametrize("ondnn", ["0", "1"])
def test_fast_blocks_compute_the_reference_function(monkeypatch, ondnn, spy):
    """Fast blocks (eval: residuals fused; train: custom backward) = the reference model, forward and backward."""
    monkeypatch.setenv("VITKIT_ONEDNN", ondnn)
    ref, fast = _tiny(), _tiny()
    plain_attn = fast.blocks[0].attn
    accelerate(fast)
    assert all(type(b) is FastBlock for b in fast.blocks) and fast.blocks[0].attn is plain_attn  # the same modules
    assert list(fast.state_dict()) == list(ref.state_dict())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(fast.eval()(x), ref.eval()(x), atol=1e-5)
    fast.train()(x).square().sum().backward()
    ref.train()(x).square().sum().backward()
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4), name
    assert bool(spy.calls) == (ondnn == "1" and kernels._OP is not None)
    # analysis asks for the weights: the reference block answers, with the same weights as the plain model
    with torch.no_grad():
        w_fast, w_ref = fast.eval().forward_intermediates(x)["attn"], ref.eval().forward_intermediates(x)["attn"]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w_fast, w_ref))
    assert all(type(b) is Block for b in reference(fast).blocks)


def test_half_precision_cpu_attention_takes_the_explicit_path_and_agrees():
    model = _tiny()
    fast = accelerate(_tiny())
    x = torch.randn(4, 3, 16, 16)
    want = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast(x)
    got.float().sum().backward()
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()
    assert all(p.grad is not None for p in fast.parameters())
    assert explicit_attention(torch.empty(1, 2, 50, 8, dtype=torch.bfloat16))
    assert not explicit_attention(torch.empty(1, 2, 50, 8)) and not explicit_attention(torch.empty(1, 2, 577, 8, dtype=torch.bfloat16))


def test_bf16_inference_model_keeps_the_wrapped_model_and_evaluates():
    model = _tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "bf16 is emulated" on CPUs without native bf16
        fast = InferenceModel(model, "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the user's model is untouched
    assert all(type(b) is Block for b in model.blocks)
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
    # fp32: the wrapped model's own weights behind fast blocks; the wrapped model keeps its plain blocks
    f32 = InferenceModel(model, "fp32")
    assert f32.model.head.weight is model.head.weight and type(f32.model.blocks[0]) is FastBlock
    assert torch.allclose(f32(x), want, atol=1e-5)


def test_choices_are_measured_once_and_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("VITKIT_ONEDNN", raising=False)
    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.setattr(kernels, "_VERDICT", {})
    first = kernels.choices()
    saved = json.loads((tmp_path / "kernels.json").read_text())
    key = kernels._cache_key()
    assert runtime.cpu_info().model in key and torch.__version__ in key and set(saved[key]) == {"fp32", "fp32_train", "bf16"}
    if kernels._OP is not None:
        assert first["fp32"]["torch_gflops_1024x768x3072"] > 0 and "measured" in first["fp32"]["why"]
    # a verdict planted in the cache is what the next process uses, without measuring again
    saved[key]["fp32"] = {"on": False, "why": "planted"}
    saved[key]["fp32_train"] = {"on": kernels._OP is not None, "why": "planted"}
    (tmp_path / "kernels.json").write_text(json.dumps(saved))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.setattr(kernels, "_VERDICT", {})
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: pytest.fail("measured although cached"))
    assert kernels.choices()["fp32"]["why"] == "planted" and not kernels.onednn_available(torch.float32)
    # inference and training follow their own verdicts
    layer, x = _layer(), torch.randn(4, 24, requires_grad=True)
    assert ("OneDNN" in type(dense(x, layer).grad_fn).__name__) == (kernels._OP is not None)
    with torch.no_grad():
        assert torch.equal(dense(x, layer), F.linear(x, layer.weight, layer.bias))
    monkeypatch.setenv("VITKIT_ONEDNN", "1")
    assert kernels.onednn_available(torch.float32) == (kernels._OP is not None)


def test_a_cpu_without_onednn_bf16_never_calls_it(monkeypatch, spy):
    """An AVX2-only CPU (forced): bf16 runs as plain PyTorch with a one-line warning, no oneDNN bf16 kernel,
    even with VITKIT_ONEDNN=1; precision auto is fp32."""
    from vitkit.train import precision

    monkeypatch.setenv("VITKIT_CPU", "avx2")
    monkeypatch.setenv("VITKIT_ONEDNN", "1")
    monkeypatch.setattr(precision, "_WARNED", set())
    assert precision.resolve("auto", "cpu") == "fp32"
    model = _tiny()
    with pytest.warns(RuntimeWarning, match=r"bf16 is treated as emulated \(VITKIT_CPU=avx2\).*takes \d+(\.\d)?x the time of an fp32 one"):
        fast = InferenceModel(model, "bf16")
    assert not any(getattr(m, "_vitkit_packed", None) for m in fast.modules())
    with torch.no_grad():
        out = fast(torch.randn(2, 3, 16, 16))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert all(dtype != torch.bfloat16 for _, dtype in spy.calls)
    assert kernels.choices()["bf16"]["on"] is False


def test_native_bf16_cpu_uses_bf16_by_default(monkeypatch):
    from vitkit.train import precision

    monkeypatch.setenv("VITKIT_CPU", "native-bf16")
    assert precision.resolve("auto", "cpu") == "bf16"
    assert InferenceModel(_tiny()).precision == "bf16"
    monkeypatch.setenv("VITKIT_CPU", "avx512")
    assert precision.resolve("auto", "cpu") == "fp32" and InferenceModel(_tiny()).precision == "fp32"


@pytest.mark.parametrize("patch", [4, 1])  # 17 tokens: explicit attention; 257 tokens: the fused kernel
def test_half_precision_copy_with_the_scale_folded_in_agrees_on_both_attention_paths(patch):
    model = _tiny(patch_size=patch)
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = InferenceModel(model, "bf16")
    assert all(b.attn.__dict__.get("_vitkit_q_prescaled") for b in fast.model.blocks)
    assert not any(b.attn.__dict__.get("_vitkit_q_prescaled") for b in model.blocks)  # the user's model is untouched
    with torch.no_grad():
        want, got = model.eval()(x), fast(x)
        w_ref = model.forward_intermediates(x)["attn"]
        w_fast = fast.model.forward_intermediates(x.to(torch.bfloat16))["attn"]
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert all((a.float() - b).abs().max() < 0.02 for a, b in zip(w_fast, w_ref))


def _cold_cache(monkeypatch, path):
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(path))
    monkeypatch.delenv("VITKIT_ONEDNN", raising=False)
    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.setattr(kernels, "_VERDICT", {})


def test_first_use_on_a_new_machine_inside_inference_mode_and_checkpointing(tmp_path, monkeypatch):
    """The measurement runs on first use: it must work inside torch.inference_mode (evaluation) and must not
    happen inside an activation-checkpointed forward (its recomputation would see other tensors)."""
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    _cold_cache(monkeypatch, tmp_path / "a")
    with torch.inference_mode():
        fast = InferenceModel(_tiny(), "fp32")
        res = evaluate(fast, [(x, y)])
    assert res["n"] == 4 and (tmp_path / "a/kernels.json").exists()
    _cold_cache(monkeypatch, tmp_path / "b")
    with torch.inference_mode():
        assert kernels.measure(torch.float32, reps=1, train=True)["why"]
    _cold_cache(monkeypatch, tmp_path / "c")
    model = _tiny()
    model.set_grad_checkpointing(True)
    accelerate(model).train()(x).sum().backward()
    assert all(p.grad is not None for p in model.blocks.parameters())


def test_a_replaced_weight_is_never_served_from_the_packed_copy(onednn_on):
    layer = _layer()
    x = torch.randn(6, 24)
    with torch.no_grad():
        pack_dense_weights(layer)
        new = nn.Parameter(torch.randn_like(layer.weight))
        while new._version < layer.weight._version:  # a new tensor whose version counter matches the old one's
            new.add_(0)
        assert new._version == layer.weight._version
        layer.weight = new
        assert kernels._packed(layer, layer.weight) is layer.weight
        assert torch.allclose(dense(x, layer), F.linear(x, layer.weight, layer.bias), atol=1e-5)


def test_the_folded_scale_never_leaves_the_copy():
    model = _tiny()
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = InferenceModel(model, "bf16")
    sd = fast.model.state_dict()  # what save_model or an export would write: the model's own weights
    for k, v in model.state_dict().items():
        assert torch.allclose(sd[k].float(), v.to(torch.bfloat16).float(), atol=1e-6), k
    with torch.no_grad():
        want = model.eval()(x)
        got = reference(fast.model)(x.to(torch.bfloat16)).float()  # plain blocks again, which scale q themselves
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_a_cpu_that_cannot_run_onednn_bf16_is_safe_even_when_told_it_has_native_bf16(monkeypatch, spy):
    """The risky direction of forcing: VITKIT_CPU=native-bf16 on an AVX2-only CPU (its probe faked here) may
    change what vitkit chooses, never make it call a bf16 kernel the CPU lacks."""
    monkeypatch.setattr(runtime, "_probe_cpu", lambda: ("AMD EPYC (AVX2)", "AVX2", ("avx2",)))
    monkeypatch.setenv("VITKIT_CPU", "native-bf16")
    monkeypatch.setenv("VITKIT_ONEDNN", "1")
    kernels._bf16_runs.cache_clear()
    try:
        assert runtime.cpu_info().native_bf16 and not runtime.onednn_bf16_runs()
        assert not kernels._op_runs(torch.bfloat16) and not kernels.onednn_available(torch.bfloat16)
        fast = InferenceModel(_tiny(), "auto")
        assert fast.precision == "bf16"
        with torch.no_grad():
            fast(torch.randn(2, 3, 16, 16))
        assert all(dtype != torch.bfloat16 for _, dtype in spy.calls)
    finally:
        kernels._bf16_runs.cache_clear()


def test_a_damaged_cache_is_measured_again_and_a_bad_switch_is_an_error(tmp_path, monkeypatch):
    _cold_cache(monkeypatch, tmp_path)
    key = kernels._cache_key()
    (tmp_path / "kernels.json").write_text(json.dumps({key: {"fp32": "on", "fp32_train": {}, "bf16": None}}))
    assert all(isinstance(v["on"], bool) for v in kernels.choices().values())
    assert kernels._valid(json.loads((tmp_path / "kernels.json").read_text())[key])  # rewritten whole
    monkeypatch.setenv("VITKIT_ONEDNN", "yes")
    with pytest.raises(ValueError, match="VITKIT_ONEDNN='yes': set 0 \\(off\\), 1 \\(on\\), or unset it"):
        kernels.choices()
