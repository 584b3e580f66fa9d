"""Semantic segmentation: the mask folder reader (data/masks.py), the heads (heads/segmentation.py) and the scores
(evaluate/segmentation.py), on files and masks the tests write."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import vitkit
from vitkit.data.canvas import CanvasSpec, CanvasTask
from vitkit.data.datasets import DatasetError
from vitkit.data.masks import VOC_CLASSES, read_mask, segmentation_folder
from vitkit.data.transforms import normalize
from vitkit.evaluate.segmentation import ConfusionMatrix, evaluate_segmentation, segmentation_scores
from vitkit.heads.segmentation import SegmentationModel, segmentation_loss

TINY = dict(width=32, depth=1, heads=2, mlp_dim=64)


# --- the folder reader ---------------------------------------------------------------------------------------------


def palette_png(path, m: np.ndarray) -> None:
    im = Image.fromarray(m.astype(np.uint8), mode="P")
    im.putpalette([(i * 37) % 256 for i in range(768)])  # colours unrelated to the indices
    im.save(path)


def write_pair(root, name: str, m: np.ndarray, mode: str = "P", image_size=None, images="images", masks="masks"):
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / masks).mkdir(parents=True, exist_ok=True)
    h, w = image_size or m.shape
    rgb = np.random.default_rng(len(name)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / images / f"{name}.jpg")
    if mode == "P":
        palette_png(root / masks / f"{name}.png", m)
    else:
        Image.fromarray(m.astype(np.uint8), mode="L").save(root / masks / f"{name}.png")


def pattern(k: int, h: int = 6, w: int = 8) -> np.ndarray:
    m = (np.arange(h * w).reshape(h, w) + k) % 3
    m[0, 0] = 255  # VOC's border: ignored
    return m


def test_palette_and_grayscale_masks_read_as_indices(tmp_path):
    m = pattern(0)
    palette_png(tmp_path / "p.png", m)
    Image.fromarray(m.astype(np.uint8), mode="L").save(tmp_path / "l.png")
    for name in ("p.png", "l.png"):
        got = read_mask(tmp_path / name, num_classes=3)
        assert got.dtype == torch.int64 and torch.equal(got, torch.from_numpy(m))
    assert Image.open(tmp_path / "p.png").convert("L").getpixel((1, 0)) != 1  # the palette's colour is not the index


def test_flat_folder_splits_and_ignore(tmp_path):
    for k in range(5):
        write_pair(tmp_path, f"im{k}", pattern(k), mode="P" if k % 2 else "L")
    ds = segmentation_folder(tmp_path)  # no size: read pair by pair
    assert ds.classes == ["0", "1", "2"] and ds.ignore_index == 255 and ds.channels == 3
    assert len(ds.train) == 4 and len(ds.test) == 1 and len(ds.val) == 0
    assert any("held out" in n for n in ds.notes) and any("classes.txt" in n for n in ds.notes)
    x, m = ds.train[0]
    assert x.shape == (3, 6, 8) and x.dtype == torch.uint8 and m.shape == (6, 8) and int(m[0, 0]) == 255
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    mem = segmentation_folder(tmp_path, size=4)
    assert mem.classes == ["sky", "road", "car"]
    assert mem.train.images.shape == (4, 3, 4, 4) and mem.train.masks.shape == (4, 4, 4)
    assert set(mem.train.masks.unique().tolist()) <= {0, 1, 2, 255}  # nearest: indices only


def test_split_folders_voc_and_ade_layouts(tmp_path):
    split = tmp_path / "splits"
    for k in range(3):
        write_pair(split, f"a{k}", pattern(k), images="train/images", masks="train/masks")
    write_pair(split, "v", pattern(1), images="val/images", masks="val/masks")
    ds = segmentation_folder(split)
    assert len(ds.train) == 3 and len(ds.test) == 1 and any("val is used as the test split" in n for n in ds.notes)

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for k in range(4):
        write_pair(voc, f"2007_00000{k}", pattern(k) * (pattern(k) < 255) * 7, images="JPEGImages", masks="SegmentationClass")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(voc / "JPEGImages" / "unlabelled.jpg")  # VOC: not every image is segmented
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000000\n2007_000001\n2007_000002\n")
    (lists / "val.txt").write_text("2007_000003\n")
    ds = segmentation_folder(tmp_path / "VOCdevkit")
    assert ds.classes == VOC_CLASSES and len(ds.train) == 3 and len(ds.test) == 1

    ade = tmp_path / "ADEChallengeData2016"
    write_pair(ade, "t", pattern(0) + 1, images="images/training", masks="annotations/training")  # 1..3; 0 is "other"
    m = pattern(1) + 1
    m[1, 1] = 0
    write_pair(ade, "v", m, images="images/validation", masks="annotations/validation")
    ds = segmentation_folder(ade)
    assert ds.classes == ["1", "2", "3"]  # reduced: class k is mask value k + 1
    _, got = ds.test[0]
    assert int(got[1, 1]) == 255 and int(got[0, 1]) == m[0, 1] - 1 and int(got[0, 0]) == 255


def test_folder_errors_name_the_file(tmp_path):
    write_pair(tmp_path, "ok", pattern(0))
    write_pair(tmp_path, "big", pattern(1), image_size=(7, 8))
    with pytest.raises(DatasetError, match=r"big\.png: mask is 8x6 pixels but its image .*big\.jpg is 8x7"):
        segmentation_folder(tmp_path, size=4)
    (tmp_path / "images" / "big.jpg").unlink()
    with pytest.raises(DatasetError, match=r"big\.png: a mask without an image"):
        segmentation_folder(tmp_path)
    (tmp_path / "masks" / "big.png").unlink()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(DatasetError, match=r"lonely\.png: no mask for this image"):
        segmentation_folder(tmp_path)
    (tmp_path / "images" / "lonely.png").unlink()
    write_pair(tmp_path, "odd", pattern(2) * (pattern(2) < 255) + 4)  # values 4-6
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(DatasetError, match=r"odd\.png: mask values 4, 5, 6 are outside the 3 classes"):
        segmentation_folder(tmp_path, size=4)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match=r"rgb\.png: a RGB mask"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match=r"m\.jpg: a mask saved with lossy compression"):
        read_mask(tmp_path / "m.jpg")
    with pytest.raises(DatasetError, match="not a segmentation folder"):
        segmentation_folder(tmp_path / "images")


# --- the heads -----------------------------------------------------------------------------------------------------


def tiny_encoder(size=32, patch=4, **kw):
    return vitkit.create_model("ViT-Ti/16", patch_size=patch, image_size=size, in_chans=1, num_classes=10, **TINY, **kw)


@pytest.mark.parametrize("head", ["linear", "progressive"])
def test_head_shapes_at_two_sizes(head):
    model = SegmentationModel(tiny_encoder(), num_classes=5, head=head, channels=8).eval()
    assert isinstance(model.encoder.head, nn.Identity)  # the classifier is gone
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5, 32, 32)
    model.set_image_size((48, 40))  # position embeddings resampled, as for fine-tuning at another resolution
    assert model.encoder.pos_embed.shape[1] == 1 + 12 * 10
    out = model(torch.randn(2, 1, 48, 40))
    assert out.shape == (2, 5, 48, 40)
    with pytest.raises(ValueError, match="set_image_size"):
        model(torch.randn(1, 1, 32, 32))


def test_progressive_undoes_the_stride():
    head = SegmentationModel(tiny_encoder(size=32, patch=8), 3, "progressive", channels=8).head
    assert head.ups == 3 and len(head.stages) == 3  # 8 = 2^3: three x2 steps
    odd = SegmentationModel(tiny_encoder(size=36, patch=6, pool="gap"), 3, "progressive", channels=8).eval()
    assert odd.head.ups == 2 and odd(torch.randn(1, 1, 36, 36)).shape == (1, 3, 36, 36)  # x4, then resized
    gap = SegmentationModel(tiny_encoder(pool="gap", fc_norm=True), 3).eval()  # no class token to drop
    assert gap(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_loss_ignores_the_ignore_index():
    logits = torch.randn(2, 3, 4, 4)
    masks = torch.randint(0, 3, (2, 4, 4))
    masks[0, :2] = 255
    keep = masks != 255
    want = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    assert torch.allclose(segmentation_loss(logits, masks), want)
    other = logits.clone()
    other[0, :, :2] = 100.0  # anything at ignored pixels
    assert torch.allclose(segmentation_loss(other, masks), want)
    assert segmentation_loss(logits, torch.full((2, 4, 4), 255)).item() == 0.0  # nothing to score: 0, not NaN
    big = masks.repeat_interleave(2, 1).repeat_interleave(2, 2)  # masks at twice the logits' size: logits resized up
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(segmentation_loss(logits, big), segmentation_loss(up, big))


@pytest.mark.parametrize("head", ["linear", "progressive"])
def test_a_few_steps_lower_the_loss(head):
    torch.manual_seed(0)
    task = CanvasTask.load(CanvasSpec(size=32, sources=("digits",), items=(1, 2), digits_size=(12, 16)))
    data = task.materialise("train", 8)
    x, masks = normalize(data.images.float() / 255, "google"), data.masks.long()
    model = SegmentationModel(tiny_encoder(), task.num_classes, head=head, channels=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = segmentation_loss(model(x), masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(task.num_classes), rel=1e-4)  # zero-initialised last layer: uniform
    assert losses[-1] < 0.6 * losses[0], losses


# --- the scores ----------------------------------------------------------------------------------------------------


T = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]])
P = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 0, 0], [2, 1, 2, 2]])


def test_scores_by_hand():
    # confusion (rows target): class 0 -> 3 right, 1 as 1; class 1 -> 3 right, 1 as 2; class 2 -> 5 right, 1 as 1;
    # predicted totals 3, 5, 6; class 3 in neither. The two ignored pixels count nowhere.
    cm = ConfusionMatrix(4)
    cm.update(P[None], T[None])
    assert cm.matrix.tolist() == [[3, 1, 0, 0], [0, 3, 1, 0], [0, 1, 5, 0], [0, 0, 0, 0]]
    s = cm.compute(["a", "b", "c", "d"])
    assert s["iou"] == pytest.approx({"a": 3 / 4, "b": 3 / 6, "c": 5 / 7, "d": None}) and s["iou"]["d"] is None
    assert s["miou"] == pytest.approx((3 / 4 + 3 / 6 + 5 / 7) / 3)  # class d (union 0) left out
    assert s["pixel_acc"] == pytest.approx(11 / 14) and s["pixels"] == 14
    assert s["mean_acc"] == pytest.approx((3 / 4 + 3 / 4 + 5 / 6) / 3)
    # a class predicted but absent from the targets has IoU 0 and counts in the mean; it has no accuracy
    p = P.clone()
    p[0, 0] = 3
    s = segmentation_scores(torch.tensor([[2, 1, 0, 1], [0, 3, 1, 0], [0, 1, 5, 0], [0, 0, 0, 0]]))
    cm = ConfusionMatrix(4)
    cm.update(p[None], T[None])
    assert cm.compute() == s
    assert s["iou"] == pytest.approx([2 / 4, 3 / 6, 5 / 7, 0.0])
    assert s["miou"] == pytest.approx((2 / 4 + 3 / 6 + 5 / 7 + 0) / 4) and s["acc"][3] is None


def test_confusion_accumulates_and_takes_logits():
    whole = ConfusionMatrix(4)
    whole.update(P[None], T[None])
    parts = ConfusionMatrix(4)
    parts.update(P[None, :2], T[None, :2])
    parts.update(F.one_hot(P[None, 2:], 4).permute(0, 3, 1, 2).float(), T[None, 2:])  # logits: argmax taken
    assert torch.equal(whole.matrix, parts.matrix)
    bad = ConfusionMatrix(3)
    bad.update(P[None].clamp(max=2), T[None].masked_fill(T[None] == 2, 7))
    with pytest.raises(ValueError, match="target pixels hold a class outside 0-2"):
        bad.compute()
    wide = ConfusionMatrix(3)
    wide.update(P[None] + 1, T[None].clamp(max=2))  # a prediction of class 3
    with pytest.raises(ValueError, match="predicted pixels hold a class outside 0-2"):
        wide.compute()


def test_against_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(0)
    K = 5
    target = torch.randint(0, K, (6, 16, 16), generator=g)
    target[torch.rand(6, 16, 16, generator=g) < 0.1] = 255
    pred = torch.where(torch.rand(6, 16, 16, generator=g) < 0.6, target.clamp(max=K - 1), torch.randint(0, K, (6, 16, 16), generator=g))
    pred[pred == 1] = 2  # class 1: in the targets, never predicted
    target[target == 4] = 0  # class 4: predicted, never a target
    cm = ConfusionMatrix(K)
    for i in range(0, 6, 2):
        cm.update(pred[i:i + 2], target[i:i + 2])
    s = cm.compute()
    miou = tm.MulticlassJaccardIndex(K, average="macro", ignore_index=255)(pred, target)
    per = tm.MulticlassJaccardIndex(K, average="none", ignore_index=255)(pred, target)
    acc = tm.MulticlassAccuracy(K, average="micro", ignore_index=255)(pred, target)
    assert s["miou"] == pytest.approx(miou.item(), abs=1e-6)
    assert s["iou"] == pytest.approx(per.tolist(), abs=1e-6)
    assert s["pixel_acc"] == pytest.approx(acc.item(), abs=1e-6)


def test_evaluate_a_model():
    masks = T[None].expand(3, 4, 4).clone()
    oracle = F.one_hot(masks.clamp(max=3), 4).permute(0, 3, 1, 2).float() * 10  # logits that say the target
    s = evaluate_segmentation(nn.Identity(), [(oracle[:2], masks[:2]), (oracle[2:], masks[2:])], num_classes=4)
    assert s["miou"] == 1.0 and s["pixel_acc"] == 1.0 and s["n"] == 3 and s["loss"] < 1e-3
    low = F.avg_pool2d(oracle, 2)  # logits at half the masks' size: resized up before scoring
    assert evaluate_segmentation(nn.Identity(), [(low, masks)], num_classes=4)["n"] == 3
