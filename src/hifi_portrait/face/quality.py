"""Quality score of one face: size, sharpness, frontalness and detector confidence, each in ``[0, 1]``.

* ``size`` = ``min(1, face_px / good_face_px)``, ``face_px`` = sqrt of the detector box area in photo pixels.
* ``sharpness`` = ``1 - exp(-v / sharpness_ref)``, ``v`` = variance of the Laplacian of the grey 112x112 ArcFace
  crop (so it does not depend on the photo's resolution, but an upscaled small face reads as blurred).
* ``frontalness`` = ``cos(yaw) * cos(pitch)`` (1 = facing the camera, 0 = full profile).
* ``confidence`` = the detector's score.
* ``total`` = weighted geometric mean of the parts (each floored at 1e-3).

A face smaller than ``min_face_px`` or with ``v < min_sharpness`` is *unusable*: by default
:class:`~hifi_portrait.errors.UnusableFaceError` is raised (``on_unusable="warn"`` logs a warning instead).
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from hifi_portrait.errors import ConfigError
from hifi_portrait.face.types import HeadPose, QualityScore

logger = logging.getLogger(__name__)


@dataclass
class QualityConfig:
    """Thresholds and weights of the quality score (all documented in docs/face_analysis.md).

    Attributes:
        min_face_px: faces whose box is smaller than this (sqrt of area, photo pixels) are unusable.
        good_face_px: face size that scores 1.
        min_sharpness: Laplacian variance (112 px ArcFace crop) below which a face is unusable (heavily blurred).
        sharpness_ref: Laplacian variance scale of the sharpness part (``1 - exp(-v / ref)``).
        weights: weight of each part in the geometric mean.
        on_unusable: ``"raise"`` (UnusableFaceError) or ``"warn"`` (log and keep the face).
    """

    min_face_px: float = 40.0
    good_face_px: float = 160.0
    min_sharpness: float = 20.0
    sharpness_ref: float = 150.0
    weights: dict[str, float] = field(
        default_factory=lambda: {"size": 1.0, "sharpness": 1.0, "frontalness": 1.0, "confidence": 1.0}
    )
    on_unusable: str = "raise"

    def __post_init__(self) -> None:
        for name in ("min_face_px", "good_face_px", "min_sharpness", "sharpness_ref"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, not {value!r}")
        for name in ("good_face_px", "sharpness_ref"):
            if getattr(self, name) == 0:
                raise ConfigError(f"{name} must be > 0 (it divides), not 0")
        for name, weight in self.weights.items():
            if (
                isinstance(weight, bool)
                or not isinstance(weight, numbers.Real)
                or not np.isfinite(weight)
                or weight < 0
            ):
                raise ConfigError(f"quality weight {name!r} must be a finite number >= 0, not {weight!r}")
        if self.on_unusable not in ("raise", "warn"):
            raise ConfigError(f"on_unusable must be 'raise' or 'warn', not {self.on_unusable!r}")
        unknown = set(self.weights) - {"size", "sharpness", "frontalness", "confidence"}
        if unknown:
            raise ConfigError(
                f"unknown quality weight(s) {sorted(unknown)}; use size, sharpness, frontalness, confidence"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def laplacian_variance(crop: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB or grey uint8 crop (a standard focus measure; higher = sharper)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def compute_quality(
    face_px: float, arcface_crop: np.ndarray, pose: HeadPose, det_score: float, config: QualityConfig | None = None
) -> QualityScore:
    """The quality score and its parts (raw measured values in ``raw``)."""
    cfg = config or QualityConfig()
    lap = laplacian_variance(arcface_crop)
    parts = {
        "size": float(min(1.0, face_px / cfg.good_face_px)),
        "sharpness": float(1.0 - np.exp(-lap / cfg.sharpness_ref)),
        "frontalness": float(max(0.0, np.cos(np.radians(pose.yaw))) * max(0.0, np.cos(np.radians(pose.pitch)))),
        "confidence": float(np.clip(det_score, 0.0, 1.0)),
    }
    weights = {k: float(cfg.weights.get(k, 0.0)) for k in parts}
    wsum = sum(weights.values()) or 1.0
    total = float(np.exp(sum(w * np.log(max(parts[k], 1e-3)) for k, w in weights.items()) / wsum))
    raw = {
        "face_px": float(face_px),
        "laplacian_var": lap,
        "yaw": float(pose.yaw),
        "pitch": float(pose.pitch),
        "det_score": float(det_score),
    }
    return QualityScore(total=total, raw=raw, **parts)


def unusable_reasons(quality: QualityScore, config: QualityConfig | None = None) -> list[str]:
    """Why a face is unusable (empty list if it is usable), each reason with the measured value and threshold."""
    cfg = config or QualityConfig()
    reasons = []
    face_px = quality.raw.get("face_px", 0.0)
    if face_px < cfg.min_face_px:
        reasons.append(f"face too small ({face_px:.0f} px < min_face_px={cfg.min_face_px:.0f})")
    lap = quality.raw.get("laplacian_var", 0.0)
    if lap < cfg.min_sharpness:
        reasons.append(f"face too blurred (Laplacian variance {lap:.1f} < min_sharpness={cfg.min_sharpness:.1f})")
    return reasons
