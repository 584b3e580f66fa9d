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
