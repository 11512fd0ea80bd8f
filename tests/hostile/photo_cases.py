"""Generators of hostile photo files for the bad-input corpus (tests/hostile/test_photos.py).

Every case is made at test time from a few bundled photos or from nothing (no big stored files). A case is
``(id, make, expect)``: ``make(folder)`` writes the file and returns its path (or bytes); ``expect`` is either
``("error", pattern)`` (``load_image`` must raise ``ImageLoadError`` matching ``pattern``) or ``("ok", check)``
(``check(array)`` must hold for the decoded ``(H, W, 3)`` uint8 array).
"""

from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data"


def photo(side: int = 96) -> np.ndarray:
    """A small real photo (the bundled obama.jpg, resized) as RGB uint8."""
    return np.asarray(Image.open(DATA / "obama.jpg").convert("RGB").resize((side, side), Image.BILINEAR))


def encode(array: np.ndarray | Image.Image, fmt: str, **kwargs) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few bytes whose header claims ``width`` x ``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int, progressive: bool = False) -> bytes:
    """A complete small JPEG (end marker included) whose frame header is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(photo(64), "JPEG", quality=50, progressive=progressive))
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_float(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


def multipage(fmt: str, pages: int = 3) -> bytes:
    frames = [Image.fromarray(np.roll(photo(64), 16 * i, axis=1)) for i in range(pages)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def _fifo(folder: Path) -> Path:
    path = folder / "pipe.jpg"
    os.mkfifo(path)
    return path


def _dangling(folder: Path) -> Path:
    path = folder / "dangling.jpg"
    path.symlink_to(folder / "gone.jpg")
    return path


def _loop(folder: Path) -> Path:
    path = folder / "loop.jpg"
    path.symlink_to(path.name)
    return path


def _socket(folder: Path) -> Path:
    path = folder / "sock.jpg"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # the socket file stays after the close
    server.close()
    return path


def _folder(folder: Path) -> Path:
    path = folder / "album.jpg"
    path.mkdir()
    return path


def _link_to_photo(folder: Path) -> Path:
    target = folder / "real.jpg"
    target.write_bytes(encode(photo(), "JPEG"))
    path = folder / "link.jpg"
    path.symlink_to(target)
    return path


def _is_photo(arr: np.ndarray, side: int = 96, tol: float = 12.0) -> bool:
    return (
        arr.shape == (side, side, 3) and arr.dtype == np.uint8 and np.abs(arr.astype(int) - photo(side)).mean() < tol
    )


def _rgb(shape: tuple[int, int]) -> Callable[[np.ndarray], bool]:
    return lambda arr: arr.shape == (*shape, 3) and arr.dtype == np.uint8


def _exif_rotated(orientation: int) -> bytes:
    """The photo stored as a camera would for EXIF ``orientation`` (so that applying the tag gives it back)."""
    inverse = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(photo()).transpose(inverse), "JPEG", quality=95, exif=exif)


def load_image_cases() -> list[tuple[str, Callable, tuple]]:
    """The corpus of files for ``load_image``: each a typed error with a clear reason, or a correct image."""
    good_jpeg = encode(photo(), "JPEG", quality=90)
    good_png = encode(photo(), "PNG")
    ramp = np.linspace(0.0, 1.0, 64 * 64).reshape(64, 64)
    with_inf = ramp.copy()
    with_inf[0, :8] = np.inf
    with_inf[1, :8] = -np.inf
    with_nan = ramp.copy()
    with_nan[::7, ::5] = np.nan
    errors = [
        ("empty", _write("empty.jpg", b""), "0 bytes"),
        ("one-byte", _write("one.jpg", b"\xff"), "not a readable image"),
        ("jpeg-soi-only", _write("soi.jpg", b"\xff\xd8\xff"), "not a readable image|truncated"),
        ("jpeg-cut-10pc", _write("cut10.jpg", good_jpeg[: len(good_jpeg) // 10]), "truncated"),
        ("jpeg-cut-50pc", _write("cut50.jpg", good_jpeg[: len(good_jpeg) // 2]), "truncated"),
        ("jpeg-cut-90pc", _write("cut90.jpg", good_jpeg[: len(good_jpeg) * 9 // 10]), "truncated"),
        ("jpeg-no-eoi", _write("noeoi.jpg", good_jpeg[:-2]), "truncated"),
        ("jpeg-claims-6000-with-eoi", _write("claims.jpg", jpeg_claiming(6000, 6000)), "claims 6000x6000.*truncated"),
        (
            "jpeg-progressive-claims-6000",
            _write("claimsp.jpg", jpeg_claiming(6000, 6000, progressive=True)),
            "claims 6000x6000.*truncated",
        ),
        ("jpeg-claims-50000", _write("bomb.jpg", jpeg_claiming(50000, 50000)), "50000x50000.*limit"),
        ("png-claims-50000", _write("bomb.png", png_claiming(50000, 50000)), "50000x50000.*limit"),
        ("png-claims-1x10e8", _write("strip.png", png_claiming(100_000_000, 1)), "limit"),
        ("png-cut", _write("cut.png", good_png[: len(good_png) // 2]), "truncated|corrupt"),
        ("png-bad-crc", _write("crc.png", good_png[:30] + bytes([good_png[30] ^ 0xFF]) + good_png[31:]), "corrupt"),
        ("random-bytes", _write("noise.jpg", np.random.default_rng(0).bytes(4096)), "not a readable image"),
        ("text", _write("notes.jpg", b"these are not pixels\n" * 20), "not a readable image"),
        ("html", _write("page.png", b"<!doctype html><html><body>404</body></html>"), "not a readable image"),
        ("pdf", _write("doc.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n"), "not a readable image"),
        ("zip", _write("archive.png", b"PK\x03\x04" + b"\0" * 60), "not a readable image"),
        ("svg", _write("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg"/>'), "not a readable image"),
        ("gif-cut", _write("cut.gif", multipage("GIF")[:200]), "truncated|corrupt|not a readable"),
        ("webp-cut", _write("cut.webp", encode(photo(), "WEBP")[:100]), "truncated|corrupt|not a readable"),
        ("bmp-bad-header", _write("bad.bmp", b"BM" + b"\xff" * 60), "not a readable image|corrupt|truncated"),
        ("tiff-all-nan", _write("nan.tif", tiff_float(np.full((16, 16), np.nan))), "finite"),
        ("fifo", _fifo, "named pipe"),
        ("dangling-link", _dangling, "dangling symbolic link"),
        ("link-loop", _loop, "symbolic link loop"),
        ("socket", _socket, "socket"),
        ("folder", _folder, "folder"),
        ("char-device-null", lambda folder: Path("/dev/null"), "character device"),
        ("char-device-zero", lambda folder: Path("/dev/zero"), "character device"),
        ("missing", lambda folder: folder / "nope.jpg", "no such file"),
        ("bytes-empty", lambda folder: b"", "empty"),
        ("bytes-garbage", lambda folder: b"\x00\x01garbage" * 9, "not a readable image"),
    ]
    oks = [
        ("jpeg", _write("ok.jpg", good_jpeg), _is_photo),
        ("png-named-jpg", _write("png.jpg", good_png), _is_photo),
        ("jpeg-named-png", _write("jpeg.png", good_jpeg), _is_photo),
        ("jpeg-trailing-garbage", _write("tail.jpg", good_jpeg + b"\0garbage after the end marker" * 50), _is_photo),
        ("symlink-to-photo", _link_to_photo, _is_photo),
        ("bytes-jpeg", lambda folder: good_jpeg, _is_photo),
        ("webp", _write("ok.webp", encode(photo(), "WEBP", quality=95)), _is_photo),
        ("bmp", _write("ok.bmp", encode(photo(), "BMP")), _is_photo),
        (
            "cmyk-jpeg",
            _write("cmyk.jpg", encode(Image.fromarray(photo()).convert("CMYK"), "JPEG", quality=95)),
            _is_photo,
        ),
        ("grey-jpeg", _write("grey.jpg", encode(Image.fromarray(photo()).convert("L"), "JPEG")), _rgb((96, 96))),
        ("one-bit", _write("bw.png", encode(Image.fromarray(photo()).convert("1"), "PNG")), _rgb((96, 96))),
        (
            "palette-transparent",
            _write("p.png", encode(Image.fromarray(photo()).convert("P"), "PNG", transparency=0)),
            _rgb((96, 96)),
        ),
        ("rgba", _write("rgba.png", encode(Image.fromarray(photo()).convert("RGBA"), "PNG")), _is_photo),
        ("la", _write("la.png", encode(Image.fromarray(photo()).convert("LA"), "PNG")), _rgb((96, 96))),
        (
            "grey-16bit",
            _write("g16.png", encode(Image.fromarray(photo()[..., 0].astype(np.uint16) * 257), "PNG")),
            lambda a: a.shape == (96, 96, 3) and a.max() > 200,  # scaled to 8 bits, not clipped to white
        ),
        ("one-pixel", _write("px.png", encode(np.full((1, 1, 3), 200, np.uint8), "PNG")), _rgb((1, 1))),
        ("very-wide", _write("wide.png", encode(np.zeros((1, 20000, 3), np.uint8), "PNG")), _rgb((1, 20000))),
        (
            "float-tiff-inf",  # inf pixels must not set the scale (the photo would decode almost black)
            _write("inf.tif", tiff_float(with_inf)),
            lambda a: (
                a.shape == (64, 64, 3)
                and np.abs(a[2:, :, 0].astype(int) - np.round(ramp[2:] * 255)).max() <= 1
                and a[0, 0, 0] == 255
                and a[1, 0, 0] == 0
            ),
        ),
        (
            "float-tiff-nan",
            _write("nan_some.tif", tiff_float(with_nan)),
            lambda a: a.shape == (64, 64, 3) and a[0, 0, 0] == 0 and abs(float(a[1:, 1:].mean()) - 128) < 10,
        ),
        ("float-tiff-negative", _write("neg.tif", tiff_float(ramp - 0.5)), lambda a: a.min() == 0 and a.max() > 100),
        ("float-tiff-0-255", _write("f255.tif", tiff_float(ramp * 255)), lambda a: a.max() >= 254 and a.min() == 0),
        ("multi-page-tiff", _write("pages.tif", multipage("TIFF")), lambda a: _is_photo(a, 64)),
        ("animated-gif", _write("anim.gif", multipage("GIF")), lambda a: a.shape == (64, 64, 3)),
    ]
    oks += [(f"exif-orientation-{o}", _write(f"exif{o}.jpg", _exif_rotated(o)), _is_photo) for o in range(2, 9)]
    cases = [(name, make, ("error", pattern)) for name, make, pattern in errors]
    return cases + [(name, make, ("ok", check)) for name, make, check in oks]
