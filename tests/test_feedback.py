"""What a user sees while a verb runs: progress bars (tqdm on stderr; forced on here with VITKIT_PROGRESS=1, since
tests have no terminal), --quiet, one line on Ctrl-C, a warning when a dataset's classes differ from the checkpoint's,
and analyze's argument checks that leave nothing behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitkit
from vitkit import progress
from vitkit.cli import main


def _tiny(**kw):
    base = dict(num_classes=10, image_size=8, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64, in_chans=1)
    return vitkit.create_model("ViT-Ti/16", **{**base, **kw})


@pytest.fixture()
def ckpt(tmp_path):
    return vitkit.save_model(_tiny(), tmp_path / "m", class_names=[str(i) for i in range(10)])


@pytest.fixture(autouse=True)
def _bars_back_on():
    yield
    progress.enable()  # --quiet switches them off for the process


@pytest.mark.parametrize("verb", [["eval", "--data", "digits"], ["fewshot", "--data", "digits", "--shots", "1", "--seeds", "1"]])
def test_dataset_verbs_show_progress_unless_quiet(ckpt, capsys, monkeypatch, verb):
    monkeypatch.setenv("VITKIT_PROGRESS", "1")
    assert main([verb[0], str(ckpt), *verb[1:], "--engine", "torch"]) == 0
    err = capsys.readouterr().err
    bars = {"eval": ["eval digits (test)"], "fewshot": ["features of digits (train)", "features of digits (test)"]}[verb[0]]
    for name in bars:  # 808 train / 899 test digits: 4 batches of 256 each (the bar clears itself when done)
        assert f"{name}:   0%|          | 0/4" in err, err
    assert main([verb[0], str(ckpt), *verb[1:], "--engine", "torch", "--quiet"]) == 0
    assert not any(name in capsys.readouterr().err for name in bars)


def test_no_bar_without_a_terminal(ckpt, capsys, monkeypatch):
    monkeypatch.delenv("VITKIT_PROGRESS", raising=False)
    assert main(["eval", str(ckpt), "--data", "digits", "--engine", "torch"]) == 0
    assert "eval digits" not in capsys.readouterr().err  # tqdm's rule: stderr here is no terminal


def test_convert_and_export_show_their_stages_and_what_they_wrote(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITKIT_PROGRESS", "1")
    assert main(["convert", str(ckpt), str(tmp_path / "t.safetensors"), "--to", "timm"]) == 0
    cap = capsys.readouterr()
    assert f"reading {ckpt}" in cap.err and f"writing {tmp_path / 't.safetensors'} (timm)" in cap.err
    assert cap.out.strip().splitlines()[-1] == f"wrote {tmp_path / 't.safetensors'} (timm)"
    pytest.importorskip("onnxruntime")
    assert main(["export", str(ckpt), str(tmp_path / "m.onnx")]) == 0
    cap = capsys.readouterr()
    assert all(f"{i}/3" in cap.err for i in range(3)) and "ONNX graph" in cap.err and "checking against PyTorch" in cap.err
    assert cap.out.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'm.onnx'} (ONNX opset 18")


def test_bad_progress_setting_is_named(monkeypatch):
    monkeypatch.setenv("VITKIT_PROGRESS", "yes")
    with pytest.raises(ValueError, match="VITKIT_PROGRESS='yes'"):
        progress.bar(range(3))


def test_ctrl_c_in_a_verb_is_one_line(ckpt, capsys, monkeypatch):
    import vitkit.evaluate.run as run

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "evaluate", interrupted)
    assert main(["eval", str(ckpt), "--data", "digits", "--engine", "torch"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "vitkit eval: interrupted"


def _fresh_signals() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_training_says_where_the_last_checkpoint_is(tmp_path):
    """A real SIGINT to a training process: one line naming the last checkpoint's step and the resume command."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vitkit.cli", "train", "--out", str(out), "--set", "train.steps=100000",
           "--set", "train.ckpt_every=5", "--set", "train.eval_every=100000", "--set", "train.batch_size=16",
           "--set", "model.width=32", "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=64",
           "--set", "train.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the child starts with the signal state a user's shell gives it: a blocked or ignored SIGINT is inherited across
    # exec, and some test before this one (in a full run only) leaves the pytest process so
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_fresh_signals)

    def trained_past_the_checkpoint() -> bool:  # the SIGINT lands between steps, the first checkpoint written
        log = out / "metrics.jsonl"
        return (out / "checkpoint" / "state.pt").exists() and log.exists() and log.read_text().count("\n") >= 7

    try:
        deadline = time.monotonic() + 240
        while not trained_past_the_checkpoint() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "checkpoint").exists(), proc.communicate(timeout=30)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("vitkit train: interrupted during step ") and f"vitkit train --resume {out}" in last, last
    step = int(last.split("the last checkpoint is at step ")[1].split(":")[0])
    assert step > 0 and step % 5 == 0


def _folder(root: Path, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / split / name / f"{i}.png")


def test_a_folder_with_other_class_names_is_warned_about(tmp_path, capsys):
    src = vitkit.save_model(_tiny(num_classes=3), tmp_path / "m", class_names=["cat", "dog", "eel"])
    _folder(tmp_path / "same", ["cat", "dog", "eel"])
    _folder(tmp_path / "other", ["ant", "bee", "cat"])
    assert main(["eval", str(src), "--data", f"folder:{tmp_path / 'same'}", "--engine", "torch"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["eval", str(src), "--data", f"folder:{tmp_path / 'other'}", "--engine", "torch"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "['cat', 'dog', 'eel']" in err and "['ant', 'bee', 'cat']" in err and "by index" in err


def test_analyze_refuses_a_bad_head_before_writing_anything(ckpt, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["analyze", str(ckpt), "--data", "digits", "--num-images", "4", "--out", str(out), "--head", "2"]) == 2
    assert "--head 2: the model has 2 heads per layer, numbered 0 to 1" in capsys.readouterr().err
    assert not out.exists()
    assert main(["analyze", str(ckpt), "--data", "digits", "--num-images", "4", "--out", str(out), "--head", "1"]) == 0


def test_analyze_failing_midway_leaves_the_output_as_it_was(ckpt, tmp_path, monkeypatch):
    import vitkit.analysis.report as report

    out = tmp_path / "a"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")

    def broken(*a, **k):
        raise RuntimeError("planted")

    monkeypatch.setattr(report, "plot_rollout", broken)
    with pytest.raises(RuntimeError, match="planted"):
        report.analyze(str(ckpt), out, data="digits", num_images=4, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    with pytest.raises(RuntimeError, match="planted"):  # a folder the call made is gone again
        report.analyze(str(ckpt), tmp_path / "new", data="digits", num_images=4)
    assert not (tmp_path / "new").exists()


def test_a_gap_model_is_not_said_to_have_a_class_token(tmp_path):
    from vitkit.analysis.report import analyze

    src = vitkit.save_model(_tiny(pool="gap"), tmp_path / "gap")
    res = analyze(str(src), tmp_path / "a", data="digits", num_images=4, head=1)
    titles = list(res["figures"])
    assert "Mean attention of the patches (no class token), head 1" in titles
    assert not any("Class-token" in t for t in titles)
    tok = analyze(str(vitkit.save_model(_tiny(), tmp_path / "tok")), tmp_path / "b", data="digits", num_images=4, head=1)
    assert "Class-token attention, head 1" in tok["figures"]


def test_ctrl_c_inside_a_checkpoint_write_keeps_the_one_before(tmp_path, monkeypatch):
    """DCP wraps a KeyboardInterrupt in its CheckpointException (a traceback, exit 1, seen on a real Ctrl-C): it is an
    interrupt again, and the run names the checkpoint it kept."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from vitkit.config import apply_overrides
    from vitkit.recipes import get_recipe
    from vitkit.train.loop import Interrupted, train

    real, calls = DefaultSavePlanner.create_local_plan, []

    def second_write_interrupted(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(DefaultSavePlanner, "create_local_plan", second_write_interrupted)
    cfg = apply_overrides(get_recipe("quickstart"), ["model.width=32", "model.depth=1", "model.heads=2", "model.mlp_dim=64",
                                                     "train.steps=8", "train.ckpt_every=2", "train.batch_size=16",
                                                     "train.progress=false"])
    with pytest.raises(Interrupted, match=r"interrupted during step 4; the last checkpoint is at step 2: continue with"):
        train(cfg, out=tmp_path / "run")
    import torch

    assert torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)["step"] == 2


def test_finetuning_on_a_folder_named_otherwise_keeps_the_head_and_warns(tmp_path, capsys):
    from vitkit.train.finetune import finetune

    src = vitkit.save_model(_tiny(num_classes=3), tmp_path / "m", class_names=["cat", "dog", "eel"])
    _folder(tmp_path / "other", ["ant", "bee", "cat"])
    finetune(str(src), f"folder:{tmp_path / 'other'}", out=tmp_path / "ft",
             overrides=["train.steps=2", "train.batch_size=4", "train.progress=false"])
    err = capsys.readouterr().err
    assert "warning:" in err and "['cat', 'dog', 'eel']" in err and "['ant', 'bee', 'cat']" in err
