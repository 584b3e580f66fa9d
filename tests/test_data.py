"""Every dataset source on small generated files in the real formats, and the augmentations."""
import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.config import DataConfig
from vitkit.data.datasets import DatasetError, load_dataset, load_image, read_idx
from vitkit.data.loader import EpochOrder, StepBatches, eval_stream
from vitkit.data.transforms import BatchAugment, eval_transform, match_channels, mix_batch, train_transform


def write_idx(path, array, gz):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("name,gz", [("fashion-mnist", True), ("mnist", False)])
def test_idx_sources(tmp_path, name, gz):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    ds = load_dataset(DataConfig(name=name, data_dir=str(tmp_path), val_fraction=0.1, download=False))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54, 6, 20)
    assert ds.train.images.shape[1:] == (1, 28, 28) and ds.channels == 1 and ds.num_classes == 10
    assert str(tmp_path) in ds.source


def test_idx_truncated_is_explained(tmp_path):
    write_idx(tmp_path / "x", np.zeros((10, 4, 4)), gz=False)
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(data[:-5])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "x")


def test_cifar10_binary(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        recs = np.concatenate([np.arange(4)[:, None] % 10, rng.integers(0, 256, (4, 3072))], axis=1).astype(np.uint8)
        recs.tofile(d / name)
    ds = load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), val_fraction=0.1, download=False))
    assert len(ds.train) + len(ds.val) == 20 and len(ds.test) == 4
    assert ds.train.images.shape[1:] == (3, 32, 32) and ds.classes[0] == "airplane"


def test_cifar10_python_pickles_read_safely(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8), "labels": [1, 2, 3]}, f)
    ds = load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), val_fraction=0.0, download=False))
    assert len(ds.train) == 15 and ds.test.labels.tolist() == [1, 2, 3]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickle_with_code_is_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({"data": Evil(), "labels": [1]}, f)
    with pytest.raises(DatasetError, match="refusing to unpickle builtins.print"):
        load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), download=False))


def test_cifar100_binary(tmp_path):
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    for name, n in (("train.bin", 10), ("test.bin", 5)):
        recs = np.concatenate([np.zeros((n, 1)), np.arange(n)[:, None], np.zeros((n, 3072))], axis=1).astype(np.uint8)
        recs.tofile(d / name)
    ds = load_dataset(DataConfig(name="cifar100", data_dir=str(tmp_path), val_fraction=0.0, download=False))
    assert ds.test.labels.tolist() == [0, 1, 2, 3, 4] and ds.num_classes == 100


def make_folder(root, modes=("L", "RGB", "RGBA", "P"), per_class=3):
    for c, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            mode = modes[(i + c) % len(modes)]
            size = (20 + 7 * i, 30 + 3 * c)
            img = Image.new("RGB", size, (40 * i, 100 * c, 200)).convert(mode)
            img.save(root / cls / f"{i}.{'jpg' if mode == 'L' and i % 2 else 'png'}")


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_folder_any_mode_and_size(tmp_path, in_memory):
    make_folder(tmp_path / "train", per_class=6)
    make_folder(tmp_path / "test")
    ds = load_dataset(DataConfig(name=f"folder:{tmp_path}", image_size=16, val_fraction=0.25, in_memory=in_memory))
    assert ds.classes == ["cat", "dog"] and len(ds.test) == 6 and len(ds.train) + len(ds.val) == 12
    cfg = DataConfig(name="x", image_size=16)
    batches = StepBatches(ds.train, cfg, channels=3, num_classes=2, batch_size=4, seed=0)
    x, y = batches[0]
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    xs = [x for x, _ in eval_stream(ds.test, cfg, 3, batch_size=4)]
    assert sum(len(x) for x in xs) == 6 and xs[0].shape[1:] == (3, 16, 16)


def test_flat_folder_holds_out_a_test_split(tmp_path):
    make_folder(tmp_path, per_class=5)
    ds = load_dataset(DataConfig(name=f"folder:{tmp_path}", image_size=8, val_fraction=0.0))
    assert len(ds.test) == 2 and len(ds.train) == 8
    assert any("held out" in n for n in ds.notes)


def test_corrupt_image_names_the_file(tmp_path):
    make_folder(tmp_path / "train")
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match=r"broken\.png: cannot read this image"):
        load_dataset(DataConfig(name=f"folder:{tmp_path}", image_size=8))


def test_empty_class_folder_is_explained(tmp_path):
    make_folder(tmp_path / "train")
    (tmp_path / "train" / "eel").mkdir()
    with pytest.raises(DatasetError, match=r"eel: class folder without images"):
        load_dataset(DataConfig(name=f"folder:{tmp_path}", image_size=8))


def test_missing_and_unknown_datasets(tmp_path, monkeypatch):
    monkeypatch.delenv("VITKIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DatasetError, match=r"dataset 'mnist': files not found in .*download is off"):
        load_dataset(DataConfig(name="mnist", data_dir=str(tmp_path / "nowhere"), download=False))
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet5'; choose one of digits"):
        load_dataset(DataConfig(name="imagenet5"))
    with pytest.raises(DatasetError, match="no such directory"):
        load_dataset(DataConfig(name=f"folder:{tmp_path / 'none'}"))


def test_vitkit_data_env_is_searched(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), True)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, True)
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path))
    ds = load_dataset(DataConfig(name="mnist", val_fraction=0.0, download=False))
    assert len(ds.train) == 10


def test_digits_builtin_split_and_label_budget():
    ds = load_dataset(DataConfig(name="digits"))
    assert len(ds.train) + len(ds.val) == 898 and len(ds.test) == 899
    few = load_dataset(DataConfig(name="digits", labels_per_class=5))
    assert len(few.train) == 50 and torch.bincount(few.train.labels).tolist() == [5] * 10
    assert torch.equal(few.val.labels, ds.val.labels)  # the val split does not move


def test_load_image_modes(tmp_path):
    Image.new("RGBA", (10, 6), (255, 0, 0, 0)).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 3)
    assert x.shape == (3, 6, 10) and x.dtype == torch.uint8
    assert x[:, 0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert load_image(tmp_path / "a.png", 1, size=4).shape == (1, 4, 4)


def test_batch_augment_shapes_and_determinism():
    x = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    for crop in ("pad", "inception", "none"):
        aug = BatchAugment(DataConfig(crop=crop, flip=True, random_erasing=0.5, randaugment=1))
        torch.manual_seed(0)
        a = aug(x)
        torch.manual_seed(0)
        b = aug(x)
        assert a.shape == (8, 1, 16, 16) and a.dtype == torch.float32
        assert torch.equal(a, b)
    # without any augmentation the batch is only normalised to [-1, 1]
    plain = BatchAugment(DataConfig(crop="none", flip=False))(x)
    torch.testing.assert_close(plain, x.float() / 127.5 - 1)


def test_pad_crop_is_an_integer_shift():
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    x[0, 0, 4, 4] = 255
    aug = BatchAugment(DataConfig(crop="pad", crop_padding=2, flip=False))
    for seed in range(5):
        torch.manual_seed(seed)
        y = aug(x)
        assert (y > 0).sum() == 1 and y.max() == 1.0  # the bright pixel moved, not blurred


def test_mixup_cutmix_soft_labels_sum_to_one():
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8) % 4
    xm, ym = mix_batch(x, y, 4, DataConfig(mixup=0.8, cutmix=1.0))
    assert xm.shape == x.shape and ym.shape == (8, 4)
    torch.testing.assert_close(ym.sum(1), torch.ones(8))
    xs, ys = mix_batch(x, y, 4, DataConfig())
    assert xs is x and ys is y


def test_per_image_transforms():
    img = torch.randint(0, 256, (1, 20, 30), dtype=torch.uint8)
    for crop in ("inception", "pad", "none"):
        t = train_transform(DataConfig(image_size=16, crop=crop, randaugment=2, random_erasing=1.0), channels=3)
        assert t(img).shape == (3, 16, 16)
    e = eval_transform(DataConfig(image_size=16), channels=1)(img)
    assert e.shape == (1, 16, 16) and e.min() >= -1 and e.max() <= 1
    with pytest.raises(ValueError, match="data.crop='center' is not one of"):
        train_transform(DataConfig(crop="center"), 3)


def test_match_channels():
    g = torch.full((1, 4, 4), 100, dtype=torch.uint8)
    assert match_channels(g, 3).shape == (3, 4, 4)
    rgb = torch.stack([torch.full((4, 4), v, dtype=torch.uint8) for v in (255, 0, 0)])
    assert match_channels(rgb, 1)[0, 0, 0] == 76  # luminance of pure red


def test_epoch_order_is_a_function_of_the_step_and_shards_ranks():
    order = EpochOrder(100, 10, seed=3)
    first = torch.cat([order.indices(s) for s in range(10)])
    assert sorted(first.tolist()) == list(range(100))  # one epoch sees every image once
    assert not torch.equal(order.indices(0), order.indices(10))  # a new permutation each epoch
    again = EpochOrder(100, 10, seed=3)
    assert torch.equal(again.indices(13), order.indices(13))
    halves = torch.cat([order.indices(4, rank=r, world=2) for r in range(2)])
    assert torch.equal(halves, order.indices(4))


def test_file_evaluation_shards_by_index(tmp_path, monkeypatch):
    """Under torchrun each rank reads and decodes only its own evaluation batches (every w-th), and the ranks
    together give the single-process stream, batch for batch."""
    import vitkit.data.loader as loader

    make_folder(tmp_path / "train", per_class=7)
    make_folder(tmp_path / "test", per_class=5)
    cfg = DataConfig(name=f"folder:{tmp_path}", image_size=8, val_fraction=0.0, in_memory=False)
    test = load_dataset(cfg).test
    whole = list(loader.eval_stream(test, cfg, 3, batch_size=3))
    reads = []
    real = loader.load_image
    monkeypatch.setattr(loader, "load_image", lambda path, ch: reads.append(path) or real(path, ch))
    shards = [list(loader.eval_stream(test, cfg, 3, batch_size=3, rank=r, world=2)) for r in range(2)]
    assert len(reads) == len(test)  # each image decoded once, by its own rank
    assert [len(s) for s in shards] == [(len(whole) + 1) // 2, len(whole) // 2]
    for b, (x, y) in enumerate(whole):
        xs, ys = shards[b % 2][b // 2]
        assert torch.equal(xs, x) and torch.equal(ys, y)
