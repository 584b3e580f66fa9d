"""The training loop, run directories, checkpoints that resume exactly, recipes and overrides."""
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.cli import main
from vitkit.config import Config, apply_overrides, config_from_dict, valid_keys
from vitkit.recipes import RECIPES, get_recipe
from vitkit.train.loop import Batching, train
from vitkit.train.optim import lr_factor, param_groups
from vitkit.config import OptimConfig

TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "model.patch_size=4",
        "data.image_size=8", "train.progress=false", "train.precision=fp32"]  # the same numbers on every CPU (auto: test_runtime)


def tiny(*extra: str) -> Config:
    return apply_overrides(get_recipe("quickstart"), TINY + list(extra))


def test_loop_learns_digits(tmp_path):
    res = train(tiny("train.steps=150", "train.batch_size=64", "optim.lr=3e-3"), out=tmp_path / "run")
    assert res["test"]["top1"] > 0.6  # chance is 0.1
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "metrics.json", "curves.png", "checkpoint/model.safetensors",
                 "checkpoint/config.json", "checkpoint/state.pt"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"top1", "top5", "loss", "n"} and metrics["test"]["n"] == 899
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "val"} <= {l["split"] for l in lines}
    # the run directory is a checkpoint anything can load, with its class names and preprocessing
    _, card = vitkit.load(run)
    assert card.class_names == [str(i) for i in range(10)]
    assert card.preprocess.to_dict() == {"image_size": 8, "normalize": "google", "in_chans": 1}


def test_run_directory_is_never_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists.*--resume"):
        train(tiny("train.steps=2"), out=tmp_path / "run")
    assert (tmp_path / "run" / "precious.txt").read_text() == "mine"


def test_accumulation_matches_one_big_batch(tmp_path):
    a = train(tiny("train.steps=4", "train.batch_size=32"), out=tmp_path / "a")
    b = train(tiny("train.steps=4", "train.batch_size=32", "train.micro_batch_size=8"), out=tmp_path / "b")
    wa = load_file(str(tmp_path / "a/checkpoint/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoint/model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4)
    assert a["steps"] == b["steps"] == 4


def test_batching_plan():
    assert Batching.plan(4096, 64, 1) == Batching(64, 64, 4096)
    assert Batching.plan(128, 0, 2) == Batching(64, 1, 64)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        Batching.plan(128, 0, 3)


def test_schedule_and_decay_groups():
    f = lr_factor(OptimConfig(schedule="cosine", warmup_steps=10, end_lr_fraction=0.0), total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-9)
    lin = lr_factor(OptimConfig(schedule="linear", warmup_steps=0), total=100)
    assert lin(50) == pytest.approx(0.5)
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=16, patch_size=8)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias"} <= {names[id(p)] for p in no_decay["params"]}


def _first_step(tmp_path, name, *extra):
    """One training step from the zero-initialised head: (head.bias after it, the step's logged train record)."""
    train(tiny("train.steps=1", "train.batch_size=16", "train.log_every=1", "optim.warmup_steps=0", *extra), out=tmp_path / name)
    record = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    return load_file(str(tmp_path / name / "checkpoint/model.safetensors"))["head.bias"], record


def test_optimizers_first_step_in_a_run(tmp_path):
    # AdamW's first update is lr * sign(grad) on every head bias (no decay on biases)
    bias, rec = _first_step(tmp_path, "adamw")
    assert rec["loss"] == pytest.approx(math.log(10), abs=1e-5)  # zero head: uniform over 10 classes
    torch.testing.assert_close(bias.abs(), torch.full((10,), rec["lr"]), rtol=1e-4, atol=0)
    # SGD's first update is -lr * clipped grad; the bias gradient of softmax CE with label smoothing s at a
    # zero head is (1 - s) * (1/10 - share of class c in the batch): the shares come back as multiples of 1/16
    bias, rec = _first_step(tmp_path, "sgd", "optim.name=sgd", "optim.label_smoothing=0.2")
    share = 0.1 + bias.double() * max(1.0, rec["grad_norm"]) / (rec["lr"] * 0.8)
    torch.testing.assert_close(share * 16, (share * 16).round(), atol=1e-3, rtol=0)
    assert share.sum().item() == pytest.approx(1.0, abs=1e-4) and share.min() >= -1e-4


def test_sigmoid_loss_with_head_bias_init_in_a_run(tmp_path):
    _, rec = _first_step(tmp_path, "sig", "optim.loss=sigmoid", "model.head_bias_init=-5.0")
    # every logit is -5: nine negatives cost softplus(-5) each, the true class softplus(5)
    assert rec["loss"] == pytest.approx(9 * math.log1p(math.exp(-5)) + math.log1p(math.exp(5)), abs=1e-4)


def test_ema_exports_the_average_of_the_trained_weights(tmp_path):
    const = ("optim.schedule=constant", "optim.warmup_steps=0", "train.batch_size=16")
    train(tiny("train.steps=1", *const), out=tmp_path / "one")
    train(tiny("train.steps=2", *const), out=tmp_path / "two")
    train(tiny("train.steps=2", "optim.ema=0.75", *const), out=tmp_path / "ema")
    p1, p2, ema = (load_file(str(tmp_path / n / "checkpoint/model.safetensors")) for n in ("one", "two", "ema"))
    # torch's AveragedModel copies the weights at its first update, then ema = d * ema + (1 - d) * weights
    moved = 0
    for k in p1:
        torch.testing.assert_close(ema[k], 0.75 * p1[k] + 0.25 * p2[k], atol=1e-6, rtol=1e-5)
        moved += int(not torch.equal(p1[k], p2[k]))
    assert moved > 10  # the second step changed the weights, so the average is no copy of either


def test_mixup_cutmix_reach_the_bf16_loss(tmp_path, monkeypatch):
    import vitkit.data.loader as loader

    seen = []

    def spy(x, y, num_classes, cfg):
        xm, ym = loader_mix(x, y, num_classes, cfg)
        seen.append(ym)
        return xm, ym

    loader_mix = loader.mix_batch
    monkeypatch.setattr(loader, "mix_batch", spy)
    _, rec = _first_step(tmp_path, "mix", "train.precision=bf16", "data.mixup=0.8", "data.cutmix=1.0")
    assert seen and all(y.ndim == 2 and torch.allclose(y.sum(1), torch.ones(len(y))) for y in seen)
    assert any((y.max(1).values < 1).any() for y in seen)  # soft labels, not one-hot ones
    assert rec["loss"] == pytest.approx(math.log(10), abs=1e-2)  # any soft target over a uniform prediction


def test_overrides_are_typed_and_checked():
    cfg = apply_overrides(Config(), ["optim.lr=3e-3", "train.steps=10", "data.flip=false", "model.width=none", "model.name=ViT-S/16"])
    assert cfg.optim.lr == 3e-3 and cfg.train.steps == 10 and cfg.data.flip is False and cfg.model.width is None
    with pytest.raises(ValueError, match=r"unknown config key 'optim.lrr'; valid keys: .*optim\.lr"):
        apply_overrides(Config(), ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"unknown config key 'lr' \(did you mean optim.lr\?\)"):
        apply_overrides(Config(), ["lr=1"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(Config(), ["train.steps=ten"])
    with pytest.raises(ValueError, match="write key=value"):
        apply_overrides(Config(), ["train.steps"])
    assert config_from_dict(json.loads(get_recipe("cifar10").to_json())) == get_recipe("cifar10")
    assert "data.randaugment" in valid_keys()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_resolves(name):
    cfg = get_recipe(name)
    assert cfg.recipe == name
    over = cfg.model.overrides()
    mc = vitkit.models.model_config(cfg.model.name, image_size=cfg.data.image_size, **over)  # raises if the size does not fit
    assert all(getattr(mc, k) == v for k, v in over.items()), over  # every override reaches the model


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--set", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    assert main(["train", "--set", "data.name=imagenet5", "--out", str(tmp_path / "r")]) == 2
    assert "unknown dataset 'imagenet5'" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", "--recipe", "fashion-mnist", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["name"] == "fashion-mnist"


def test_eval_cli_on_a_run(tmp_path, capsys):
    train(tiny("train.steps=20"), out=tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", "digits", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert res["n"] == 899 and res["top1"] == pytest.approx(metrics["test"]["top1"])
    # bf16 weights: the same verdict within a few images (the wrapped model is an InferenceModel inside evaluate())
    assert main(["eval", str(tmp_path / "run"), "--data", "digits", "--precision", "bf16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(res["top1"], abs=0.02)
    assert main(["eval", str(tmp_path / "run"), "--data", "cifar10", "--data-dir", str(tmp_path)]) == 2


def _train_cmd(out: Path, *extra: str) -> list[str]:
    sets = TINY + ["train.steps=60", "train.batch_size=32", "train.ckpt_every=10", "train.eval_every=25",
                   "optim.ema=0.9", "model.dropout=0.1", "model.drop_path=0.1", "data.mixup=0.5"] + list(extra)
    return [sys.executable, "-m", "vitkit", "train", "--out", str(out)] + [a for s in sets for a in ("--set", s)]


def _train_state(ckpt: Path, tmp: Path) -> dict:
    """A checkpoint's DCP training state (model, objective and optimizer), read in one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt / "train_state", tmp)
    return torch.load(tmp, weights_only=True)


def test_time_limit_ends_training_then_evaluates(tmp_path):
    res = train(tiny("train.steps=100000", "train.time_limit_s=1.5"), out=tmp_path / "run")
    assert 0 < res["steps"] < 100000 and res["test"]["n"] == 899
    assert torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)["step"] == res["steps"]


def test_resume_may_change_how_a_run_runs_not_what_it_computes(tmp_path, capsys):
    res = train(tiny("train.steps=6", "train.stop_at_step=3"), out=tmp_path / "run")
    assert res["stopped"] and res["steps"] == 3
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "optim.lr=1.0"]) != 0
    assert "only train.parallel" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "train.threads=1"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 6


def test_stop_and_resume_in_process_equals_one_run(tmp_path):
    """Weights, optimizer moments, LR schedule and RNG all come back: 3 + 3 steps are the 6 steps of one run."""
    extra = ("train.steps=6", "train.batch_size=16", "optim.ema=0.5", "data.mixup=0.5")
    train(tiny(*extra), out=tmp_path / "one")
    train(tiny(*extra, "train.stop_at_step=3"), out=tmp_path / "two")
    state = torch.load(tmp_path / "two" / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 3 and state["ema_n"] == 3
    train(Config(), resume=tmp_path / "two")
    a = load_file(str(tmp_path / "one" / "checkpoint/model.safetensors"))  # the EMA weights
    b = load_file(str(tmp_path / "two" / "checkpoint/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert vitkit.load(tmp_path / "two").card.class_names == [str(i) for i in range(10)]
    sa, sb = (_train_state(tmp_path / n / "checkpoint", tmp_path / f"{n}.pt") for n in ("one", "two"))
    assert all(torch.equal(sa["module"][k], sb["module"][k]) for k in sa["module"])
    assert all(torch.equal(v, sb["optim"]["state"][p][k]) for p, s in sa["optim"]["state"].items() for k, v in s.items())


def test_a_kill_between_the_two_renames_keeps_the_last_checkpoint(tmp_path):
    from vitkit.train.checkpoint import checkpoint_dir

    train(tiny("train.steps=2", "train.batch_size=16"), out=tmp_path / "run")
    run = tmp_path / "run"
    assert checkpoint_dir(run) == run / "checkpoint"
    # the old checkpoint moved aside, the new one not yet in place: the old one is put back
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    assert checkpoint_dir(run) == run / "checkpoint" and (run / "checkpoint" / "state.pt").exists()
    assert not (run / ".checkpoint.old").exists()
    # a half-written checkpoint/ (no state.pt) loses to a complete .checkpoint.old
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "model.safetensors").write_bytes(b"partial")
    assert checkpoint_dir(run) == run / "checkpoint" and (run / "checkpoint" / "state.pt").exists()
    shutil.rmtree(run / "checkpoint" / "train_state")  # as an older vitkit wrote them
    with pytest.raises(FileNotFoundError, match="checkpoint: no train_state/ \\(written by an older vitkit\\); start the run again, "
                                                "or fine-tune from its weights with `vitkit finetune "):
        train(Config(), resume=run)
    shutil.rmtree(run / "checkpoint")
    assert checkpoint_dir(run) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(Config(), resume=run)


def test_checkpoints_are_written_beside_the_run_and_renamed_in(tmp_path, monkeypatch):
    """The new checkpoint is written in a hidden temporary directory inside the run directory (same file system,
    so the final rename is atomic) and nothing of it is left behind."""
    renames = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: renames.append((Path(a), Path(b))) or real(a, b))
    train(tiny("train.steps=2", "train.batch_size=16"), out=tmp_path / "run")
    src, dst = [(a, b) for a, b in renames if Path(b).name == "checkpoint"][-1]
    assert dst == tmp_path / "run" / "checkpoint" and src.parent.parent == tmp_path / "run"
    assert src.parent.name.startswith(".checkpoint.")
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []


class _NotAllowed:  # anything beyond tensors and plain numbers needs full unpickling
    pass


def test_resume_never_unpickles_the_state_file(tmp_path):
    import pickle

    train(tiny("train.steps=2", "train.batch_size=16", "train.stop_at_step=1"), out=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    torch.save({**state, "payload": _NotAllowed()}, tmp_path / "run" / "checkpoint" / "state.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(Config(), resume=tmp_path / "run")


def test_training_time_and_images_count_the_whole_run_across_a_resume(tmp_path, monkeypatch):
    """A first segment made slow (0.1 s a step, planted) then a resumed fast one: metrics.json's train_wall_s
    covers both (the first alone is >= 0.6 s), and train_img_per_s counts every image of the 8 steps."""
    import vitkit.train.loop as loop

    real = loop.train_step

    def slow(*a, **k):
        time.sleep(0.1)
        return real(*a, **k)

    monkeypatch.setattr(loop, "train_step", slow)
    train(tiny("train.steps=8", "train.batch_size=16", "train.stop_at_step=6"), out=tmp_path / "run")
    first = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert first["train_wall_s"] >= 0.6 and first["train_images"] == 6 * 16
    monkeypatch.setattr(loop, "train_step", real)
    t0 = time.perf_counter()
    train(Config(), resume=tmp_path / "run")
    second = time.perf_counter() - t0  # the resumed call, set-up and evaluation included: more than its steps
    res = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert res["train_wall_s"] >= first["train_wall_s"] >= 0.6 and res["train_wall_s"] < first["train_wall_s"] + second
    assert res["train_img_per_s"] * res["train_wall_s"] == pytest.approx(8 * 16)
