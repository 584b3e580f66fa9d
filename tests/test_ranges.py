"""Issue 22: every number a user gives has a declared range, checked before anything is written; every error a user can
cause is one line naming the option or file (items 4-6: ranges and the command line's last line of defence, the
architecture of model.init, a one-class image folder)."""
import errno
import json
import struct
import zlib

import pytest
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.config import Config, apply_overrides, load_config, validate
from vitkit.data.datasets import DatasetError, load_image
from vitkit.recipes import get_recipe

TINY = ["model.width=32", "model.depth=1", "model.heads=2", "model.mlp_dim=64", "model.patch_size=4", "data.image_size=8",
        "train.progress=false", "train.precision=fp32"]


def _sets(*sets: str) -> list[str]:
    return [a for s in (*TINY, *sets) for a in ("--set", s)]


def _one_line(err: str, *words: str) -> str:
    """The last line of stderr, after checking it is the only error line and there is no traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("vitkit ") and ": error: " in line]
    assert errors == lines[-1:] and all(w in lines[-1] for w in words), err
    return lines[-1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny 2-class RGB ViT checkpoint (8 px)."""
    model = vitkit.create_model("ViT-Ti/16", num_classes=2, image_size=8, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64)
    return vitkit.save_model(model, tmp_path_factory.mktemp("m") / "tiny")


def _folder(root, classes=("cat", "dog"), per_class=3):
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * i, 100 * c, 200)).save(root / cls / f"{i}.png")
    return root


# --- item 4: the config's numbers --------------------------------------------------------------------------------

@pytest.mark.parametrize("setting,says", [
    ("train.steps=-5", "must be an integer >= 0"), ("train.epochs=0", "must be a number > 0"),
    ("train.epochs=-1", "must be a number > 0"), ("optim.clip_norm=nan", "must be a number >= 0"),
    ("data.val_fraction=-0.5", "in [0, 1)"), ("data.val_fraction=nan", "in [0, 1)"),
    ("optim.weight_decay=-1", ">= 0"), ("data.mixup=-1", ">= 0"), ("data.labels_per_class=-3", "an integer >= 0"),
    ("train.eval_every=-1", ">= 0"), ("train.ckpt_every=-1", ">= 0"), ("train.time_limit_s=nan", ">= 0"),
    ("model.depth=0", "an integer >= 1"), ("train.batch_size=1e8", "in [1, 1048576]"), ("train.batch_size=0", "in [1,"),
    ("train.batch_size=-4", "in [1,"), ("train.micro_batch_size=-1", "in [0,"), ("model.patch_size=0", ">= 1"),
    ("model.width=0", ">= 1"), ("model.heads=0", ">= 1"), ("model.mlp_dim=-3", ">= 1"), ("data.image_size=0", ">= 1"),
    ("optim.label_smoothing=2", "in [0, 1)"), ("train.log_every=0", ">= 1"), ("optim.lr=inf", "> 0"),
    ("model.head_bias_init=nan", "a finite number"), ("mpp.bits=9", "in [1, 8]"),
])
def test_a_number_out_of_its_range_is_refused_naming_the_key(setting, says):
    key, value = setting.split("=")
    with pytest.raises(ValueError, match=rf"^{key}={value if value != '1e8' else 100000000}: must be .*") as err:
        validate(apply_overrides(get_recipe("quickstart"), [setting]))
    assert says in str(err.value)


def test_values_that_decide_together():
    with pytest.raises(ValueError, match=r"train.micro_batch_size=48 does not divide train.batch_size=128"):
        validate(apply_overrides(Config(), ["train.micro_batch_size=48"]))
    with pytest.raises(ValueError, match=r"mpp.mask_frac=0.8 \+ mpp.random_frac=0.5 is over 1"):
        validate(apply_overrides(Config(), ["mpp.random_frac=0.5"]))
    with pytest.raises(ValueError, match=r"data.image_size=30.*not divisible by the patch size 16"):
        validate(apply_overrides(Config(), ["data.image_size=30"]))
    with pytest.raises(ValueError, match=r"width 30 is not divisible by heads 4"):
        validate(apply_overrides(Config(), ["model.width=30", "model.heads=4"]))
    assert validate(apply_overrides(Config(), ["train.micro_batch_size=64", "train.steps=0", "train.epochs=0.5"]))


def test_values_of_the_wrong_type_name_the_key():
    cfg = Config()
    cfg.train.steps = 10.0  # set in code: the loop would fail in range()
    with pytest.raises(ValueError, match=r"train.steps=10.0: must be an integer"):
        validate(cfg)
    for bad, says in (({"train": {"steps": "ten"}}, "expected int"), ({"train": {"steps": [1]}}, r"train.steps=\[1\]: expected int"),
                      ({"data": {"flip": 1}}, "data.flip=1: expected bool"), ({"data": {"name": 5}}, "data.name=5: expected str"),
                      ({"train": 5}, "train is a section of keys"), ({"train": {"steps": None}}, "train.steps=None: expected int")):
        with pytest.raises(ValueError, match=says):
            vitkit.config.config_from_dict(bad)
    # a JSON writer's 10.0 for an int, an int for a float: the value lands, typed
    cfg = vitkit.config.config_from_dict({"train": {"steps": 10.0, "epochs": 3}})
    assert cfg.train.steps == 10 and type(cfg.train.steps) is int and cfg.train.epochs == 3.0


def test_a_refused_setting_writes_nothing(tmp_path, capsys):
    for setting in ("train.steps=-5", "optim.weight_decay=-1", "model.heads=0", "data.image_size=0", "train.batch_size=0",
                    "optim.label_smoothing=2", "train.log_every=0", "train.micro_batch_size=-1", "model.patch_size=0"):
        assert main(["train", "--out", str(tmp_path / "run"), *_sets(setting)]) == 2, setting
        _one_line(capsys.readouterr().err, "vitkit train: error:", setting.split("=")[0])
        assert not (tmp_path / "run").exists(), setting


@pytest.mark.parametrize("argv,option", [
    (["predict", "M", "x.png", "--top-k", "0"], "--top-k"),
    (["fewshot", "M", "--data", "digits", "--seeds", "0"], "--seeds"),
    (["fewshot", "M", "--data", "digits", "--l2", "nan"], "--l2"),
    (["fewshot", "M", "--data", "digits", "--l2", "-1024"], "--l2"),
    (["export", "M", "--out", "m.onnx", "--opset", "-1"], "--opset"),
    (["analyze", "M", "--data", "digits", "--out", "a", "--num-images", "-5"], "--num-images"),
    (["analyze", "M", "--data", "digits", "--out", "a", "--head", "-1"], "--head"),
    (["convert", "M", "--out", "c", "--num-classes", "-3"], "--num-classes"),
    (["finetune", "M", "--data", "digits", "--resolution", "0"], "--resolution"),
    (["eval", "M", "--data", "digits", "--resolution", "-16"], "--resolution"),
    (["eval", "M", "--data", "digits", "--batch-size", "0"], "--batch-size"),
    (["fewshot", "M", "--data", "digits", "--resolution", "0"], "--resolution"),
    (["export", "M", "--out", "m.onnx", "--resolution", "0"], "--resolution"),
])
def test_an_option_out_of_its_range_is_a_usage_error_naming_it(argv, option, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}: must be" in line, line


@pytest.mark.parametrize("argv,says", [
    (["fewshot", "M", "--data", "digits", "--shots", "0"], "--shots '0': give comma-separated values, each an integer >= 1"),
    (["fewshot", "M", "--data", "digits", "--shots", "1,-1"], "--shots '1,-1'"),
    (["fewshot", "M", "--data", "digits", "--shots", ","], "--shots ','"),
    (["finetune", "M", "--data", "digits", "--lr-sweep", "0.01,-1"], "--lr-sweep '0.01,-1': give comma-separated values, "
                                                                     "each a number > 0"),
    (["finetune", "M", "--data", "digits", "--lr-sweep", "nan"], "--lr-sweep 'nan'"),
])
def test_a_list_option_out_of_range_is_the_verbs_one_line_error(argv, says, capsys):
    assert main(argv) == 2
    _one_line(capsys.readouterr().err, says)


@pytest.mark.parametrize("spelling", ["--resolution", "--image-size"])
@pytest.mark.parametrize("size", ["0", "-16", "32x0"])
def test_convert_resolution_out_of_range(spelling, size, model_dir, tmp_path, capsys):
    assert main(["convert", str(model_dir), "--out", str(tmp_path / "c"), spelling, size]) == 2
    _one_line(capsys.readouterr().err, f"'{size}'", "integer >= 1")
    assert not (tmp_path / "c").exists()


def test_the_python_functions_check_their_arguments(model_dir, tmp_path):
    from vitkit.analysis.report import analyze
    from vitkit.evaluate.fewshot import fewshot_eval
    from vitkit.evaluate.predict import predict
    from vitkit.evaluate.run import eval_model, fewshot_model

    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    with pytest.raises(ValueError, match=r"top_k=0: must be an integer >= 1"):
        predict(model_dir, [img], top_k=0)
    for kw, says in ((dict(shots=[0]), "shots=0"), (dict(shots=[]), "shots=\\[\\]"), (dict(shots=[1], seeds=0), "seeds=0"),
                     (dict(shots=[1], l2=float("nan")), "l2=nan"), (dict(shots=[1], l2=-1024.0), "l2=-1024:")):
        with pytest.raises(ValueError, match=says):
            fewshot_model(model_dir, "digits", **kw)
        with pytest.raises(ValueError, match=says):
            fewshot_eval(*_feats(), **kw)
    with pytest.raises(ValueError, match=r"batch_size=0"):
        eval_model(model_dir, "digits", batch_size=0)
    with pytest.raises(ValueError, match=r"resolution=-16"):
        eval_model(model_dir, "digits", resolution=-16)
    for kw, says in ((dict(num_images=-5), "num_images=-5"), (dict(head=-1), "head=-1")):
        with pytest.raises(ValueError, match=says):
            analyze(str(model_dir), tmp_path / "a", data="digits", **kw)
    assert not (tmp_path / "a").exists()


def _feats():
    import torch

    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    return x, y, x, y


@pytest.fixture
def onnx_installed():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")


@pytest.mark.parametrize("opset", [999, 24, 16])
def test_export_refuses_an_opset_the_exporter_cannot_write_and_writes_nothing(opset, onnx_installed, model_dir, tmp_path,
                                                                                 capsys):
    from vitkit.export import opsets

    out = tmp_path / "m.onnx"
    assert main(["export", str(model_dir), "--out", str(out), "--opset", str(opset)]) == 2
    line = _one_line(capsys.readouterr().err, f"--opset {opset}", "writes ONNX opsets 17 to")
    assert not out.exists() and not list(tmp_path.iterdir()), line
    assert 17 in opsets() and 18 in opsets() and 999 not in opsets()


# --- item 4: the command line's last line of defence --------------------------------------------------------------

def test_a_config_file_that_is_no_config_is_one_line(tmp_path, capsys):
    cases = {"list.json": ("[1, 2]", "a config is a JSON object"), "text.json": ("steps: 5", "not valid JSON"),
             "types.json": ('{"train": {"steps": "ten"}}', "train.steps=ten: expected int"),
             "binary.json": (b"\xff\xfe\x00", "not valid JSON")}
    for name, (text, says) in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2, name
        _one_line(capsys.readouterr().err, str(path), says)
    assert main(["train", "--config", str(tmp_path / "nope.json")]) == 2
    _one_line(capsys.readouterr().err, "nope.json: no such config file")
    assert main(["train", "--config", str(tmp_path)]) == 2
    _one_line(capsys.readouterr().err, "a directory, not a config file")
    with pytest.raises(ValueError, match=r"list.json: a config is a JSON object"):
        load_config(tmp_path / "list.json")
    assert not (tmp_path / "run").exists()


def test_a_hugging_face_config_with_strings_for_numbers_names_the_key(tmp_path):
    from vitkit.convert.hf import config_from_hf

    for key, value in (("hidden_size", "768"), ("num_attention_heads", None), ("layer_norm_eps", "1e-12"),
                       ("qkv_bias", "true"), ("image_size", [224, "x"]), ("hidden_dropout_prob", "0.1")):
        with pytest.raises(vitkit.CheckpointError, match=rf"^HUB: config.json {key}=.*: must be"):
            config_from_hf({"model_type": "vit", key: value}, "HUB")
    with pytest.raises(vitkit.CheckpointError, match=r"id2label=\['a'\]"):
        config_from_hf({"id2label": ["a"]}, "HUB")
    with pytest.raises(vitkit.CheckpointError, match=r"holds a JSON list"):
        config_from_hf([], "HUB")
    with pytest.raises(vitkit.CheckpointError, match=r"width 768 is not divisible by heads 5"):
        config_from_hf({"num_attention_heads": 5}, "HUB")
    with pytest.raises(vitkit.CheckpointError, match=r"HUB: .*dropout=2.0 is a probability in \[0, 1\)"):
        config_from_hf({"hidden_dropout_prob": 2.0}, "HUB")
    # a whole checkpoint directory through the command line
    model = vitkit.create_model("ViT-Ti/16", num_classes=2, image_size=8, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64)
    hf = vitkit.save_model(model, tmp_path / "hf", format="hf")
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "hidden_size": "32"}))
    with pytest.raises(vitkit.CheckpointError, match=r"hf: config.json hidden_size='32': must be an integer >= 1"):
        vitkit.load(hf)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height gray pixels (PIL reads the size from the header, at open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30000, 10000])  # over twice PIL's limit (its error), over the limit (its warning)
def test_a_decompression_bomb_is_refused_by_name(side, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(side, side))
    with pytest.raises(DatasetError, match=rf"bomb.png: refused as a possible decompression bomb .*{side * side} pixels"):
        load_image(bomb, 3, 8)


def test_an_eval_over_a_folder_with_a_bomb_is_one_line(model_dir, tmp_path, capsys):
    data = _folder(tmp_path / "data")
    (data / "cat" / "bomb.png").write_bytes(_png_header(30000, 30000))
    assert main(["eval", str(model_dir), "--data", f"folder:{data}", "--engine", "torch"]) == 2
    _one_line(capsys.readouterr().err, "vitkit eval: error:", "bomb.png: refused as a possible decompression bomb")


def test_a_corrupt_image_read_by_data_workers_is_one_line_naming_it(tmp_path, capsys):
    data = _folder(tmp_path / "data", per_class=4)
    (data / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = ["train", "--out", str(tmp_path / "run"),
            *_sets(f"data.name=folder:{data}", "data.in_memory=false", "data.workers=2", "train.steps=4", "train.batch_size=8",
                   "data.val_fraction=0")]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, "vitkit train: error:", "broken.png: cannot read this image")


def test_out_naming_an_existing_file(tmp_path, model_dir, capsys):
    file = tmp_path / "file"
    file.write_text("mine")
    for argv in (["train", "--out", str(file)], ["analyze", str(model_dir), "--data", "digits", "--out", str(file)],
                 ["finetune", str(model_dir), "--data", "digits", "--out", str(file)]):
        with pytest.raises(SystemExit):
            main(argv)
        assert f"argument --out: {file} is a file, not a directory" in capsys.readouterr().err
    assert file.read_text() == "mine"
    with pytest.raises(SystemExit):
        main(["train", "--out", "x" * 300])
    assert "argument --out: xxx" in capsys.readouterr().err


@pytest.mark.parametrize("code,hint", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "a read-only file system"),
                                       (errno.EACCES, "not allowed to write or read there")])
def test_the_system_refusing_a_write_is_one_line(code, hint, tmp_path, monkeypatch, capsys):
    import os

    from vitkit.rundir import RunDir

    def refuse(self, cfg):
        raise OSError(code, os.strerror(code), str(self.config))

    monkeypatch.setattr(RunDir, "write_config", refuse)  # root passes any chmod: the system's answer, simulated
    assert main(["train", "--out", str(tmp_path / "run"), *_sets("train.steps=1")]) == 2
    _one_line(capsys.readouterr().err, "vitkit train: error:", "run/config.json", os.strerror(code), hint)


def test_a_full_disk_inside_a_library_error_is_one_line(tmp_path, monkeypatch, capsys):
    """safetensors' Rust writer wraps the system's error in its own type (SafetensorError, no OSError)."""
    from vitkit.rundir import RunDir

    class SafetensorError(Exception):
        pass

    def refuse(self, cfg):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(RunDir, "write_config", refuse)
    assert main(["train", "--out", str(tmp_path / "run"), *_sets("train.steps=1")]) == 2
    _one_line(capsys.readouterr().err, "vitkit train: error: No space left on device (the disk is full", "os error 28")


def test_a_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    import vitkit.recipes

    def broken(name):
        return {}["no such key"]

    monkeypatch.setattr(vitkit.recipes, "get_recipe", broken)
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert f"vitkit train: internal error (KeyError) in vitkit {vitkit.__version__}: this is a bug" in err.strip().splitlines()[-1]


def test_vitkit_errors_of_any_type_are_one_line(monkeypatch, capsys):
    import vitkit.recipes
    from vitkit.errors import VitkitError

    class Diverged(VitkitError, RuntimeError):
        pass

    def diverge(name):
        raise Diverged("the loss became NaN at step 7;\nlower optim.lr")

    monkeypatch.setattr(vitkit.recipes, "get_recipe", diverge)
    assert main(["train"]) == 2
    assert _one_line(capsys.readouterr().err) == "vitkit train: error: the loss became NaN at step 7; lower optim.lr"


# --- item 5: model.init takes the architecture from the checkpoint --------------------------------------------------

def test_architecture_overrides_with_init_are_refused(model_dir, tmp_path, capsys):
    init = [f"model.init={model_dir}", "train.steps=1", "train.progress=false"]
    for extra in (["model.name=ViT-B/16"], ["model.width=64"], ["model.pool=gap"], ["model.qkv_bias=false"],
                  ["model.depth=2", "model.init=none", f"model.init={model_dir}"]):
        argv = ["train", "--out", str(tmp_path / "run"), *[a for s in init + extra for a in ("--set", s)]]
        assert main(argv) == 2, extra
        _one_line(capsys.readouterr().err, extra[0].split("=")[0], "the architecture comes from the checkpoint")
        assert not (tmp_path / "run").exists()
    assert main(["finetune", str(model_dir), "--data", "digits", "--set", "model.name=ViT-L/16"]) == 2
    _one_line(capsys.readouterr().err, "model.name='ViT-L/16' with model.init")
    assert main(["finetune", str(model_dir), "--data", "digits", "--set", "model.heads=4"]) == 2
    _one_line(capsys.readouterr().err, "model.heads=4 with model.init")
    # what applies on top of a checkpoint, and a record (a finetune run's config.json) of model.name beside model.init
    cfg = validate(apply_overrides(get_recipe("quickstart"), [f"model.init={model_dir}", "model.dropout=0.1", "model.drop_path=0.1"]))
    assert cfg.model.dropout == 0.1
    record = apply_overrides(Config(), [f"model.init={model_dir}"]).to_dict()
    record["model"]["name"] = "ViT-Ti/16, modified (patch_size=4)"
    assert validate(vitkit.config.config_from_dict(record)).model.name == "ViT-Ti/16, modified (patch_size=4)"


# --- item 6: a classifier needs two classes ---------------------------------------------------------------------------

def test_training_on_one_class_folder_is_refused_naming_it(tmp_path, capsys):
    data = _folder(tmp_path / "data", classes=("cat",))
    assert main(["train", "--out", str(tmp_path / "run"), *_sets(f"data.name=folder:{data}")]) == 2
    _one_line(capsys.readouterr().err, f"{data}: one class folder ('cat'); a classifier needs two classes at least")
    assert not (tmp_path / "run").exists()
    split = _folder(tmp_path / "split" / "train", classes=("cat",)).parent
    _folder(split / "test", classes=("cat", "dog"))
    with pytest.raises(DatasetError, match=r"split/train: one class folder"):
        validate(apply_overrides(Config(), [f"data.name=folder:{split}"]))
    # self-supervised pre-training uses no labels: one folder of images is fine
    validate(apply_overrides(get_recipe("mpp-fashion-mnist"), [f"data.name=folder:{data}"]))


def test_a_one_class_folder_evaluates_against_a_one_class_model_but_not_few_shot(tmp_path, capsys):
    from vitkit.evaluate.run import eval_model, fewshot_model

    data = _folder(tmp_path / "data", classes=("cat",), per_class=5)
    one = vitkit.create_model("ViT-Ti/16", num_classes=1, image_size=8, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64)
    src = vitkit.save_model(one, tmp_path / "one", class_names=["cat"])
    res = eval_model(src, f"folder:{data}", engine="torch")
    assert res["n"] == 1 and res["top1"] == 1.0  # a measurement, if a trivial one: the folder's 20% test split
    with pytest.raises(DatasetError, match=r"one class \('cat'\); few-shot classification needs two classes"):
        fewshot_model(src, f"folder:{data}", [1], engine="torch")
