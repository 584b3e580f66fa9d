"""What each training option does, worked by hand on tensors small enough to follow: the optimizers'
first updates and weight decay, the softmax / sigmoid losses with label smoothing, Mixup's pairs."""
import math

import pytest
import torch
import torch.nn as nn

from vitkit.config import DataConfig, OptimConfig
from vitkit.data.transforms import mix_batch
from vitkit.objectives.classification import classification_loss
from vitkit.train.optim import build_optimizer


class Two(nn.Module):
    """A weight matrix (decayed) and a bias (never decayed)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0]]))
        self.b = nn.Parameter(torch.tensor([0.5]))


def _step(name: str, **kw) -> Two:
    m = Two()
    opt = build_optimizer(m, OptimConfig(name=name, lr=0.1, weight_decay=0.5, **kw))
    m.w.grad = torch.tensor([[0.2, -0.4]])
    m.b.grad = torch.tensor([1.0])
    opt.step()
    return m


def test_adamw_first_step_is_lr_times_sign_plus_decoupled_decay():
    # step 1: m_hat = g, v_hat = g^2, so the Adam part is lr * g / (|g| + eps) = 0.1 * sign(g);
    # decoupled decay multiplies the weight (not the bias) by 1 - lr * wd = 0.95 first
    m = _step("adamw")
    assert torch.allclose(m.w.data, torch.tensor([[1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1]]), atol=1e-6)
    assert torch.allclose(m.b.data, torch.tensor([0.5 - 0.1]), atol=1e-6)


def test_sgd_first_step_with_momentum_and_decay():
    # torch's SGD: the gradient gets wd * w added (coupled decay), the first momentum buffer is that gradient
    m = _step("sgd", momentum=0.9)
    g = torch.tensor([[0.2, -0.4]]) + 0.5 * torch.tensor([[1.0, -2.0]])
    assert torch.allclose(m.w.data, torch.tensor([[1.0, -2.0]]) - 0.1 * g, atol=1e-6)
    assert torch.allclose(m.b.data, torch.tensor([0.5 - 0.1 * 1.0]), atol=1e-6)


def test_softmax_and_sigmoid_losses_with_label_smoothing():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    z = [2.0, 0.0, -1.0]
    lse = math.log(sum(math.exp(v) for v in z))
    assert classification_loss(logits, y).item() == pytest.approx(lse - 2.0, abs=1e-6)
    # smoothing 0.3 over 3 classes: targets (0.8, 0.1, 0.1)
    t = [0.8, 0.1, 0.1]
    want = -sum(ti * (zi - lse) for ti, zi in zip(t, z))
    assert classification_loss(logits, y, smoothing=0.3).item() == pytest.approx(want, abs=1e-6)
    # sigmoid: binary cross-entropy per class, summed over classes (big_vision's sigmoid_xent)
    def bce(zi, ti):
        return -(ti * math.log(1 / (1 + math.exp(-zi))) + (1 - ti) * math.log(1 - 1 / (1 + math.exp(-zi))))
    want = sum(bce(zi, ti) for zi, ti in zip(z, [1.0, 0.0, 0.0]))
    assert classification_loss(logits, y, loss="sigmoid").item() == pytest.approx(want, abs=1e-6)


def test_mixup_mixes_pairs_and_their_labels_with_one_weight():
    torch.manual_seed(0)
    x = torch.stack([torch.full((1, 2, 2), float(i)) for i in range(4)])  # image i is the constant i
    y = torch.arange(4)
    xm, ym = mix_batch(x, y, 4, DataConfig(mixup=0.8))
    assert ym.shape == (4, 4) and torch.allclose(ym.sum(1), torch.ones(4))
    lam = ym.max(1).values[0].item()  # torchvision mixes image i with image i-1 (a roll), one lambda per batch
    for i in range(4):
        j = (i - 1) % 4
        assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6) or torch.allclose(
            xm[i], (1 - lam) * x[i] + lam * x[j], atol=1e-6)
        assert ym[i, i].item() + ym[i, j].item() == pytest.approx(1.0)


def test_soft_labels_smoothing_and_sigmoid_over_a_batch():
    from vitkit.objectives.classification import hard_labels

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    soft = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]])  # what Mixup gives
    for smoothing in (0.0, 0.3):
        t = [[ti * (1 - smoothing) + smoothing / 3 for ti in row] for row in soft.tolist()]
        want = 0.0
        for z, tr in zip(logits.tolist(), t):
            lse = math.log(sum(math.exp(v) for v in z))
            want += -sum(ti * (zi - lse) for ti, zi in zip(tr, z)) / 2  # mean over the batch of the sum over classes
        assert classification_loss(logits, soft, smoothing=smoothing).item() == pytest.approx(want, abs=1e-6)
        bce = lambda z, t: -(t * math.log(1 / (1 + math.exp(-z))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-z))))  # noqa: E731
        want = sum(bce(zi, ti) for z, tr in zip(logits.tolist(), t) for zi, ti in zip(z, tr)) / 2
        assert classification_loss(logits, soft, loss="sigmoid", smoothing=smoothing).item() == pytest.approx(want, abs=1e-6)
    assert hard_labels(soft).tolist() == [0, 2] and hard_labels(torch.tensor([2, 1])).tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"optim.loss='hinge' is not one of \('softmax', 'sigmoid'\)"):
        classification_loss(logits, soft, loss="hinge")


def test_adam_and_adamw_second_step_with_the_configured_betas():
    """Two steps worked out from the Adam paper with b1 = 0.5, b2 = 0.75 (bias-corrected moments), decoupled decay
    for both "adam" and "adamw": w <- w (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)."""
    for name in ("adam", "adamw"):
        m = Two()
        opt = build_optimizer(m, OptimConfig(name=name, lr=0.1, weight_decay=0.5, b1=0.5, b2=0.75))
        assert opt.defaults["fused"] is True  # one pass over every tensor on the CPU
        w = [1.0, -2.0]
        mom, vel = [0.0, 0.0], [0.0, 0.0]
        for step, g in enumerate(([0.2, -0.4], [-0.6, 0.1]), start=1):
            m.w.grad, m.b.grad = torch.tensor([g]), torch.tensor([1.0])
            opt.step()
            for j in range(2):
                mom[j] = 0.5 * mom[j] + 0.5 * g[j]
                vel[j] = 0.75 * vel[j] + 0.25 * g[j] ** 2
                m_hat, v_hat = mom[j] / (1 - 0.5**step), vel[j] / (1 - 0.75**step)
                w[j] = w[j] * (1 - 0.1 * 0.5) - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
            assert m.w.data[0].tolist() == pytest.approx(w, abs=1e-6), (name, step)


def test_sgd_second_step_uses_momentum():
    m = Two()
    opt = build_optimizer(m, OptimConfig(name="sgd", lr=0.1, weight_decay=0.0, momentum=0.5))
    for g in (1.0, 3.0):
        m.b.grad, m.w.grad = torch.tensor([g]), torch.zeros(1, 2)
        opt.step()
    # buffer: 1, then 0.5 * 1 + 3 = 3.5; bias: 0.5 - 0.1 - 0.35
    assert m.b.item() == pytest.approx(0.5 - 0.1 - 0.35)


def test_optimizer_groups_skip_frozen_parameters_and_meta_is_not_fused():
    import vitkit
    from vitkit.train.optim import param_groups

    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=8)
    model.patch_embed.requires_grad_(False)  # frozen first: the rest must still be grouped
    decay, no_decay = param_groups(model, 0.1)
    n = sum(p.requires_grad for p in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n and not any(p is model.patch_embed.proj.weight for p in decay["params"])
    with torch.device("meta"):
        meta = Two()
    assert not build_optimizer(meta, OptimConfig(name="adamw")).defaults.get("fused")  # fused kernels are CPU / CUDA only
    with pytest.raises(ValueError, match=r"optim.name='lamb' is not one of \('adamw', 'adam', 'sgd'\)"):
        build_optimizer(Two(), OptimConfig(name="lamb"))


def test_schedule_corners():
    from vitkit.train.optim import lr_factor

    # warm-up from the fraction: 10% of 50 steps = 5 steps of 1/5, 2/5, ...
    f = lr_factor(OptimConfig(schedule="constant", warmup_steps=-1, warmup_fraction=0.1), total=50)
    assert [f(s) for s in (0, 4, 5, 49, 80)] == pytest.approx([0.2, 1.0, 1.0, 1.0, 1.0])
    # linear to 0.1 of the peak over 20 steps after 4 of warm-up; past the end it stays at the end
    f = lr_factor(OptimConfig(schedule="linear", warmup_steps=4, end_lr_fraction=0.1), total=24)
    assert [f(s) for s in (4, 14, 24, 30)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    # all warm-up (total == warm): the decay has one step to run
    f = lr_factor(OptimConfig(schedule="cosine", warmup_steps=3), total=3)
    assert [f(s) for s in (0, 2, 3, 4)] == pytest.approx([1 / 3, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"optim.schedule='step' is not one of \('cosine', 'linear', 'constant'\)"):
        lr_factor(OptimConfig(schedule="step"), total=10)


def test_fused_optimizers_on_cuda_and_sgd_and_cosine_to_a_floor():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vitkit.train.optim import lr_factor

    assert build_optimizer(Two(), OptimConfig(name="sgd")).defaults["fused"] is True
    with FakeTensorMode():
        m = Two()
        m.w, m.b = nn.Parameter(torch.ones(1, 2, device="cuda")), nn.Parameter(torch.ones(1, device="cuda"))
        for name in ("adamw", "sgd"):
            assert build_optimizer(m, OptimConfig(name=name)).defaults["fused"] is True
    f = lr_factor(OptimConfig(schedule="cosine", warmup_steps=0, end_lr_fraction=0.1), total=10)
    assert [f(0), f(5), f(10)] == pytest.approx([1.0, 0.55, 0.1])  # 0.1 + 0.9 * (1 + cos(pi t)) / 2


def test_a_bad_choice_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    """Typed choices (Literal fields) and the dataset / model names are checked when the config is built: nothing
    is written for `--set optim.name=adamx`, nor for a config file with a bad schedule or dataset."""
    import json

    from vitkit.cli import main

    out = tmp_path / "run"
    assert main(["train", "--set", "optim.name=adamx", "--out", str(out)]) == 2
    assert "optim.name='adamx': choose one of adamw, adam, sgd" in capsys.readouterr().err and not out.exists()
    for key, bad, said in (("optim", {"schedule": "cosinus"}, "optim.schedule='cosinus': choose one of cosine, linear, constant"),
                           ("data", {"name": "imagenet"}, "data.name: unknown dataset 'imagenet'"),
                           ("model", {"name": "ViT-Q/16"}, "model.name='ViT-Q/16': unknown model")):
        (tmp_path / "c.json").write_text(json.dumps({key: bad}))
        assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(out)]) == 2
        assert said in capsys.readouterr().err and not out.exists()


def test_every_architecture_field_can_be_set():
    from vitkit.config import apply_overrides
    from vitkit.recipes import get_recipe
    from types import SimpleNamespace

    from vitkit.train.loop import build_model

    cfg = apply_overrides(get_recipe("quickstart"), ["model.qkv_bias=false", "model.ln_eps=1e-5", "model.pool=gap",
                                                     "model.class_token=true", "model.fc_norm=true"])
    model = build_model(cfg, SimpleNamespace(num_classes=10, channels=1, classes=list("0123456789")))
    assert model.blocks[0].attn.qkv.bias is None and model.norm.eps == 1e-5
    assert model.cls_token is not None and model.config.pool == "gap" and model.config.fc_norm
