"""Inference engines behind one interface: PyTorch (vitkit's own fast path), ONNX Runtime and OpenVINO.

`load_engine(src, engine="auto", precision="auto", ...)` (also `vitkit.load_engine`) returns an `Engine`: a
module taking normalised images (N, C, H, W) and returning fp32 logits, with `representation(images)` (the
pre-logits features few-shot evaluation fits) and what inference needs to know of its model (`preprocess`,
`class_names`, `image_size`, `in_chans`, `num_classes`). `vitkit eval`, `predict` and `fewshot` run through it,
so their preprocessing, class names and --json output are the same whichever engine computes.

Sources: any checkpoint `load_model` reads (run directory, vitkit / timm / Hugging Face / .npz file), or an
export (`vitkit export --to onnx|openvino`: a *.onnx file, an OpenVINO directory or its .xml). For a checkpoint
served by ONNX Runtime or OpenVINO vitkit exports it once into its cache (runtime.cache_dir()/exports, keyed by
the weights' hash; the KEEP_EXPORTS most recently used are kept), checked against PyTorch's logits at that time,
and reuses the export afterwards.

Engines:
- "torch": `InferenceModel` (fast blocks, half-precision weights where the precision asks): CPU or GPU.
- "onnxruntime": the CPU execution provider, fp32 (it has no bf16 path on CPUs); pip install 'vitkit[onnx]'.
- "openvino": the CPU plugin, fp32 or bf16 (where the CPU runs bf16 natively); pip install 'vitkit[openvino]'.
- "auto": on a GPU, torch. On a CPU, the fastest of the installed engines at the resolved precision, for this
  model's shape and this batch size on this machine: measured once (a few interleaved batches each, medians)
  and cached in engines.json. A job of fewer than AUTO_MIN_IMAGES images does not pay for an export and a
  measurement: it takes torch, unless a cached verdict names an engine whose export is already cached.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vitkit import runtime
from vitkit.train import memory
from vitkit.convert.card import ModelCard
from vitkit.data.preprocess import Preprocess
from vitkit.export import EXTRAS
from vitkit.models.fast import InferenceOnly

ENGINES = ("torch", "onnxruntime", "openvino")
CHOICES = ("auto", *ENGINES)
AUTO_MIN_IMAGES = 2048
VERDICTS = "engines.json"  # in runtime.cache_dir()
_LABEL = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def installed(engine: str) -> bool:
    """Whether `engine` can run here (torch always; the others when their package is installed)."""
    if engine == "torch":
        return True
    return importlib.util.find_spec(engine) is not None


def _need(engine: str) -> Any:
    from vitkit.export import need

    return need(engine, f"--engine {engine}")


_OV_CORE: list[Any] = []  # the process's one OpenVINO Core (`openvino_core`), created on first use, never released
_OV_CORE_LOCK = threading.Lock()


def openvino_core() -> Any:
    """The one OpenVINO Core of this process, created on first use and kept until the process exits.

    One, not one per engine: each Core that loads OpenVINO's CPU plugin gets a plugin instance of its own, and
    that plugin installs an alternate signal stack of its own on the thread that loads it (a mmap'd stack, set with
    sigaltstack, remembering the one it replaced); when the plugin is destroyed it unmaps its stack, and puts back
    the one it replaced only when its own is still the thread's current one. Cores released in any other order
    than the reverse of their creation (engines are freed in whatever order the garbage collector reaches them),
    or on another thread, therefore leave the thread's alternate stack pointing at unmapped memory, and the next
    signal handled there kills the process: Python installs its handlers with SA_ONSTACK, and the kernel, unable
    to write the signal frame, sends SIGSEGV (si_code SI_KERNEL) - no traceback, faulthandler's handler cannot
    run either. The full test suite in one process died so at the first child process to exit after torch's
    DataLoader had installed its SIGCHLD handler (openvino 2026.4, two Cores released first-in first-out are
    enough). One Core loads the CPU plugin once, and its stack stays mapped. (Core's methods are thread-safe.)"""
    if not _OV_CORE:
        ov = _need("openvino")
        with _OV_CORE_LOCK:
            if not _OV_CORE:
                _OV_CORE.append(ov.Core())
    return _OV_CORE[0]


def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (its BF16 optimisation capability)."""
    if not installed("openvino"):
        return False
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def engine_precision(engine: str, precision: str = "auto", device: str | torch.device = "cpu") -> str:
    """What `precision` ("auto", "fp32", "bf16", "fp16") means for `engine`; a precision the engine cannot run
    natively here is refused with what to use instead."""
    from vitkit.train.precision import check, resolve

    check(precision, "--precision")
    if engine == "torch":
        return resolve(precision, device, option="--precision")
    want = resolve(precision, "cpu", option="--precision") if precision == "auto" else precision
    if engine == "onnxruntime":
        if precision in ("auto", "fp32"):
            return "fp32"  # ONNX Runtime's CPU provider: fp32 is its best
        raise ValueError(f"--precision {precision}: ONNX Runtime's CPU provider runs fp32 only; "
                         f"use --engine openvino or --engine torch for {precision}, or --precision fp32")
    if want == "fp16":
        raise ValueError("--precision fp16: OpenVINO on the CPU runs fp32 or bf16; use --precision bf16 or fp32")
    if want == "bf16" and not openvino_bf16():
        if precision == "auto":
            return "fp32"
        raise ValueError("--precision bf16: this CPU has no native bf16 for OpenVINO; use --precision fp32")
    return want


class Engine(InferenceOnly, nn.Module):
    """images (N, C, H, W), normalised as `preprocess` says -> fp32 logits (N, num_classes).

    `engine` and `precision` say what computes; `choice` how "auto" chose (None when the engine was named). One
    Engine serves one caller at a time (the ONNX Runtime / OpenVINO engines reuse one request): give each thread
    its own."""

    def __init__(self, engine: str, precision: str, info: dict[str, Any]):
        super().__init__()
        self.engine, self.precision = engine, precision
        self.card = ModelCard(Preprocess.from_dict(info["preprocess"]), info.get("class_names"), str(info.get("source", "")))
        self.image_size: tuple[int, int] = self.card.preprocess.image_size
        self.in_chans: int = self.card.preprocess.in_chans
        self.num_classes: int = int(info.get("num_classes") or 0)
        self.choice: dict[str, Any] | None = None
        super().train(False)

    @property
    def preprocess(self) -> Preprocess:
        return self.card.preprocess

    @property
    def class_names(self) -> list[str] | None:
        return self.card.class_names

    @property
    def source(self) -> str:
        return self.card.source

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """{"engine", "precision"} and, when auto chose, how ("measured" img/s per engine, "cached", "why")."""
        return {"engine": self.engine, "precision": self.precision, **({"auto": self.choice} if self.choice else {})}


class TorchEngine(Engine):
    """vitkit's own path: `InferenceModel` (on the model's device)."""

    def __init__(self, model: nn.Module, precision: str, compile: bool = False, card: ModelCard | None = None):
        from vitkit.export import metadata
        from vitkit.models.fast import InferenceModel

        self.model: nn.Module  # registered below, after nn.Module's set-up
        inner = InferenceModel(model, precision, compile=compile)
        super().__init__("torch", inner.precision, metadata(model, card))
        self.model = inner
        self.config = model.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.representation(x)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


class OnnxRuntimeEngine(Engine):
    def __init__(self, path: Path, precision: str = "fp32"):
        ort = _need("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001  (ONNX Runtime raises its own classes for a bad file)
            raise ValueError(f"{path}: ONNX Runtime cannot read this export: {str(err).strip().splitlines()[0]}") from None
        meta = sess.get_modelmeta().custom_metadata_map.get("vitkit")
        super().__init__("onnxruntime", precision, _parse_meta(meta, path))
        self._sess, self._path = sess, path
        self._outputs = [o.name for o in sess.get_outputs()]
        _check_io(path, [i.name for i in sess.get_inputs()], self._outputs)
        if not self.num_classes:  # an export from before its metadata recorded the classes: the graph says
            self.num_classes = _classes_of(sess.get_outputs()[self._outputs.index("logits")].shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._sess.run(["logits"], {"images": _numpy(x)})[0])

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        _has_pre_logits(self._path, self._outputs)
        return torch.from_numpy(self._sess.run(["pre_logits"], {"images": _numpy(x)})[0])


_GC_LOCK = threading.Lock()
_GC_HOLDERS = [0, False]  # engines running callbacks now; whether collection was on before the first


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """Garbage collection off while any engine's OpenVINO callbacks run (it is process-wide: counted, so that one
    thread finishing does not turn it back on under another's callbacks)."""
    with _GC_LOCK:
        if _GC_HOLDERS[0] == 0:
            _GC_HOLDERS[1] = gc.isenabled()
            gc.disable()
        _GC_HOLDERS[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_HOLDERS[0] -= 1
            if _GC_HOLDERS[0] == 0 and _GC_HOLDERS[1]:
                gc.enable()


class OpenVinoEngine(Engine):
    def __init__(self, path: Path, precision: str = "fp32"):
        from vitkit.export import OPENVINO_XML

        core = openvino_core()  # shared: one Core per engine broke the process's signal handling (openvino_core)
        xml = path / OPENVINO_XML if path.is_dir() else path
        try:
            graph = core.read_model(str(xml))
        except Exception as err:  # noqa: BLE001  (OpenVINO raises RuntimeError with its C++ trace)
            first = next((ln for ln in str(err).splitlines() if "Unable" in ln or "Error" in ln), str(err).splitlines()[0])
            raise ValueError(f"{xml}: OpenVINO cannot read this export: {first.strip()}") from None
        if graph.has_rt_info(["vitkit"]):
            meta = graph.get_rt_info(["vitkit"]).astype(str)
        elif xml.suffix == ".onnx":
            meta = _onnx_meta(xml)
        else:
            meta = None
        super().__init__("openvino", precision, _parse_meta(meta, xml))
        names = [sorted(o.get_names()) for o in graph.outputs]
        _check_io(xml, [n for i in graph.inputs for n in i.get_names()], [n for ns in names for n in ns])
        self._core, self._graph, self._threads, self._path = core, graph, torch.get_num_threads(), xml
        if not self.num_classes:
            shape = graph.output("logits").get_partial_shape()
            self.num_classes = _classes_of([d.get_length() if d.is_static else None for d in shape])
        self._hint = "bf16" if precision == "bf16" else "f32"
        self._latency = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": self._hint, "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": self._threads})
        self._request = self._latency.create_infer_request()
        self._streams: Any = None  # compiled on the first batch large enough to split
        self._outputs = [n for ns in names for n in ns]

    STREAM_MIN = 8  # images per stream below which one request on every thread is as fast

    def _queue(self) -> Any:
        """One single-threaded stream per thread (OpenVINO's THROUGHPUT hint) and a queue of requests: a batch is
        split across them. Measured on an AMD Zen 4 (2 threads), fashion-mnist model at batch 256: 1.04-1.3x the
        LATENCY hint's single request, fp32 and bf16; ViT-B/16 at batch 8: a tie."""
        if self._streams is None:
            ov = _need("openvino")
            compiled = self._core.compile_model(self._graph, "CPU", {
                "INFERENCE_PRECISION_HINT": self._hint, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self._threads,
                "INFERENCE_NUM_THREADS": self._threads})
            self._streams = (compiled, ov.AsyncInferQueue(compiled, self._threads))
        return self._streams

    def _run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        data = _numpy(x)
        if self._threads < 2 or len(data) < self.STREAM_MIN * self._threads:
            res = self._request.infer({"images": data}, share_inputs=True)
            return torch.from_numpy(np.array(res[self._latency.output(name)], dtype=np.float32))
        compiled, queue = self._queue()
        port = compiled.output(name)
        parts = np.array_split(data, self._threads)
        out: list[np.ndarray | None] = [None] * len(parts)

        def done(request: Any, i: int) -> None:
            out[i] = np.array(request.get_tensor(port).data, dtype=np.float32)  # a copy: the request is reused

        queue.set_callback(done)
        # No garbage collection while OpenVINO's threads run `done`: a cycle holding another engine, collected in one
        # of them, would destroy that engine's queue from its own thread (std::terminate, "Resource deadlock avoided",
        # seen once in the test suite).
        with _no_collection():
            for i, part in enumerate(parts):
                queue.start_async({"images": np.ascontiguousarray(part)}, i, share_inputs=True)
            queue.wait_all()
        return torch.from_numpy(np.concatenate(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, "logits")

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        _has_pre_logits(self._path, self._outputs)
        return self._run(x, "pre_logits")


def _onnx_meta(path: Path) -> str | None:
    onnx = _need_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in proto.metadata_props if p.key == "vitkit"), None)


def _need_onnx() -> Any:
    from vitkit.export import need

    return need("onnx", "reading an ONNX export")


def _parse_meta(meta: str | None, path: Path) -> dict[str, Any]:
    if meta is None:
        raise ValueError(f"{path}: not a vitkit export (no 'vitkit' metadata with its preprocessing and classes); "
                         f"export the checkpoint with `vitkit export`, or serve the checkpoint itself")
    try:
        info = json.loads(meta)
        info["preprocess"]["image_size"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: its 'vitkit' metadata is damaged (not JSON with preprocess.image_size); export it again") from None
    info.setdefault("source", str(path))
    if not info.get("num_classes") and info.get("class_names"):
        info["num_classes"] = len(info["class_names"])
    return info


def _check_io(path: Path, inputs: list[str], outputs: list[str]) -> None:
    if "images" not in inputs or "logits" not in outputs:
        raise ValueError(f"{path}: not a vitkit export (it needs an input 'images' and an output 'logits'; it has "
                         f"inputs {inputs} and outputs {outputs}); export the checkpoint with `vitkit export`")


def _classes_of(shape: Any) -> int:
    """The class count of a logits output shape (N, K); 0 when it is not static."""
    return int(shape[1]) if len(shape) == 2 and isinstance(shape[1], int) else 0


def _has_pre_logits(source: str | Path, outputs: list[str]) -> None:
    if "pre_logits" not in outputs:
        raise ValueError(f"{source}: this export has no 'pre_logits' output (an older vitkit wrote it); "
                         f"export the checkpoint again for few-shot features")


def export_kind(path: str | Path) -> str | None:
    """"onnx" for a *.onnx file, "openvino" for an OpenVINO directory or *.xml, else None (a checkpoint)."""
    from vitkit.export import OPENVINO_XML

    p = Path(path)
    if p.suffix == ".onnx" and p.is_file():
        return "onnx"
    if (p.suffix == ".xml" and p.is_file()) or (p.is_dir() and (p / OPENVINO_XML).is_file()):
        return "openvino"
    return None


def open_export(path: str | Path, engine: str, precision: str = "fp32") -> Engine:
    """An engine on an export file (no checks of its own beyond reading it)."""
    p = Path(path)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(p, precision)
    if engine == "openvino":
        return OpenVinoEngine(p, precision)
    raise ValueError(f"--engine {engine}: exports are served by onnxruntime or openvino")


# --- checkpoints served by an engine: one cached, checked export per set of weights ---------------------------

def weights_key(model: nn.Module, meta: dict[str, Any]) -> str:
    """A hash of what an export depends on: the weights' bytes, the config, the metadata, the library versions."""
    from vitkit import __version__
    from vitkit.models.registry import config_to_dict

    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([config_to_dict(model.config), meta, __version__, torch.__version__], sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())  # a view: no copy
    return h.hexdigest()


def _export_path(key: str) -> Path:
    return runtime.cache_dir() / "exports" / f"{key}.onnx"


def cached_export(model: nn.Module, engine: str, card: ModelCard | None = None) -> Path:
    """The ONNX export of `model` (with its card) in vitkit's cache (written and checked against PyTorch with
    `engine` the first time: a sidecar <key>.json records the check)."""
    from vitkit.atomic import atomic_path
    from vitkit.export import check_against, metadata, write_onnx

    model = model.to("cpu").eval()
    meta = metadata(model, card)
    path = _export_path(weights_key(model, meta))
    record = path.with_suffix(".json")
    checks = {}
    if path.is_file():
        try:
            checks = json.loads(record.read_text())
        except (OSError, ValueError):
            checks = {}
    if not path.is_file():
        with atomic_path(path, overwrite=True) as tmp:
            write_onnx(model, tmp, meta)
        _prune(path.parent)
    else:
        path.touch()  # recently used: kept by _prune
    if engine not in checks:
        try:
            checks[engine] = check_against(model, open_export(path, engine, "fp32"))
        except ValueError:
            path.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            raise
        with atomic_path(record, overwrite=True) as tmp:
            tmp.write_text(json.dumps(checks))
    return path


KEEP_EXPORTS = 8


def _prune(folder: Path) -> None:
    """Keep the KEEP_EXPORTS most recently used exports of the cache (a ViT-B export is 350 MB)."""
    exports = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in exports[KEEP_EXPORTS:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def serve(model: nn.Module, engine: str, precision: str = "auto", compile: bool = False,
          card: ModelCard | None = None) -> Engine:
    """`model` (a loaded checkpoint, with its card from `vitkit.load`) served by the named engine."""
    if engine == "torch":
        return TorchEngine(model, precision, compile, card)
    if compile:
        raise ValueError(f"--compile is PyTorch's (torch.compile); {_LABEL[engine]} compiles its graph itself: drop --compile")
    _need(engine)
    if runtime.model_device(model).type != "cpu":
        raise ValueError(f"{_LABEL[engine]} runs on the CPU here: serve a model on the CPU (model.cpu()), or use engine 'torch'")
    prec = engine_precision(engine, precision)
    path = cached_export(model, engine, card)
    try:
        eng = open_export(path, engine, prec)
    except ValueError:  # damaged since it was written and checked (a full disk, a killed copy): export it again
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        eng = open_export(cached_export(model, engine, card), engine, prec)
    eng.card = eng.card.replace(source=card.source if card else "")  # the same weights may be cached from another file
    return eng


def _signature(model: nn.Module) -> str:
    from vitkit.models.registry import config_to_dict

    return json.dumps(config_to_dict(model.config), sort_keys=True, default=str)


def _versions() -> str:
    out = [f"torch {torch.__version__}"]
    for name in ("onnxruntime", "openvino"):
        if installed(name):
            from importlib.metadata import PackageNotFoundError, version

            try:
                out.append(f"{name} {version(name)}")
            except PackageNotFoundError:
                pass
    return ", ".join(out)


def candidates(precision: str) -> list[str]:
    """The engines auto compares at a resolved precision: those installed that run it natively on this CPU."""
    out = ["torch"]
    if precision == "fp32" and installed("onnxruntime"):
        out.append("onnxruntime")
    if installed("openvino") and (precision == "fp32" or (precision == "bf16" and openvino_bf16())):
        out.append("openvino")
    return out


def measure(engines: dict[str, Engine], x: torch.Tensor, seconds: float = 0.3, rounds: int = 3) -> dict[str, float]:
    """Images per second of each engine on `x`: two warm-up calls each (OpenVINO compiles its streams graph on the
    first large batch), then `rounds` interleaved rounds of at least `seconds` (and one call) each; the median round."""
    times: dict[str, list[float]] = {k: [] for k in engines}
    with torch.inference_mode():
        for e in engines.values():
            e(x), e(x)
        for _ in range(rounds):
            for k, e in engines.items():
                n, t0 = 0, time.perf_counter()
                while n == 0 or time.perf_counter() - t0 < seconds:
                    e(x)
                    n += 1
                times[k].append((time.perf_counter() - t0) / n)
    return {k: len(x) / statistics.median(v) for k, v in times.items()}


def _images(n: int) -> str:
    return f"{n} image{'' if n == 1 else 's'}"


def _auto(names: list[str], build, key: str, batch: int, images: int | None, ready, only: str = "") -> Engine:
    """The fastest of `names` (engine -> `build(name)`), as cached under `key` or measured now at `batch`;
    `ready(name)`: whether that engine's export already exists (a small job never pays for one or for measuring:
    it takes names[0])."""
    if len(names) == 1:
        return _chosen(build(names[0]), {"why": f"{names[0]}: {only or 'the only engine installed for this source'}",
                                         "cached": False})
    small = images is not None and images < AUTO_MIN_IMAGES
    fallback = names[0]
    verdict = runtime.read_cache(VERDICTS).get(key)
    if isinstance(verdict, dict) and verdict.get("engine") in names:
        best = verdict["engine"]
        if small and not ready(best):
            return _chosen(build(fallback), {"why": f"{fallback}: {_images(images)}, too few to pay for exporting to {best} "
                                                    f"(faster here, measured)", "cached": True})
        return _chosen(build(best), {**verdict, "cached": True})
    if small:
        cost = "measuring" if all(ready(n) for n in names) else "exporting and measuring"
        return _chosen(build(fallback), {"why": f"{fallback}: {_images(images)} (< {AUTO_MIN_IMAGES}), too few to pay for {cost}",
                                         "cached": False})
    built, failed = {}, {}
    for n in names:
        try:
            built[n] = build(n)
        except Exception as err:  # noqa: BLE001 - an optional engine that cannot serve this model drops out of the race
            if n == names[0]:
                raise
            failed[n] = str(err).splitlines()[0] if str(err) else type(err).__name__
    if len(built) == 1:
        (only_name,) = built
        return _chosen(built[only_name], {"why": f"{only_name}: the other engines failed ({'; '.join(f'{k}: {v}' for k, v in failed.items())})",
                                          "cached": False})
    first = built[names[0]]
    dev = runtime.model_device(first)
    x = torch.randn(batch, first.in_chans, *first.image_size, generator=torch.Generator().manual_seed(0)).to(dev)
    speeds = measure(built, x)
    best = max(speeds, key=speeds.get)
    verdict = {"engine": best, "measured_img_per_s": {k: round(v, 1) for k, v in speeds.items()}, **({"failed": failed} if failed else {}),
               "why": f"{best}: fastest measured here ({', '.join(f'{k} {v:.1f}' for k, v in speeds.items())} img/s "
                      f"at batch {batch}, {first.precision})"}
    runtime.update_cache(VERDICTS, key, verdict)
    return _chosen(built[best], {**verdict, "cached": False})


def choose(model: nn.Module, precision: str = "auto", batch_size: int = 256, images: int | None = None,
           compile: bool = False, card: ModelCard | None = None) -> Engine:
    """Engine "auto" for a loaded checkpoint (module docstring): torch on a GPU; on the CPU the fastest engine
    measured for this model shape, precision and batch size on this machine (cached)."""
    from vitkit.export import metadata

    dev = runtime.model_device(model)
    prec = engine_precision("torch", precision, dev)
    names = candidates(prec) if dev.type == "cpu" else ["torch"]
    if len(names) == 1 or compile:
        why = ("on a GPU" if dev.type != "cpu" else "--compile is PyTorch's" if compile
               else f"no other engine installed runs {prec} here")
        return _chosen(serve(model, "torch", prec, compile, card), {"why": f"torch: {why}", "cached": False})
    batch = max(1, min(batch_size, images or batch_size))
    key = f"{runtime.machine_key()} | {_versions()} | {_signature(model)} | {prec} | batch {batch}"
    key_path: list[Path] = []  # the weights hash, computed once and only when a cached verdict needs it

    def exported(name: str) -> bool:
        if name == "torch":
            return True
        if not key_path:
            key_path.append(_export_path(weights_key(model, metadata(model, card))))
        return key_path[0].is_file()

    return _auto(names, lambda name: serve(model, name, prec, card=card), key, batch, images, exported)


def _chosen(engine: Engine, how: dict[str, Any]) -> Engine:
    engine.choice = how
    return engine


def _auto_export(path: Path, readers: list[str], precision: str, batch_size: int, images: int | None) -> Engine:
    """Engine "auto" for an export: the installed readers that run the precision "auto" resolves to (or fp32)."""
    have = [e for e in readers if installed(e)]
    if not have:
        raise ImportError(f"{path}: serving an export needs {' or '.join(readers)}: pip install "
                          + " or ".join(f"'vitkit[{EXTRAS[e]}]'" for e in readers))
    want = engine_precision("torch", precision, "cpu")
    same = []
    for e in have:
        try:
            if engine_precision(e, "auto" if precision == "auto" else want) == want:
                same.append(e)
        except ValueError:  # this engine cannot run the precision asked for: the others may
            pass
    if not same and precision != "auto":
        engine_precision(have[0], precision)  # none can: say why (raises)
    names = same or have
    from vitkit.export import OPENVINO_XML

    stat = (path if path.is_file() else path / OPENVINO_XML).stat()
    key = f"{runtime.machine_key()} | {_versions()} | export {path.resolve()} {stat.st_size} {stat.st_mtime_ns} | {want} | batch {batch_size}"
    build = lambda name: open_export(path, name, engine_precision(name, precision))  # noqa: E731
    only = f"the only engine installed that runs {want} here" if same and len(have) > 1 else ""
    return _auto(names, build, key, max(1, min(batch_size, images or batch_size)), images, lambda name: True, only)


def load_engine(src: str | Path, engine: str = "auto", precision: str = "auto", device: str = "auto",
         resolution: int | None = None, batch_size: int = 256, images: int | None = None,
         compile: bool = False) -> Engine:
    """An `Engine` for `src` (a checkpoint or an export; `vitkit.load_engine`); `images` is how many images the
    job will run (auto's cost rule), `resolution` resamples a checkpoint's position embeddings (an export has
    its own size)."""
    from vitkit.convert.load import load

    if engine not in CHOICES:
        raise ValueError(f"--engine {engine!r}: choose one of {', '.join(CHOICES)}")
    kind = export_kind(src)
    # exports and the CPU engines run on the CPU: "auto" means the CPU for them (an explicit GPU is refused below)
    dev = runtime.resolve_device("cpu" if device == "auto" and (kind or engine in ("onnxruntime", "openvino")) else device)
    if kind is not None:
        readers = ["openvino", "onnxruntime"] if kind == "onnx" else ["openvino"]
        if engine == "torch" or (engine != "auto" and engine not in readers):
            raise ValueError(f"{src}: an {'ONNX' if kind == 'onnx' else 'OpenVINO'} export, which {_LABEL[engine]} cannot run; "
                             f"use --engine {' or '.join(readers)}, or give the checkpoint it was exported from")
        if dev.type != "cpu":
            raise ValueError(f"{src}: exports run on the CPU here; pass --device cpu")
        if compile:
            raise ValueError("--compile is PyTorch's; an export is compiled by its engine: drop --compile")
        if engine == "auto":
            eng = _auto_export(Path(src), readers, precision, batch_size, images)
        else:
            _need(engine)
            eng = open_export(src, engine, engine_precision(engine, precision))
        if resolution is not None and tuple(eng.image_size) != (resolution, resolution):
            raise ValueError(f"{src}: exported at {eng.image_size[0]}x{eng.image_size[1]} px; --resolution {resolution} "
                             f"needs an export at that size (`vitkit export CHECKPOINT OUT --resolution {resolution}`)")
        return eng
    if engine in ("onnxruntime", "openvino"):
        _need(engine)
        if dev.type != "cpu":
            raise ValueError(f"--engine {engine} runs on the CPU here; pass --device cpu, or --engine torch on {dev}")
    model, card = load(src, image_size=resolution)
    if getattr(model.config, "arch", None) == "detection":  # boxes, not logits per image
        raise ValueError(f"{src} is a detection model (boxes): `vitkit eval {src} --data canvas|coco:PATH` scores it and "
                         f"`vitkit predict {src} IMAGE` writes its boxes; for its encoder's features, fine-tune it "
                         f"(`vitkit finetune {src} --data ...`)")
    if getattr(model.config, "arch", None) == "segmentation":  # logits per pixel, not per image
        raise ValueError(f"{src} is a segmentation model (a class per pixel): `vitkit eval {src} --data canvas|seg:PATH` "
                         f"scores it and `vitkit predict {src} IMAGE` writes its masks; for its encoder's features, "
                         f"fine-tune it (`vitkit finetune {src} --data ...`)")
    if getattr(model.config, "arch", None) == "multitask":  # a head per task, not one classifier
        raise ValueError(f"{src} is a multitask model (a head per task): `vitkit eval {src}` scores each task on its data; "
                         f"for its encoder's features, fine-tune it (`vitkit finetune {src} --data ...`)")
    batch = max(1, min(batch_size, images or batch_size))
    # refused before anything runs when it cannot fit (the CPU engines' graphs hold every head's T x T weights)
    memory.check_inference(model.config, batch, dev, str(src), explicit_attention=engine in ("onnxruntime", "openvino"))
    model.to(dev)
    if engine == "auto":
        if not memory.fits_inference(model.config, batch, dev, explicit_attention=True):
            return _chosen(serve(model, "torch", precision, compile, card),
                           {"why": "torch: the CPU engines' explicit attention would not fit in memory", "cached": False})
        return choose(model, precision, batch_size, images, compile, card)
    return serve(model, engine, precision, compile, card)
