"""Device placement: the train -> validate path and every verb put their tensors where the model is.
Checked on any machine with FakeTensorMode's CUDA tensors (no GPU needed: shapes, dtypes and devices are
tracked and a cross-device op raises, as on a real GPU), plus real-GPU tests marked `cuda`, skipped without one."""
import json

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import vitkit
from vitkit import runtime
from vitkit.analysis.attention import collect_attention
from vitkit.cli import main
from vitkit.config import apply_overrides
from vitkit.evaluate.classify import evaluate_sums
from vitkit.evaluate.fewshot import extract_features
from vitkit.models.fast import InferenceModel, accelerate
from vitkit.recipes import get_recipe
from vitkit.train.loop import train

TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "model.patch_size=4",
        "data.image_size=8", "train.progress=false"]


def _model(k=5):
    return vitkit.create_model("ViT-Ti/16", num_classes=k, image_size=16, patch_size=4, width=32, depth=2, heads=2, mlp_dim=64)


def _batches(n=2):  # what the loaders yield: CPU tensors
    return [(torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))) for _ in range(n)]


def test_validation_counts_on_the_models_device():
    """The bug that ended GPU training at its first validation: a confusion matrix on the CPU, predictions on the GPU."""
    model = accelerate(_model())  # as the training loop validates it
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to("cuda")
        sums = evaluate_sums(model, _batches(), precision="fp32", num_classes=5)
    assert sums["confusion"].device.type == "cuda" and sums["confusion"].shape == (5, 5)
    assert all(v.device.type == "cuda" for v in sums.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_inference_model_runs_on_the_models_device(precision):
    model = _model()
    with FakeTensorMode(allow_non_fake_inputs=True):
        fast = InferenceModel(model.to("cuda"), precision)
        out = fast(torch.randn(2, 3, 16, 16).to("cuda"))
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert all(p.device.type == "cuda" for p in fast.parameters())


def test_prediction_runs_on_the_models_device_and_returns_to_the_cpu():
    from vitkit.evaluate.predict import probabilities

    model = _model()
    with FakeTensorMode(allow_non_fake_inputs=True):
        probs = probabilities(InferenceModel(model.to("cuda"), "fp32"), torch.randn(3, 3, 16, 16))
    assert probs.device.type == "cpu" and probs.shape == (3, 5)


def test_in_memory_batches_are_augmented_on_the_training_device():
    from vitkit.config import DataConfig
    from vitkit.data.datasets import ArrayData
    from vitkit.data.loader import StepBatches

    split = ArrayData(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8), torch.arange(40) % 5)
    cfg = DataConfig(image_size=8, crop="pad", crop_padding=1, flip=True)
    cpu = StepBatches(split, cfg, 1, 5, 16, seed=0)[3]
    # the meta device stands in for a GPU here (the augmentation's random draws are data-dependent CPU work,
    # which FakeTensorMode cannot run): any tensor left behind on the CPU would raise a device mismatch
    x, y = StepBatches(split, cfg, 1, 5, 16, seed=0, device="meta")[3]
    assert x.device.type == "meta" and y.device.type == "meta" and x.shape == cpu[0].shape == (16, 1, 8, 8)


def test_fewshot_features_come_back_to_the_cpu():
    model = _model()
    with FakeTensorMode(allow_non_fake_inputs=True):
        feats, labels = extract_features(model.to("cuda"), _batches())
    assert feats.device.type == "cpu" and labels.device.type == "cpu" and feats.shape == (8, 32)


def test_analysis_attention_comes_back_to_the_cpu():
    model = _model()
    with FakeTensorMode(allow_non_fake_inputs=True):
        attn = collect_attention(model.to("cuda"), [torch.randn(3, 3, 16, 16)])
    assert len(attn) == 2 and all(a.device.type == "cpu" and a.shape == (3, 2, 17, 17) for a in attn)


def test_device_names(monkeypatch):
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu") and runtime.resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device 'tpu': choose auto"):
        runtime.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is visible.*use --device cpu"):
        runtime.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.resolve_device("auto") == torch.device("cuda", 1)  # a torchrun rank takes its own GPU
    with pytest.raises(ValueError, match="2 CUDA device\\(s\\), cuda:0 to cuda:1"):
        runtime.resolve_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_a_missing_gpu_is_a_clear_error_before_anything_is_written(tmp_path, capsys):
    cfg = apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=2", "train.device=cuda"])
    with pytest.raises(ValueError, match="train.device cuda: no CUDA device is visible"):
        train(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert main(["eval", str(tmp_path), "--data", "digits", "--device", "cuda:0"]) == 2
    assert "--device cuda:0: no CUDA device is visible" in capsys.readouterr().err


def test_verbs_take_a_device(tmp_path, capsys):
    """--device reaches every verb that runs a model (here the CPU, which every machine has)."""
    from PIL import Image

    train(apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=3"]), out=tmp_path / "run")
    run = str(tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", run, "--data", "digits", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"
    assert main(["fewshot", run, "--data", "digits", "--shots", "1", "--seeds", "1", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"
    Image.new("L", (8, 8), 128).save(tmp_path / "x.png")
    assert main(["predict", run, str(tmp_path / "x.png"), "--device", "cpu", "--json"]) == 0
    capsys.readouterr()
    assert main(["analyze", run, "--data", "digits", "--num-images", "4", "--out", str(tmp_path / "an"), "--device", "cpu",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"


def test_out_of_memory_becomes_one_line_with_the_estimate(monkeypatch):
    from vitkit.train.loop import Batching, _oom_message

    cfg = apply_overrides(get_recipe("quickstart"), TINY)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: type("P", (), {"total_memory": 2**20})())
    model = _model(10)
    msg = _oom_message(cfg, model, torch.device("cuda", 0), Batching(64, 1, 64), RuntimeError("CUDA out of memory"))
    assert msg.startswith("cuda:0 out of memory (micro-batch 64 of 64 per process): about ")
    assert "GiB estimated for micro-batch 64" in msg and "train.micro_batch_size=" in msg


# Real GPUs -------------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_training_validates_checkpoints_and_evaluates(tmp_path):
    res = train(apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=30", "train.eval_every=10", "optim.lr=3e-3"]),
                out=tmp_path / "run")
    assert res["hardware"]["accelerators"] and res["test"]["n"] == 899 and res["test"]["top1"] > 0.2
    assert main(["eval", str(tmp_path / "run"), "--data", "digits", "--json"]) == 0


@pytest.mark.cuda
def test_cuda_fp16_with_a_scaler_and_the_flash_kernel(tmp_path):
    res = train(apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=20", "train.precision=fp16"]), out=tmp_path / "run")
    assert res["precision"] == "fp16"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, 4, 197, 64, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):  # raises if neither can run
        torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_out_of_memory_in_a_training_step_and_in_a_verb_is_one_line(tmp_path, monkeypatch, capsys):
    import vitkit.train.loop as loop

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "train_step", oom)
    with pytest.raises(MemoryError, match=r"cpu out of memory \(micro-batch 16 of 16 per process\): .*micro_batch_size"):
        train(apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=2", "train.batch_size=16"]), out=tmp_path / "run")
    import vitkit.evaluate.run as run

    monkeypatch.setattr(run, "eval_model", oom)
    assert main(["eval", str(tmp_path / "run"), "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert "vitkit eval: error: CUDA out of memory. Tried to allocate 2.00 GiB; try a smaller --batch-size" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("target", ["mean", "l2", "mean4x4"])
def test_masked_patch_prediction_runs_on_the_models_device(target):
    """Corruption draws, targets and the loss all live with the model (a CPU generator draws on the CPU and
    moves its numbers over)."""
    from vitkit.objectives.mpp import MaskedPatchPrediction, to_unit_range

    model = vitkit.create_model("ViT-Ti/16", num_classes=0, image_size=16, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64)
    mpp = MaskedPatchPrediction(32, 4, 3, target=target, rate=0.5, mask_frac=0.5, random_frac=0.5)
    x = torch.randn(2, 3, 16, 16)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model, mpp, xc = model.to("cuda"), mpp.to("cuda"), x.to("cuda")
        for gen in (None, torch.Generator().manual_seed(0)):
            loss, metrics = mpp(model, xc, None, generator=gen)
            assert loss.device.type == "cuda" and all(v.device.type == "cuda" for v in metrics.values())
        assert to_unit_range(xc, "google").device.type == "cuda"


def test_segmentation_loss_and_metrics_stay_on_the_models_device():
    """The segmentation objective's loss and pixel accuracy are computed where the model is (its masks moved there)."""
    from vitkit.heads.segmentation import SegmentationModel
    from vitkit.objectives.segmentation import Segmentation

    for head in ("linear", "progressive"):
        enc = vitkit.create_model("ViT-Ti/16", num_classes=0, image_size=16, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64)
        model = SegmentationModel(enc, 4, head, channels=8, norm="group")
        with FakeTensorMode(allow_non_fake_inputs=True):
            model = model.to("cuda")
            loss, metrics = Segmentation(4, 255)(model, torch.randn(2, 3, 16, 16).to("cuda"),
                                                 torch.randint(0, 4, (2, 16, 16)).to("cuda"))
            assert loss.device.type == "cuda" and metrics["acc"].device.type == "cuda"


def test_dense_batches_are_augmented_on_the_training_device():
    """Images and masks of an in-memory dense split are moved by the same crop and flip on the training device (the
    meta device for a GPU, as above): a mask left on the CPU would raise there."""
    from vitkit.config import DataConfig
    from vitkit.data.loader import StepBatches
    from vitkit.data.masks import DenseData

    split = DenseData(torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 4, (12, 8, 8), dtype=torch.uint8))
    cfg = DataConfig(name="canvas", image_size=8, crop="pad", crop_padding=1, flip=True)
    x, y = StepBatches(split, cfg, 1, 4, 4, seed=0, device="meta")[1]
    assert x.device.type == y.device.type == "meta" and x.shape == (4, 1, 8, 8) and y.shape == (4, 8, 8)
