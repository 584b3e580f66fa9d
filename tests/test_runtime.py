"""What the hardware has (vitkit.runtime), precision "auto" (vitkit.train.precision), threads, `vitkit info`:
each kind of machine forced on whatever machine runs the suite."""
import json
import os
import subprocess
import sys

import pytest
import torch

from vitkit import runtime
from vitkit.cli import main
from vitkit.config import apply_overrides
from vitkit.recipes import RECIPES, get_recipe
from vitkit.train import precision
from vitkit.train.loop import train

TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64", "model.patch_size=4",
        "data.image_size=8", "train.progress=false"]

FLAGS = {  # /proc/cpuinfo flags of the three kinds of CPU this project has met
    "AMD EPYC Zen 4": {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"},
    "Intel Xeon (AVX-512, no BF16)": {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "AMD EPYC (AVX2)": {"avx2", "fma"},
    "Intel Sapphire Rapids": {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "amx_bf16", "amx_tile"},
}


@pytest.mark.parametrize("name,kind,native,onednn", [
    ("AMD EPYC Zen 4", "native-bf16", True, True), ("Intel Xeon (AVX-512, no BF16)", "avx512", False, True),
    ("AMD EPYC (AVX2)", "avx2", False, False), ("Intel Sapphire Rapids", "native-bf16", True, True)])
def test_cpu_kinds_from_flags(monkeypatch, name, kind, native, onednn):
    monkeypatch.delenv("VITKIT_CPU", raising=False)
    monkeypatch.setattr(runtime, "_probe_cpu", lambda: (name, "AVX512" if "avx512f" in FLAGS[name] else "AVX2",
                                                        tuple(f for f in runtime._FLAGS if f in FLAGS[name])))
    cpu = runtime.cpu_info()
    assert (cpu.kind, cpu.native_bf16, cpu.onednn_bf16, cpu.forced) == (kind, native, onednn, None)
    assert precision.resolve("auto", "cpu") == ("bf16" if native else "fp32")
    assert runtime.onednn_bf16_runs() == onednn


def test_forcing_the_kind_and_a_bad_value(monkeypatch):
    monkeypatch.setenv("VITKIT_CPU", "avx2")
    cpu = runtime.cpu_info()
    assert (cpu.kind, cpu.native_bf16, cpu.onednn_bf16, cpu.forced) == ("avx2", False, False, "avx2")
    assert not runtime.onednn_bf16_runs()  # forcing may take kernels away, never add ones the CPU lacks
    monkeypatch.setenv("VITKIT_CPU", "zen9")
    with pytest.raises(ValueError, match="VITKIT_CPU='zen9'.*native-bf16, avx512, avx2"):
        runtime.cpu_info()


def test_available_cores_honours_affinity_and_cgroup_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: None)
    assert runtime.available_cores() == 8
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: 2.5)  # docker --cpus=2.5
    assert runtime.available_cores() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    assert runtime.available_cores() == 1


def test_cgroup_v2_quota_anywhere_up_the_tree(monkeypatch, tmp_path):
    """systemd / SLURM put a job's quota on its own cgroup, below the root: the tightest one up the tree counts."""
    job, parent, root = tmp_path / "root/slurm/job", tmp_path / "root/slurm", tmp_path / "root"
    job.mkdir(parents=True)
    monkeypatch.setattr(runtime, "_cgroup_v2_dirs", lambda: [job, parent, root])
    (job / "cpu.max").write_text("max 100000\n")
    (parent / "cpu.max").write_text("150000 100000\n")
    assert runtime._cgroup_quota() == 1.5
    (root / "cpu.max").write_text("100000 100000\n")
    assert runtime._cgroup_quota() == 1.0
    for d in (parent, root):
        (d / "cpu.max").write_text("max 100000\n")
    assert runtime._cgroup_quota() is None
    monkeypatch.setattr(runtime, "_cgroup_v2_dirs", lambda: [tmp_path / "nowhere"])
    real = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: real(tmp_path / "v1" / real(p).name) if "cpu.cfs" in str(p) else real(p))
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1/cpu.cfs_quota_us").write_text("250000")
    (tmp_path / "v1/cpu.cfs_period_us").write_text("100000")
    assert runtime._cgroup_quota() == 2.5  # cgroup v1


@pytest.mark.parametrize("cc,want", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_precision_auto_on_cuda_by_compute_capability(monkeypatch, cc, want):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
    assert precision.resolve("auto", "cuda:0") == want
    assert precision.resolve("fp32", "cuda:0") == "fp32"


def test_precision_values(monkeypatch):
    assert precision.resolve("auto", "mps") == "fp32"
    with pytest.raises(ValueError, match="precision='fp8'.*auto, fp32, bf16, fp16"):
        precision.resolve("fp8")
    assert precision.grad_scaler("fp16", torch.device("cpu")) is not None
    assert precision.grad_scaler("bf16", torch.device("cpu")) is None
    with precision.autocast("bf16", "cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_emulated_bf16_warns_once_with_the_measured_slowdown(monkeypatch):
    monkeypatch.setenv("VITKIT_CPU", "avx512")
    monkeypatch.setattr(precision, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match=r"bf16 is treated as emulated \(VITKIT_CPU=avx512\).*x the time of an fp32 one"):
        assert precision.resolve("bf16", "cpu") == "bf16"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.resolve("bf16", "cpu")  # once per process
    assert precision.emulation_slowdown() > 0


def test_every_recipe_defaults_to_auto():
    for name in RECIPES:
        assert get_recipe(name).train.precision == "auto", name


@pytest.mark.parametrize("kind,want", [("avx2", "fp32"), ("native-bf16", "bf16")])
def test_a_run_records_the_precision_auto_resolved_to(tmp_path, monkeypatch, kind, want):
    monkeypatch.setenv("VITKIT_CPU", kind)
    cfg = apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=2", "train.batch_size=16"])
    res = train(cfg, out=tmp_path / "run")
    assert json.loads((tmp_path / "run/config.json").read_text())["train"]["precision"] == want
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["precision"] == want and res["precision"] == want
    assert metrics["hardware"]["cpu"]["kind"] == kind and metrics["hardware"]["chosen"]["precision_auto"] == want


def test_fp16_trains_with_a_gradient_scaler(tmp_path):
    cfg = apply_overrides(get_recipe("quickstart"), TINY + ["train.steps=30", "train.batch_size=32", "train.precision=fp16",
                                                            "optim.lr=3e-3", "train.log_every=10"])
    res = train(cfg, out=tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert lines[-1]["loss"] < lines[0]["loss"]  # it learns
    assert res["test"]["top1"] > 0.2  # chance is 0.1
    state = torch.load(tmp_path / "run/checkpoint/state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the scaler ran and is checkpointed for an exact resume


def test_configure_threads_env_fills_only_what_the_user_left_unset(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 3)
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_now = runtime.configure_threads_env(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"} and set_now == {"OMP_NUM_THREADS": "3"}
    off = {"VITKIT_THREAD_DEFAULTS": "0"}
    assert runtime.configure_threads_env(off) == {} and off == {"VITKIT_THREAD_DEFAULTS": "0"}


def test_vitkit_info_names_the_cpu_and_the_choices(monkeypatch, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert runtime.cpu_info().model in out and "precision 'auto' -> " + precision.resolve("auto") in out
    assert "oneDNN dense layers, fp32:" in out and "cores available" in out


def test_the_command_sets_openmp_variables_before_torch_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["VITKIT_CPU"] = "avx2"
    out = subprocess.run([sys.executable, "-m", "vitkit", "info", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["omp"]["OMP_NUM_THREADS"] == str(runtime.available_cores()) and info["omp"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert info["threads"] == runtime.available_cores()
    assert info["cpu"]["kind"] == "avx2" and info["chosen"]["precision_auto"] == "fp32"
    assert info["chosen"]["onednn_dense"]["bf16"]["on"] is False


def test_an_unknown_training_precision_names_the_key_before_anything_is_written(tmp_path):
    cfg = apply_overrides(get_recipe("quickstart"), TINY + ["train.precision=fp8"])
    with pytest.raises(ValueError, match="train.precision='fp8': choose one of auto, fp32, bf16, fp16"):
        train(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_real_cpu_without_native_bf16_names_itself_in_the_warning(monkeypatch):
    monkeypatch.delenv("VITKIT_CPU", raising=False)
    monkeypatch.setattr(runtime, "_probe_cpu", lambda: ("Intel Xeon", "AVX512", ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq")))
    monkeypatch.setattr(precision, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match=r"bf16 is emulated on this CPU \(Intel Xeon: no AVX512_BF16 or AMX\): .*precision 'auto' picks fp32"):
        assert precision.resolve("bf16", "cpu") == "bf16"
    assert precision.resolve("auto", "cpu") == "fp32"


def test_fp16_on_the_cpu_says_what_it_costs(monkeypatch):
    """precision fp16 on a CPU is computed in fp16 (not silently fp32): a one-time warning with the measured cost."""
    from vitkit.train import precision

    monkeypatch.setattr(precision, "_WARNED", set())
    monkeypatch.setattr(precision, "emulation_slowdown", lambda dtype=None: 5.7)
    with pytest.warns(RuntimeWarning, match=r"fp16 on the CPU: computed in fp16, not natively here .*5\.7x"):
        assert precision.resolve("fp16", "cpu") == "fp16"
    monkeypatch.setattr(precision, "_WARNED", set())
    monkeypatch.setattr(precision, "emulation_slowdown", lambda dtype=None: 1.0)  # native fp16 products: no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve("fp16", "cpu") == "fp16"
