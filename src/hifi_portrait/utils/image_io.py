"""Reading photos safely: size limit checked before decoding, EXIF orientation applied, every mode to RGB uint8.

:func:`load_image` is the one entry point used by face analysis, the dataset builder and the CLI. It returns an
upright ``(H, W, 3)`` RGB ``uint8`` array or raises :class:`~hifi_portrait.errors.ImageLoadError` with a
message naming the file and what to do.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hifi_portrait.errors import ImageLoadError
from hifi_portrait.utils.files import not_a_regular_file

logger = logging.getLogger(__name__)

#: Default largest accepted image, in pixels (width x height), checked from the header before decoding.
DEFAULT_MAX_PIXELS = 40_000_000
#: Environment variable that overrides :data:`DEFAULT_MAX_PIXELS`.
MAX_PIXELS_ENV = "HIFI_PORTRAIT_MAX_PIXELS"

#: File name extensions treated as images when a folder is scanned.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview

_PIL_LIMIT_LOCK = threading.Lock()


def default_max_pixels() -> int:
    """The pixel limit: ``$HIFI_PORTRAIT_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value:
        try:
            return int(float(value))
        except ValueError:
            logger.warning("ignoring %s=%r (not a number)", MAX_PIXELS_ENV, value)
    return DEFAULT_MAX_PIXELS


def _describe(source: ImageSource) -> str:
    return str(source) if isinstance(source, str | os.PathLike) else f"<{len(source)} bytes>"


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an ``(H, W, 3)`` uint8 RGB array (16-bit scaled, alpha composited on white)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image).astype(np.float64)
        if mode == "I":  # 32-bit ints: PNG 16-bit grey decodes as "I" with values in 0..65535
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        else:
            top = 65535.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = _finite_floats(np.asarray(image, dtype=np.float64))
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0 if arr.max() <= 255 else 65535.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "CMYK":
        # PIL's CMYK->RGB is the naive complement; JPEG CMYK from Adobe tools is stored inverted, which PIL
        # already undoes on decoding, so the plain conversion is right for both.
        return np.asarray(image.convert("RGB"))
    if mode != "RGB":
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)


def _finite_floats(arr: np.ndarray) -> np.ndarray:
    """Float pixels with NaN -> 0, +inf -> the largest finite value, -inf -> 0 (so the scale is not set by inf)."""
    finite = np.isfinite(arr)
    if not finite.any():
        raise ValueError("no pixel has a finite value (all NaN or infinite)")
    if finite.all():
        return arr
    top = float(arr[finite].max())
    return np.nan_to_num(arr, nan=0.0, posinf=max(top, 0.0), neginf=0.0)


#: JPEG start-of-frame markers of arithmetic-coded images (their data can be smaller than one bit per block).
_ARITHMETIC_SOF = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_is_arithmetic(head: bytes) -> bool:
    """Whether the first start-of-frame marker in a JPEG's header segments is an arithmetic-coding one."""
    pos = 2
    while pos + 4 <= len(head) and head[pos] == 0xFF:
        marker = head[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker in _ARITHMETIC_SOF
        if marker == 0xDA:  # start of scan: no frame header before it
            return False
        pos += 2 + int.from_bytes(head[pos + 2 : pos + 4], "big")
    return False


def _check_jpeg_data_size(image: Image.Image, source: ImageSource, name: str) -> None:
    """Refuse a JPEG with fewer bytes than its header's size needs (a truncated file re-terminated by an EOI).

    A Huffman-coded JPEG spends at least one bit on every 8x8 block of every component, so it has at least
    ``width * height / 512`` bytes; libjpeg decodes a shorter one as flat grey with only a warning.
    """
    if image.format != "JPEG":
        return
    if isinstance(source, bytes | bytearray | memoryview):
        size, head = len(source), bytes(source[:65536])
    else:
        size = os.stat(source).st_size
        with open(source, "rb") as handle:
            head = handle.read(65536)
    width, height = image.size
    needed = width * height // 512
    if size < needed and not _jpeg_is_arithmetic(head):
        raise ImageLoadError(
            f"{name}: the JPEG header claims {width}x{height} but the file has only {size} bytes of data (such an "
            f"image needs at least {needed}): the file is truncated; re-export or re-download the photo."
        )


def count_frames(source: ImageSource) -> int:
    """Number of pages / frames of an image (multi-page TIFF, animated GIF or WebP), read from its headers.

    :func:`load_image` reads the first one only. Raises :class:`ImageLoadError` like :func:`load_image`.
    """
    with _open(source) as image:
        try:
            return int(getattr(image, "n_frames", 1))
        except (OSError, SyntaxError, ValueError, EOFError):
            return 1


def read_image_size(source: ImageSource) -> tuple[int, int]:
    """``(width, height)`` from the header only (no decoding). Raises :class:`ImageLoadError`."""
    with _open(source) as image:
        return image.size


def _open(source: ImageSource) -> Image.Image:
    name = _describe(source)
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageLoadError(f"{name}: the image data is empty; pass the bytes of a JPEG/PNG/WebP file.")
        fp: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        reason = not_a_regular_file(path)  # by stat only: a FIFO would block an open() forever
        if reason == "no such file":
            raise ImageLoadError(f"{path}: no such file; check the path.")
        if reason is not None:
            raise ImageLoadError(f"{path}: {reason}; give the path of an image file.")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: the file is empty (0 bytes); copy the photo again or remove it.")
        fp = path
    try:
        # our own limit (checked by the caller from the header, with a clearer message) replaces PIL's
        # decompression-bomb check, which would raise its own error type; PIL's limit is a module global, so
        # it is changed under a lock and restored at once (opening reads only the header)
        with _PIL_LIMIT_LOCK:
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{name}: not a readable image (unknown or corrupt format); use a JPEG, PNG or WebP photo."
        ) from None
    except OSError as exc:
        if exc.errno is not None:  # the file system refused (permission, I/O error...)
            raise ImageLoadError(
                f"{name}: cannot be read ({exc.strerror}); check the file and its permissions."
            ) from None
        raise ImageLoadError(
            f"{name}: the image data is truncated or corrupt ({exc}); re-export or re-download the photo."
        ) from None


def load_image(source: ImageSource, max_pixels: int | None = None) -> np.ndarray:
    """Read a photo as an upright RGB ``uint8`` array of shape ``(H, W, 3)``.

    Args:
        source: a file path or the encoded bytes of an image.
        max_pixels: largest accepted ``width * height``, checked from the header *before* decoding
            (default: :func:`default_max_pixels`, 40 MP unless ``$HIFI_PORTRAIT_MAX_PIXELS`` says otherwise).

    EXIF orientation is applied; CMYK, 16-bit, palette, RGBA/LA (composited on white) and grayscale images
    are converted to RGB (16-bit values are scaled to 8 bits, not clipped; in float images NaN reads as 0 and
    infinities as the darkest / brightest finite value). A multi-page TIFF or animated GIF gives its first page
    (:func:`count_frames` says how many there are).

    Raises:
        ImageLoadError: missing, empty, truncated, corrupt or non-image file, a FIFO / socket / device / dangling
            link instead of a file, or an image over the pixel limit.
    """
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    name = _describe(source)
    image = _open(source)
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageLoadError(f"{name}: the header claims an empty image ({width}x{height}).")
        if width * height > limit:
            raise ImageLoadError(
                f"{name}: the header claims {width}x{height} = {width * height / 1e6:.1f} MP, more than the "
                f"{limit / 1e6:.1f} MP limit; downscale the photo, or raise the limit with "
                f"{MAX_PIXELS_ENV} / max_pixels if it is genuine."
            )
        _check_jpeg_data_size(image, source, name)
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            return np.ascontiguousarray(_to_rgb_uint8(image))
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(
                f"{name}: the image data is truncated or corrupt ({exc}); re-export or re-download the photo."
            ) from None
    finally:
        image.close()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Files of ``folder`` (not recursive), sorted by name, that look like images by extension."""
    root = Path(folder)
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
