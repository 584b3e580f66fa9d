"""Property-based tests (hypothesis, derandomized: the same examples every run): whatever a user writes into a config,
an option or a file, vitkit either honours it or refuses it with an error that names the key, the option or the file,
never another exception. Over config values (apply_overrides + validate), the command line's numeric options
(parse level), corrupted image bytes (load_image) and corrupted checkpoints (vitkit.load)."""
import contextlib
import io
import math
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Literal

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitkit
from vitkit.cli import build_parser
from vitkit.config import Config, _base, apply_overrides, validate, valid_keys
from vitkit.convert.common import CheckpointError
from vitkit.data.datasets import DatasetError, load_image

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = valid_keys()


def _annotation(key: str):
    *path, leaf = key.split(".")
    obj = Config()
    for part in path:
        obj = getattr(obj, part)
    return typing.get_type_hints(type(obj))[leaf]


# --- config values ---------------------------------------------------------------------------------------------------

NUMBERS = st.one_of(st.integers(-3, 3), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 0.5, 1.0, 1e8, 2**63, 2**53 + 1, 10**400, 1e-9, float("nan"), float("inf")]))
VALUES = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=8), st.lists(st.integers(), max_size=2),
                   st.sampled_from(["auto", "fp16", "gap", "token", "digits", "ViT-S/16", "folder:/nonexistent", "cosine",
                                    "none", "Null", "folder:" + "x" * 300, "x" * 300, "folder:~nosuchuser/x"]))


REFUSED = object()


def _landed(key: str, apply):
    """The value at `key` after `apply(cfg)` and validate, or REFUSED when refused by a ValueError naming `key`."""
    cfg = Config()
    try:
        validate(apply(cfg))
    except ValueError as err:  # DatasetError and CheckpointError are ValueErrors
        assert key in str(err), (key, str(err))
        return REFUSED
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


@settings(FUZZ, max_examples=1500)
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_a_typed_config_value_is_honoured_or_refused_naming_its_key(key, value):
    """A config file's value (JSON types: numbers, booleans, null, strings, lists)."""
    obj = _landed(key, lambda c: apply_overrides(c, {key: value}))
    base, optional = _base(_annotation(key))
    if obj is REFUSED or isinstance(value, str) and base in (int, float, bool):
        return  # a string for a number or a flag is parsed as --set's text (next test)
    choice = typing.get_origin(base) is Literal and value in typing.get_args(base)  # "none" of model.posemb stays
    if optional and isinstance(value, str) and value.lower() in ("none", "null") and not choice:
        value = None  # as --set's text
    want = float(value) if base is float and value is not None else value  # an int for a float field: as close as a float is
    assert obj == want and (value is None or type(obj) is (base if base in (int, float, bool) else str)), (key, value, obj)
    assert not isinstance(obj, float) or math.isfinite(obj)


TEXTS = st.one_of(NUMBERS.map(repr), st.integers().map(str), st.text(max_size=6),
                  st.sampled_from(["none", "null", "true", "false", "yes", "off", "1e3", "1_000", "-0", "0x10", "nan", "inf",
                                   "3.5", " 2", "ViT-B/16", "digits", "fsdp", "sigmoid"]))


@settings(FUZZ, max_examples=1500)
@given(key=st.sampled_from(KEYS), text=TEXTS)
def test_a_set_text_is_honoured_or_refused_naming_its_key(key, text):
    """--set KEY=TEXT: parsed as the field's type, then validated."""
    obj = _landed(key, lambda c: apply_overrides(c, [f"{key}={text}"]))
    base, optional = _base(_annotation(key))
    text = text.strip()
    if obj is REFUSED:
        return
    if optional and text.lower() in ("none", "null") and not (typing.get_origin(base) is Literal and text in typing.get_args(base)):
        assert obj is None  # ("none" that is a choice, model.posemb's, stays the choice: the else branch)
    elif base is int:
        try:
            want = int(text)
        except ValueError:
            want = int(float(text))
        assert type(obj) is int and obj == want
    elif base is float:
        assert type(obj) is float and obj == float(text) and math.isfinite(obj)
    elif base is bool:
        assert obj is (text.lower() in ("1", "true", "yes", "on"))
    else:
        assert obj == text


# --- command-line options (parse level) --------------------------------------------------------------------------------

POSITIVE, NATURAL = (lambda v: v >= 1), (lambda v: v >= 0)
OPTIONS = [  # (argv before the option, option, type, what the issue asks of a value)
    (["predict", "M", "x.png"], "--top-k", int, POSITIVE),
    (["predict", "M", "x.png"], "--alpha", float, lambda v: math.isfinite(v) and 0 <= v <= 1),
    (["predict", "M", "x.png"], "--min-score", float, lambda v: math.isfinite(v) and 0 <= v <= 1),
    (["fewshot", "M", "--data", "digits"], "--seeds", int, POSITIVE),
    (["fewshot", "M", "--data", "digits"], "--l2", float, lambda v: math.isfinite(v) and v > 0),
    (["fewshot", "M", "--data", "digits"], "--resolution", int, POSITIVE),
    (["eval", "M", "--data", "digits"], "--batch-size", int, lambda v: 1 <= v <= 2**20),
    (["eval", "M", "--data", "digits"], "--resolution", int, POSITIVE),
    (["finetune", "M", "--data", "digits"], "--resolution", int, POSITIVE),
    (["analyze", "M", "--out", "a"], "--num-images", int, POSITIVE),
    (["analyze", "M", "--out", "a"], "--head", int, NATURAL),
    (["export", "M", "--out", "m.onnx"], "--resolution", int, POSITIVE),
    (["export", "M", "--out", "m.onnx"], "--opset", int, POSITIVE),  # which opsets: the exporter's (test_ranges)
    (["convert", "M", "--out", "c"], "--num-classes", int, NATURAL),
]
# the comma lists, parsed by their verbs (an error is the verb's, exit status 2): (option, ARGUMENTS name, type, ask)
LISTS = [("--shots", "shots", int, POSITIVE), ("--lr-sweep", "lr", float, lambda v: math.isfinite(v) and v > 0)]
PARSER = build_parser()


def _expected(parts: list[str], kind: type, ok) -> list | None:
    """What the values should parse to, or None when they should be refused."""
    try:
        values = [kind(part) for part in parts]
    except ValueError:
        return None
    return values if values and all(ok(v) for v in values) else None


@settings(FUZZ, max_examples=1000)
@given(option=st.sampled_from(OPTIONS), text=TEXTS)
def test_an_option_is_parsed_in_range_or_refused_naming_it(option, text):
    argv, flag, kind, ok = option
    want = _expected([text], kind, ok)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = PARSER.parse_args([*argv, f"{flag}={text}"])
        except SystemExit as exit:
            assert exit.code == 2 and f"argument {flag}" in err.getvalue(), (flag, text, err.getvalue())
            assert want is None, (flag, text, want, err.getvalue())
            return
    assert want == [getattr(args, flag[2:].replace("-", "_"))], (flag, text, want)


@settings(FUZZ, max_examples=500)
@given(option=st.sampled_from(LISTS), texts=st.lists(TEXTS, min_size=1, max_size=3))
def test_a_list_option_is_parsed_in_range_or_refused_naming_it(option, texts):
    from vitkit.cli import _number_list

    flag, name, kind, ok = option
    text = ",".join(texts)
    want = _expected([t for t in text.split(",") if t.strip()], kind, ok)
    try:
        got = _number_list(text, flag, name, "1,2")
    except ValueError as err:
        assert want is None and str(err).startswith(f"{flag} {text!r}: "), (text, want, str(err))
        return
    assert got == want, (text, got, want)


# --- corrupted image bytes ---------------------------------------------------------------------------------------------

def _images() -> dict[str, bytes]:
    """Small valid files of the formats and modes load_image reads."""
    import numpy as np

    out = {}
    rgb = Image.fromarray(np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3))
    for name, im, fmt in (("rgb.png", rgb, "PNG"), ("rgb.jpg", rgb, "JPEG"), ("pal.gif", rgb.convert("P"), "GIF"),
                          ("la.png", rgb.convert("LA"), "PNG"), ("rgb.bmp", rgb, "BMP"), ("rgb.webp", rgb, "WEBP"),
                          ("i16.png", Image.fromarray(np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000), "PNG"),
                          ("f.tif", Image.fromarray(np.linspace(0, 1, 30, dtype=np.float32).reshape(6, 5)), "TIFF")):
        buf = io.BytesIO()
        im.save(buf, fmt)
        out[name] = buf.getvalue()
    return out


IMAGES = _images()


@st.composite
def corrupted(draw, files: dict[str, bytes]):
    """(name, bytes): a valid file with bytes flipped, a part cut out or repeated, or truncated."""
    name = draw(st.sampled_from(sorted(files)))
    data = bytearray(files[name])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip", "flip", "byte", "truncate", "cut", "repeat"]))
        # mostly past the magic number and the first header fields: a file PIL opens, and then fails to decode
        start = draw(st.sampled_from([0, min(24, len(data) // 2), min(24, len(data) // 2)]))
        i = draw(st.integers(start, max(len(data) - 1, start)))
        if kind == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            data = data[:i]
        elif kind == "cut":
            data = data[:i] + data[i + draw(st.integers(1, 16)):]
        else:
            data = data[:i] + data[i:i + 8] * draw(st.integers(2, 4)) + data[i:]
    return name, bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's on the broken TIFF tags and EXIF blocks it reads past
@settings(FUZZ, max_examples=1500)
@given(file=corrupted(IMAGES), channels=st.sampled_from([1, 3]), size=st.sampled_from([None, 8]))
def test_a_corrupted_image_is_read_or_refused_naming_it(file, channels, size):
    name, data = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            x = load_image(path, channels, size)
        except DatasetError as err:
            assert str(path) in str(err) and "\n" not in str(err), str(err)
            return
    assert x.dtype == torch.uint8 and x.ndim == 3 and x.shape[0] == channels
    assert size is None or tuple(x.shape[1:]) == (size, size)


# --- corrupted checkpoints ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny model saved as vitkit and as Hugging Face directories (model.safetensors + config.json each)."""
    root = tmp_path_factory.mktemp("ckpt")
    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=8, patch_size=4, width=16, depth=1, heads=2, mlp_dim=32)
    return {fmt: vitkit.save_model(model, root / fmt, format=fmt, class_names=["a", "b", "c"]) for fmt in ("vitkit", "hf")}


@st.composite
def checkpoint_damage(draw):
    fmt = draw(st.sampled_from(["vitkit", "hf"]))
    file = draw(st.sampled_from(["model.safetensors", "config.json"]))
    return fmt, file, draw(st.randoms(use_true_random=False))


def _damage(data: bytes, rnd, file: str) -> bytes:
    """Flip bits, overwrite digits (config.json: a number changed, the file still JSON) or truncate."""
    data = bytearray(data)
    kind = rnd.choice(["flip", "truncate", "digit"] if file == "config.json" else ["flip", "flip", "truncate", "header"])
    if kind == "truncate":
        return bytes(data[:rnd.randrange(len(data))])
    if kind == "digit":
        places = [i for i, b in enumerate(data) if chr(b).isdigit()]
        for i in rnd.sample(places, min(len(places), rnd.randint(1, 3))):
            data[i] = ord(rnd.choice("0123456789-."))
        return bytes(data)
    end = 8 + int.from_bytes(data[:8], "little") if kind == "header" else len(data)  # safetensors: 8 bytes, then JSON
    for _ in range(rnd.randint(1, 4)):
        i = rnd.randrange(min(end, len(data)))
        data[i] ^= 1 << rnd.randrange(8)
    return bytes(data)


def _load_damaged(damage, checkpoints) -> tuple[Path, Exception | None]:
    """(the damaged checkpoint's path, the error loading it raised or None); any other exception propagates."""
    fmt, file, rnd = damage
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / f"{fmt}-ckpt"
        shutil.copytree(checkpoints[fmt], ckpt)
        (ckpt / file).write_bytes(_damage((ckpt / file).read_bytes(), rnd, file))
        try:
            model, _ = vitkit.load(ckpt)
        except (CheckpointError, ValueError, FileNotFoundError) as err:
            return ckpt, err
    assert model.config.num_classes >= 0
    return ckpt, None


@settings(FUZZ, max_examples=600)
@given(damage=checkpoint_damage())
def test_a_corrupted_checkpoint_loads_or_is_refused(damage, checkpoints):
    ckpt, err = _load_damaged(damage, checkpoints)
    if isinstance(err, (CheckpointError, FileNotFoundError)):  # what convert/ raises names the file
        assert str(ckpt) in str(err), f"{type(err).__name__}: {err}"


@settings(FUZZ, max_examples=300)
@given(damage=checkpoint_damage())
def test_a_corrupted_checkpoint_is_refused_naming_it(damage, checkpoints):
    ckpt, err = _load_damaged(damage, checkpoints)
    assert err is None or str(ckpt) in str(err), f"{type(err).__name__}: {err}"
