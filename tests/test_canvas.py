"""The canvas task (data/canvas.py): a pure function of (seed, split, index); masks, instances and boxes agree; test
canvases hold test items only."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vitkit.data.canvas import CanvasDataset, CanvasSpec, CanvasTask, canvas_classes, canvas_dataset
from vitkit.data.datasets import ArrayData, DatasetError, _digits
from vitkit.data.masks import dense_collate, resize_dense


@pytest.fixture(scope="module")
def digits_task():
    return CanvasTask.load(CanvasSpec(size=64, sources=("digits",)))


@pytest.fixture(scope="module")
def both_task():
    try:
        return CanvasTask.load(CanvasSpec(size=96), download=False)
    except DatasetError as err:
        pytest.skip(f"Fashion-MNIST is not on this machine: {err}")


def constant_pools(values: dict[str, int], n: int = 5, step: int = 0) -> dict[str, dict[str, ArrayData]]:
    """Solid 28 x 28 squares (a resize keeps them constant): item k of split s (label k) has pixel value
    values[s] + step * k."""
    return {split: {"fashion-mnist": ArrayData((v + step * torch.arange(n)).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28),
                                               torch.arange(n))} for split, v in values.items()}


def test_classes():
    assert canvas_classes(("digits",)) == ["background"] + [f"digit {i}" for i in range(10)]
    both = canvas_classes()
    assert len(both) == 21 and both[1] == "T-shirt/top" and both[11] == "digit 0"
    assert canvas_classes(("digits", "fashion-mnist")) == both  # the order of CANVAS_SOURCES, not of the spec


def test_same_canvas_whatever_the_order(digits_task):
    a = [digits_task.draw("train", i) for i in (5, 3, 7)]
    fresh = CanvasTask.load(CanvasSpec(size=64, sources=("digits",)))
    b = {i: fresh.draw("train", i) for i in (7, 5, 3)}
    for i, got in zip((5, 3, 7), a):
        for x, y in zip(got, b[i]):
            np.testing.assert_array_equal(x, y)
    batch = digits_task.materialise("train", 3, start=3)  # canvases 3, 4, 5
    np.testing.assert_array_equal(batch.images[0, 0].numpy(), a[1][0])
    np.testing.assert_array_equal(batch.masks[2].numpy(), a[0][1])
    assert not np.array_equal(digits_task.draw("train", 3)[0], digits_task.draw("train", 4)[0])
    assert not np.array_equal(digits_task.draw("train", 3)[0], digits_task.draw("test", 3)[0])  # splits differ
    other_seed = CanvasTask(CanvasSpec(size=64, sources=("digits",), seed=1), digits_task.pools)
    assert not np.array_equal(other_seed.draw("train", 3)[0], digits_task.draw("train", 3)[0])


def check_consistent(data, ink: int, num_classes: int):
    """Per canvas: boxes tight around their instance's pixels, the mask's class there is the box's label, the mask is
    non-zero exactly on instances and exactly where the image is ink."""
    n_boxes = 0
    for k in range(len(data)):
        img, mask, inst = data.images[k, 0], data.masks[k].long(), data.instances[k].long()
        labels, boxes = data.labels[k], data.boxes[k]
        n = int((labels > 0).sum())
        assert (labels[:n] > 0).all() and (labels[n:] == 0).all()  # filled slots first
        assert int(inst.max()) == n and set(inst.unique().tolist()) == set(range(n + 1))
        assert torch.equal(mask > 0, inst > 0)
        assert torch.equal(mask > 0, img >= ink)
        assert (mask < num_classes).all()
        for j in range(n):
            on = inst == j + 1
            rows, cols = on.any(1).nonzero().flatten(), on.any(0).nonzero().flatten()
            x0, y0, x1, y1 = boxes[j].tolist()
            assert (x0, y0, x1, y1) == (cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1)
            assert set(mask[on].unique().tolist()) == {int(labels[j])}
        n_boxes += n
    return n_boxes


def test_masks_boxes_and_labels_agree(digits_task):
    data = digits_task.materialise("val", 60)
    assert check_consistent(data, digits_task.spec.ink, digits_task.num_classes) > 60
    counts = (data.labels > 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 4 and len(counts.unique()) > 1


def test_both_sources(both_task):
    data = both_task.materialise("test", 40)
    assert check_consistent(data, both_task.spec.ink, 21) > 40
    labels = data.labels[data.labels > 0]
    assert (labels <= 10).any() and (labels > 10).any()  # Fashion-MNIST items and digits both
    assert data.images.shape == (40, 1, 96, 96) and data.images.dtype == torch.uint8


def test_items_come_from_their_own_split():
    task = CanvasTask(CanvasSpec(size=64, sources=("fashion-mnist",), fashion_size=(10, 20)),
                      constant_pools({"train": 100, "val": 150, "test": 200}))
    for split, v in (("train", 100), ("val", 150), ("test", 200)):
        data = task.materialise(split, 30)
        assert set(data.images.unique().tolist()) == {0, v}, split
        # solid squares: each box is its item's visible pixels, whole where nothing lies on top
        check_consistent(data, task.spec.ink, task.num_classes)


def test_the_topmost_item_is_seen_and_splits_draw_apart():
    task = CanvasTask(CanvasSpec(size=48, sources=("fashion-mnist",), items=(4, 4), fashion_size=(16, 28), max_overlap=1.0),
                      constant_pools({"train": 40, "val": 40, "test": 40}, step=40))
    data = task.materialise("train", 20)
    on = data.masks > 0
    assert torch.equal(data.images[:, 0][on].long(), 40 + 40 * (data.masks[on].long() - 1))  # the value of the class's item
    assert int((data.labels > 0).sum()) > 60  # overlapping: some items hidden in part, few entirely
    same = task.materialise("test", 20)  # the same items in every split: the draws still differ
    assert not torch.equal(same.images, data.images)


def test_load_takes_the_sources_splits(digits_task):
    train, test = _digits()
    assert torch.equal(digits_task.pools["test"]["digits"].images, test.images)
    seen = {tuple(x.flatten().tolist()) for x in digits_task.pools["train"]["digits"].images}
    assert not any(tuple(x.flatten().tolist()) in seen for x in digits_task.pools["val"]["digits"].images[:50])
    assert len(digits_task.pools["train"]["digits"]) + len(digits_task.pools["val"]["digits"]) == len(train)


def test_no_overlap_when_asked():
    task = CanvasTask(CanvasSpec(size=64, sources=("fashion-mnist",), items=(3, 4), fashion_size=(12, 20), max_overlap=0.0),
                      constant_pools({"train": 100, "val": 150, "test": 200}))
    data = task.materialise("train", 30)
    for k in range(30):
        b = data.boxes[k][data.labels[k] > 0]
        assert ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= 144).all()  # whole squares: nothing hidden
        for i in range(len(b)):
            for j in range(i):
                w = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
                h = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
                assert w <= 0 or h <= 0


def test_dataset_views_and_resize(digits_task):
    lazy = CanvasDataset(digits_task, "train", 4)
    image, target = lazy[2]
    data = canvas_dataset(train=4, val=1, test=2, task=digits_task)
    assert data.num_classes == 11 and data.channels == 1 and len(data.test) == 2
    assert torch.equal(image, data.train.images[2]) and torch.equal(target["mask"], data.train.masks[2].long())
    assert torch.equal(target["boxes"], data.train.targets(2)["boxes"])
    x, masks, targets = next(iter(DataLoader(data.train, batch_size=4, collate_fn=dense_collate)))
    assert x.shape == (4, 1, 64, 64) and masks.shape == (4, 64, 64) and len(targets) == 4
    half = resize_dense(data.train, 32)
    assert half.images.shape == (4, 1, 32, 32) and half.masks.dtype == torch.uint8
    assert torch.allclose(half.boxes, data.train.boxes / 2)
    assert set(half.masks.unique().tolist()) <= set(data.train.masks.unique().tolist())  # nearest: no blended index
    with pytest.raises(IndexError):
        lazy[4]


@pytest.mark.parametrize("bad", [dict(sources=("cifar10",)), dict(items=(3, 2)), dict(max_overlap=1.5), dict(ink=0),
                                 dict(sources=())])
def test_spec_errors(bad):
    with pytest.raises(ValueError, match="canvas"):
        CanvasSpec(**bad)
