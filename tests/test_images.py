"""load_image, the one image reader of predict, eval, training on image folders and analyze: every mode PIL opens,
upright, to 8 bits. Each expectation is worked by hand or comes from numpy (rot90 / transpose of the pixels written),
never from the reader's own formula."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.datasets import DatasetError, load_image

ORIENTATION = 0x0112  # the EXIF tag
PIXELS = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 14  # (H, W, C), every value distinct


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


def save_with_orientation(path, pixels, orientation, **kw):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **kw)


# EXIF 2.32, tag 0x0112: what the viewer does to the stored pixels to show them upright
@pytest.mark.parametrize("orientation,upright", [
    (1, lambda a: a),
    (2, np.fliplr),
    (3, lambda a: np.rot90(a, 2)),
    (5, lambda a: a.transpose(1, 0, 2)),
    (6, lambda a: np.rot90(a, -1)),  # 90 degrees clockwise: a phone held upright
    (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    save_with_orientation(tmp_path / "a.png", PIXELS, orientation)  # PNG's eXIf chunk: lossless
    x = load_image(tmp_path / "a.png", 3)
    assert np.array_equal(hwc(x), upright(PIXELS))


@pytest.mark.parametrize("exif", [b"Exif\x00\x00garbage!", b"Exif\x00\x00MM\x00*\x00\x00"],
                         ids=["not-tiff", "truncated"])
def test_an_unparsable_exif_block_is_no_orientation(tmp_path, exif):
    """PIL cannot parse these (SyntaxError, struct.error); the pixels are fine and read as stored, as before."""
    Image.fromarray(PIXELS).save(tmp_path / "a.png", exif=exif)
    assert np.array_equal(hwc(load_image(tmp_path / "a.png", 3)), PIXELS)


def test_exif_orientation_of_a_phone_jpeg(tmp_path):
    blocks = np.array([[[200, 30, 30], [30, 200, 30]], [[30, 30, 200], [220, 220, 40]]], np.uint8)  # (2, 2, 3)
    pixels = blocks.repeat(16, axis=0).repeat(8, axis=1)  # 32 x 16: uniform 8 x 8 blocks keep JPEG's error small
    save_with_orientation(tmp_path / "a.jpg", pixels, 6, quality=95, subsampling=0)  # 4:4:4, no colour bleed
    x = load_image(tmp_path / "a.jpg", 3)
    assert x.shape == (3, 16, 32)
    assert np.abs(hwc(x).astype(int) - np.rot90(pixels, -1).astype(int)).max() <= 12


def test_exif_orientation_with_a_resize(tmp_path):
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, :4] = 255  # left half white: after a clockwise turn, the top half
    save_with_orientation(tmp_path / "a.png", pixels, 6)
    x = load_image(tmp_path / "a.png", 1, size=2)[0]
    assert x.shape == (2, 2) and x[0].min() > 200 and x[1].max() < 60  # bilinear with antialiasing blurs the edge


def test_sixteen_bit_png_spans_the_full_range(tmp_path):
    v = np.array([[0, 128, 129, 257, 32768, 65535]], np.uint16)
    Image.fromarray(v).save(tmp_path / "a.png")  # a 16-bit grayscale PNG
    # round(v * 255 / 65535) by hand: 0, 0.498, 0.502, 1, 127.50, 255
    assert load_image(tmp_path / "a.png", 1)[0].tolist() == [[0, 0, 1, 1, 128, 255]]
    assert load_image(tmp_path / "a.png", 3)[:, 0, 3].tolist() == [1, 1, 1]


def test_sixteen_bit_big_endian_tiff_and_pgm(tmp_path):
    Image.fromarray(np.array([[0, 257, 65535]], np.uint16).astype(">u2")).save(tmp_path / "a.tif")  # mode I;16B
    assert load_image(tmp_path / "a.tif", 1)[0].tolist() == [[0, 1, 255]]
    (tmp_path / "a.pgm").write_bytes(b"P2 3 1 65535 0 257 65535\n")  # PIL opens it as mode I
    assert load_image(tmp_path / "a.pgm", 1)[0].tolist() == [[0, 1, 255]]


def test_thirty_two_bit_integers_beyond_sixteen_bits_are_refused(tmp_path):
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "a.tif")
    at = re.escape(str(tmp_path / "a.tif"))  # the message starts with the file, not with "cannot read"
    with pytest.raises(DatasetError, match=rf"^{at}: a 32-bit integer image \(PIL mode 'I'\) with values in \[0, 70000\]; .*rescale"):
        load_image(tmp_path / "a.tif", 1)


def test_float_tiff_in_zero_one(tmp_path):
    Image.fromarray(np.array([[0.0, 0.1, 0.25, 0.5, 1.0]], np.float32)).save(tmp_path / "a.tif")
    # x 255 by hand: 0, 25.5, 63.75, 127.5, 255 (halves round up)
    assert load_image(tmp_path / "a.tif", 1)[0].tolist() == [[0, 26, 64, 128, 255]]


def test_float_tiff_in_zero_255_is_taken_as_it_is(tmp_path):
    Image.fromarray(np.array([[0.0, 2.4, 100.6, 255.0]], np.float32)).save(tmp_path / "a.tif")
    assert load_image(tmp_path / "a.tif", 3)[:, 0].T.tolist() == [[0] * 3, [2] * 3, [101] * 3, [255] * 3]


@pytest.mark.parametrize("values,shown", [([-1.0, 0.5], r"values in \[-1, 0\.5\]"), ([0.0, 300.0], r"values in \[0, 300\]"),
                                          ([0.0, float("nan")], "NaN or infinite values")])
def test_float_outside_both_ranges_is_refused(tmp_path, values, shown):
    Image.fromarray(np.array([values], np.float32)).save(tmp_path / "a.tif")
    at = re.escape(str(tmp_path / "a.tif"))
    with pytest.raises(DatasetError, match=rf"^{at}: a float image \(PIL mode 'F'\) with {shown}.*\[0, 1\] or \[0, 255\]"):
        load_image(tmp_path / "a.tif", 1)


def test_palette_with_transparency_is_white_where_transparent(tmp_path):
    im = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.save(tmp_path / "a.png", transparency=1)  # green is the transparent index
    assert hwc(load_image(tmp_path / "a.png", 3))[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]
    im.save(tmp_path / "b.png")  # the same palette, nothing transparent
    assert hwc(load_image(tmp_path / "b.png", 3))[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_gray_with_alpha(tmp_path):
    Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", 1)[0].tolist() == [[255, 50]]


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 255, 0], [0, 0, 0, 255]]], np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "a.tif")
    # white, cyan, red, black
    assert hwc(load_image(tmp_path / "a.tif", 3))[0].tolist() == [[255, 255, 255], [0, 255, 255], [255, 0, 0], [0, 0, 0]]


def test_one_bit(tmp_path):
    Image.fromarray(np.array([[False, True, True]])).save(tmp_path / "a.png")  # mode 1
    assert load_image(tmp_path / "a.png", 1)[0].tolist() == [[0, 255, 255]]


def test_ycbcr(tmp_path):
    Image.fromarray(np.array([[[255, 128, 128], [0, 128, 128]]], np.uint8), "YCbCr").save(tmp_path / "a.tif")
    assert hwc(load_image(tmp_path / "a.tif", 3))[0].tolist() == [[255, 255, 255], [0, 0, 0]]  # no chroma: grays


@pytest.mark.parametrize("suffix", ["gif", "tif"])
def test_multi_frame_files_give_their_first_frame(tmp_path, suffix):
    red, blue = Image.new("RGB", (4, 2), (255, 0, 0)), Image.new("RGB", (4, 2), (0, 0, 255))
    red.save(tmp_path / f"a.{suffix}", save_all=True, append_images=[blue])
    with Image.open(tmp_path / f"a.{suffix}") as im:
        assert im.n_frames == 2
    x = load_image(tmp_path / f"a.{suffix}", 3)
    assert x.shape == (3, 2, 4) and x[:, 0, 0].tolist() == [255, 0, 0]


def test_ordinary_eight_bit_images_are_read_as_written(tmp_path):
    rng = np.random.default_rng(0)
    rgb, gray = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), rng.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(hwc(load_image(tmp_path / "rgb.png", 3)), rgb)
    assert np.array_equal(load_image(tmp_path / "gray.png", 1)[0].numpy(), gray)
    assert np.array_equal(hwc(load_image(tmp_path / "gray.png", 3)), np.stack([gray] * 3, axis=-1))


def test_truncated_and_non_image_files_name_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "half.png").write_bytes((tmp_path / "whole.png").read_bytes()[:2000])
    (tmp_path / "notes.jpg").write_text("not an image")
    for name in ("half.png", "notes.jpg"):
        with pytest.raises(DatasetError, match=rf"{re.escape(name)}: cannot read this image \(.*\); replace or remove the file"):
            load_image(tmp_path / name, 3)
