"""`vitkit export SRC OUT --to onnx|openvino`: any model load_model reads, as a graph for serving.

- ONNX (`OUT.onnx`, one file): for ONNX Runtime, TensorRT, OpenVINO, ...; needs the `onnx` extra
  (pip install 'vitkit[onnx]': onnx, onnxscript, onnxruntime).
- OpenVINO IR (`OUT/`, a directory as optimum-intel writes it: openvino_model.xml + openvino_model.bin, the
  weights kept in fp32): converted from the ONNX graph; needs the `openvino` extra (pip install
  'vitkit[openvino]').

Both graphs take normalised images (N, C, H, W) float32 named "images", with a dynamic batch dimension, and
return "logits" (N, K) and "pre_logits" (N, D: the features few-shot evaluation uses). The preprocessing (size,
normalisation, channels) and the class names travel inside (the ONNX file's "vitkit" metadata entry; the IR's
rt_info "vitkit"; JSON) so that `vitkit predict` / `eval` and any server resize and label as the model was
trained. Each export is checked once against PyTorch (max abs logit difference, reported; an export off by
more than rounding is refused) with the engine it is for, when installed. Writes are atomic: nothing
half-written is left behind, and an existing OUT is refused unless overwrite (--force).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitkit.atomic import atomic_path, refuse_existing
from vitkit import progress
from vitkit.convert.card import ModelCard
from vitkit.convert.load import load

OPENVINO_XML = "openvino_model.xml"
FORMATS = ("onnx", "openvino")
EXTRAS = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino"}


def need(module: str, what: str = "this") -> Any:
    """Import an optional engine package, or say in one line which pip extra brings it."""
    try:
        return __import__(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise ImportError(f"{what} needs the {module!r} package: pip install 'vitkit[{extra}]' "
                          f"(or pip install {module})") from None


class _Outputs(nn.Module):
    """The exported function: images -> (logits, pre-logits features)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        if not getattr(m.config, "num_classes", 0):  # headless: the features are the output
            f = m(x)
            return f, f
        feats = m.forward_features(x)
        return m.forward_head(feats), m.forward_head(feats, pre_logits=True)


def image_hw(model: nn.Module) -> tuple[int, int]:
    from vitkit.data.preprocess import Preprocess

    return Preprocess.of(model).image_size


def metadata(model: nn.Module, card: ModelCard | None = None) -> dict[str, Any]:
    """What an export records of its model (its card, as JSON): preprocessing, class names, source, classes."""
    card = (card or ModelCard.of(model)).for_model(model)
    return {"preprocess": card.preprocess.to_dict(), "class_names": card.class_names, "source": card.source,
            "num_classes": getattr(model.config, "num_classes", 0)}


# LayerNormalization, which every ViT block holds, is an ONNX operator from opset 17 on: the exporter cannot go lower
# (it would keep its own opset 18 and say nothing)
MIN_OPSET = 17


def opsets() -> range:
    """The opsets the installed exporter writes: from MIN_OPSET to the highest both torch's exporter and the onnx package
    know (torch.onnx's ONNX_MAX_OPSET; onnx.defs.onnx_opset_version())."""
    onnx = need("onnx", "ONNX export")
    from torch.onnx import _constants

    top = min(getattr(_constants, "ONNX_MAX_OPSET", 18), onnx.defs.onnx_opset_version())
    return range(MIN_OPSET, top + 1)


def check_opset(opset: int) -> None:
    """ValueError naming --opset unless the installed exporter writes `opset` (`opsets`), before anything is written."""
    ok = opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in ok:
        import onnx

        raise ValueError(f"--opset {opset!r}: the installed exporter writes ONNX opsets {ok[0]} to {ok[-1]} (torch "
                         f"{torch.__version__}, onnx {onnx.__version__}); the default is 18")


def write_onnx(model: nn.Module, out: Path, meta: dict[str, Any], opset: int = 18) -> None:
    """The ONNX graph of `model` (eval mode) at `out` (a path the caller owns: no atomicity here)."""
    onnx = need("onnx", "ONNX export")
    need("onnxscript", "ONNX export")
    x = torch.randn(2, model.config.in_chans, *image_hw(model), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own progress chatter
        program = torch.onnx.export(_Outputs(model.eval()), (x,), dynamo=True, opset_version=opset,
                                    input_names=["images"], output_names=["logits", "pre_logits"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter's version conversion failed, and it kept its own opset
        raise ValueError(f"--opset {opset}: the exporter could not express this model in opset {opset} (it wrote {written}); "
                         f"choose --opset {written}")
    proto.metadata_props.add(key="vitkit", value=json.dumps(meta))
    onnx.save(proto, str(out))


def write_openvino(onnx_path: Path, out_dir: Path, meta: dict[str, Any]) -> None:
    """The OpenVINO IR of an ONNX export in the directory `out_dir` (created), weights kept in fp32."""
    ov = need("openvino", "OpenVINO export")
    graph = ov.convert_model(str(onnx_path))
    graph.set_rt_info(json.dumps(meta), ["vitkit"])
    out_dir.mkdir(parents=True)
    ov.save_model(graph, str(out_dir / OPENVINO_XML), compress_to_fp16=False)


def check_against(model: nn.Module, run, tol: float = 1e-3) -> float:
    """Max abs difference between `run(images)` (an engine's fp32 logits) and PyTorch's, on batches of 1 and 3
    (the batch dimension is dynamic); raises ValueError when it is beyond rounding (tol x the logits' scale)."""
    diff, scale = 0.0, 1.0
    for batch in (1, 3):
        x = torch.randn(batch, model.config.in_chans, *image_hw(model), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = model.eval()(x)
        got = run(x)
        diff = max(diff, float((got - want).abs().max()))
        scale = max(scale, float(want.abs().max()))
    if not diff <= tol * scale:
        raise ValueError(f"the exported graph's logits differ from PyTorch's by {diff:.2g} (logits up to {scale:.2g}); "
                         f"this export is not faithful and was not kept: please report it with the model's config")
    return diff


def export_model(src: str | Path, out: str | Path, to: str = "onnx", resolution: int | None = None, opset: int = 18,
           overwrite: bool = False, check: bool = True) -> dict[str, Any]:
    """Write `src` as ONNX (`out` *.onnx) or OpenVINO IR (`out` a directory), atomically; returns {"path", "format",
    "opset", "checked_with" (None when the engine is not installed), "max_abs_diff", "image_size", "in_chans",
    "num_classes"}."""
    from vitkit import engines

    if to not in FORMATS:
        raise ValueError(f"--to {to!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if to == "onnx" and out.suffix != ".onnx":
        raise ValueError(f"{out}: name the ONNX output *.onnx")
    if to == "openvino" and out.suffix in (".onnx", ".xml", ".bin"):
        raise ValueError(f"{out}: the OpenVINO export is a directory (it holds {OPENVINO_XML} and its .bin); name a directory")
    refuse_existing(out, overwrite)
    need("onnx", "export")
    need("onnxscript", "export")
    check_opset(opset)
    if to == "openvino":
        need("openvino", "OpenVINO export")
    name = "onnxruntime" if to == "onnx" else "openvino"
    checking = check and engines.installed(name)
    stages = ["reading the checkpoint", "ONNX graph"] + (["OpenVINO IR"] if to == "openvino" else []) + (
        [f"checking against PyTorch with {name}"] if checking else [])
    with progress.Stages(f"export {to}", stages) as bar:
        model, card = load(src, image_size=resolution)
        if getattr(model.config, "arch", None) == "detection":
            raise ValueError(f"{src} is a detection model: an export's graph gives logits per image (N, K) and "
                             f"pre_logits, which it has not; serve it with `vitkit predict` (PyTorch)")
        if getattr(model.config, "arch", None) == "segmentation":
            raise ValueError(f"{src} is a segmentation model: an export's graph gives logits per image (N, K) and "
                             f"pre_logits, which it has not; serve it with `vitkit predict` (PyTorch)")
        meta = metadata(model.eval(), card)
        bar.next()
        res: dict[str, Any] = {"path": str(out), "format": to, "opset": opset, "image_size": list(image_hw(model)),
                               "in_chans": model.config.in_chans, "num_classes": meta["num_classes"],
                               "checked_with": None, "max_abs_diff": None}
        with atomic_path(out, overwrite) as tmp:
            if to == "onnx":
                write_onnx(model, tmp, meta, opset)
                bar.next()
                graph = tmp
            else:
                tmp.mkdir()
                graph = tmp / "model.onnx"
                write_onnx(model, graph, meta, opset)
                bar.next()
                write_openvino(graph, tmp / "ir", meta)
                bar.next()
                graph.unlink()
                for f in (tmp / "ir").iterdir():
                    f.rename(tmp / f.name)
                (tmp / "ir").rmdir()
                graph = tmp / OPENVINO_XML
            if checking:
                runner = engines.open_export(graph, name, "fp32")
                res["max_abs_diff"] = check_against(model, runner)  # a failed check leaves nothing behind
                res["checked_with"] = name
                del runner
                bar.next()
    return res


def export_onnx(src: str | Path, out: str | Path, resolution: int | None = None, opset: int = 18,
                overwrite: bool = False, check: bool = True) -> dict[str, Any]:
    """`export_model(src, out, to="onnx", ...)`."""
    return export_model(src, out, "onnx", resolution, opset, overwrite, check)
