"""Hugging Face exports that transformers' own pipeline and AutoImageProcessor run (preprocessor_config.json beside the
weights, checked against `vitkit predict`), the normalisation read back from that file, and the models Hugging Face's
ViT cannot hold refused with the field and the formats that can (tensor parity: test_converter_parity.py)."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.convert import CheckpointError, ModelCard
from vitkit.data.datasets import load_image
from vitkit.data.preprocess import Preprocess
from vitkit.evaluate.predict import predict

transformers = pytest.importorskip("transformers")

from test_convert import jitter, max_diff  # noqa: E402

CLASSES = ["cat", "dog", "bird"]
TINY = dict(num_classes=3, image_size=32, patch_size=16, width=32, depth=1, heads=2, mlp_dim=64)
# (W, H, cells): cells x cells random colours, smooth (bicubic upsampling) or, (cells, cells) given, in blocks with hard
# edges, where a resize filter other than bilinear shows (bicubic moves their pixels by ~19 grey levels); at the
# model's size, then larger ones
IMAGES = [(32, 32, 3), (32, 32, 3), (32, 32, 3), (61, 47, 3), (150, 200, 3), (96, 96, 3), (80, 80, (8, 8)), (72, 56, (18, 14))]
# At the model's size nothing is resized: both compute (x / 255 - mean) / std in float32 and run the same network, so
# only float rounding differs (measured: 2.4e-7 in probability).
EXACT_TOL = 1e-5
# Resized, transformers' torchvision backend (its default from 5.0) runs torchvision's antialiased bilinear resize as
# vitkit does (measured: the same pixels, 4e-7 in probability); its PIL backend (transformers 4's processor) has its
# own fixed-point filter and rounding: pixels up to RESIZE_LEVELS grey levels apart (measured: 1), probabilities
# 8.4e-4 apart on these images (on the sharp one; a bicubic resize instead: 7e-3 and more).
RESIZE_LEVELS = 2
RESIZED_TOL = 2e-3


def tiny(**kw):
    """The tiny ViT with random non-zero weights, the same in every run (seed 2: its top-1s on the images below are all
    three classes, each at least 0.07 ahead of the next)."""
    torch.manual_seed(2)
    return jitter(vitkit.create_model("ViT-Ti/16", **{**TINY, **kw}), scale=0.3)


def write_images(tmp_path, images=IMAGES, mode="RGB"):
    """PNG files of IMAGES' kind."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h, cells) in enumerate(images):
        blocks = isinstance(cells, tuple)
        cw, ch = cells if blocks else (cells, cells)
        coarse = rng.integers(0, 256, (ch, cw, 3), dtype=np.uint8)
        im = Image.fromarray(coarse).resize((w, h), Image.NEAREST if blocks else Image.BICUBIC).convert(mode)
        im.save(tmp_path / f"im{i}.png")
        paths.append(str(tmp_path / f"im{i}.png"))
    return paths


def export(model, path, normalize="imagenet", class_names=CLASSES):
    return vitkit.save_model(model, path, format="hf", card=ModelCard.of(model, class_names, normalize=normalize))


def processor(path, backend=None):
    kw = {"backend": backend} if backend else {}
    return transformers.AutoImageProcessor.from_pretrained(str(path), **kw)


def compare_with_predict(pipe, src, paths):
    """Top-1 equal to vitkit predict's and the probabilities within the tolerance of the image's size; the top-1s."""
    ours = predict(str(src), paths, top_k=3, engine="torch", precision="fp32")
    tops = []
    for path, mine in zip(paths, ours):
        theirs = {r["label"]: r["score"] for r in pipe(path)}
        assert max(theirs, key=theirs.get) == mine["top"][0]["class"], path
        tol = EXACT_TOL if Image.open(path).size == (32, 32) else RESIZED_TOL
        assert max(abs(theirs[r["class"]] - r["prob"]) for r in mine["top"]) <= tol, path
        tops.append(mine["top"][0]["class"])
    assert len(set(tops)) >= 2  # the model tells the images apart: a constant answer would agree trivially
    return tops


# --- preprocessor_config.json: transformers runs the export as vitkit does ---------------------------------------------


def test_pipeline_agrees_with_predict(tmp_path):
    model = tiny()
    src = export(model, tmp_path / "hf")
    proc = json.loads((src / "preprocessor_config.json").read_text())
    assert proc["image_processor_type"] == "ViTImageProcessor" and proc["size"] == {"height": 32, "width": 32}
    assert proc["resample"] == 2 and proc["rescale_factor"] == 1 / 255  # PIL's BILINEAR; uint8 -> [0, 1]
    assert proc["image_mean"] == [0.485, 0.456, 0.406] and proc["image_std"] == [0.229, 0.224, 0.225]
    paths = write_images(tmp_path)
    pipe = transformers.pipeline("image-classification", model=str(src), device="cpu")
    compare_with_predict(pipe, src, paths)
    if int(transformers.__version__.split(".")[0]) >= 5:  # the PIL backend, what transformers 4 resizes with
        pil = transformers.pipeline("image-classification", model=str(src), device="cpu", image_processor=processor(src, "pil"))
        compare_with_predict(pil, src, paths)


@pytest.mark.parametrize("normalize", ["imagenet", "google"])
def test_processor_prepares_as_vitkit_and_normalisation_reads_back(normalize, tmp_path):
    model = tiny()
    src = export(model, tmp_path / "hf", normalize=normalize)
    prep = Preprocess.of(model, {"normalize": normalize})
    for path in write_images(tmp_path):
        ours = prep.eval_transform()(load_image(path, 3))
        theirs = processor(src)(images=Image.open(path), return_tensors="pt")["pixel_values"][0]
        levels = 0 if Image.open(path).size == (32, 32) else RESIZE_LEVELS  # the two libraries' resize, else nothing
        assert (theirs - ours).abs().max() <= levels / 255 / min(prep.mean_std()[1]) + 1e-5, path
    back, card = vitkit.load(src)
    assert card.preprocess.normalize == normalize and card.class_names == CLASSES and card.report.notes == []
    assert max_diff(back.eval(), model, torch.randn(2, 3, 32, 32)) <= 1e-6


@pytest.mark.parametrize("content, why", [
    ({"image_mean": [0.4815, 0.4578, 0.4082], "image_std": [0.2686, 0.2613, 0.2758]}, "not a normalisation vitkit knows"),
    ({"do_normalize": False}, "do_normalize is false"),
    ({"do_rescale": False}, "not scaled by 1/255"),
    ({"image_mean": ["a", "b", "c"]}, "unreadable settings"),
    ([1, 2], "holds a JSON list"),
    ("{not json", "not valid JSON"),
])
def test_unknown_preprocessing_is_a_note_and_google(content, why, tmp_path):
    src = export(tiny(), tmp_path / "hf")
    text = content if isinstance(content, str) else json.dumps(content)
    (src / "preprocessor_config.json").write_text(text)
    _, card = vitkit.load(src)
    assert card.preprocess.normalize == "google"
    assert len(card.report.notes) == 1 and "preprocessor_config.json" in card.report.notes[0] and why in card.report.notes[0]


def test_hub_style_files_pick_the_normalisation(tmp_path):
    """transformers' own files: ViTImageProcessor's defaults (0.5 / 0.5, as Google's hub ViTs) read as "google", a file
    without mean / std too (they default to the same), ImageNet's as "imagenet", to the rounding other writers use."""
    src = export(tiny(), tmp_path / "hf", normalize="imagenet")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(src)
    assert vitkit.load(src).card.preprocess.normalize == "google"
    (src / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 32}}))
    assert vitkit.load(src).card.preprocess.normalize == "google"
    (src / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.48500001, 0.456, 0.406],
                                                              "image_std": [0.229, 0.224, 0.22500001]}))
    assert vitkit.load(src).card.preprocess.normalize == "imagenet"


def test_grayscale_model_processor_takes_grayscale_arrays(tmp_path):
    """A 1-channel model's processor has 1-value mean / std and no RGB conversion: transformers prepares (H, W, 1) arrays
    as vitkit prepares the same image for the model (its pipeline would make image files RGB, so arrays are given)."""
    model = tiny(in_chans=1)
    src = export(model, tmp_path / "hf")
    proc = json.loads((src / "preprocessor_config.json").read_text())
    assert proc["do_convert_rgb"] is False and len(proc["image_mean"]) == len(proc["image_std"]) == 1
    paths = write_images(tmp_path, IMAGES[:3], mode="L")
    arrays = [np.array(Image.open(p))[..., None] for p in paths]  # (H, W, 1)
    pixels = processor(src)(images=arrays, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (3, 1, 32, 32)
    ours = torch.stack([Preprocess.of(model, {"normalize": "imagenet"}).eval_transform()(load_image(p, 1)) for p in paths])
    assert (pixels - ours).abs().max() <= 1e-5
    pipe = transformers.pipeline("image-classification", model=str(src), device="cpu")
    for array, mine in zip(arrays, predict(str(src), paths, top_k=3, engine="torch", precision="fp32")):
        theirs = {r["label"]: r["score"] for r in pipe(array)}
        assert max(theirs, key=theirs.get) == mine["top"][0]["class"]
        assert max(abs(theirs[r["class"]] - r["prob"]) for r in mine["top"]) <= EXACT_TOL
    assert vitkit.load(src).card.preprocess.normalize == "imagenet"


# --- what Hugging Face's ViT cannot hold: refused with the field and the formats that can ----------------------------

SMALL = dict(width=32, depth=1, heads=2, mlp_dim=64, image_size=32, num_classes=2)
REFUSED = {
    "gap": (dict(pool="gap"), ["global-average-pooling", "pool='gap'", "class token", "vitkit, timm or npz", "--to timm"]),
    "gap-class-token": (dict(pool="gap", class_token=True), ["global-average-pooling", "vitkit or timm", "--to timm"]),
    "gap-fc-norm": (dict(pool="gap", fc_norm=True), ["global-average-pooling", "vitkit or timm", "--to timm"]),
    "hybrid": (dict(name="R+ViT-Ti/16"), ["hybrid (ResNet) stem", "vitkit, timm or npz"]),
    "pre-logits": (dict(representation_size=32), ["pre-logits layer", "representation_size=32", "num_classes=0", "--to npz"]),
    "not-square": (dict(image_size=(32, 48)), ["one image_size", "(32, 48) is not square"]),
}
SUFFIX = {"vitkit": "", "timm": ".safetensors", "npz": ".npz"}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hf_refusal_names_the_field_and_the_formats_that_hold_it(case, tmp_path):
    kw, words = REFUSED[case]
    kw = {**SMALL, **kw}
    model = jitter(vitkit.create_model(kw.pop("name", "ViT-Ti/16"), **kw))
    with pytest.raises(CheckpointError) as err:
        vitkit.save_model(model, tmp_path / "hf", format="hf")
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "hf").exists()
    # the formats the message names hold the model: written and read back, it computes the same
    named = re.search(r"as (vitkit(?:, \w+)*(?: or \w+)?)", msg)
    for fmt in [w for w in re.findall(r"\w+", named.group(1)) if w in SUFFIX] if named else []:
        path = vitkit.save_model(model, tmp_path / f"m{SUFFIX[fmt]}", format=fmt, overwrite=True)
        back = vitkit.load_model(path, format=fmt).eval()
        x = torch.randn(2, 3, *((32, 48) if case == "not-square" else (32, 32)))
        assert max_diff(back, model, x) <= 1e-5, fmt


def test_hf_holds_fc_norm_on_the_class_token(tmp_path):
    """LayerNorm acts on each token alone: normalising the class token after pooling (vitkit's fc_norm) is what
    transformers computes by normalising every token first."""
    model = jitter(vitkit.create_model("ViT-Ti/16", fc_norm=True, **SMALL))
    export(model, tmp_path / "hf", class_names=["a", "b"])
    ref = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert max_diff(ref, model, torch.randn(2, 3, 32, 32)) <= 1e-5


def test_convert_cli_refusal_is_one_line(tmp_path, capsys):
    from vitkit.cli import main

    src = vitkit.save_model(jitter(vitkit.create_model("ViT-Ti/16", pool="gap", **SMALL)), tmp_path / "gap")
    assert main(["convert", str(src), str(tmp_path / "out"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitkit convert: error: Hugging Face's ViT has no global-average-pooling head")
    assert err.count("\n") == 1 and "Traceback" not in err and "--to timm" in err
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(src), str(tmp_path / "out.safetensors"), "--to", "timm"]) == 0  # what it suggests works
