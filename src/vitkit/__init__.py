"""vitkit: Vision Transformers as in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020).

The public names are imported on first use (PEP 562), so that `import vitkit.cli` does not import torch:
the `vitkit` command sets OpenMP's thread variables first (vitkit.runtime.configure_threads_env).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"
_PUBLIC = {
    "BiTConfig": "vitkit.models", "BiTResNet": "vitkit.models", "ViTConfig": "vitkit.models", "VisionTransformer": "vitkit.models",
    "count_params": "vitkit.models", "create_model": "vitkit.models", "describe": "vitkit.models", "list_models": "vitkit.models",
    "CheckpointError": "vitkit.convert", "LoadReport": "vitkit.convert", "ModelCard": "vitkit.convert",
    "load": "vitkit.convert", "load_model": "vitkit.convert", "save_model": "vitkit.convert",
    "InferenceModel": "vitkit.models.fast",
    "Engine": "vitkit.engines", "load_engine": "vitkit.engines", "export_model": "vitkit.export",
}
__all__ = [*_PUBLIC, "__version__"]


def lazy_names(module: str, table: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` (PEP 562) importing each name of `table` (name -> module) on first use."""

    def getattr_(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return getattr_, lambda: sorted(set(namespace) | set(table))


__getattr__, __dir__ = lazy_names("vitkit", _PUBLIC, globals())
