"""Inference engines (vitkit.engines): the same answers whichever engine computes, auto's choice, exports for
OpenVINO, and the bad inputs of engines and exports. The reference is PyTorch fp32 eager on the same weights."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit import engines, runtime
from vitkit.cli import main
from vitkit.data.datasets import DEBIAN_DIRS
from vitkit.evaluate.run import eval_model, fewshot_model

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
HAVE = [e for e in ("onnxruntime", "openvino") if engines.installed(e)]
NATIVE_BF16 = runtime.cpu_info().native_bf16 and engines.openvino_bf16()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own verdicts and exports (the suite's kernel verdicts stay shared: copied in)."""
    shared = runtime.cache_dir() / "kernels.json"
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "cache"))
    if shared.exists():
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "kernels.json").write_text(shared.read_text())


def fitted_model(data: str, out: Path) -> Path:
    """A small ViT whose head is fitted by least squares on its random features of `data`'s training split: a
    classifier with a real, data-dependent accuracy (fashion-mnist 0.67) in seconds, saved at `out`."""
    from vitkit.config import DataConfig
    from vitkit.data.datasets import load_dataset
    from vitkit.data.loader import eval_stream
    from vitkit.evaluate.fewshot import ridge_solve

    torch.manual_seed(0)
    size = 28 if data == "fashion-mnist" else 8
    model = vitkit.create_model("ViT-Ti/16", num_classes=10, image_size=size, patch_size=4 if size == 8 else 7,
                                in_chans=1, width=128, depth=2, heads=2, mlp_dim=256, pool="gap").eval()
    cfg = DataConfig(name=data, image_size=size, normalize="google", val_fraction=0.1)
    ds = load_dataset(cfg)
    feats, labels = [], []
    with torch.no_grad():
        for x, y in eval_stream(ds.train, cfg, 1, 1024):
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True))
            labels.append(y)
    f, y = torch.cat(feats)[:20000].double(), torch.cat(labels)[:20000]
    mean, std = f.mean(0), f.std(0) + 1e-5
    w, _ = ridge_solve(torch.cat([(f - mean) / std, torch.ones(len(f), 1, dtype=f.dtype)], 1), torch.eye(10)[y] * 2 - 1, 1.0)
    with torch.no_grad():  # the whitening folded into the head: logits = ((f - mean) / std) W[:-1] + W[-1]
        model.head.weight.copy_((w[:-1] / std[:, None]).T.float())
        model.head.bias.copy_((w[-1] - (mean / std) @ w[:-1]).float())
    vitkit.save_model(model, out, class_names=ds.classes)
    return out


def _datasets():
    yield "digits"
    have = Path(DEBIAN_DIRS["fashion-mnist"]).is_dir()
    yield pytest.param("fashion-mnist", marks=pytest.mark.skipif(not have, reason="Fashion-MNIST is not installed "
                                                                 "(apt-get install dataset-fashion-mnist)"))


@pytest.fixture(scope="module", params=list(_datasets()))
def fitted(request, tmp_path_factory):
    """(dataset, model, PyTorch fp32's evaluation of it: the reference every engine is held to, computed once)."""
    src = fitted_model(request.param, tmp_path_factory.mktemp("fit") / "model")
    return request.param, src, eval_model(src, request.param, engine="torch", precision="fp32")


CASES = [("onnxruntime", "fp32", 0.001), ("openvino", "fp32", 0.001), ("torch", "bf16", 0.002), ("openvino", "bf16", 0.002)]


@pytest.mark.parametrize("engine, precision, tol", CASES, ids=[f"{e}-{p}" for e, p, _ in CASES])
def test_every_engine_keeps_top1_of_pytorch_fp32(fitted, engine, precision, tol):
    """The issue's bar: top-1 on Fashion-MNIST's 10,000 test images within 0.1 point of PyTorch fp32 (bf16: 0.2).
    On the 899 digits a point is 9 images: fp32 must agree exactly there too, bf16 within 0.5 point (4 images)."""
    data, src, want = fitted
    if data == "digits" and precision == "bf16":
        tol = 0.005
    if engine != "torch" and engine not in HAVE:
        pytest.skip(f"{engine} is not installed")
    if precision == "bf16" and not NATIVE_BF16:
        pytest.skip("bf16 is emulated on this CPU (slow, and OpenVINO has no bf16 here)")
    got = eval_model(src, data, engine=engine, precision=precision)
    assert want["top1"] > (0.6 if data == "fashion-mnist" else 0.3)  # a classifier, not chance (0.1)
    assert got["engine"]["engine"] == engine and got["precision"] == precision
    assert abs(got["top1"] - want["top1"]) <= tol, (got["top1"], want["top1"])
    if precision == "fp32":
        assert got["confusion"] == want["confusion"] and got["loss"] == pytest.approx(want["loss"], rel=1e-4)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    return fitted_model("digits", tmp_path_factory.mktemp("digits") / "model")


def _images(tmp_path: Path, n: int = 4) -> list[str]:
    from vitkit.data.datasets import load_dataset
    from vitkit.config import DataConfig

    test = load_dataset(DataConfig(name="digits", val_fraction=0.1)).test
    paths = []
    for i in range(n):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray(np.asarray(test.images[i]).squeeze().astype(np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _predict(capsys, *args) -> list[dict]:
    assert main(["predict", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("engine", ["auto", *HAVE])
def test_predict_gives_the_answers_of_torch(digits_model, tmp_path, capsys, engine):
    imgs = _images(tmp_path)
    want = _predict(capsys, str(digits_model), *imgs, "--engine", "torch", "--precision", "fp32")
    got = _predict(capsys, str(digits_model), *imgs, "--engine", engine, "--precision", "fp32")
    for w, g in zip(want, got):
        assert g["image"] == w["image"] and [t["class"] for t in g["top"]] == [t["class"] for t in w["top"]]
        assert [t["prob"] for t in g["top"]] == pytest.approx([t["prob"] for t in w["top"]], abs=1e-5)


def test_default_eval_and_fewshot_match_torch_with_the_engine_recorded(digits_model, capsys):
    want = eval_model(digits_model, "digits", engine="torch")
    assert main(["eval", str(digits_model), "--data", "digits", "--json"]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    assert got["top1"] == want["top1"] and set(got) == set(want) and "engine: torch" in captured.err
    if "onnxruntime" in HAVE:  # few-shot features through an engine: the same probe accuracies as torch's
        a = fewshot_model(digits_model, "digits", [1, 5], seeds=2, engine="torch", precision="fp32")
        b = fewshot_model(digits_model, "digits", [1, 5], seeds=2, engine="onnxruntime", precision="fp32")
        assert b["engine"]["engine"] == "onnxruntime"
        for n in ("1", "5"):
            assert b["shots"][n]["mean"] == pytest.approx(a["shots"][n]["mean"], abs=2e-3)


@pytest.mark.skipif(len(HAVE) < 1, reason="no engine installed")
def test_auto_measures_once_caches_and_takes_the_fastest(digits_model, monkeypatch):
    calls = []
    real = engines.measure

    def fake(built, x, **kw):  # the real measurement runs (every engine works), then the last candidate "wins"
        speeds = real(built, x, seconds=0.01, rounds=1)
        calls.append(sorted(built))
        return {k: (1e6 if k == list(built)[-1] else v) for k, v in speeds.items()}

    monkeypatch.setattr(engines, "measure", fake)
    first = engines.load_engine(digits_model, precision="fp32", images=5000, batch_size=256)
    assert calls == [sorted(["torch", *HAVE])] and first.engine == HAVE[-1] and first.choice["cached"] is False
    verdicts = json.loads((runtime.cache_dir() / engines.VERDICTS).read_text())
    (entry,) = verdicts.values()
    assert entry["engine"] == HAVE[-1] and set(entry["measured_img_per_s"]) == {"torch", *HAVE}
    again = engines.load_engine(digits_model, precision="fp32", images=5000, batch_size=256)
    assert len(calls) == 1 and again.engine == HAVE[-1] and again.choice["cached"] is True
    other_batch = engines.load_engine(digits_model, precision="fp32", images=5000, batch_size=32)
    assert len(calls) == 2 and other_batch.engine == HAVE[-1]  # the verdict is per batch size
    # the default engine of `vitkit eval` (batch 256): the cached verdict, its export ready -> the same answers as torch
    res = eval_model(digits_model, "digits", precision="fp32")
    ref = eval_model(digits_model, "digits", engine="torch", precision="fp32")
    assert res["engine"]["engine"] == HAVE[-1] and res["engine"]["auto"]["cached"] and res["confusion"] == ref["confusion"]


def test_auto_spends_nothing_on_a_small_job(digits_model, monkeypatch):
    monkeypatch.setattr(engines, "measure", lambda *a, **k: pytest.fail("a small job must not measure"))
    eng = engines.load_engine(digits_model, precision="fp32", images=10, batch_size=10)
    assert eng.engine == "torch" and "too few" in eng.choice["why"]
    assert not (runtime.cache_dir() / "exports").exists() and not (runtime.cache_dir() / engines.VERDICTS).exists()


def test_measure_ranks_a_slower_engine_lower():
    import time

    class Sleeper(torch.nn.Module):
        def __init__(self, s):
            super().__init__()
            self.s = s

        def forward(self, x):
            time.sleep(self.s)
            return x

    speeds = engines.measure({"fast": Sleeper(0.002), "slow": Sleeper(0.02)}, torch.zeros(8, 1), seconds=0.05, rounds=3)
    assert speeds["slow"] <= 8 / 0.02 and speeds["fast"] <= 8 / 0.002 and speeds["fast"] > 3 * speeds["slow"]


@pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime is not installed")
def test_a_damaged_cached_export_is_rebuilt(digits_model, tmp_path):
    x = torch.randn(3, 1, 8, 8)
    want = engines.load_engine(digits_model, "torch", "fp32")(x)
    engines.load_engine(digits_model, "onnxruntime")
    (cached,) = (runtime.cache_dir() / "exports").glob("*.onnx")
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated (a full disk, a killed copy)
    got = engines.load_engine(digits_model, "onnxruntime")(x)
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.skipif("openvino" not in HAVE, reason="openvino is not installed")
def test_openvino_export_round_trip(digits_model, tmp_path, capsys):
    out = tmp_path / "served"
    assert main(["export", str(digits_model), str(out), "--to", "openvino", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checked_with"] == "openvino" and res["max_abs_diff"] < 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["openvino_model.bin", "openvino_model.xml"]
    assert [p.name for p in tmp_path.iterdir()] == ["served"] or "cache" in [p.name for p in tmp_path.iterdir()]
    imgs = _images(tmp_path, 3)
    want = _predict(capsys, str(digits_model), *imgs, "--engine", "torch", "--precision", "fp32")
    got = _predict(capsys, str(out), *imgs, "--precision", "fp32")  # classes and preprocessing travel inside
    assert [g["top"][0]["class"] for g in got] == [w["top"][0]["class"] for w in want]
    assert got[0]["top"][0]["prob"] == pytest.approx(want[0]["top"][0]["prob"], abs=1e-5)
    assert main(["export", str(digits_model), str(out), "--to", "openvino"]) == 2  # exists: refused
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(digits_model), str(tmp_path / "x.onnx"), "--to", "openvino"]) == 2
    assert "directory" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime is not installed")
def test_onnx_export_is_served_with_its_classes_and_size(digits_model, tmp_path, capsys):
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(digits_model), str(onnx_path)]) == 0
    capsys.readouterr()
    imgs = _images(tmp_path, 2)
    want = _predict(capsys, str(digits_model), *imgs, "--engine", "torch", "--precision", "fp32")
    got = _predict(capsys, str(onnx_path), *imgs, "--engine", "onnxruntime")
    assert [g["top"][0]["class"] for g in got] == [w["top"][0]["class"] for w in want]
    assert main(["predict", str(onnx_path), imgs[0], "--engine", "torch"]) == 2
    assert "cannot run" in capsys.readouterr().err
    assert main(["eval", str(onnx_path), "--data", "digits", "--resolution", "16"]) == 2
    assert "exported at 8x8" in capsys.readouterr().err
    assert main(["predict", str(onnx_path), imgs[0], "--engine", "onnxruntime", "--precision", "bf16"]) == 2
    assert "fp32 only" in capsys.readouterr().err


@pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime is not installed")
def test_unreadable_and_foreign_exports_are_refused_by_name(tmp_path, capsys):
    img = _images(tmp_path, 1)[0]
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not a graph" * 100)
    assert main(["predict", str(tmp_path / "garbage.onnx"), img, "--engine", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "garbage.onnx: ONNX Runtime cannot read this export" in err and "Traceback" not in err
    import onnx
    from onnx import TensorProto, helper

    plain = tmp_path / "plain.onnx"  # an ONNX file vitkit did not write: no preprocessing, no class names
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(plain))
    assert main(["predict", str(plain), img, "--engine", "onnxruntime"]) == 2
    assert "not a vitkit export" in capsys.readouterr().err
    if "openvino" in HAVE:
        bad = tmp_path / "ov"
        bad.mkdir()
        (bad / "openvino_model.xml").write_text("<net>half</ne")
        assert main(["predict", str(bad), img]) == 2
        assert "OpenVINO cannot read this export" in capsys.readouterr().err


def test_a_missing_engine_is_one_line_naming_the_extra(digits_model, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "openvino" else real(name, *a, **k))
    img = _images(tmp_path, 1)[0]
    assert main(["predict", str(digits_model), img, "--engine", "openvino"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'vitkit[openvino]'" in err and len(err.splitlines()) == 1


@pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime is not installed")
def test_an_unfaithful_export_is_refused_and_nothing_is_left(digits_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engines.OnnxRuntimeEngine, "forward", lambda self, x: torch.zeros(len(x), 10))
    assert main(["export", str(digits_model), str(tmp_path / "m.onnx")]) == 2
    assert "not faithful" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == []
    with pytest.raises(ValueError, match="not faithful"):
        engines.load_engine(digits_model, "onnxruntime")
    assert not list((runtime.cache_dir() / "exports").glob("*.onnx"))  # the cache keeps no bad export either


def test_engine_options_are_checked():
    with pytest.raises(ValueError, match="--engine 'tensorrt'"):
        engines.load_engine("whatever", "tensorrt")
    with pytest.raises(ValueError, match="fp32 only"):
        engines.engine_precision("onnxruntime", "bf16")
    assert engines.engine_precision("onnxruntime", "auto") == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        engines.engine_precision("openvino", "fp16")


def test_engine_choice_on_a_gpu_is_torch(digits_model, monkeypatch):
    """auto never sends a GPU model to a CPU engine (the model's device decides)."""
    model = vitkit.load_model(digits_model)
    monkeypatch.setattr(runtime, "model_device", lambda m: torch.device("cuda", 0))
    monkeypatch.setattr(engines, "serve", lambda model, name, precision, compile=False, card=None: name)
    monkeypatch.setattr(engines, "_chosen", lambda eng, how: (eng, how))
    monkeypatch.setattr(engines, "engine_precision", lambda e, p, d="cpu": "bf16")
    name, how = engines.choose(model, images=10**6)
    assert name == "torch" and "GPU" in how["why"]


def test_the_export_cache_keeps_the_most_recently_used(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    for i in range(engines.KEEP_EXPORTS + 3):
        p = folder / f"{i:02d}.onnx"
        p.write_text("x")
        p.with_suffix(".json").write_text("{}")
        os.utime(p, (1000 + i, 1000 + i))
    os.utime(folder / "00.onnx", (5000, 5000))  # the oldest written, but used last
    engines._prune(folder)
    kept = sorted(p.stem for p in folder.glob("*.onnx"))
    assert kept == ["00"] + [f"{i:02d}" for i in range(4, engines.KEEP_EXPORTS + 3)]
    assert sorted(p.stem for p in folder.glob("*.json")) == kept


@pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime is not installed")
def test_auto_survives_an_engine_that_cannot_serve_the_model(digits_model, monkeypatch):
    """An optional engine whose export or check fails drops out of auto's race; it is not the user's error."""
    def broken(model, engine):
        raise RuntimeError(f"{engine} export failed")

    monkeypatch.setattr(engines, "cached_export", broken)
    eng = engines.load_engine(digits_model, precision="fp32", images=5000, batch_size=64)
    assert eng.engine == "torch" and "failed" in eng.choice["why"]


@pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime is not installed")
def test_an_export_without_recorded_classes_reads_them_from_the_graph(digits_model, tmp_path, capsys):
    import onnx

    path = tmp_path / "old.onnx"
    assert main(["export", str(digits_model), str(path)]) == 0
    proto = onnx.load(str(path))
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == "vitkit"))
    meta.pop("num_classes"), meta.pop("class_names")  # as an older vitkit wrote it for a checkpoint without names
    del proto.metadata_props[:]
    proto.metadata_props.add(key="vitkit", value=json.dumps(meta))
    onnx.save(proto, str(path))
    for name in HAVE:
        assert engines.load_engine(path, name).num_classes == 10


def test_a_non_square_model_is_refused_by_dataset_evaluation_in_one_line(tmp_path):
    model = vitkit.create_model("ViT-Ti/16", num_classes=10, image_size=(8, 12), patch_size=4, in_chans=1, width=32, depth=1,
                                heads=2, mlp_dim=64)
    vitkit.save_model(model, tmp_path / "m")
    with pytest.raises(ValueError, match="this model takes 8x12 images; dataset evaluation"):
        eval_model(tmp_path / "m", "digits", engine="torch")


@pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime is not installed")
def test_serving_a_model_off_the_cpu_through_a_cpu_engine_is_refused(digits_model):
    model = vitkit.load_model(digits_model).to("meta")
    with pytest.raises(ValueError, match="runs on the CPU here"):
        engines.serve(model, "onnxruntime")


@pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime is not installed")
def test_on_a_gpu_machine_an_export_runs_on_the_cpu_by_default(digits_model, tmp_path, monkeypatch):
    """--device auto is the GPU where there is one; an export (a CPU engine) then takes the CPU, an explicit GPU is refused."""
    from vitkit.export import export_model

    export_model(digits_model, tmp_path / "m.onnx")
    real = runtime.resolve_device
    monkeypatch.setattr(runtime, "resolve_device", lambda spec="auto", option="--device": torch.device("cuda", 0)
                        if spec in ("auto", "cuda") else real(spec, option))
    assert engines.load_engine(tmp_path / "m.onnx", "onnxruntime").engine == "onnxruntime"
    with pytest.raises(ValueError, match="pass --device cpu"):
        engines.load_engine(tmp_path / "m.onnx", "onnxruntime", device="cuda")


@pytest.mark.parametrize("kind, ov_bf16, want", [("native-bf16", True, "bf16"), ("native-bf16", False, "fp32"),
                                                 ("avx512", True, "fp32"), ("avx2", False, "fp32")])
def test_precision_auto_per_cpu_kind(monkeypatch, kind, ov_bf16, want):
    """Every branch on any machine: VITKIT_CPU forces the kind, OpenVINO's bf16 capability is forced too. auto is
    bf16 only where the CPU does it natively and the engine runs it; an explicit bf16 the engine cannot run is refused."""
    monkeypatch.setenv("VITKIT_CPU", kind)
    monkeypatch.setattr(engines, "openvino_bf16", lambda: ov_bf16)
    monkeypatch.setattr(engines, "installed", lambda e: True)
    assert engines.engine_precision("openvino", "auto") == want
    assert engines.engine_precision("onnxruntime", "auto") == "fp32"
    torch_auto = engines.engine_precision("torch", "auto", "cpu")
    assert torch_auto == ("bf16" if kind == "native-bf16" else "fp32")
    assert engines.candidates(torch_auto) == (["torch", "openvino"] if torch_auto == "bf16" and ov_bf16 else
                                              ["torch"] if torch_auto == "bf16" else ["torch", "onnxruntime", "openvino"])
    if not ov_bf16:
        with pytest.raises(ValueError, match="no native bf16 for OpenVINO"):
            engines.engine_precision("openvino", "bf16")


def test_collection_stays_off_until_the_last_engine_is_done():
    import gc

    assert gc.isenabled()
    with engines._no_collection():
        with engines._no_collection():  # a second caller (another thread's engine)
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner one finishing does not turn it back on under the outer
    assert gc.isenabled()
