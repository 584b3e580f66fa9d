"""Semantic segmentation in vitkit's one training loop: `vitkit train --recipe seg-canvas` (tiny overrides), resume,
checkpoints, `vitkit eval` / `vitkit predict` on the run, a mask folder, the config checks, and the augmentation that
moves each mask with its image."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vitkit
from vitkit.cli import main
from vitkit.config import DataConfig
from vitkit.data.canvas import canvas_classes
from vitkit.data.loader import StepBatches
from vitkit.data.masks import DenseData
from vitkit.heads.segmentation import SegmentationModel
from vitkit.models.posemb import resample_posemb
from vitkit.recipes import build
from vitkit.train.loop import finish, run_steps, setup

TINY = ["data.canvas.size=32", "data.image_size=32", "data.canvas.sources=digits", "data.canvas.train=48",
        "data.canvas.val=8", "data.canvas.test=16", "model.patch_size=4", "model.width=32", "model.depth=2", "model.heads=2",
        "model.mlp_dim=64", "segmentation.channels=8", "train.steps=12", "train.batch_size=8", "train.log_every=1",
        "train.eval_every=6", "train.ckpt_every=6", "train.progress=false", "train.precision=fp32", "train.threads=1",
        "optim.lr=3e-3", "optim.warmup_steps=1"]
DIGIT_CANVAS = canvas_classes(("digits",))


def sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    assert main(["train", "--recipe", "seg-canvas", "--out", str(out), *sets()]) == 0
    return out


def _rows(run, split):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["split"] == split]


def test_trains_through_the_cli_and_scores_per_class(run):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["objective"] == "segmentation" and cfg["segmentation"]["head"] == "progressive"
    losses = [r["loss"] for r in _rows(run, "train")]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    assert losses[0] == pytest.approx(np.log(len(DIGIT_CANVAS)), abs=0.05)  # the zero-initialised head: uniform
    assert [r["step"] for r in _rows(run, "val")] == [6, 12] and all(0 <= r["miou"] <= 1 for r in _rows(run, "val"))
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["n"] == 16 and test["pixels"] == 16 * 32 * 32  # the canvas has no ignored pixel
    assert set(test["iou"]) == set(DIGIT_CANVAS) == set(test["acc"])
    scored = [v for v in test["iou"].values() if v is not None]
    assert test["miou"] == pytest.approx(np.mean(scored)) and 0 < test["pixel_acc"] <= 1
    assert test["iou"]["background"] > 0.5  # most pixels are background: learnt first
    card = json.loads((run / "checkpoint" / "config.json").read_text())
    assert card["model"]["arch"] == "segmentation" and card["class_names"] == DIGIT_CANVAS


def test_stop_and_resume_is_bit_identical(run, tmp_path):
    out = tmp_path / "stopped"
    assert main(["train", "--recipe", "seg-canvas", "--out", str(out), *sets("train.stop_at_step=6")]) == 0
    assert not (out / "metrics.json").exists()
    assert main(["train", "--resume", str(out)]) == 0
    a, b = load_file(str(run / "checkpoint/model.safetensors")), load_file(str(out / "checkpoint/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "metrics.json").read_text())["test"] == json.loads((run / "metrics.json").read_text())["test"]


def test_the_run_loads_and_round_trips(run, tmp_path):
    model = vitkit.load_model(run).eval()
    assert isinstance(model, SegmentationModel) and model.num_classes == len(DIGIT_CANVAS)
    assert model.config.head == "progressive" and model.config.encoder.image_size == 32
    x = torch.randn(2, 1, 32, 32)
    want = model(x)
    assert want.shape == (2, len(DIGIT_CANVAS), 32, 32)
    for path in (tmp_path / "copy", tmp_path / "copy.safetensors"):  # a directory, or one file holding its record
        vitkit.save_model(model, path)
        again, card = vitkit.load(path)
        assert isinstance(again, SegmentationModel) and card.class_names is None
        assert torch.equal(again.eval()(x), want)
    with pytest.raises(vitkit.CheckpointError, match="vitkit only"):
        vitkit.save_model(model, tmp_path / "timm.safetensors", format="timm")
    loaded, card = vitkit.load(run, image_size=48)  # another resolution: the encoder's embeddings resampled
    assert card.class_names == DIGIT_CANVAS and loaded.eval()(torch.randn(1, 1, 48, 48)).shape == (1, 11, 48, 48)


def test_eval_reports_the_runs_test_scores(run, capsys, monkeypatch):
    from vitkit.data.canvas import CanvasTask

    drawn, materialise = [], CanvasTask.materialise
    monkeypatch.setattr(CanvasTask, "materialise", lambda self, split, n, **kw: drawn.append((split, n)) or materialise(self, split, n, **kw))
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "canvas", "--precision", "fp32", "--json"]) == 0
    assert [d for d in drawn if d[1]] == [("test", 16)]  # the split scored only: no training canvases drawn
    res = json.loads(capsys.readouterr().out)
    test = json.loads((run / "metrics.json").read_text())["test"]  # the run's canvas settings: the same 16 canvases
    assert res["n"] == test["n"] and res["miou"] == pytest.approx(test["miou"], abs=1e-9)
    assert res["iou"] == pytest.approx(test["iou"]) and res["pixel_acc"] == pytest.approx(test["pixel_acc"])
    assert main(["eval", str(run), "--data", "digits"]) == 2
    assert "segmentation model" in capsys.readouterr().err


def test_trains_from_a_classifier_at_another_size(tmp_path):
    """model.init from a classifier pre-trained at 16 px: its encoder at 32 px (learned position embeddings
    interpolated), its classifier replaced by the segmentation head."""
    clf = vitkit.create_model("ViT-Ti/16", patch_size=4, width=32, depth=2, heads=2, mlp_dim=64, image_size=16, in_chans=1,
                              num_classes=10)
    vitkit.save_model(clf, tmp_path / "clf")
    keep = [s for s in TINY if not s.startswith("model.")]
    r = setup(build("seg-canvas", [*keep, f"model.init={tmp_path / 'clf'}", "train.steps=2", "segmentation.head=linear"]),
              out=tmp_path / "run")
    try:
        enc = r.model.encoder
        assert r.model.config.head == "linear" and enc.config.image_size == 32 and enc.pos_embed.shape == (1, 1 + 8 * 8, 32)
        assert torch.allclose(enc.pos_embed, resample_posemb(clf.pos_embed.data, (8, 8), (4, 4), 1))
        assert torch.equal(enc.blocks[0].mlp.fc1.weight, clf.blocks[0].mlp.fc1.weight)
        stop, wall, seen = run_steps(r)
        res = finish(r, stop, wall, seen)
    finally:
        r.release()
    assert res["steps"] == 2 and 0 <= res["test"]["miou"] <= 1


def test_predict_writes_an_overlay_of_the_images_size(run, tmp_path, capsys):
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    overlay, mask = Image.open(res["overlay"]), Image.open(res["mask"])
    assert overlay.size == mask.size == (45, 30) == tuple(res["size"]) and overlay.mode == "RGB" and mask.mode == "P"
    assert int(np.asarray(mask).max()) < len(DIGIT_CANVAS) and sum(res["classes"].values()) == pytest.approx(1)
    assert set(res["classes"]) <= set(DIGIT_CANVAS)
    before = (out / "photo.overlay.png").read_bytes()
    assert main(["predict", str(run), str(image), "--out", str(out)]) == 2  # a file there: refused, nothing written
    assert "already exists" in capsys.readouterr().err and (out / "photo.overlay.png").read_bytes() == before
    assert main(["predict", str(run), str(image), "--out", str(out), "--force", "--alpha", "1"]) == 0
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        main(["predict", str(run), str(image), "--alpha", "2"])


def _write_folder(root, n=10, side=24):
    """ROOT/images/*.png + ROOT/masks/*.png (palette PNGs of classes 0-2, a border of 255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        m = np.zeros((side, side), np.uint8)
        m[4:14, 3 + i % 5:15] = 1 + i % 2
        m[0] = 255  # the top row unlabelled
        img = np.where(m[..., None] == 255, 0, (m[..., None] * 90 + rng.integers(0, 30, (side, side, 3)))).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
        pm = Image.fromarray(m, mode="P")
        pm.putpalette([(v * 53) % 256 for v in range(768)])
        pm.save(root / "masks" / f"{i:02d}.png")
    (root / "classes.txt").write_text("sky\nleaf\nstone\n")


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_mask_folder_trains_and_its_ignore_index_counts_nowhere(tmp_path, in_memory):
    _write_folder(tmp_path / "data")
    extra = [f"data.name=seg:{tmp_path / 'data'}", "data.image_size=24", "train.steps=2", "train.eval_every=0",
             "train.ckpt_every=0", f"data.in_memory={in_memory}", "segmentation.norm=batch"]  # SETR's BatchNorm
    out = tmp_path / "run"
    assert main(["train", "--recipe", "seg-canvas", "--out", str(out), *sets(*extra)]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert set(test["iou"]) == {"sky", "leaf", "stone"}
    assert test["n"] == 2 and test["pixels"] == 2 * 23 * 24  # 20% held out; the row of 255 scored nowhere
    assert json.loads((out / "metrics.json").read_text())["val"]["n"] == 1  # carved from train (data.val_fraction)


BAD = [("segmentation.head=mlp", "segmentation.head='mlp'"), ("data.canvas.size=4", "data.canvas.size=4"),
       ("data.ignore_index=-1", "data.ignore_index=-1"), ("data.ignore_index=3", "data.ignore_index=3"),
       ("model.name=R50x1", "model.name='R50x1' with objective=segmentation"),
       ("data.canvas.sources=mnist", "data.canvas.sources='mnist'"), ("data.canvas.items_min=9", "data.canvas.items_min=9"),
       ("data.mixup=0.5", "data.mixup=0.5"), ("data.randaugment=2", "data.randaugment=2"),
       ("data.random_erasing=0.5", "data.random_erasing=0.5"),  # it would erase the image and not its mask
       ("data.name=digits", "data.name='digits' with objective=segmentation"),
       ("data.name=folder:/nowhere", "data.name=seg:/nowhere"), ("data.name=seg:/nowhere", "no such directory"),
       ("objective=classification", "set objective=segmentation")]


@pytest.mark.parametrize("bad,said", BAD)
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, bad, said):
    out = tmp_path / "run"
    given = [s for s in TINY if not (bad.startswith("model.") and s.startswith("model."))] + [bad]  # a ResNet: no ViT options
    assert main(["train", "--recipe", "seg-canvas", "--out", str(out), *[a for s in given for a in ("--set", s)]]) == 2
    assert said in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("images,bad,said", [(10, "data.ignore_index=1", ("/masks/", "values 255 are outside the 3 classes")),
                                             (1, "data.val_fraction=0.2", ("training image(s), too few to hold out data.val_fraction",))])
def test_what_only_reading_a_folder_finds_is_refused_before_anything_is_written(tmp_path, capsys, images, bad, said):
    _write_folder(tmp_path / "data", n=images)
    extra = [f"data.name=seg:{tmp_path / 'data'}", "data.image_size=24", "train.steps=1", "train.eval_every=0",
             "train.ckpt_every=0"]
    out = tmp_path / "run"
    assert main(["train", "--recipe", "seg-canvas", "--out", str(out), *sets(*extra, bad)]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in said) and len(err.strip().splitlines()) == 1
    assert not out.exists()
    if images > 1:  # the same --out, without --force, once the setting is right
        assert main(["train", "--recipe", "seg-canvas", "--out", str(out), *sets(*extra)]) == 0


def test_a_model_init_without_patch_tokens_is_refused_before_anything_is_written(tmp_path, capsys):
    cnn = tmp_path / "r50.safetensors"
    vitkit.save_model(vitkit.create_model("R50x1", num_classes=10, image_size=32, in_chans=1, layers=(1, 1, 1, 1)), cnn)
    out = tmp_path / "run"
    given = [s for s in TINY if not s.startswith("model.")] + [f"model.init={cnn}"]  # the checkpoint's architecture
    assert main(["train", "--recipe", "seg-canvas", "--out", str(out), *[a for s in given for a in ("--set", s)]]) == 2
    assert "with objective=segmentation" in capsys.readouterr().err and not out.exists()


def test_the_augmentation_moves_each_mask_with_its_image():
    """An image whose pixels are its mask's classes (x 20): after StepBatches' crops and flips, wherever the mask has a
    class the image shows it, and the pixels moved in from outside are black in the image and ignored in the mask."""
    cfg = DataConfig(name="canvas", image_size=16, crop="pad", crop_padding=5, flip=True, normalize="google")
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.integers(0, 12, (32, 16, 16)).astype(np.uint8))
    data = DenseData(masks[:, None] * 20, masks)
    batches = StepBatches(data, cfg, 1, 12, 32, seed=3)
    x, y = batches[0]
    pixels = ((x[:, 0] * 0.5 + 0.5) * 255).round().long()
    valid = y != cfg.ignore_index
    assert torch.equal(pixels[valid], y[valid] * 20) and torch.equal(pixels[~valid], torch.zeros_like(pixels[~valid]))
    assert 0 < (~valid).float().mean() < 0.5  # some padding came in
    assert not torch.equal(y, masks.long())  # moved, not left in place
    x2, y2 = batches[0]
    assert torch.equal(x, x2) and torch.equal(y, y2)  # a pure function of the step


def test_several_processes_score_their_summed_confusion(monkeypatch):
    """A distributed run's mIoU comes from the confusion matrices summed over processes (no mean of per-rank mIoUs):
    rank 1's share captured, then added to rank 0's by a stand-in all_reduce."""
    import torch.distributed as dist

    from vitkit.evaluate.segmentation import segmentation_scores
    from vitkit.objectives.segmentation import Segmentation
    from vitkit.train import distributed
    from vitkit.train.distributed import Env

    names = ["a", "b", "c"]
    cms = [torch.tensor([[5, 1, 0], [0, 3, 0], [0, 0, 0]]), torch.tensor([[0, 0, 0], [1, 2, 0], [0, 0, 4]])]
    ranks = [{**segmentation_scores(cm, names), "confusion": cm.tolist(), "loss": loss, "n": n}
             for cm, loss, n in zip(cms, (0.5, 1.0), (2, 3))]
    objective, env = Segmentation(3, 255, names), Env(rank=0, world=2)
    monkeypatch.setattr(distributed, "comm_device", lambda: torch.device("cpu"))
    shares = []
    monkeypatch.setattr(dist, "all_reduce", lambda t: shares.append(t.clone()))
    objective.reduce_eval(ranks[1], env)
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.add_(shares[0]))
    got = objective.reduce_eval(ranks[0], env)
    want = segmentation_scores(cms[0] + cms[1], names)
    assert got["miou"] == pytest.approx(want["miou"]) and got["iou"] == pytest.approx(want["iou"])
    assert got["miou"] != pytest.approx((ranks[0]["miou"] + ranks[1]["miou"]) / 2)
    assert got["n"] == 5 and got["pixels"] == 16 and got["loss"] == pytest.approx((0.5 * 9 + 1.0 * 7) / 16)
