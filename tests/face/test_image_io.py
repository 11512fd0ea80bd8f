"""load_image: every image mode to upright RGB uint8, and a typed, actionable error for every bad file."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from hifi_portrait.errors import ImageLoadError
from hifi_portrait.utils.image_io import MAX_PIXELS_ENV, load_image, read_image_size


@pytest.fixture(scope="module")
def obama(data_dir) -> np.ndarray:
    return np.asarray(Image.open(data_dir / "obama.jpg").convert("RGB"))


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixel data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 10))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def _jpeg_header_only(width: int, height: int) -> bytes:
    """A tiny baseline JPEG whose SOF0 header claims width x height."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11" + b"\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\0" * 16 + b"\xff\xd9"


def test_plain_jpeg_is_rgb_uint8(data_dir):
    img = load_image(data_dir / "obama.jpg")
    assert img.dtype == np.uint8 and img.shape == (800, 640, 3)
    assert load_image((data_dir / "obama.jpg").read_bytes()).shape == img.shape


def test_cmyk_jpeg_converted_to_rgb(tmp_path, obama):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(obama).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    assert img.shape == obama.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - obama).mean() < 8  # colours survive (not inverted)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path, obama):
    grey8 = cv2.cvtColor(obama, cv2.COLOR_RGB2GRAY)
    path = tmp_path / "grey16.png"
    cv2.imwrite(str(path), grey8.astype(np.uint16) * 257)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    assert img.shape == (*grey8.shape, 3)
    assert np.abs(img[..., 0].astype(int) - grey8).max() <= 1  # clipping would turn almost everything white


def test_16bit_rgb_png(tmp_path, obama):
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), cv2.cvtColor(obama, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    img = load_image(path)
    assert img.shape == obama.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - obama).max() <= 1


def test_palette_png(tmp_path, obama):
    path = tmp_path / "palette.png"
    Image.fromarray(obama).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
    assert Image.open(path).mode == "P"
    img = load_image(path)
    assert img.shape == obama.shape
    assert np.abs(img.astype(int) - obama).mean() < 10


def test_rgba_png_composited_on_white(tmp_path, obama):
    rgba = np.dstack([obama, np.full(obama.shape[:2], 255, np.uint8)])
    rgba[:100, :, 3] = 0  # a transparent band on top
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = load_image(path)
    assert img.shape == obama.shape
    assert (img[:100] == 255).all()
    assert np.array_equal(img[100:], obama[100:])


def test_grayscale_jpeg(tmp_path, obama):
    path = tmp_path / "grey.jpg"
    Image.fromarray(obama).convert("L").save(path)
    img = load_image(path)
    assert img.shape == obama.shape
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_exif_rotated_photo_is_loaded_upright(tmp_path, obama, analyzer):
    # what a camera held sideways stores: pixels rotated 90 degrees, orientation tag 6 ("rotate 90 CW to view")
    stored = Image.fromarray(obama).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "exif6.jpg"
    stored.save(path, exif=exif, quality=95)
    assert Image.open(path).size == (obama.shape[0], obama.shape[1])  # stored sideways
    img = load_image(path)
    assert img.shape == obama.shape
    assert np.abs(img.astype(int) - obama).mean() < 4
    analysis = analyzer.analyze(path)
    assert abs(analysis.pose.roll) < 10  # analysed upright, not lying on its side


@pytest.mark.parametrize("make", [_png_header_only, _jpeg_header_only], ids=["png", "jpeg"])
def test_huge_header_refused_before_decoding(tmp_path, make):
    data = make(50000, 50000)
    assert len(data) < 200
    path = tmp_path / "huge.img"
    path.write_bytes(data)
    assert read_image_size(path) == (50000, 50000)
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match=r"50000x50000.*limit"):
        load_image(path)
    assert time.perf_counter() - start < 0.5


def test_pixel_limit_is_configurable(data_dir, monkeypatch):
    with pytest.raises(ImageLoadError, match="limit"):
        load_image(data_dir / "obama.jpg", max_pixels=100_000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "100000")
    with pytest.raises(ImageLoadError, match=MAX_PIXELS_ENV):
        load_image(data_dir / "obama.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty.jpg.*0 bytes"):
        load_image(path)


def test_truncated_jpeg(tmp_path, data_dir):
    data = (data_dir / "obama.jpg").read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"truncated\.jpg.*truncated or corrupt"):
        load_image(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError, match=r"corrupt\.jpg.*not a readable image"):
        load_image(path)


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageLoadError, match=r"notes\.txt.*JPEG, PNG or WebP"):
        load_image(path)
