"""Object detection: the ViTDet feature pyramid and torchvision's detectors on it (heads/detection.py), the COCO-format
reader (data/coco.py) and COCO mAP (evaluate/detection.py), on tiny encoders, canvases and files the tests write."""
import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.data.canvas import CanvasSpec, CanvasTask
from vitkit.data.coco import coco_folder, detection_collate, read_coco
from vitkit.data.datasets import DatasetError
from vitkit.data.masks import dense_collate
from vitkit.heads.detection import SimpleFeaturePyramid, build_detector, detection_loss
from vitkit.models.vit import VisionTransformer, ViTConfig

TINY = dict(width=32, depth=2, heads=2, mlp_dim=64)
# Faster R-CNN sized for 64 px images: a small box head, fewer proposals and sampled boxes
SMALL_RCNN = dict(representation_size=64, box_batch_size_per_image=64, rpn_batch_size_per_image=64, rpn_pre_nms_top_n_train=200,
                  rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
KINDS = ["fcos", "faster_rcnn"]
EVERY_BOX = {"fcos": dict(score_thresh=0.0), "faster_rcnn": dict(box_score_thresh=0.0)}  # untrained: keep every detection


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_encoder(size=64, patch=8, in_chans=1, **kw):
    return vitkit.create_model("ViT-Ti/16", patch_size=patch, image_size=size, in_chans=in_chans, num_classes=10, **TINY, **kw)


def detector(kind, num_classes=3, encoder=None, **kw):
    extra = SMALL_RCNN if kind == "faster_rcnn" else {}
    return build_detector(encoder if encoder is not None else tiny_encoder(), num_classes, kind, out_channels=32, **{**extra, **kw})


def canvas_batch(n=4):
    task = CanvasTask.load(CanvasSpec(size=64, sources=("digits",), items=(1, 2), digits_size=(16, 24)))
    return task, task.materialise("train", n)


# --- the pyramid and the detectors ---------------------------------------------------------------------------------


def test_pyramid_levels_and_strides():
    p = SimpleFeaturePyramid(tiny_encoder(), out_channels=16)
    assert isinstance(p.encoder.head, nn.Identity)  # the classifier is gone
    out = p(torch.randn(2, 1, 64, 64))
    assert list(out) == ["0", "1", "2", "3"] and p.strides == [2, 4, 8, 16] and p.out_channels == 16
    for (name, f), stride in zip(out.items(), p.strides):
        assert f.shape == (2, 16, 64 // stride, 64 // stride), name
    vitdet = SimpleFeaturePyramid(tiny_encoder(patch=16), 16, norm="group")  # ViTDet's patch 16: strides 4 to 32
    assert vitdet.strides == [4, 8, 16, 32] and [f.shape[-1] for f in vitdet(torch.randn(1, 1, 64, 64)).values()] == [16, 8, 4, 2]
    two = SimpleFeaturePyramid(tiny_encoder(), 16, scales=(1.0, 2.0))  # fewer levels, finest first
    assert two.scales == (2.0, 1.0) and two.strides == [4, 8] and len(two.levels) == 2
    with pytest.raises(ValueError, match=r"scales=\[3.0\]: each one of"):
        SimpleFeaturePyramid(tiny_encoder(), 16, scales=(3.0,))
    with pytest.raises(ValueError, match="scale 4.0: .* stride of 1.5 px"):
        SimpleFeaturePyramid(tiny_encoder(size=48, patch=6), 16)
    with pytest.raises(ValueError, match="scale 0.5: a 7x7 patch grid"):
        SimpleFeaturePyramid(tiny_encoder(size=56), 16)
    later = SimpleFeaturePyramid(tiny_encoder(), 16)
    later.encoder.set_image_size(56)
    with pytest.raises(ValueError, match="0.5 level needs an even patch grid"):
        later(torch.randn(1, 1, 56, 56))


def test_builder_checks():
    with pytest.raises(ValueError, match="power of two"):
        detector("faster_rcnn", encoder=tiny_encoder(size=48, patch=12), scales=(1.0, 0.5))
    assert detector("fcos", encoder=tiny_encoder(size=48, patch=12), scales=(1.0, 0.5)).backbone.strides == [12, 24]
    with pytest.raises(ValueError, match="GroupNorm"):
        build_detector(tiny_encoder(), 3, "fcos", out_channels=48)
    with pytest.raises(ValueError, match=r"options \['min_size'\]"):
        detector("fcos", min_size=800)
    with pytest.raises(ValueError, match=r"options \['score_tresh'\].*'score_thresh'"):
        detector("fcos", score_tresh=0.1)
    with pytest.raises(ValueError, match="num_classes=1"):
        detector("fcos", num_classes=1)
    with pytest.raises(ValueError, match="one size per pyramid level"):
        detector("fcos", anchor_sizes=(8, 16))


@pytest.mark.parametrize("kind", KINDS)
def test_train_losses_and_eval_detections(kind):
    torch.manual_seed(0)
    model = detector(kind, encoder=tiny_encoder(in_chans=3), **EVERY_BOX[kind])  # an RGB encoder, grayscale images
    assert model.transform.image_mean == [0.5] * 3 and model.transform.image_std == [0.5] * 3  # "google": [-1, 1]
    x = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # an image without objects
    total, parts = detection_loss(model.train()(x, targets))
    want = {"fcos": {"classification", "bbox_regression", "bbox_ctrness"},
            "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}}[kind]
    assert set(parts) == want and torch.isfinite(total) and total.requires_grad
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert len(out) == 2 and all(len(o["boxes"]) > 0 for o in out)
        for o in out:
            assert o["boxes"].shape == (len(o["scores"]), 4) and o["labels"].shape == o["scores"].shape
            assert o["labels"].dtype == torch.int64 and (o["boxes"] >= 0).all() and (o["boxes"] <= 64).all()
        # normalised in one place: uint8 0-255 and float [0, 1] are one input
        same = model(list(x.float() / 255))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(out, same))
        # any size in, resized to the encoder's, boxes back in the input's pixels: a 2x image gives 2x boxes
        big = model([x[0].float().repeat_interleave(2, 1).repeat_interleave(2, 2) / 255])[0]
        assert torch.allclose(big["boxes"], 2 * out[0]["boxes"], atol=1e-3) and torch.allclose(big["scores"], out[0]["scores"])
        wide = model([torch.rand(1, 48, 80)])[0]
        assert (wide["boxes"][:, [0, 2]] <= 80).all() and (wide["boxes"][:, [1, 3]] <= 48).all()


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_steps_lower_the_loss(kind):
    torch.manual_seed(0)
    task, data = canvas_batch()
    images, _, targets = dense_collate([data[i] for i in range(len(data))])  # the canvas's torchvision targets
    model = detector(kind, task.num_classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        total, _ = detection_loss(model(images, targets))
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    model = detector(kind, **EVERY_BOX[kind]).eval()
    save_file(model.state_dict(), tmp_path / "detector.safetensors")
    (tmp_path / "detector.json").write_text(json.dumps({"encoder": model.backbone.encoder.config.to_dict(), "spec": model.spec}))
    saved = json.loads((tmp_path / "detector.json").read_text())
    torch.manual_seed(1)  # other initial weights
    rebuilt = build_detector(VisionTransformer(ViTConfig.from_dict(saved["encoder"])), **saved["spec"]).eval()
    x = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        want = model(x)
        assert not torch.equal(rebuilt(x)[0]["scores"], want[0]["scores"])  # the comparison can fail
        rebuilt.load_state_dict(load_file(tmp_path / "detector.safetensors"))
        got = rebuilt(x)
    assert "backbone.encoder.pos_embed" in model.state_dict() and "backbone.levels.0.0.weight" in model.state_dict()
    for a, b in zip(want, got):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "labels", "scores"))


# --- the COCO-format reader ----------------------------------------------------------------------------------------


def write_image(path, w, h, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def coco_doc():
    """Three images (a: 64x48, b: 40x40, c: 32x32 without annotations), categories 7 "dog" and 3 "cat" (labels: cat 1,
    dog 2, in id order), a crowd box, and a box overhanging a's edges by half a pixel and 0.4 px."""
    return {
        "images": [{"id": 10, "file_name": "a.png", "width": 64, "height": 48}, {"id": 11, "file_name": "b.png", "width": 40, "height": 40},
                   {"id": 12, "file_name": "c.png"}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2, 3, 10, 12]},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [20, 5, 8, 8], "area": 50.0, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 30, 30], "area": 500.0, "iscrowd": 1},
            {"id": 4, "image_id": 10, "category_id": 3, "bbox": [-0.5, 40, 10, 8.4]},
            {"id": 5, "image_id": 11, "category_id": 7, "bbox": [1, 1, 5, 5]},
        ],
    }


def write_coco(root, doc=None, json_name="annotations.json", images="images"):
    for name, (w, h) in {"a.png": (64, 48), "b.png": (40, 40), "c.png": (32, 32)}.items():
        write_image(root / images / name, w, h, seed=w)
    path = root / json_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco_doc() if doc is None else doc))
    return path


def test_coco_reader(tmp_path):
    f = read_coco(write_coco(tmp_path))
    assert f.categories == [(3, "cat"), (7, "dog")]
    a, b, c = f.images
    assert (a.image_id, a.width, a.height, c.width, c.height) == (10, 64, 48, 32, 32)  # c's size read off its file
    assert a.boxes.tolist() == [[2, 3, 12, 15], [20, 5, 28, 13], [0, 0, 30, 30], [0, 40, 9.5, 48]]  # x, y, w, h -> edges; clipped
    assert a.labels.tolist() == [1, 2, 2, 1] and a.crowd.tolist() == [False, False, True, False]
    assert a.area.tolist() == pytest.approx([120, 50, 500, 84]) and c.boxes.shape == (0, 4)

    ds = coco_folder(tmp_path)
    assert ds.classes == ["background", "cat", "dog"] and ds.num_classes == 3 and ds.channels == 3
    assert (len(ds.train), len(ds.val), len(ds.test)) == (2, 0, 1) and ds.train.category_ids == [None, 3, 7]
    assert any("held out" in n for n in ds.notes) and any("1 crowd" in n for n in ds.notes)
    items = {int(t["image_id"]): (x, t) for split in (ds.train, ds.test) for x, t in (split[i] for i in range(len(split)))}
    x, t = items[10]
    assert x.shape == (3, 48, 64) and x.dtype == torch.uint8
    assert t["boxes"].tolist() == [[2, 3, 12, 15], [20, 5, 28, 13], [0, 40, 9.5, 48]] and t["labels"].tolist() == [1, 2, 1]
    assert t["crowd_boxes"].tolist() == [[0, 0, 30, 30]] and t["crowd_labels"].tolist() == [2] and t["crowd_area"].tolist() == [500]
    assert items[12][1]["boxes"].shape == (0, 4) and items[12][1]["labels"].shape == (0,)  # kept, as a negative
    images, targets = detection_collate([items[10], items[11]])
    assert isinstance(images, list) and len(targets) == 2  # of two sizes: a list, as torchvision's detectors take

    small = coco_folder(tmp_path, size=32)  # one size: boxes and areas scaled with the pixels
    x, t = next((x, t) for split in (small.train, small.test) for x, t in (split[i] for i in range(len(split))) if int(t["image_id"]) == 10)
    assert x.shape == (3, 32, 32) and t["boxes"][0].tolist() == pytest.approx([1, 2, 6, 10])
    assert t["area"][0].item() == pytest.approx(120 * 0.5 * 32 / 48)
    stacked, _ = detection_collate([small.train[0], small.train[1]])
    assert stacked.shape == (2, 3, 32, 32)

    # the same training code as the canvas: images of any size into the detector
    model = detector("fcos", num_classes=ds.num_classes, encoder=tiny_encoder(in_chans=3)).train()
    total, _ = detection_loss(model(images, targets))
    assert torch.isfinite(total)


def test_coco_layouts(tmp_path):
    coco = tmp_path / "coco"  # COCO's own: annotations/instances_<split>2017.json + <split>2017/
    write_coco(coco, json_name="annotations/instances_train2017.json", images="train2017")
    doc = coco_doc()
    doc["images"], doc["annotations"] = doc["images"][1:2], doc["annotations"][4:]
    write_coco(coco, doc, json_name="annotations/instances_val2017.json", images="val2017")
    ds = coco_folder(coco)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3, 0, 1) and "no test split: val is used as the test split" in ds.notes
    assert ds.test.images[0].path == coco / "val2017" / "b.png"
    splits = tmp_path / "splits"  # Roboflow's: train/_annotations.coco.json beside the images, valid/
    write_coco(splits / "train", json_name="_annotations.coco.json", images=".")
    write_coco(splits / "valid", json_name="_annotations.coco.json", images=".")
    assert len(coco_folder(splits).test) == 3
    assert len(coco_folder(splits / "train" / "_annotations.coco.json").train) == 2  # the JSON file itself
    doc = coco_doc()
    doc["categories"][0]["name"] = "wolf"
    write_coco(splits / "valid", doc, json_name="_annotations.coco.json", images=".")
    with pytest.raises(DatasetError, match="valid/_annotations.coco.json: its categories .* are not those of"):
        coco_folder(splits)
    with pytest.raises(DatasetError, match="not a COCO-format folder"):
        coco_folder(tmp_path / "coco" / "train2017")


def _set(path, value):
    """A change to coco_doc(): the value at a key path."""
    def change(doc):
        *keys, last = path
        for k in keys:
            doc = doc[k]
        doc[last] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set(["annotations", 0, "bbox"], [2, 3, 0, 12]), r"annotations\[0\] \(id 1\): bbox \[2, 3, 0, 12\] of a.png has width 0"),
    (_set(["annotations", 0, "bbox"], [60, 0, 10, 10]), r"annotations\[0\] \(id 1\): bbox .* outside its image a.png of 64x48"),
    (_set(["annotations", 0, "bbox"], [1, 2, 3]), r"bbox \[1, 2, 3\] is not \[x, y, width, height\]"),
    (_set(["annotations", 0, "category_id"], 99), r"category_id 99 is not among the categories' ids \[3, 7\]"),
    (_set(["annotations", 0, "image_id"], 42), "image_id 42 is no image's id"),
    (_set(["annotations", 0, "iscrowd"], 2), "iscrowd 2 must be 0 or 1"),
    (_set(["images", 1, "id"], 10), r"images\[1\]: id 10 is also the id of 'a.png'"),
    (_set(["images", 0, "file_name"], "nope.png"), r"1 image file\(s\) .* not found, the first 'nope.png'"),
    (_set(["categories", 1, "id"], 7), r"categories\[1\]: id 7 is also the id of 'dog'"),
    (lambda doc: doc.pop("annotations"), "no 'annotations' list"),
    (lambda doc: doc["annotations"].append("box"), r"annotations\[5\] is a str"),
])
def test_coco_errors_name_the_file_and_key(tmp_path, change, message):
    doc = coco_doc()
    change(doc)
    with pytest.raises(DatasetError, match=message) as err:
        read_coco(write_coco(tmp_path, doc))
    assert str(tmp_path / "annotations.json") in str(err.value)


def test_coco_unreadable_and_mismatched_files(tmp_path):
    path = write_coco(tmp_path)
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match=r"annotations.json: not valid JSON \(line 2"):
        read_coco(path)
    doc = coco_doc()
    doc["images"][0]["width"] = 100  # the entry says 100 px wide, a.png is 64
    ds = coco_folder(write_coco(tmp_path, doc))
    with pytest.raises(DatasetError, match="a.png: the image is 64x48 px but its annotations entry .* says 100x48"):
        [split[i] for split in (ds.train, ds.test) for i in range(len(split))]


# --- COCO mAP ------------------------------------------------------------------------------------------------------


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def pred(rows, labels, scores):
    return {"boxes": boxes(*rows), "labels": torch.tensor(labels), "scores": torch.tensor(scores, dtype=torch.float32)}


def gt(rows, labels, **more):
    return {"boxes": boxes(*rows), "labels": torch.tensor(labels, dtype=torch.int64), **more}


class Oracle(nn.Module):
    """A "detector" that answers the predictions it was given: image i is a tensor whose first pixel is i."""

    def __init__(self, predictions):
        super().__init__()
        self.predictions = predictions

    def forward(self, images):
        return [self.predictions[int(x.flatten()[0])] for x in images]


def evaluate(predictions, targets, **kw):
    from vitkit.evaluate.detection import evaluate_detection

    images = torch.arange(len(targets), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    batches = [(images[i:i + 2], targets[i:i + 2]) for i in range(0, len(targets), 2)]
    return evaluate_detection(Oracle(predictions), batches, class_names=["background", "cat", "dog"], **kw)


def test_map_by_hand():
    pytest.importorskip("torchmetrics")
    targets = [gt([[0, 0, 10, 10], [20, 20, 30, 32]], [1, 2]), gt([[5, 5, 25, 20]], [2]), gt([], [])]
    perfect = [pred([[0, 0, 10, 10], [20, 20, 30, 32]], [1, 2], [0.9, 0.8]), pred([[5, 5, 25, 20], [0, 0, 9, 9]], [2, 0], [0.7, 0.99]),
               pred([], [], [])]  # a background (label 0) detection is no detection
    s = evaluate(perfect, targets)
    assert s["map"] == s["map_50"] == s["map_75"] == s["map_small"] == s["mar_100"] == 1.0 and s["n"] == 3
    assert s["map_medium"] is None and s["map_large"] is None  # no target of that size: COCO's -1, None here
    assert s["per_class"] == {"cat": {"map": 1.0, "mar_100": 1.0}, "dog": {"map": 1.0, "mar_100": 1.0}}
    json.dumps(s, allow_nan=False)

    wrong = [pred([[0, 0, 10, 10]], [2], [0.9])]  # the right box, the wrong class
    s = evaluate(wrong, [gt([[0, 0, 10, 10]], [1])])
    assert s["map"] == 0.0 and s["map_50"] == 0.0 and s["per_class"] == {"cat": {"map": 0.0, "mar_100": 0.0}, "dog": {"map": None, "mar_100": None}}

    # IoU 100 / 160 = 0.625: a hit at the thresholds 0.50, 0.55, 0.60, a miss at 0.65 ... 0.95: map = 3 / 10
    s = evaluate([pred([[0, 0, 10, 16]], [1], [0.9])], [gt([[0, 0, 10, 10]], [1])])
    assert s["map_50"] == 1.0 and s["map_75"] == 0.0 and s["map"] == pytest.approx(0.3)


def test_map_crowds_and_areas():
    pytest.importorskip("torchmetrics")
    # a cat, and a crowd of cats; the detector finds the cat (score 0.5) and, first, one cat inside the crowd (0.9)
    target = gt([[0, 0, 10, 10]], [1], crowd_boxes=boxes([30, 30, 60, 60]), crowd_labels=torch.tensor([1]))
    found = [pred([[0, 0, 10, 10], [35, 35, 45, 45]], [1, 1], [0.5, 0.9])]
    assert evaluate(found, [target])["map"] == 1.0  # a detection in a crowd region counts neither right nor wrong
    # scored without the crowd, the second cat is a false positive above the right one: precision 1/2 at recall 1, AP 0.5
    assert evaluate(found, [gt([[0, 0, 10, 10]], [1])])["map"] == pytest.approx(0.5)
    # the crowd as an ordinary target (IoU 100/900 with the detection: a miss): recall 1/2 at precision 1/2,
    # AP 0.5 * 51/101 (the recall points 0, 0.01, ..., 0.50 of COCO's 101)
    plain = gt([[0, 0, 10, 10], [30, 30, 60, 60]], [1, 1])
    assert evaluate(found, [plain])["map"] == pytest.approx(0.5 * 51 / 101)
    # COCO's area ranges read the targets' "area" (a segmentation's), not their boxes', when given
    s = evaluate([pred([[0, 0, 10, 10]], [1], [0.9])], [gt([[0, 0, 10, 10]], [1], area=torch.tensor([2000.0]))])
    assert s["map_medium"] == 1.0 and s["map_small"] is None


def test_map_backends_agree():
    pytest.importorskip("torchmetrics")
    from vitkit.evaluate.detection import SUMMARY, score_detections

    backends = [b for b in ("faster_coco_eval", "pycocotools") if importlib.util.find_spec(b) is not None]
    if len(backends) < 2:
        pytest.skip("one COCO backend installed")
    g = torch.Generator().manual_seed(0)
    targets, preds = [], []
    for _ in range(4):
        t = torch.rand(3, 2, generator=g) * 40
        tb = torch.cat([t, t + 8 + torch.rand(3, 2, generator=g) * 30], 1)
        targets.append({"boxes": tb, "labels": torch.randint(1, 3, (3,), generator=g)})
        preds.append({"boxes": tb + torch.randn(3, 4, generator=g) * 3, "labels": torch.randint(1, 3, (3,), generator=g),
                      "scores": torch.rand(3, generator=g)})
    a, b = (score_detections(preds, targets, backend=name) for name in backends)
    assert 0 < a["map"] < 1 and a["per_class"].keys() == b["per_class"].keys() == {"1", "2"}
    for x, y in [(a, b), *((a["per_class"][c], b["per_class"][c]) for c in a["per_class"])]:
        assert {k: v for k, v in x.items() if k in SUMMARY} == pytest.approx({k: v for k, v in y.items() if k in SUMMARY})


def test_evaluate_a_detector_on_canvases():
    pytest.importorskip("torchmetrics")
    from vitkit.evaluate.detection import evaluate_detection

    task, data = canvas_batch(3)
    batches = [dense_collate([data[i] for i in range(3)])]  # (images, masks, targets): the targets come last
    model = detector("fcos", task.num_classes, score_thresh=0.0).train()
    s = evaluate_detection(model, batches, class_names=task.classes)
    assert s["n"] == 3 and set(s) >= {"map", "map_50", "map_75", "map_small", "mar_100", "per_class"}
    assert all(v is None or 0.0 <= v <= 1.0 for k, v in s.items() if k.startswith(("map", "mar")))
    assert set(s["per_class"]) <= set(task.classes[1:]) and model.training  # named classes; its mode restored
