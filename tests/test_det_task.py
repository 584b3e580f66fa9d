"""Object detection in vitkit's one training loop: `vitkit train --recipe det-canvas` (tiny overrides), resume,
checkpoints, `vitkit eval` / `vitkit predict` on the run, a COCO-format folder, the config checks, the augmentation
that moves each box with its image, and the scores of several processes."""
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
from vitkit.heads.detection import ViTFCOS
from vitkit.recipes import build
from vitkit.train.loop import finish, run_steps, setup

pytest.importorskip("torchmetrics")

TINY = ["data.canvas.size=32", "data.image_size=32", "data.canvas.sources=digits", "data.canvas.train=32",
        "data.canvas.val=8", "data.canvas.test=16", "model.patch_size=4", "model.width=32", "model.depth=2", "model.heads=2",
        "model.mlp_dim=64", "detection.out_channels=32", "train.steps=12", "train.batch_size=8", "train.micro_batch_size=4",
        "train.log_every=1", "train.eval_every=6", "train.ckpt_every=6", "train.progress=false", "train.precision=fp32",
        "train.threads=1", "optim.lr=3e-3", "optim.warmup_steps=1"]
DIGIT_CANVAS = canvas_classes(("digits",))


def sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "run"
    assert main(["train", "--recipe", "det-canvas", "--out", str(out), *sets()]) == 0
    return out


def _rows(run, split):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["split"] == split]


def test_trains_through_the_cli_and_scores_map_per_class(run):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["objective"] == "detection" and cfg["detection"]["kind"] == "fcos" and cfg["detection"]["scales"] == "4,2,1"
    train = _rows(run, "train")
    losses = [r["loss"] for r in train]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert {"classification", "bbox_regression", "bbox_ctrness"} <= set(train[0])  # torchvision's FCOS losses, each logged
    assert [r["step"] for r in _rows(run, "val")] == [6, 12] and all(0 <= r["map"] <= 1 for r in _rows(run, "val"))
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["n"] == 16 and all(0 <= test[k] <= 1 for k in ("map", "map_50", "map_75", "mar_100"))
    assert test["map_50"] >= test["map"] >= 0 and test["map_50"] > 0  # twelve steps: some boxes found at IoU 0.5
    assert test["map_medium"] is None and test["map_large"] is None  # a 32 px canvas holds no object of 32^2 px or more
    assert set(test["per_class"]) <= set(DIGIT_CANVAS[1:]) and len(test["per_class"]) >= 5  # named; never the background
    assert all(set(v) == {"map", "mar_100"} for v in test["per_class"].values())
    card = json.loads((run / "checkpoint" / "config.json").read_text())
    assert card["model"]["arch"] == "detection" and card["class_names"] == DIGIT_CANVAS
    assert card["model"]["spec"]["num_classes"] == len(DIGIT_CANVAS) and card["preprocess"]["image_size"] == 32


def test_stop_and_resume_is_bit_identical(run, tmp_path):
    out = tmp_path / "stopped"
    assert main(["train", "--recipe", "det-canvas", "--out", str(out), *sets("train.stop_at_step=6")]) == 0
    assert not (out / "metrics.json").exists()
    assert main(["train", "--resume", str(out)]) == 0
    a, b = load_file(str(run / "checkpoint/model.safetensors")), load_file(str(out / "checkpoint/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "metrics.json").read_text())["test"] == json.loads((run / "metrics.json").read_text())["test"]


def test_the_run_loads_and_round_trips(run, tmp_path):
    model, card = vitkit.load(run)
    model.eval()
    assert isinstance(model, ViTFCOS) and model.num_classes == len(DIGIT_CANVAS) and card.class_names == DIGIT_CANVAS
    assert model.config.encoder.image_size == 32 and model.spec["scales"] == [4.0, 2.0, 1.0]
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        want = model(x)
    assert all(len(o["boxes"]) for o in want)
    for path in (tmp_path / "copy", tmp_path / "copy.safetensors"):  # a directory, or one file holding its record
        vitkit.save_model(model, path)
        again = vitkit.load_model(path).eval()
        assert isinstance(again, ViTFCOS)
        with torch.no_grad():
            got = again(x)
        assert all(torch.equal(a[k], b[k]) for a, b in zip(want, got) for k in ("boxes", "labels", "scores"))
    with pytest.raises(vitkit.CheckpointError, match="vitkit only"):
        vitkit.save_model(model, tmp_path / "timm.safetensors", format="timm")
    loaded = vitkit.load_model(run, image_size=48).eval()  # another input size: the encoder's embeddings resampled
    with torch.no_grad():
        out = loaded([torch.rand(1, 40, 40)])[0]  # any image size in, boxes in its pixels
    assert loaded.config.image_size == 48 and (out["boxes"] <= 40).all()


def test_eval_reports_the_runs_test_scores(run, capsys):
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "canvas", "--precision", "fp32", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    test = json.loads((run / "metrics.json").read_text())["test"]  # the run's canvas settings: the same 16 canvases
    assert res["n"] == test["n"] and res["classes"] == DIGIT_CANVAS
    for k in ("map", "map_50", "map_75", "mar_100"):
        assert res[k] == pytest.approx(test[k], abs=1e-9), k
    assert res["per_class"] == test["per_class"]  # the same detections: the same numbers
    assert main(["eval", str(run), "--data", "digits"]) == 2
    assert "detection model" in capsys.readouterr().err


def test_predict_writes_boxes_and_a_drawing_and_never_overwrites(run, tmp_path, capsys):
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--out", str(out), "--min-score", "0", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    record = json.loads((out / "photo.boxes.json").read_text())
    assert res["json"] == str(out / "photo.boxes.json") and record["size"] == [45, 30] and record["boxes"]
    assert [b["score"] for b in record["boxes"]] == sorted((b["score"] for b in record["boxes"]), reverse=True)
    for b in record["boxes"]:
        assert b["class"] in DIGIT_CANVAS[1:] and b["class"] == DIGIT_CANVAS[b["label"]]  # no background, named
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 <= x1 <= 45 and 0 <= y0 <= y1 <= 30  # in the image's own pixels
    drawn = Image.open(out / "photo.boxes.png")
    assert drawn.size == (45, 30) and drawn.mode == "RGB"
    before = (out / "photo.boxes.png").read_bytes()
    assert main(["predict", str(run), str(image), "--out", str(out)]) == 2  # files there: refused, nothing written
    assert "already exists" in capsys.readouterr().err and (out / "photo.boxes.png").read_bytes() == before
    assert main(["predict", str(run), str(image), "--out", str(out), "--force", "--min-score", "1"]) == 0
    assert json.loads((out / "photo.boxes.json").read_text())["boxes"] == []  # nothing scores 1: no box kept
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        main(["predict", str(run), str(image), "--min-score", "2"])
    assert main(["predict", str(run), str(image), "--alpha", "0.3"]) == 2  # a segmentation option
    assert "--alpha" in capsys.readouterr().err


def _write_coco(root, n=10, side=40):
    """ROOT/annotations.json + ROOT/images/*.png: a bright square (category 5, "square") and a bar (category 9, "bar")
    per image, on noise."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    images, anns = [], []
    for i in range(n):
        img = rng.integers(0, 40, (side, side, 3)).astype(np.uint8)
        x, y = 2 + 2 * i % 16, 3 + i % 7
        img[y:y + 12, x:x + 12] = (220, 60, 60)
        img[30:34, 4:36] = (60, 220, 60)
        Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
        images.append({"id": 100 + i, "file_name": f"{i:02d}.png", "width": side, "height": side})
        anns += [{"id": 2 * i, "image_id": 100 + i, "category_id": 5, "bbox": [x, y, 12, 12]},
                 {"id": 2 * i + 1, "image_id": 100 + i, "category_id": 9, "bbox": [4, 30, 32, 4]}]
    doc = {"images": images, "annotations": anns, "categories": [{"id": 9, "name": "bar"}, {"id": 5, "name": "square"}]}
    (root / "annotations.json").write_text(json.dumps(doc))


def test_a_coco_folder_trains_and_is_scored_in_its_own_pixels(tmp_path):
    _write_coco(tmp_path / "data")
    out = tmp_path / "run"
    extra = [f"data.name=coco:{tmp_path / 'data'}", "train.steps=2", "train.eval_every=0", "train.ckpt_every=0"]
    assert main(["train", "--recipe", "det-canvas", "--out", str(out), *sets(*extra)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["test"]["n"] == 2 and res["val"]["n"] == 1  # 20% held out for test, then val carved from train
    assert set(res["test"]["per_class"]) <= {"square", "bar"}
    card = json.loads((out / "checkpoint" / "config.json").read_text())
    assert card["class_names"] == ["background", "square", "bar"]  # category ids in order: 5 then 9
    model = vitkit.load_model(out)
    assert model.config.in_chans == 3 and model.config.image_size == 32  # RGB files, trained at data.image_size


def test_a_detector_on_a_classifiers_encoder(tmp_path):
    """model.init from a classifier pre-trained at 16 px: its encoder at 32 px under the pyramid, its classifier gone."""
    clf = vitkit.create_model("ViT-Ti/16", patch_size=4, width=32, depth=2, heads=2, mlp_dim=64, image_size=16, in_chans=1,
                              num_classes=10)
    vitkit.save_model(clf, tmp_path / "clf")
    keep = [s for s in TINY if not s.startswith("model.")]
    r = setup(build("det-canvas", [*keep, f"model.init={tmp_path / 'clf'}", "train.steps=1"]), out=tmp_path / "run")
    try:
        enc = r.model.encoder
        assert isinstance(r.model, ViTFCOS) and enc.config.image_size == 32 and enc.config.num_classes == 0
        assert torch.equal(enc.blocks[0].mlp.fc1.weight, clf.blocks[0].mlp.fc1.weight)
        res = finish(r, *run_steps(r))
    finally:
        r.release()
    assert res["steps"] == 1 and 0 <= res["test"]["map"] <= 1


BAD = [("detection.kind=yolo", "detection.kind='yolo'"), ("detection.scales=3", "detection.scales='3'"),
       ("detection.anchor_sizes=8,16", "detection.anchor_sizes='8,16'"), ("detection.out_channels=40", "detection.out_channels=40"),
       ("detection.score_thresh=2", "detection.score_thresh=2"), ("detection.detections_per_img=0", "detection.detections_per_img=0"),
       ("detection.kind=faster_rcnn", "detection.kind='faster_rcnn'"),  # patch 6 below: strides no power of two
       ("data.random_erasing=0.5", "data.random_erasing=0.5"), ("data.randaugment=2", "data.randaugment=2"),
       ("data.mixup=0.2", "data.mixup=0.2"), ("data.ignore_index=100", "data.ignore_index=100"),
       ("data.name=digits", "data.name='digits' with objective=detection"),
       ("data.name=seg:/nowhere", "masks, not boxes"), ("data.name=coco:/nowhere", "no such directory"),
       ("model.name=R50x1", "model.name='R50x1' with objective=detection")]


@pytest.mark.parametrize("bad,said", BAD)
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, bad, said):
    out = tmp_path / "run"
    given = [s for s in TINY if not (bad.startswith("model.") and s.startswith("model."))] + [bad]  # a ResNet: no ViT options
    if bad == "detection.kind=faster_rcnn":
        given += ["model.patch_size=6", "data.image_size=36", "detection.scales=1"]  # a 6 px stride
    assert main(["train", "--recipe", "det-canvas", "--out", str(out), *[a for s in given for a in ("--set", s)]]) == 2
    assert said in capsys.readouterr().err
    assert not out.exists()


def test_a_coco_folder_needs_objective_detection(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "quickstart", "--out", str(out), "--set", f"data.name=coco:{tmp_path}"]) == 2
    assert "set objective=detection" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("crop", ["pad", "inception"])
def test_the_augmentation_moves_each_box_with_its_image(crop):
    """Images black but for one bright rectangle, their boxes on its edges: after StepBatches' crops and flips each
    image's bright pixels span exactly its moved box (within a pixel for the inception crop's bilinear resampling),
    and an image whose rectangle left the frame has no box left."""
    cfg = DataConfig(name="canvas", image_size=24, crop=crop, crop_padding=6, crop_scale_min=0.3, flip=True)
    rng = np.random.default_rng(0)
    n = 64
    images, boxes = torch.zeros(n, 1, 24, 24, dtype=torch.uint8), torch.zeros(n, 1, 4)
    for i in range(n):
        w, h = rng.integers(3, 10, 2)
        x, y = rng.integers(0, 24 - w), rng.integers(0, 24 - h)
        images[i, 0, y:y + h, x:x + w] = 255
        boxes[i, 0] = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
    data = DenseData(images, torch.zeros(n, 24, 24, dtype=torch.uint8), boxes, torch.ones(n, 1, dtype=torch.int64))
    batches = StepBatches(data, cfg, 1, 2, n, seed=3, boxes=True)
    x, targets = batches[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1  # [0, 1]: the detector normalises
    tol = 0.0 if crop == "pad" else 1.5  # pad: integer shifts, exact; inception: a bilinear resize, its edges blurred
    moved = 0
    for i, (img, t) in enumerate(zip(x[:, 0], targets)):
        bright = (img > 0.5).nonzero()
        if not len(t["boxes"]):  # the rectangle left the frame: nothing of it, or (resampled) a sliver under a pixel
            assert len(bright) == 0 if crop == "pad" else len(bright) <= 2 * 24
            continue
        (x0, y0, x1, y1), = t["boxes"].tolist()
        assert t["labels"].tolist() == [1] and len(bright)
        got = [bright[:, 1].min().item(), bright[:, 0].min().item(), bright[:, 1].max().item() + 1, bright[:, 0].max().item() + 1]
        assert got == pytest.approx([x0, y0, x1, y1], abs=tol), (i, got, t["boxes"])
        moved += not torch.equal(t["boxes"], boxes[i])
    assert moved > n // 2  # moved, not left in place
    x2, targets2 = batches[0]
    assert torch.equal(x, x2) and all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, targets2))  # a pure function of the step


def test_several_processes_score_their_gathered_detections(monkeypatch):
    """A distributed run's mAP comes from every process's detections scored together (no mean of per-rank mAPs): a
    stand-in all_gather_object gives rank 0 both ranks' shares."""
    import torch.distributed as dist

    from vitkit.evaluate.detection import score_detections
    from vitkit.objectives.detection import Detection
    from vitkit.train.distributed import Env

    def pair(box, label, score, truth):
        p = {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([label]), "scores": torch.tensor([score])}
        return p, {"boxes": torch.tensor([truth], dtype=torch.float32), "labels": torch.tensor([1])}

    share0 = [pair([0, 0, 10, 10], 1, 0.9, [0, 0, 10, 10])]  # a hit
    share1 = [pair([20, 20, 30, 30], 1, 0.95, [0, 0, 10, 10])]  # a confident miss
    ranks = [[([p], [t]) for p, t in share] for share in (share0, share1)]
    monkeypatch.setattr(dist, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), ranks))
    got = Detection(["background", "thing"]).reduce_eval({"detections": ranks[0]}, Env(rank=0, world=2))
    (p0, t0), (p1, t1) = share0[0], share1[0]
    want = score_detections([p0, p1], [t0, t1], ["background", "thing"])
    alone = score_detections([p0], [t0])
    assert got["map"] == pytest.approx(want["map"]) and got["n"] == 2 and set(got["per_class"]) == {"thing"}
    assert alone["map"] == pytest.approx(1.0) and got["map"] < 0.6  # the other rank's miss counts


def test_micro_batches_take_their_own_targets():
    """train_step's micro-batches: detection's per-image targets (a list) chunked with their images."""
    from vitkit.train.loop import Batching, train_step

    w = torch.nn.Parameter(torch.zeros(()))
    seen = []

    def module(xm, ym):
        seen.append((xm.flatten().tolist(), [t["id"] for t in ym]))
        return w * 1.0, {}

    x, y = torch.arange(8.0).view(8, 1, 1, 1), [{"id": float(i)} for i in range(8)]
    train_step(module, x, y, torch.optim.SGD([w], lr=0.1), Batching(micro=4, accum=2, per_rank=8), 0.0, "fp32", [w])
    assert seen == [([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]), ([4.0, 5.0, 6.0, 7.0], [4.0, 5.0, 6.0, 7.0])]


def test_a_detection_runs_encoder_starts_a_classifier(run, tmp_path):
    """model.init=a detection run with objective=classification: its encoder, the pyramid and heads left aside, a new
    zero-initialised classifier (as finetune starts from it)."""
    detector = vitkit.load_model(run)
    r = setup(build("quickstart", [f"model.init={run}", "data.image_size=32", "train.steps=1", "train.progress=false",
                                   "train.threads=1"]), out=tmp_path / "clf")
    try:
        assert type(r.model).__name__ == "VisionTransformer" and r.model.config.num_classes == 10
        assert torch.equal(r.model.blocks[1].attn.qkv.weight, detector.encoder.blocks[1].attn.qkv.weight)
        assert not r.model.head.weight.any()
    finally:
        r.release()
