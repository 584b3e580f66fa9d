"""Checkpoint formats users already hold: Google .npz, timm, Hugging Face; and vitkit's own."""
from vitkit.convert.card import Loaded, ModelCard
from vitkit.convert.common import CheckpointError, LoadReport
from vitkit.convert.load import FORMATS, detect_format, load, load_model, read_checkpoint, save_model

__all__ = ["FORMATS", "CheckpointError", "LoadReport", "Loaded", "ModelCard", "detect_format", "load", "load_model",
           "read_checkpoint", "save_model"]
