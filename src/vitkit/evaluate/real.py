"""ImageNet ReaL ("Are we done with ImageNet?", Beyer et al. 2020), the relabelled validation set the paper reports
beside top-1: `vitkit eval SRC --data folder:IMAGENET --split val --real-labels real.json`.

real.json (published with the paper, github.com/google-research/reassessed-imagenet) is a JSON list of 50,000 lists:
for the validation image ILSVRC2012_val_{i:08d}.JPEG (i from 1), the ImageNet class indices a human rater judged right;
an empty list for an image no label fits. ReaL accuracy: over the images with a non-empty list, the fraction whose
top-1 prediction is in it. Images are matched to the list by the number in their file name, so any folder layout of
the validation set works (class sub-folders or not), in any order.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from vitkit.errors import VitkitError

VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


class RealLabelsError(VitkitError, ValueError):
    """A labels file or an image set that the ReaL protocol cannot use (the message says which and why)."""


def read_real(path: str | Path) -> list[list[int]]:
    """real.json as lists of class indices (JSON only), checked: a list of lists of non-negative integers."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--real-labels {p}: no such file (real.json of github.com/google-research/reassessed-imagenet)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RealLabelsError(f"--real-labels {p}: not valid JSON ({err})") from None
    if not isinstance(data, list) or not all(isinstance(r, list) and all(isinstance(c, int) and c >= 0 for c in r) for r in data):
        raise RealLabelsError(f"--real-labels {p}: not ReaL's format, a JSON list (one entry per validation image) of lists of "
                              f"class indices")
    return data


def real_accuracy(files: list[Path], top1: list[int], real: list[list[int]], source: str = "real.json") -> dict:
    """{"real_top1", "real_n" (images with a ReaL label), "real_skipped" (without one)} of predictions `top1` for
    `files` (ILSVRC2012_val_XXXXXXXX.* each)."""
    hits = n = skipped = 0
    for path, pred in zip(files, top1, strict=True):
        m = VAL_NAME.search(Path(path).name)
        if m is None:
            raise RealLabelsError(f"{path}: not an ImageNet validation file name (ILSVRC2012_val_XXXXXXXX.JPEG): ReaL labels "
                                  f"are matched by that number; evaluate ImageNet's validation images under their own names")
        i = int(m.group(1)) - 1
        if not 0 <= i < len(real):
            raise RealLabelsError(f"{path}: image number {i + 1} is beyond the {len(real)} entries of {source}")
        if not real[i]:
            skipped += 1
            continue
        n += 1
        hits += pred in real[i]
    return {"real_top1": hits / n if n else float("nan"), "real_n": n, "real_skipped": skipped}
