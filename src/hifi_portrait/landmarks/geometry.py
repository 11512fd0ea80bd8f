"""Rotations, head pose angles, similarity alignment and the pinhole camera of the landmark generator.

Frames:

* *model space*: the canonical mesh frame (``x`` right, ``y`` up, ``z`` towards the camera; see
  :mod:`hifi_portrait.landmarks.mesh`). A face with rotation ``R`` has its points at ``R @ p``.
* *camera space* (OpenCV): ``x`` right, ``y`` down, ``z`` forward (away from the camera). Model space maps to it by
  ``diag(1, -1, -1)`` (a rotation by 180 degrees about ``x``) followed by a translation.
* *pixels*: ``(u, v)`` with the origin at the top-left corner.

Head pose (degrees, the convention of :mod:`hifi_portrait.face.types`): yaw > 0 turns the nose towards the
image's right, pitch > 0 lifts it, roll > 0 turns the face counter-clockwise as displayed; yaw and pitch give the
direction of the nose, roll the in-image tilt of the head's up axis (:func:`rotation_from_pose`), exactly as
:func:`hifi_portrait.face.mesh.pose_from_matrix` measures them. mediapipe's facial transformation matrix uses model
space on both sides (its camera looks down ``-z`` with ``y`` up), so its rotation part is directly such a rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hifi_portrait.errors import LandmarkError

#: Model space -> OpenCV camera space (without translation).
FLIP_YZ = np.diag([1.0, -1.0, -1.0])

#: Accepted head pose range in degrees (beyond it half the face is hidden and the landmarks are meaningless).
POSE_LIMITS = {"yaw": 85.0, "pitch": 60.0, "roll": 90.0}


def rotation_from_pose(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``(3, 3)`` model-space rotation of a head with the given pose in degrees.

    The face's forward axis (model ``+z``) points along ``f = (sin(yaw) cos(pitch), sin(pitch), cos(yaw)
    cos(pitch))``, and its up axis ``u`` (model ``+y``) is the unit vector orthogonal to ``f`` whose in-image
    direction makes the angle ``roll`` with the vertical: ``atan2(-u_x, u_y) = roll``. This is the exact inverse of
    :func:`pose_from_rotation` and of :func:`hifi_portrait.face.mesh.pose_from_matrix`, so commanded and measured
    poses use the same numbers. Defined for ``|yaw| < 90``.
    """
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    forward = np.array([math.sin(y) * math.cos(p), math.sin(p), math.cos(y) * math.cos(p)])
    up = np.cross(forward, np.array([math.cos(r), math.sin(r), 0.0]))
    up /= np.linalg.norm(up)
    right = np.cross(up, forward)
    return np.stack([right, up, forward], axis=1)


def pose_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` in degrees of a model-space rotation (see :func:`rotation_from_pose`).

    Accepts a rotation with a uniform scale (e.g. mediapipe's transformation matrix): it is orthonormalized first.
    """
    u, _, vt = np.linalg.svd(np.asarray(rotation, dtype=np.float64)[:3, :3])
    rot = u @ vt
    forward, up = rot[:, 2], rot[:, 1]
    yaw = math.degrees(math.atan2(forward[0], forward[2]))
    pitch = math.degrees(math.atan2(forward[1], math.hypot(forward[0], forward[2])))
    roll = math.degrees(math.atan2(-up[0], up[1]))
    return yaw, pitch, roll


def check_pose(yaw: float, pitch: float, roll: float) -> None:
    """Raise :class:`LandmarkError` when an angle is not finite or outside :data:`POSE_LIMITS`."""
    for name, value in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
        limit = POSE_LIMITS[name]
        if not math.isfinite(value) or abs(value) > limit:
            raise LandmarkError(
                f"{name}={value} degrees is outside the supported range [-{limit:g}, {limit:g}]; "
                "use a smaller angle (the generator is tested for |yaw| <= 60, |pitch| <= 30, |roll| <= 30)."
            )


def umeyama(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, scale: bool = True
) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted similarity ``(s, R, t)`` minimising ``sum w_i |s R src_i + t - dst_i|^2`` (no reflection).

    Args:
        src, dst: ``(N, D)`` corresponding points.
        weights: ``(N,)`` non-negative weights (uniform when ``None``).
        scale: estimate the scale (else ``s = 1``).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(src.shape[1])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = float(w @ (xs**2).sum(axis=1))
    s = float((sig * d).sum() / var_s) if scale else 1.0
    t = mu_d - s * rot @ mu_s
    return s, rot, t


@dataclass(frozen=True)
class PinholeCamera:
    """An ideal pinhole camera (square pixels, no distortion, principal point at the canvas centre).

    The focal length in pixels is ``f = 0.5 * height / tan(fov_deg / 2)``: ``fov_deg`` is the *vertical* field of
    view, so the same face size in pixels gives the same perspective at any aspect ratio. The default 30 degrees
    (about a 45 mm lens on a full-frame camera held in portrait orientation, 85 mm in landscape) is typical of
    portrait photos.
    """

    width: int
    height: int
    fov_deg: float = 30.0

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8 or self.width > 16384 or self.height > 16384:
            raise LandmarkError(f"canvas size {self.width}x{self.height} must be between 8 and 16384 pixels a side.")
        if not 1.0 <= self.fov_deg <= 120.0:
            raise LandmarkError(f"field of view {self.fov_deg} degrees must be in [1, 120].")

    @property
    def focal(self) -> float:
        return 0.5 * self.height / math.tan(math.radians(self.fov_deg) / 2)

    @property
    def matrix(self) -> np.ndarray:
        """``(3, 3)`` intrinsic matrix ``K`` (OpenCV convention)."""
        f = self.focal
        return np.array([[f, 0, self.width / 2], [0, f, self.height / 2], [0, 0, 1.0]])

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """``(N, 3)`` camera-space points (``z`` > 0) -> ``(N, 2)`` pixels."""
        z = points_cam[:, 2:3]
        return self.focal * points_cam[:, :2] / z + np.array([self.width / 2, self.height / 2])
