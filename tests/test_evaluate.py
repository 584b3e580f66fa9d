"""Classification metrics on fixed, hand-worked examples: top-1, top-5, loss, the confusion matrix and
per-class accuracy (evaluate/classify.py and the eval verb's figure)."""
import math

import torch
import torch.nn as nn

from vitkit.evaluate.classify import evaluate
from vitkit.evaluate.run import plot_confusion


class Fixed(nn.Module):
    """Returns the logits it was given, batch by batch, whatever the images."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.w = nn.Parameter(torch.zeros(1))  # a device to run on
        self.seen = 0

    def forward(self, x):
        out = self.logits[self.seen:self.seen + len(x)]
        self.seen += len(x)
        return out


def test_top1_top5_loss_and_confusion_worked_by_hand(tmp_path):
    # 6 classes; rows are images. Ranks of the true class: 1st, 2nd, 6th, 1st.
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0],    # true 0: predicted 0
                           [3.0, 2, 9, 0, 0, 0],    # true 0: predicted 2, 0 ranked 2nd (in the top 5)
                           [0.0, 1, 2, 3, 4, 5],    # true 0: last of 6 -> not in the top 5
                           [0.0, 0, 0, 7, 0, 0]])   # true 3: predicted 3
    y = torch.tensor([0, 0, 0, 3])
    batches = [(torch.zeros(2, 1), y[:2]), (torch.zeros(2, 1), y[2:])]
    res = evaluate(Fixed(logits), batches, num_classes=6)
    assert res["n"] == 4 and res["top1"] == 2 / 4 and res["top5"] == 3 / 4
    # cross-entropy by hand: -log softmax(logits)[y], averaged
    def ce(row, k):
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))
    want = sum(ce(logits[i].tolist(), int(y[i])) for i in range(4)) / 4
    assert abs(res["loss"] - want) < 1e-5
    conf = res["confusion"]  # rows: truth, columns: prediction
    assert conf[0] == [1, 0, 1, 0, 0, 1] and conf[3] == [0, 0, 0, 1, 0, 0]
    assert sum(map(sum, conf)) == 4 and all(sum(conf[i]) == 0 for i in (1, 2, 4, 5))
    out = plot_confusion({**res, "classes": list("abcdef")}, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*tmp*"))  # written atomically
