"""Multitask learning: one encoder, a head per task (heads/multitask.py), mixed batches (data/multitask.py), the
objective (objectives/multitask.py) in vitkit's one training loop, its checkpoints, `vitkit eval` per task, and the
config checks."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch._subclasses.fake_tensor import FakeTensorMode

import vitkit
from vitkit.cli import main
from vitkit.config import Config, MultitaskConfig, apply_overrides
from vitkit.data.canvas import canvas_classes
from vitkit.heads.multitask import MultitaskModel, TaskSpec
from vitkit.heads.segmentation import SegmentationModel
from vitkit.objectives.multitask import Multitask, TaskPlan, parse_tasks, quotas
from vitkit.recipes import build

TINY = ["multitask.tasks=digits,canvas", "data.canvas.size=16", "data.image_size=16", "data.canvas.sources=digits",
        "data.canvas.train=48", "data.canvas.val=8", "data.canvas.test=16", "model.patch_size=4", "model.width=32",
        "model.depth=2", "model.heads=2", "model.mlp_dim=64", "segmentation.channels=8", "train.steps=24",
        "train.batch_size=16", "train.log_every=1", "train.eval_every=12", "train.ckpt_every=12", "train.progress=false",
        "train.precision=fp32", "train.threads=1", "optim.lr=1e-2", "optim.warmup_steps=1"]
DIGIT_CANVAS = canvas_classes(("digits",))
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multitask") / "run"
    assert main(["train", "--recipe", "multitask", "--out", str(out), *sets()]) == 0
    return out


def _rows(run, split):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["split"] == split]


def _encoder(k=0, size=16):
    torch.manual_seed(0)
    return vitkit.create_model("ViT-Ti/16", num_classes=k, image_size=size, in_chans=1, patch_size=4, width=32, depth=2,
                               heads=2, mlp_dim=64)


def _specs(seg_head="linear"):
    return [TaskSpec("digits", "classification", [str(i) for i in range(10)], "digits"),
            TaskSpec("canvas", "segmentation", DIGIT_CANVAS, "canvas", seg_head, 8, "group")]


# --- the plan: tasks, quotas -------------------------------------------------------------------------------------------


def test_quotas_split_the_batch_by_the_weights_largest_remainder_first():
    plans = [TaskPlan(n, n, "classification", w, 1.0) for n, w in (("a", 2), ("b", 1), ("c", 1))]
    # 1 each, then 5 more by 2:1:1 = 2.5 / 1.25 / 1.25: floors 3, 2, 2 and the last image to the largest remainder (a)
    assert quotas(plans, 8) == [4, 2, 2]
    assert quotas(plans, 3) == [1, 1, 1]  # one each at least
    assert quotas([TaskPlan("a", "a", "classification", 1, 1), TaskPlan("b", "b", "classification", 99, 1)], 4) == [1, 3]
    with pytest.raises(ValueError, match="train.batch_size=2 with 3 tasks"):
        quotas(plans, 2)


def test_tasks_are_named_by_their_data_or_as_given():
    plans = parse_tasks(MultitaskConfig(tasks="fashion-mnist, clothes=fashion-mnist ,canvas,seg:/data/ADE20K", weights="1,2,1,1"))
    assert [(p.name, p.data, p.kind, p.weight) for p in plans] == [
        ("fashion-mnist", "fashion-mnist", "classification", 1.0), ("clothes", "fashion-mnist", "classification", 2.0),
        ("canvas", "canvas", "segmentation", 1.0), ("ade20k", "seg:/data/ADE20K", "segmentation", 1.0)]
    for tasks, weights, match in [("digits,digits", None, "repeat"), ("digits,coco:/x", None, "detection dataset"),
                                  ("digits,", None, "name the tasks"), ("digits,canvas", "1", "2 positive numbers"),
                                  ("digits,canvas", "1,-1", "2 positive numbers"), ("Bad Name=digits", None, "task name")]:
        with pytest.raises(ValueError, match=match):
            parse_tasks(MultitaskConfig(tasks=tasks, weights=weights))


@pytest.mark.parametrize("overrides, match", [
    (["data.name=fashion-mnist"], "data.name='fashion-mnist' with objective=multitask"),
    (["data.mixup=0.2"], "data.mixup=0.2 with objective=multitask"),
    (["multitask.tasks=digits,nope"], "nope"),
    (["multitask.tasks=digits,canvas", "data.ignore_index=3"], r"canvas=canvas\): data.ignore_index=3"),
    (["multitask.weights=1,1"], "multitask.weights='1,1': 3 positive numbers"),
    (["train.batch_size=2"], "train.batch_size=2 with 3 tasks"),
    (["model.name=R50x1"], "a multitask model's heads read the patch tokens"),
])
def test_bad_settings_are_refused_before_a_run_directory_exists(tmp_path, capsys, overrides, match):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "multitask", "--out", str(out), *[a for s in overrides for a in ("--set", s)]]) == 2
    assert match.replace("\\", "") in capsys.readouterr().err or pytest.fail(match)
    assert not out.exists()


# --- the model ------------------------------------------------------------------------------------------------------------


def test_each_head_computes_what_the_single_task_model_with_its_weights_computes():
    """A classification task's logits are a ViT classifier's with the same encoder and head weights, a segmentation
    task's a SegmentationModel's: the multitask model composes them, one encoder pass for a mixed batch."""
    mt = MultitaskModel(_encoder(), _specs("progressive")).eval()
    with torch.no_grad():
        for p in mt.heads.parameters():
            p.normal_(0, 0.5)  # past the zero init, so that outputs differ per image
    vit = _encoder(10).eval()
    vit.load_state_dict({**{k: v for k, v in mt.encoder.state_dict().items()},
                         "head.weight": mt.heads["digits"].weight, "head.bias": mt.heads["digits"].bias})
    seg = SegmentationModel(_encoder(), len(DIGIT_CANVAS), "progressive", 8, "group").eval()
    seg.load_state_dict({**{f"encoder.{k}": v for k, v in mt.encoder.state_dict().items()},
                         **{f"head.{k}": v for k, v in mt.heads["canvas"].state_dict().items()}})
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(mt(x, "digits"), vit(x))
        torch.testing.assert_close(mt(x, "canvas"), seg(x))
        task = torch.tensor([1, 0, 1, 1, 0])
        out = mt.forward_tasks(x, task)
    assert out["digits"][0].tolist() == [1, 4] and out["canvas"][0].tolist() == [0, 2, 3]
    torch.testing.assert_close(out["digits"][1], vit(x[[1, 4]]))
    torch.testing.assert_close(out["canvas"][1], seg(x[[0, 2, 3]]))
    assert out["canvas"][1].shape == (3, len(DIGIT_CANVAS), 16, 16)


def test_heads_start_at_the_uniform_prediction_and_the_loss_is_each_images_own_tasks():
    mt = MultitaskModel(_encoder(), _specs())
    plans = [TaskPlan("digits", "digits", "classification", 1, 1), TaskPlan("canvas", "canvas", "segmentation", 1, 1)]
    x = torch.randn(4, 1, 16, 16)
    y = {"task": torch.tensor([0, 0, 0, 1]), "digits": torch.tensor([3, 1, 4, -1]),
         "canvas": torch.full((4, 16, 16), 255, dtype=torch.long)}
    y["canvas"][3] = 0
    loss, metrics = Multitask(plans, [3, 1])(mt, x, y)
    # zero-initialised heads: every class equally likely, so 3/4 ln 10 + 1/4 ln 11 (the canvas task's 11 classes)
    assert loss.item() == pytest.approx(0.75 * math.log(10) + 0.25 * math.log(11), rel=1e-6)
    assert metrics["share_digits"].item() == 0.75 and metrics["loss_canvas"].item() == pytest.approx(0.25 * math.log(11), rel=1e-6)
    # loss weights multiply the task's term
    weighted = [plans[0], TaskPlan("canvas", "canvas", "segmentation", 1, 2.0)]
    assert Multitask(weighted, [3, 1])(mt, x, y)[0].item() == pytest.approx(0.75 * math.log(10) + 0.5 * math.log(11), rel=1e-6)
    # a micro-batch without a task still reaches every head's parameters (at zero), as DDP needs
    only = {k: v[:3] for k, v in y.items()}
    loss, _ = Multitask(plans, [3, 1])(mt, x[:3], only)
    loss.backward()
    assert all(p.grad is not None for p in mt.heads["canvas"].parameters())
    assert all(float(p.grad.abs().sum()) == 0 for p in mt.heads["canvas"].parameters())


def test_step_metrics_are_each_tasks_mean_over_its_images():
    obj = Multitask([TaskPlan("a", "a", "classification", 1, 1), TaskPlan("b", "b", "classification", 1, 1)], [1, 1])
    # two micro-batches: a's images 3 of 4 then 1 of 4 (losses 2 and 6); b only in the second (loss 1)
    summed = {"loss_a": (2 * 0.75 + 6 * 0.25) / 2, "share_a": (0.75 + 0.25) / 2, "loss_b": 1 * 0.75 / 2, "share_b": 0.75 / 2,
              "loss": 9.0}
    out = obj.step_metrics(summed)
    assert out["loss_a"] == pytest.approx((2 * 3 + 6 * 1) / 4) and out["loss_b"] == pytest.approx(1.0)
    assert "share_a" not in out and out["loss"] == 9.0


def test_the_record_round_trips_every_head(tmp_path):
    mt = MultitaskModel(_encoder(), _specs("progressive"))
    with torch.no_grad():
        for p in mt.heads.parameters():
            p.normal_()
    vitkit.save_model(mt, tmp_path / "m")
    back = vitkit.load_model(tmp_path / "m")
    assert isinstance(back, MultitaskModel) and [t.to_dict() for t in back.tasks] == [t.to_dict() for t in mt.tasks]
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        for t in ("digits", "canvas"):
            torch.testing.assert_close(back.eval()(x, t), mt.eval()(x, t))
    with pytest.raises(ValueError, match="name one"):
        back(x)


def test_flops_count_the_encoder_once_and_each_head_by_its_share():
    from vitkit.models.registry import train_flops

    mt = MultitaskModel(_encoder(), _specs())
    enc = train_flops(mt.encoder.config)  # the encoder alone (no classifier), forward + backward of one image
    plans = [TaskPlan("digits", "digits", "classification", 1, 1), TaskPlan("canvas", "canvas", "segmentation", 1, 1)]
    both = Multitask(plans, [1, 1]).train_flops(mt.config)
    only_cls = Multitask(plans, [1, 0]).train_flops(mt.config)
    only_seg = Multitask(plans, [0, 1]).train_flops(mt.config)
    # a linear head of 32 -> 10: 2 x 32 x 10 forward, twice that backward (weights and input)
    assert only_cls - enc == pytest.approx(3 * 2 * 32 * 10, rel=0.1)
    assert only_seg > only_cls and both == pytest.approx((only_cls + only_seg) / 2, abs=1)


# --- the batches --------------------------------------------------------------------------------------------------------


def test_a_mixed_batch_holds_each_tasks_quota_and_its_targets():
    from vitkit.data.multitask import MultitaskBatches, load_multitask

    cfg = build("multitask", TINY + ["multitask.weights=3,1"])
    ds = load_multitask(cfg, parse_tasks(cfg.multitask))
    batches = MultitaskBatches(ds, cfg, 1, 8, seed=0)  # 8 images a batch
    # 1 each, then 6 more by 3:1 = 4.5 / 1.5: floors 5 and 2, the tie of remainders to the first
    assert batches.shares == [6, 2] and batches.steps_per_epoch == max(len(ds.datasets["digits"].train) // 6, 48 // 2)
    x, y = batches[2]
    assert x.shape == (8, 1, 16, 16) and y["task"].tolist() == [0] * 6 + [1] * 2
    assert (y["digits"][:6] >= 0).all() and (y["digits"][6:] == -1).all()
    assert (y["canvas"][:6] == 255).all() and y["canvas"][6:].shape == (2, 16, 16) and (y["canvas"][6:] < 255).any()
    again = batches[2]
    assert torch.equal(again[0], x) and all(torch.equal(again[1][k], y[k]) for k in y)  # a pure function of the step
    assert not torch.equal(batches[3][0], x)
    with pytest.raises(ValueError, match="must divide among the 4 processes"):
        MultitaskBatches(ds, cfg, 1, 8, seed=0, rank=0, world=4)


# --- training, checkpoints, eval ---------------------------------------------------------------------------------------


def test_trains_through_the_cli_and_logs_each_task(run):
    train = _rows(run, "train")
    assert len(train) == 24
    # the zero-initialised heads: the first step's loss is the uniform one, half of each (8 + 8 images of 16)
    assert train[0]["loss"] == pytest.approx(0.5 * math.log(10) + 0.5 * math.log(len(DIGIT_CANVAS)), abs=0.02)
    assert train[0]["loss_digits"] == pytest.approx(math.log(10), abs=0.02)
    for key in ("loss", "loss_canvas"):  # (digits at 16 px learns slower than this: 2.32 -> 2.27)
        values = [r[key] for r in train]
        assert np.mean(values[-3:]) < np.mean(values[:3]) - 0.1, (key, values)
    val = _rows(run, "val")
    assert [r["step"] for r in val] == [12, 24] and all(0 <= r["digits/top1"] <= 1 and 0 <= r["canvas/miou"] <= 1 for r in val)
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["digits"]["n"] == 899 and test["canvas"]["n"] == 16 and test["n"] == 915
    assert test["score"] == pytest.approx((test["digits"]["top1"] + test["canvas"]["miou"]) / 2)
    assert set(test["canvas"]["iou"]) == set(DIGIT_CANVAS)
    weights = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert any(k.startswith("heads.digits.") for k in weights) and any(k.startswith("heads.canvas.") for k in weights)
    record = json.loads((run / "checkpoint" / "config.json").read_text())["model"]
    assert record["arch"] == "multitask" and [t["name"] for t in record["tasks"]] == ["digits", "canvas"]
    assert record["tasks"][1]["classes"] == DIGIT_CANVAS and record["tasks"][0]["data"] == "digits"
    assert (run / "curves.png").stat().st_size > 0


def test_stop_and_resume_is_bit_identical(run, tmp_path):
    out = tmp_path / "stopped"
    assert main(["train", "--recipe", "multitask", "--out", str(out), *sets("train.stop_at_step=12")]) == 0
    assert main(["train", "--resume", str(out)]) == 0
    a, b = load_file(str(run / "checkpoint/model.safetensors")), load_file(str(out / "checkpoint/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_micro_batches_give_the_full_batchs_step(tmp_path):
    """Accumulating micro-batches that each hold other tasks gives the full batch's loss and weights (no crop: every
    canvas pixel is scored, so each image weighs the same in its task's mean). SGD: Adam's first steps would turn the
    float rounding of a near-zero gradient (a zero-initialised head's) into a full step either way."""
    outs = []
    for micro in (16, 4):  # 4: micro-batches of one task each
        out = tmp_path / f"m{micro}"
        assert main(["train", "--recipe", "multitask", "--out", str(out),
                     *sets("train.steps=2", "data.crop=none", "data.flip=false", f"train.micro_batch_size={micro}",
                           "optim.name=sgd")]) == 0
        outs.append(out)
    rows = [_rows(o, "train") for o in outs]
    for key in ("loss", "loss_digits", "loss_canvas", "acc_canvas"):
        assert rows[0][0][key] == pytest.approx(rows[1][0][key], rel=1e-5), key
    a, b = (load_file(str(o / "checkpoint/model.safetensors")) for o in outs)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_eval_reports_each_task_as_training_scored_it(run, capsys):
    assert main(["eval", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert res["tasks"]["digits"]["top1"] == pytest.approx(test["digits"]["top1"])
    assert res["tasks"]["canvas"]["miou"] == pytest.approx(test["canvas"]["miou"])
    assert res["score"] == pytest.approx(test["score"])
    assert main(["eval", str(run), "--task", "canvas"]) == 0
    text = capsys.readouterr().out
    assert "canvas" in text and "mIoU" in text and "top-1" not in text
    assert main(["eval", str(run / "checkpoint"), "--task", "canvas", "--json"]) == 0  # the run's canvas, not the default
    assert json.loads(capsys.readouterr().out)["tasks"]["canvas"]["miou"] == pytest.approx(test["canvas"]["miou"])
    assert main(["eval", str(run), "--task", "nope"]) == 2
    assert "its tasks are digits (classification on digits), canvas" in capsys.readouterr().err
    assert main(["predict", str(run), str(run / "curves.png")]) == 2
    assert "multitask model" in capsys.readouterr().err


def test_its_encoder_fine_tunes_and_its_tasks_continue(run, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", str(run), "--data", "digits", "--out", str(out), "--set", "train.steps=2",
                 "--set", "train.batch_size=8", "--set", "train.progress=false", "--set", "train.threads=1"]) == 0
    assert "its encoder with a new zero-initialised 10-class head" in capsys.readouterr().err
    # model.init of a multitask run with the same tasks: the whole model continues (its heads kept)
    cont = tmp_path / "cont"
    own = [a for s in TINY if not s.startswith("model.") for a in ("--set", s)]  # the architecture is the checkpoint's
    assert main(["train", "--recipe", "multitask", "--out", str(cont), *own, "--set", "train.steps=1",
                 "--set", f"model.init={run}", "--set", "optim.lr=1e-12"]) == 0
    first = _rows(cont, "train")[0]["loss"]
    assert first < _rows(run, "train")[0]["loss"] - 0.05  # not the uniform start: the trained heads


def test_the_objective_and_its_scores_stay_on_the_models_device():
    """FakeTensorMode's CUDA tensors: a cross-device op raises, as on a GPU."""
    mt = MultitaskModel(_encoder(), _specs("progressive"))
    plans = [TaskPlan("digits", "digits", "classification", 1, 1), TaskPlan("canvas", "canvas", "segmentation", 1, 1)]
    obj = Multitask(plans, [2, 2])
    with FakeTensorMode(allow_non_fake_inputs=True):
        mt = mt.to("cuda")
        x = torch.randn(4, 1, 16, 16).to("cuda")
        masks = torch.zeros(4, 16, 16, dtype=torch.long).to("cuda")
        # each task's loss on its head's outputs (forward_tasks' split by task is data-dependent: FakeTensorMode has
        # no nonzero, so the heads are called per task here, as forward_tasks calls them)
        tokens = mt.encoder.forward_features(x)
        cls_loss, cls_acc = obj.task_loss(plans[0], mt.head_outputs("digits", tokens, (16, 16)), torch.tensor([1, 2, 3, 4]).to("cuda"))
        seg_loss, seg_acc = obj.task_loss(plans[1], mt.head_outputs("canvas", tokens, (16, 16)), masks)
        assert all(t.device.type == "cuda" for t in (cls_loss, cls_acc, seg_loss, seg_acc))
        # a task's scores count on the device too (the confusion matrix beside the predictions: the bug that once
        # ended GPU training at its first validation); the final numbers (.item()) and a segmentation's confusion
        # (boolean indexing) are data-dependent, which FakeTensorMode cannot run
        from vitkit.evaluate.classify import evaluate_sums
        from vitkit.heads.multitask import TaskView

        sums = evaluate_sums(TaskView(mt, "digits"), [(x, torch.tensor([1, 2, 3, 4]))], "fp32", 10)
    assert sums["confusion"].device.type == "cuda" and sums["confusion"].shape == (10, 10)


def test_a_task_read_from_files_joins_the_batch_on_the_training_device(tmp_path):
    """A folder task's images come from disk on the CPU, an in-memory task's are augmented on the training device (the
    meta device for a GPU): the mixed batch and its targets are all on the device."""
    from PIL import Image

    from vitkit.data.multitask import MultitaskBatches, load_multitask

    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    cfg = build("multitask", TINY + [f"multitask.tasks=digits,f=folder:{tmp_path / 'f'}", "data.in_memory=false"])
    ds = load_multitask(cfg, parse_tasks(cfg.multitask))
    x, y = MultitaskBatches(ds, cfg, 1, 8, seed=0, device="meta")[0]
    assert x.device.type == "meta" and x.shape == (8, 1, 16, 16) and all(v.device.type == "meta" for v in y.values())


def test_quotas_are_checked_against_the_data_and_the_ranks_before_a_run_directory(tmp_path, capsys):
    from vitkit.data.multitask import check_batches, load_multitask

    cfg = build("multitask", TINY + ["data.canvas.train=10", "train.batch_size=32"])
    ds = load_multitask(cfg, parse_tasks(cfg.multitask))
    with pytest.raises(ValueError, match="task 'canvas' \\(canvas\\): 16 images per batch but its training split has 10"):
        check_batches(ds, 32)
    assert check_batches(ds, 16) == [8, 8]
    with pytest.raises(ValueError, match=r"\(digits: 5, canvas: 5\) must divide among the 2 processes"):
        check_batches(ds, 10, world=2)
    out = tmp_path / "run"
    assert main(["train", "--recipe", "multitask", "--out", str(out), *sets("data.canvas.train=10", "train.batch_size=32")]) == 2
    assert "16 images per batch but its training split has 10" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("name", ["score", "n", "train", "keys", "items"])
def test_task_names_that_would_shadow_a_score_or_a_module_attribute_are_refused(name):
    with pytest.raises(ValueError, match=f"task name '{name}'.*is taken"):
        parse_tasks(MultitaskConfig(tasks=f"{name}=digits,canvas"))


def test_scores_of_several_processes_are_combined_per_task(monkeypatch):
    """Two ranks: a classification's top-1 is the image-weighted mean, a segmentation's mIoU comes from the summed
    confusion matrices (not the mean of the ranks' mIoUs), and "score" is the mean of the combined scores."""
    import torch.distributed as dist

    from vitkit.evaluate.segmentation import segmentation_scores
    from vitkit.train import distributed
    from vitkit.train.distributed import Env

    names = ["a", "b", "c"]
    cms = [torch.tensor([[5, 1, 0], [0, 3, 0], [0, 0, 0]]), torch.tensor([[0, 0, 0], [1, 2, 0], [0, 0, 4]])]
    segs = [{**segmentation_scores(cm, names), "confusion": cm.tolist(), "loss": loss, "n": n}
            for cm, loss, n in zip(cms, (0.5, 1.0), (2, 3))]
    clss = [{"top1": 1.0, "top5": 1.0, "loss": 0.1, "n": 1}, {"top1": 0.5, "top5": 1.0, "loss": 0.3, "n": 3}]
    plans = [TaskPlan("d", "digits", "classification", 1, 1), TaskPlan("c", "canvas", "segmentation", 1, 1)]
    obj, env = Multitask(plans, [1, 1], class_names={"c": names}), Env(rank=0, world=2)
    monkeypatch.setattr(distributed, "comm_device", lambda: torch.device("cpu"))
    shares = []
    monkeypatch.setattr(dist, "all_reduce", lambda t: shares.append(t.clone()))
    obj.reduce_eval({"d": clss[1], "c": segs[1]}, env)  # rank 1's tensors, in the order rank 0 sends its own
    calls = iter(shares)
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.add_(next(calls)))
    got = obj.reduce_eval({"d": clss[0], "c": segs[0]}, env)
    want_miou = segmentation_scores(cms[0] + cms[1], names)["miou"]
    assert got["d"]["top1"] == pytest.approx((1.0 * 1 + 0.5 * 3) / 4) and got["d"]["n"] == 4
    assert got["c"]["miou"] == pytest.approx(want_miou) and got["c"]["n"] == 5
    assert got["score"] == pytest.approx((0.625 + want_miou) / 2) and got["n"] == 9


def test_its_encoder_starts_from_a_segmentation_run_and_another_task_list(tmp_path, capsys):
    """model.init of a segmentation model: its encoder, new heads; of a multitask run with other tasks: its encoder."""
    from vitkit.heads.segmentation import SegmentationModel

    seg = SegmentationModel(_encoder(), len(DIGIT_CANVAS), "linear")
    with torch.no_grad():
        for p in seg.parameters():
            p.normal_(0, 0.02)
    vitkit.save_model(seg, tmp_path / "seg")
    own = [a for s in TINY if not s.startswith("model.") for a in ("--set", s)]
    out = tmp_path / "mt"
    assert main(["train", "--recipe", "multitask", "--out", str(out), *own, "--set", "train.steps=1",
                 "--set", f"model.init={tmp_path / 'seg'}"]) == 0
    assert "its encoder with new heads for digits, canvas" in capsys.readouterr().err
    back = vitkit.load_model(out)
    assert isinstance(back, MultitaskModel) and [t.name for t in back.tasks] == ["digits", "canvas"]
    # one step at the recipe's rate moved the encoder a little from the segmentation model's
    assert torch.allclose(back.encoder.patch_embed.proj.weight, seg.encoder.patch_embed.proj.weight, atol=0.05)
    other = tmp_path / "other"
    assert main(["train", "--recipe", "multitask", "--out", str(other), *own, "--set", "train.steps=1",
                 "--set", "multitask.tasks=digits", "--set", f"model.init={out}"]) == 0
    assert [t.name for t in vitkit.load_model(other).tasks] == ["digits"]
    with pytest.raises(ValueError, match="a multitask model has a head per task"):
        vitkit.load_model(out, num_classes=3)


def test_reset_head_without_zero_initialises_every_kind_of_head():
    mt = MultitaskModel(_encoder(), _specs("progressive"))
    for name in ("digits", "canvas"):
        mt.reset_head(name, zero=False)
        last = mt.heads[name] if name == "digits" else mt.heads[name].classify
        assert last.weight.abs().sum() > 0, name


def test_config_defaults_for_older_runs():
    """A config.json written before the multitask section existed loads with its defaults."""
    from vitkit.config import config_from_dict

    d = Config().to_dict()
    d.pop("multitask")
    assert config_from_dict(d).multitask == MultitaskConfig()
    assert apply_overrides(Config(), ["objective=multitask"]).objective == "multitask"
