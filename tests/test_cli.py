import json
import subprocess
import sys

import pytest

import vitkit
from vitkit.cli import build_parser, main


def verbs():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    return sorted(sub.choices)


def test_models_json(capsys):
    assert main(["models", "--json", "--filter", "ViT-B/16"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["ViT-B/16", "R50+ViT-B/16", "Axial-ViT-B/16"]
    assert rows[0] == {"name": "ViT-B/16", "params": 86_567_656, "image_size": 224,
                     "gflops": pytest.approx(35.13, abs=0.01), "gmacs": pytest.approx(17.56, abs=0.01)}


def test_models_table(capsys):
    assert main(["models", "--filter", "R50"]) == 0
    out = capsys.readouterr().out
    assert "R50+ViT-B/16" in out and "98,659,112" in out and "R50x1" in out


def test_models_filter_without_match(capsys):
    assert main(["models", "--filter", "nothing-like-this"]) == 2
    assert "no model name contains" in capsys.readouterr().err


@pytest.mark.parametrize("verb", verbs())
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert "usage: vitkit " + verb in capsys.readouterr().out


def test_console_script_and_module_entry_points():
    out = subprocess.run([sys.executable, "-m", "vitkit", "--help"], capture_output=True, text=True, check=True).stdout
    for verb in verbs():
        assert verb in out


def test_a_closed_pipe_ends_quietly():
    """`vitkit models | head -1`: the reader gone before the table is written, no "Broken pipe" error, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_convert_round_trip_and_report(tmp_path, capsys):
    import torch

    import vitkit

    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8, num_classes=3)
    src = vitkit.save_model(model, tmp_path / "src")
    assert main(["convert", str(src), str(tmp_path / "m.npz"), "--to", "npz", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["to"] == "npz" and report["report"]["format"] == "vitkit"
    assert main(["convert", str(tmp_path / "m.npz"), str(tmp_path / "big"), "--image-size", "64", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "(1, 17, 32) -> (1, 65, 32)" in out and "head replaced: 3 -> 5" in out
    big = vitkit.load_model(tmp_path / "big")
    assert big.config.image_size == 64 and big.config.num_classes == 5
    assert torch.equal(big.cls_token, model.cls_token)


def test_convert_errors_exit_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.npz"), str(tmp_path / "x")]) == 2
    assert "nope.npz: no such file" in capsys.readouterr().err
    assert main(["convert", str(tmp_path), str(tmp_path / "x"), "--image-size", "big"]) == 2
    assert "--image-size 'big'" in capsys.readouterr().err


def test_verbs_share_one_spelling_and_keep_the_old_ones(tmp_path, capsys):
    """--out for every output and --resolution for every size; `convert SRC DST`, `export SRC OUT` and
    `convert --image-size` still work (hidden from --help)."""
    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
    src = vitkit.save_model(model, tmp_path / "m")
    assert main(["convert", str(src), "--out", str(tmp_path / "a"), "--resolution", "32"]) == 0
    assert main(["convert", str(src), str(tmp_path / "b"), "--image-size", "32"]) == 0
    for name in ("a", "b"):
        assert vitkit.load_model(tmp_path / name).config.image_size == 32
    assert main(["convert", str(src), str(tmp_path / "c"), "--out", str(tmp_path / "d")]) == 2
    assert "two outputs given" in capsys.readouterr().err
    assert main(["convert", str(src)]) == 2
    assert "give --out PATH" in capsys.readouterr().err
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert "--resolution" in buf.getvalue() and "--image-size" not in buf.getvalue() and "DST" not in buf.getvalue()


def test_train_and_finetune_take_force_and_json(tmp_path, capsys):
    tiny = ["--set", "model.width=32", "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=64",
            "--set", "train.steps=2", "--set", "train.batch_size=16", "--set", "train.progress=false"]
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny, "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)  # stdout is the JSON alone; the log went to stderr
    assert res["steps"] == 2 and "vitkit train: quickstart" in cap.err
    assert main(["train", "--out", str(run), *tiny]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert main(["train", "--out", str(run), *tiny, "--force"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert main(["train", "--out", str(mine), *tiny, "--force"]) == 2
    assert "not a vitkit run directory" in capsys.readouterr().err and (mine / "notes.txt").exists()
    (mine / "config.json").write_text('{"architectures": ["ViTModel"]}')  # a Hugging Face model folder is no run either
    assert main(["train", "--out", str(mine), *tiny, "--force"]) == 2
    assert "not a vitkit run directory" in capsys.readouterr().err and (mine / "notes.txt").exists()
    # --force never removes what the run reads: fine-tuning a run into itself is refused, the run kept
    sets_ = ["--set", "train.steps=2", "--set", "train.batch_size=16", "--set", "train.progress=false"]
    assert main(["finetune", str(run), "--data", "digits", "--out", str(run), *sets_, "--force"]) == 2
    assert "which this run reads" in capsys.readouterr().err and (run / "checkpoint").is_dir()
    ft = tmp_path / "ft"
    sets = ["--set", "train.steps=2", "--set", "train.batch_size=16", "--set", "train.progress=false"]
    assert main(["finetune", str(run), "--data", "digits", "--out", str(ft), *sets, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert main(["finetune", str(run), "--data", "digits", "--out", str(ft), *sets, "--force", "--data-dir", str(tmp_path)]) == 0
    assert json.loads((ft / "config.json").read_text())["data"]["data_dir"] == str(tmp_path)


def test_help_imports_no_torch():
    """`vitkit --help` and every verb's --help answer without importing torch (0.08 s instead of 2-4 s)."""
    code = ("import contextlib, io, sys\nfrom vitkit.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['eval', '--help'], ['convert', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_convert_ignore_unexpected_is_the_flag_the_error_names(tmp_path, capsys):
    import numpy as np

    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
    src = vitkit.save_model(model, tmp_path / "m.npz", format="npz")
    arrays = dict(np.load(src, allow_pickle=False))
    arrays["zzz_unknown"] = np.ones(2, np.float32)
    np.savez(tmp_path / "x.npz", **arrays)
    assert main(["convert", str(tmp_path / "x.npz"), "--out", str(tmp_path / "a")]) == 2
    assert "--ignore-unexpected" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "x.npz"), "--out", str(tmp_path / "a"), "--ignore-unexpected"]) == 0
    assert "zzz_unknown" in capsys.readouterr().out
