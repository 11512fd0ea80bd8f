"""Per-image stages of the builder: robust decode -> face detection + analysis -> measurements for the quality filter.

:func:`analyze_shard` runs them over one :class:`~hifi_portrait.data.shards.ShardSpec` with an injected face
analyzer (anything with ``analyze(image, policy=...) -> FaceAnalysis``, :class:`hifi_portrait.face.FaceAnalyzer`
by default). Both engines (local processes, Ray Data) call exactly this function. A failing image never stops the
shard: it becomes a record with ``ok=False``, the ``stage`` that failed and the ``reason``.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from hifi_portrait.data.inputs import InputItem, TarMembers, open_regular
from hifi_portrait.data.shards import SHARD_ARRAYS, ShardResult, ShardSpec
from hifi_portrait.errors import (
    FaceNotFoundError,
    HiFiPortraitError,
    ImageLoadError,
    MultipleFacesError,
    UnusableFaceError,
)
from hifi_portrait.face.alignment import transform_points
from hifi_portrait.face.matting import face_coverage, mask_to_photo
from hifi_portrait.face.types import FaceAnalysis

logger = logging.getLogger(__name__)

#: mediapipe's blendshape names (51: its 52 minus ``_neutral``), in mediapipe's order; the columns of ``blendshapes``.
BLENDSHAPE_NAMES = (
    "browDownLeft browDownRight browInnerUp browOuterUpLeft browOuterUpRight cheekPuff cheekSquintLeft "
    "cheekSquintRight eyeBlinkLeft eyeBlinkRight eyeLookDownLeft eyeLookDownRight eyeLookInLeft eyeLookInRight "
    "eyeLookOutLeft eyeLookOutRight eyeLookUpLeft eyeLookUpRight eyeSquintLeft eyeSquintRight eyeWideLeft "
    "eyeWideRight jawForward jawLeft jawOpen jawRight mouthClose mouthDimpleLeft mouthDimpleRight mouthFrownLeft "
    "mouthFrownRight mouthFunnel mouthLeft mouthLowerDownLeft mouthLowerDownRight mouthPressLeft mouthPressRight "
    "mouthPucker mouthRight mouthRollLower mouthRollUpper mouthShrugLower mouthShrugUpper mouthSmileLeft "
    "mouthSmileRight mouthStretchLeft mouthStretchRight mouthUpperUpLeft mouthUpperUpRight noseSneerLeft "
    "noseSneerRight"
).split()


class Analyzer(Protocol):
    """What the builder needs from a face analyzer."""

    def analyze(self, image: Any, policy: str = ..., source: str | None = ...) -> FaceAnalysis: ...


AnalyzerFactory = Callable[[], Analyzer]


@dataclass(frozen=True)
class DefaultAnalyzerFactory:
    """Creates the default face stack (RetinaFace + mediapipe + dlib) once per worker process (picklable).

    The analyzer rejects faces below ``min_face_px`` (sqrt of the box area) before running the expensive models;
    every other quality threshold is the builder's (:class:`~hifi_portrait.data.config.QualityConfig`).
    """

    min_face_px: float = 40.0
    num_threads: int = 1

    def __call__(self) -> Analyzer:
        from hifi_portrait.face import FaceAnalyzer, QualityConfig

        quality = QualityConfig(min_face_px=self.min_face_px, min_sharpness=0.0)
        return FaceAnalyzer(quality=quality, num_threads=self.num_threads)


def default_analyzer_factory() -> Analyzer:
    """The default face stack with default settings."""
    return DefaultAnalyzerFactory()()


# ---------------------------------------------------------------------------------------------- measurements
def dhash64(gray: np.ndarray) -> int:
    """64-bit difference hash of a grayscale image (near-duplicate photos differ in a few bits)."""
    small = np.asarray(Image.fromarray(gray).resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grayscale image (higher = sharper)."""
    g = gray.astype(np.float64)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def occlusion_fraction(landmarks: np.ndarray, image_size: tuple[int, int]) -> float:
    """Fraction of face-mesh points outside the photo (a face cut off by the frame), in ``[0, 1]``."""
    w, h = image_size
    pts = np.asarray(landmarks)[:, :2]
    outside = (pts[:, 0] < 0) | (pts[:, 0] >= w) | (pts[:, 1] < 0) | (pts[:, 1] >= h)
    return float(outside.mean()) if len(pts) else 1.0


def face_occlusion(analysis: FaceAnalysis) -> tuple[float, float]:
    """``(occlusion, coverage)`` of a face, each in ``[0, 1]``.

    ``coverage`` is the fraction of the face (inner hull of the mesh) that the face mask covers: with a matte
    (``mask_method="selfie-matte"``) an object in front of the face, or the part of a face cut off by the frame,
    is a hole; the landmark hull always covers 1. ``occlusion`` is the larger of ``1 - coverage`` and the
    fraction of mesh points outside the photo.
    """
    coverage = face_coverage(analysis.mask, transform_points(analysis.landmarks, analysis.encoder_affine))
    return max(occlusion_fraction(analysis.landmarks, tuple(analysis.image_size)), 1.0 - coverage), coverage


def photo_mask_png(mask_png: bytes, encoder_affine: Any, size: tuple[int, int], scale: float) -> bytes:
    """The face mask of the encoder crop (PNG bytes) pasted into the pixels of the stored photo (PNG bytes).

    ``size`` is the stored photo's ``(width, height)``, ``scale`` its pixels per original photo pixel.
    """
    mask = np.asarray(Image.open(io.BytesIO(mask_png)).convert("L"))
    return _encode(mask_to_photo(mask, np.asarray(encoder_affine, dtype=np.float64), size, scale), "PNG")


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L"))


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format=fmt, quality=92)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- decode
def decode_image(data: bytes, key: str, max_pixels: int) -> np.ndarray:
    """Decode image bytes to an upright RGB uint8 ``(H, W, 3)`` array.

    Raises:
        ImageLoadError: empty, corrupt, truncated, non-image or over-size data (message names ``key``).
    """
    from hifi_portrait.utils.image_io import load_image

    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageLoadError as exc:
        raise ImageLoadError(f"{key}: {exc}") from None


def iter_item_bytes(items: tuple[InputItem, ...] | list[InputItem]) -> Iterator[tuple[InputItem, bytes | Exception]]:
    """Yield ``(item, bytes)`` in order, opening each tar archive once; a read error is yielded, not raised."""
    with ExitStack() as stack:
        tars: dict[str, TarMembers | Exception] = {}
        for item in items:
            try:
                if not item.member:
                    with open_regular(item.path, item.key) as handle:
                        yield item, handle.read()
                    continue
                if item.path not in tars:
                    try:
                        tars[item.path] = TarMembers(stack.enter_context(tarfile.open(item.path)))
                    except (OSError, tarfile.TarError, EOFError) as exc:
                        tars[item.path] = exc
                tar = tars[item.path]
                if isinstance(tar, Exception):
                    raise tar
                yield item, tar.read(item)
            except (OSError, tarfile.TarError, KeyError, EOFError, ImageLoadError) as exc:
                yield item, exc


# ---------------------------------------------------------------------------------------------- analysis
def _failure(item: InputItem, stage: str, exc: BaseException | str) -> dict[str, Any]:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return {"key": item.key, "label": item.label, "ok": False, "stage": stage, "reason": reason}


def analyze_image(analyzer: Analyzer, image: np.ndarray, item: InputItem, multi_face: str) -> FaceAnalysis:
    """Run the analyzer with the builder's multi-face policy (``largest`` or ``skip`` = exactly one face)."""
    policy = "largest" if multi_face == "largest" else "error"
    return analyzer.analyze(image, policy=policy, source=item.key)


def summarize(analysis: FaceAnalysis, item: InputItem) -> tuple[dict[str, Any], dict[str, np.ndarray], dict]:
    """Split a :class:`FaceAnalysis` into the JSON record, the stacked arrays and the encoded image blobs."""
    bbox = np.asarray(analysis.bbox, dtype=np.float64)
    gray = _gray(analysis.arcface_crop)
    occlusion, coverage = face_occlusion(analysis)
    record = {
        "key": item.key,
        "label": item.label,
        "ok": True,
        "image_size": [int(v) for v in analysis.image_size],
        "face_index": int(analysis.face_index),
        "det_score": float(analysis.det_score),
        "face_size": float(min(bbox[2] - bbox[0], bbox[3] - bbox[1])),
        "sharpness": laplacian_variance(gray),
        "occlusion": occlusion,
        "face_coverage": coverage,
        "quality": float(analysis.quality.total),
        "quality_parts": {
            k: float(getattr(analysis.quality, k)) for k in ("size", "sharpness", "frontalness", "confidence")
        },
        "identity_model": analysis.identity_model,
        "mask_method": analysis.mask_method,
        "encoder_affine": np.asarray(analysis.encoder_affine, dtype=np.float64).tolist(),
        "dhash": f"{dhash64(gray):016x}",
    }
    arrays = {
        "identity": np.asarray(analysis.identity, dtype=np.float32),
        "landmarks": np.asarray(analysis.landmarks, dtype=np.float32),
        "keypoints": np.asarray(analysis.keypoints, dtype=np.float32),
        "bbox": bbox.astype(np.float32),
        "blendshapes": np.array([analysis.blendshapes.get(n, 0.0) for n in BLENDSHAPE_NAMES], dtype=np.float32),
        "pose": analysis.pose.as_array().astype(np.float32),
    }
    blobs = {"crop": _encode(analysis.encoder_crop, "JPEG"), "mask": _encode(analysis.mask, "PNG")}
    return record, arrays, blobs


def analyze_shard(spec: ShardSpec, analyzer: Analyzer, multi_face: str, max_pixels: int) -> ShardResult:
    """Decode and analyse every image of a shard; never raises for a bad image (it becomes a failure record)."""
    records: list[dict[str, Any]] = []
    rows: list[dict[str, np.ndarray]] = []
    blobs: list[dict[str, bytes]] = []
    for item, data in iter_item_bytes(spec.items):
        if isinstance(data, Exception):
            records.append(_failure(item, "read", data))
            continue
        try:
            image = decode_image(data, item.key, max_pixels)
        except ImageLoadError as exc:
            records.append(_failure(item, "decode", exc))
            continue
        try:
            analysis = analyze_image(analyzer, image, item, multi_face)
        except (FaceNotFoundError, MultipleFacesError) as exc:
            records.append(_failure(item, "detect", exc))
            continue
        except UnusableFaceError as exc:
            records.append(_failure(item, "quality", exc))
            continue
        except HiFiPortraitError as exc:
            records.append(_failure(item, "analysis", exc))
            continue
        except Exception as exc:  # a bug or a backend crash on one odd image must not stop a million-image run
            logger.warning("analysis of %s failed unexpectedly: %s", item.key, exc, exc_info=True)
            records.append(_failure(item, "analysis", exc))
            continue
        record, arrays, blob = summarize(analysis, item)
        record["row"] = len(rows)
        records.append(record)
        rows.append(arrays)
        blobs.append(blob)
    return ShardResult(records=records, arrays=_stack(rows), blobs=blobs)


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    empty = {
        "identity": (0, 0),
        "landmarks": (0, 478, 3),
        "keypoints": (0, 5, 2),
        "bbox": (0, 4),
        "blendshapes": (0, len(BLENDSHAPE_NAMES)),
        "pose": (0, 3),
    }
    if not rows:
        return {name: np.zeros(empty[name], dtype=np.float32) for name in SHARD_ARRAYS}
    return {name: np.stack([row[name] for row in rows]) for name in SHARD_ARRAYS}
