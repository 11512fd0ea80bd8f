"""Data types of face analysis: what is known about one reference photo and about a set of them.

Conventions (used everywhere in hifi-portrait):

* Images are RGB ``uint8`` arrays of shape ``(H, W, 3)``, upright (EXIF orientation applied).
* Pixel coordinates are ``(x, y)`` with the origin at the top-left corner, x to the right, y down.
* The 5 keypoints are, in this order and in *image* terms: eye on the image's left, eye on the image's right,
  nose tip, mouth corner on the image's left, mouth corner on the image's right (InsightFace / InstantID order).
* ``landmarks`` are mediapipe's 478 face-mesh points: ``x, y`` in pixels of the upright image, ``z`` in the
  same pixel scale (mediapipe's normalized z multiplied by the width, in photo pixels, of the square crop the mesh
  was fitted on), smaller z = closer to the camera.
* Head pose, in degrees, of the face as seen by the camera:
  ``yaw`` > 0 when the face turns towards the image's right side (the subject's left),
  ``pitch`` > 0 when the face looks up,
  ``roll`` > 0 when the head is rotated counter-clockwise in the image as displayed (as ``PIL.Image.rotate``
  with a positive angle does). A mirrored photo flips the signs of yaw and roll.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Arrays of a :class:`FaceAnalysis` that are stored in the ``.npz`` file rather than in JSON.
ARRAY_FIELDS = ("bbox", "keypoints", "landmarks", "transform", "identity", "arcface_crop", "encoder_crop", "mask")


@dataclass
class HeadPose:
    """Head pose in degrees (see the module docstring for the sign convention)."""

    yaw: float
    pitch: float
    roll: float

    def as_array(self) -> np.ndarray:
        return np.array([self.yaw, self.pitch, self.roll], dtype=np.float64)


@dataclass
class QualityScore:
    """Quality of one face, each part in ``[0, 1]`` (1 = best), ``total`` their weighted geometric mean.

    ``raw`` keeps the measured values the parts come from (face size in pixels, variance of the Laplacian,
    ...), so that a user can tune thresholds.
    """

    total: float
    size: float
    sharpness: float
    frontalness: float
    confidence: float
    raw: dict[str, float] = field(default_factory=dict)


@dataclass
class FaceAnalysis:
    """Everything hifi-portrait knows about one face in one photo.

    Attributes:
        source: path (or name) of the photo.
        image_size: ``(width, height)`` of the upright photo in pixels.
        face_index: index of this face among the faces detected in the photo (largest first).
        bbox: ``(4,)`` float ``x1, y1, x2, y2`` in pixels.
        det_score: detector confidence in ``[0, 1]``.
        keypoints: ``(5, 2)`` float, the 5 keypoints in pixels (order in the module docstring).
        landmarks: ``(478, 3)`` float, mediapipe face mesh in pixels (see module docstring).
        pose: head pose in degrees.
        transform: ``(4, 4)`` float, mediapipe's facial transformation matrix (canonical mesh -> camera space).
        blendshapes: ARKit-style expression scores in ``[0, 1]`` by name: mediapipe's 52 categories minus
            ``_neutral``, i.e. 51 names (ARKit's 52 without ``tongueOut``, which mediapipe does not predict).
        identity: ``(D,)`` float32 unit-norm identity vector; ``identity_model`` names the model (dimension
            and scale of similarities depend on it: never compare vectors of different models).
        quality: quality score and its parts.
        arcface_crop: ``(112, 112, 3)`` uint8, the face aligned on the ArcFace 5-point template.
        encoder_crop: ``(S, S, 3)`` uint8, a larger aligned crop (hair and chin included) for image encoders.
        mask: ``(S, S)`` uint8 in ``{0..255}``, face/head mask of ``encoder_crop``; ``mask_method`` says how
            (``selfie-matte``: person matte inside the head region, hair included; ``landmark-hull``: mesh hull).
        encoder_affine: ``(2, 3)`` float, the affine map from photo pixels to ``encoder_crop`` pixels.
    """

    source: str
    image_size: tuple[int, int]
    face_index: int
    bbox: np.ndarray
    det_score: float
    keypoints: np.ndarray
    landmarks: np.ndarray
    pose: HeadPose
    transform: np.ndarray
    blendshapes: dict[str, float]
    identity: np.ndarray
    identity_model: str
    quality: QualityScore
    arcface_crop: np.ndarray
    encoder_crop: np.ndarray
    mask: np.ndarray
    mask_method: str
    encoder_affine: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))

    # ------------------------------------------------------------------ serialization
    def to_json_dict(self) -> dict[str, Any]:
        """The scalar fields as a JSON-ready dict (arrays are in :meth:`arrays`)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in ARRAY_FIELDS:
                continue
            if key in ("pose", "quality"):
                out[key] = asdict(value)
            elif isinstance(value, np.ndarray):
                out[key] = value.tolist()
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        # small arrays are also written to JSON for people reading the report
        out["bbox"] = [float(v) for v in self.bbox]
        out["keypoints"] = np.asarray(self.keypoints).tolist()
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in ARRAY_FIELDS}

    def save(self, path_stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.npz``; :meth:`load` reads them back unchanged."""
        stem = Path(path_stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
        json_path.write_text(json.dumps(self.to_json_dict(), indent=2))
        np.savez_compressed(npz_path, **self.arrays())
        return json_path, npz_path

    @classmethod
    def load(cls, path_stem: str | Path) -> FaceAnalysis:
        stem = Path(path_stem)
        meta = json.loads(stem.with_suffix(".json").read_text())
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta.update(arrays)
        meta["pose"] = HeadPose(**meta["pose"])
        meta["quality"] = QualityScore(**meta["quality"])
        meta["image_size"] = tuple(meta["image_size"])
        meta["encoder_affine"] = np.asarray(meta["encoder_affine"], dtype=np.float64)
        return cls(**meta)
