"""`vitkit export SRC out.onnx`: any model load_model reads, as an ONNX graph for serving (ONNX Runtime,
TensorRT, OpenVINO, ...), with a dynamic batch dimension, then checked against PyTorch with ONNX Runtime
when it is installed. Needs the `onnx` extra: pip install 'vitkit[onnx]' (onnx, onnxscript, onnxruntime).

The graph takes normalised images (N, C, H, W) float32 named "images" and returns "logits" (N, K); the
preprocessing (size, normalisation, channels) and the class names travel in the file's metadata
("vitkit" key, JSON) so a server can resize and label as the model was trained."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from vitkit.convert.common import atomic_path, refuse_existing
from vitkit.convert.load import load_model


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"ONNX export needs the {module!r} package: pip install 'vitkit[onnx]' "
                          f"(or pip install onnx onnxscript onnxruntime)") from None


def export_onnx(src: str | Path, out: str | Path, resolution: int | None = None, opset: int = 18,
                overwrite: bool = False, check: bool = True) -> dict[str, Any]:
    """Write `src` as ONNX at `out` (atomically); returns {"path", "opset", "max_abs_diff" (None without
    onnxruntime), "image_size", "in_chans", "num_classes"}."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: name the output *.onnx")
    refuse_existing(out, overwrite)
    onnx = _need("onnx")
    _need("onnxscript")
    model = load_model(src, image_size=resolution).eval()
    cfg = model.config
    size = cfg.image_size if isinstance(cfg.image_size, (tuple, list)) else (cfg.image_size, cfg.image_size)
    x = torch.randn(2, cfg.in_chans, *size, generator=torch.Generator().manual_seed(0))
    meta = {"preprocess": getattr(model, "preprocess", None) or {"image_size": size[0], "in_chans": cfg.in_chans},
            "class_names": getattr(model, "class_names", None), "source": str(src)}
    with atomic_path(out, overwrite) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's own progress chatter
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["images"],
                                        output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                        verbose=False)
        proto = program.model_proto
        proto.metadata_props.add(key="vitkit", value=json.dumps(meta))
        onnx.save(proto, str(tmp))
    res: dict[str, Any] = {"path": str(out), "opset": opset, "image_size": list(size), "in_chans": cfg.in_chans,
                           "num_classes": getattr(cfg, "num_classes", None), "max_abs_diff": None}
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            return res
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        for batch in (1, 3):  # the batch dimension is dynamic
            xb = torch.randn(batch, cfg.in_chans, *size, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                want = model(xb).numpy()
            got = sess.run(["logits"], {"images": xb.numpy()})[0]
            res["max_abs_diff"] = max(res["max_abs_diff"] or 0.0, float(abs(got - want).max()))
    return res
