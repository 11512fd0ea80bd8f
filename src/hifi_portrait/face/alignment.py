"""Face alignment from the 5 keypoints: the ArcFace 112x112 crop and a larger crop for image encoders.

Both crops use a least-squares similarity transform (rotation, uniform scale, shift; Umeyama) of the 5 keypoints
onto a template:

* ``arcface``: the standard InsightFace template at 112x112 (eyes at y=51.6, mouth at y=92.2);
* ``encoder``: the same template scaled by ``size / 112 / ENCODER_ZOOM`` and centred, i.e. the ArcFace face box
  shrunk to the middle ``1/ENCODER_ZOOM`` of the crop so that hair, ears and chin are inside (default 512 px,
  ``ENCODER_ZOOM = 1.6``: the ArcFace face box fills the middle 62 % of the crop). Image encoders resize it to
  their own input size (224 for CLIP ViT-L/14, 336, ...).
"""

from __future__ import annotations

import cv2
import numpy as np

#: ArcFace / InsightFace 5-point template for 112x112 crops (image-left eye, image-right eye, nose, mouth corners).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_SIZE = 112
#: Default side of the encoder crop, in pixels.
ENCODER_SIZE = 512
#: How much more context the encoder crop shows than the ArcFace crop (linear factor).
ENCODER_ZOOM = 1.6


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` ``(N, 2)`` onto ``dst`` ``(N, 2)``; returns ``(2, 3)``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s0**2).sum() / len(src)
    scale = float((sig * np.diag(sign)).sum() / var_s) if var_s > 0 else 1.0
    shift = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, shift[:, None]], axis=1)


def template_for(size: int, zoom: float = 1.0) -> np.ndarray:
    """The ArcFace template for a ``size`` px square crop, the face box shrunk by ``zoom`` around the centre."""
    center = ARCFACE_SIZE / 2.0
    return (ARCFACE_TEMPLATE - center) * (size / ARCFACE_SIZE / zoom) + size / 2.0


def alignment_affine(keypoints: np.ndarray, size: int, zoom: float = 1.0) -> np.ndarray:
    """``(2, 3)`` affine from photo pixels to a ``size`` px aligned crop (see :func:`template_for`)."""
    return umeyama_similarity(np.asarray(keypoints, dtype=np.float64).reshape(5, 2), template_for(size, zoom))


def warp(image: np.ndarray, affine: np.ndarray, size: int, border_value: int | tuple = 0) -> np.ndarray:
    """Warp ``image`` (``(H, W)`` or ``(H, W, C)``) with ``affine`` to a ``size`` x ``size`` crop (bilinear)."""
    return cv2.warpAffine(
        image,
        np.asarray(affine, dtype=np.float64),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border_value,
    )


def transform_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine to ``(N, 2)`` points (extra columns, e.g. z, are dropped)."""
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    return pts @ np.asarray(affine)[:, :2].T + np.asarray(affine)[:, 2]


def keypoint_roll(keypoints: np.ndarray) -> float:
    """In-plane rotation of a face from its 5 keypoints, degrees in ``(-180, 180]``, with ``HeadPose.roll``'s sign.

    The angle of the line from the eyes' midpoint to the mouth corners' midpoint: 0 when the mouth is straight
    below the eyes, > 0 when the head is rotated counter-clockwise in the displayed image, about +-180 upside down.
    It needs no semantic order of the two eyes, so it stays meaningful when a detector mislabels them.
    """
    kps = np.asarray(keypoints, dtype=np.float64).reshape(5, 2)
    down = (kps[3] + kps[4]) / 2.0 - (kps[0] + kps[1]) / 2.0
    return float(np.degrees(np.arctan2(down[0], down[1])))


def quarter_turn_affine(turns: int, width: int, height: int) -> np.ndarray:
    """``(2, 3)`` affine from pixels of a ``width`` x ``height`` image to pixels of ``np.rot90(image, turns)``.

    ``np.rot90`` with ``turns > 0`` turns the displayed image counter-clockwise by ``90 * turns`` degrees.
    Pixel-index convention (pixel centres at integers), as ``cv2.warpAffine`` uses.
    """
    affine = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    w, h = int(width), int(height)
    for _ in range(int(turns) % 4):  # one counter-clockwise quarter turn: (x, y) -> (y, w - 1 - x)
        step = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0]])
        affine = compose_affine(step, affine)
        w, h = h, w
    return affine


def compose_affine(second: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The ``(2, 3)`` affine that applies ``first`` and then ``second``."""
    a = np.vstack([np.asarray(second, dtype=np.float64), [0.0, 0.0, 1.0]])
    b = np.vstack([np.asarray(first, dtype=np.float64), [0.0, 0.0, 1.0]])
    return (a @ b)[:2]
