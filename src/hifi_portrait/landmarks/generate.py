"""Target landmarks: an identity shape with a commanded pose and expression, placed on a canvas and projected.

The shape (model space, centimetres) gets its expression (:mod:`~hifi_portrait.landmarks.expression`), is rotated
about its centroid by the head pose, moved in front of a :class:`~hifi_portrait.landmarks.geometry.PinholeCamera`
so that the centroid projects onto the requested face centre at the distance that gives the requested face size,
and projected. The result uses the conventions of detected faces (:mod:`hifi_portrait.face.types`), so generated
and detected landmarks can be compared and rendered by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.expression import apply_expression, parse_expression, scores_to_vector
from hifi_portrait.landmarks.geometry import FLIP_YZ, PinholeCamera, check_pose, pose_from_rotation, rotation_from_pose
from hifi_portrait.landmarks.shape import IdentityShape

if TYPE_CHECKING:
    from hifi_portrait.face.types import FaceAnalysis


@dataclass
class TargetAttributes:
    """What the user asks for: head pose (degrees, :mod:`hifi_portrait.face.types` convention) and expression."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    blendshapes: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_pose(self.yaw, self.pitch, self.roll)
        scores_to_vector(self.blendshapes)  # validates names and values


def make_target(
    yaw: float | None = None,
    pitch: float | None = None,
    roll: float | None = None,
    expression: str | None = None,
    blendshapes: Mapping[str, float] | None = None,
    driver: FaceAnalysis | None = None,
) -> TargetAttributes:
    """Combine the ways of asking for a target; later sources override earlier ones.

    Order: the driver's pose and expression (its face *shape* is never used), then ``expression`` (a preset
    ``"NAME"`` / ``"NAME:INTENSITY"`` and/or blendshapes ``"jawOpen=0.4,mouthSmileLeft=0.7"``, see
    :func:`~hifi_portrait.landmarks.expression.parse_expression`; it replaces the driver's expression), then
    individual ``blendshapes`` (any of the 51 scores, set on top), then explicit angles (``None`` keeps the driver's
    angle, or 0).
    """
    angles = [0.0, 0.0, 0.0]
    scores: dict[str, float] = {}
    if driver is not None:
        angles = list(pose_from_rotation(np.asarray(driver.transform)[:3, :3]))
        scores = {k: float(v) for k, v in (driver.blendshapes or {}).items() if k != "_neutral"}
    if expression:
        scores = parse_expression(expression)
    if blendshapes:
        scores = {**scores, **{k: float(v) for k, v in blendshapes.items()}}
    for i, value in enumerate((yaw, pitch, roll)):
        if value is not None:
            angles[i] = float(value)
    return TargetAttributes(yaw=angles[0], pitch=angles[1], roll=angles[2], blendshapes=scores)


@dataclass
class Placement:
    """Where the face goes on the canvas.

    Either ``box`` (``x1, y1, x2, y2`` in pixels: the projected face, forehead to chin and ear to ear, is scaled to
    fit inside it and centred in it), or ``center`` (fractions of the canvas width and height) with
    ``face_height`` (forehead-top to chin of the frontal neutral face, as a fraction of the canvas height).
    """

    center: tuple[float, float] = (0.5, 0.5)
    face_height: float = 0.5
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.box is not None:
            x1, y1, x2, y2 = (float(v) for v in self.box)
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 - x1 < 2 or y2 - y1 < 2:
                raise LandmarkError(f"face box {self.box} must be finite x1, y1, x2, y2 with x2 > x1 and y2 > y1.")
        if not 0.01 <= self.face_height <= 5.0:
            raise LandmarkError(f"face_height {self.face_height} must be a fraction of the canvas height in (0, 5].")
        if not all(math.isfinite(c) for c in self.center):
            raise LandmarkError(f"face center {self.center} must be finite fractions of the canvas.")


@dataclass
class GeneratedLandmarks:
    """Landmarks of one target, on one canvas.

    Attributes:
        landmarks: ``(478, 3)`` float, ``x, y`` pixels and ``z`` relative depth in pixel scale, smaller = closer
            (the convention of detected faces).
        points_cam: ``(478, 3)`` camera-space points (OpenCV frame, centimetres).
        normals_cam: ``(478, 3)`` unit vertex normals in camera space (zero for irises).
        camera: the camera used.
        rotation: ``(3, 3)`` model-space rotation applied to the shape (after pose calibration).
        target: the attributes generated.
    """

    landmarks: np.ndarray
    points_cam: np.ndarray
    normals_cam: np.ndarray
    camera: PinholeCamera
    rotation: np.ndarray
    target: TargetAttributes

    @property
    def points2d(self) -> np.ndarray:
        return self.landmarks[:, :2]

    @property
    def keypoints(self) -> np.ndarray:
        """``(5, 2)`` keypoints in the order of :mod:`hifi_portrait.face.types`."""
        return self.landmarks[list(M.FIVE_POINTS), :2]

    @property
    def size(self) -> tuple[int, int]:
        return self.camera.width, self.camera.height


def vertex_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """``(P, 3)`` area-weighted unit vertex normals of a triangle mesh (zero for unused vertices)."""
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    face_n = np.cross(b - a, c - a)
    normals = np.zeros_like(points)
    for k in range(3):
        for c in range(3):
            normals[:, c] += np.bincount(triangles[:, k], weights=face_n[:, c], minlength=len(points))
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(norm > 0, normals / np.maximum(norm, 1e-12), 0.0)


def _measured_rotation(points2d: np.ndarray, camera: PinholeCamera, rot_guess: np.ndarray, t_guess: np.ndarray):
    """Model-space head rotation that a canonical-mesh pose estimator (PnP over the skull-fixed points) reads from
    2D landmarks; ``rot_guess``/``t_guess`` (camera frame) start the iterations."""
    import cv2

    idx = _stable_indices()
    model = np.ascontiguousarray(M.canonical_mesh().vertices[idx] @ FLIP_YZ)
    rvec = cv2.Rodrigues(FLIP_YZ @ rot_guess @ FLIP_YZ)[0]
    ok, rvec, _ = cv2.solvePnP(
        model,
        np.ascontiguousarray(points2d[idx]),
        camera.matrix,
        None,
        rvec,
        np.asarray(t_guess, dtype=np.float64).reshape(3, 1).copy(),
        True,
    )
    return FLIP_YZ @ cv2.Rodrigues(rvec)[0] @ FLIP_YZ if ok else rot_guess


_STABLE: list[np.ndarray] = []
#: Fixed-point steps of the pose calibration (each one PnP over ~30 points).
CALIBRATION_STEPS = 1  # one step already brings the error under 0.5 degrees at |yaw| = 60


def _stable_indices() -> np.ndarray:
    if not _STABLE:
        _STABLE.append(np.flatnonzero(M.stable_weights() > 0))
    return _STABLE[0]


def generate_landmarks(
    shape: IdentityShape,
    target: TargetAttributes | None = None,
    size: tuple[int, int] = (1024, 1024),
    placement: Placement | None = None,
    fov_deg: float = 30.0,
    calibrate_pose: bool = True,
) -> GeneratedLandmarks:
    """Pose, express, place and project an identity shape.

    Args:
        shape: the identity (e.g. from :func:`~hifi_portrait.landmarks.shape.fit_identity_shape`).
        target: pose and expression (default: frontal, neutral).
        size: canvas ``(width, height)`` in pixels.
        placement: face position and size (default: centred, half the canvas height).
        fov_deg: vertical field of view of the pinhole camera.
        calibrate_pose: correct the rotation (a fixed-point step) so that a canonical-mesh pose estimator
            (PnP over the skull-fixed points, like mediapipe's own pose) reads the commanded angles from the
            generated landmarks. Without it, a face whose proportions differ from the canonical mesh, or an open
            mouth, reads up to ~3 degrees off at |yaw| = 60.
    """
    target = target or TargetAttributes()
    placement = placement or Placement()
    camera = PinholeCamera(int(size[0]), int(size[1]), fov_deg)
    pose = (target.yaw, target.pitch, target.roll)
    pts = apply_expression(shape.points, shape.basis, scores_to_vector(target.blendshapes), pose)
    rot_cmd = rotation_from_pose(target.yaw, target.pitch, target.roll)
    pivot = shape.points[: M.NUM_MESH].mean(axis=0)
    rot = rot_cmd
    cam = _place(pts, pivot, rot, camera, placement, shape)
    for _ in range(CALIBRATION_STEPS if calibrate_pose else 0):
        t_guess = cam[0] - pts[0] @ rot.T @ FLIP_YZ  # camera position of the model origin
        measured = _measured_rotation(camera.project(cam), camera, rot, t_guess)
        rot = rot_cmd @ measured.T @ rot
        cam = _place(pts, pivot, rot, camera, placement, shape)
    return _finish(cam, camera, rot, target)


def _place(pts, pivot, rot, camera: PinholeCamera, placement: Placement, shape: IdentityShape) -> np.ndarray:
    """Camera-space points of the posed shape placed as ``placement`` asks."""
    posed = (pts - pivot) @ rot.T @ FLIP_YZ  # camera orientation, centred on the pivot
    f = camera.focal
    cx, cy = camera.width / 2, camera.height / 2

    def place(u0: float, v0: float, dist: float) -> np.ndarray:
        return posed + np.array([dist * (u0 - cx) / f, dist * (v0 - cy) / f, dist])

    if placement.box is None:
        height_model = float(np.linalg.norm(shape.points[M.FOREHEAD_TOP] - shape.points[M.CHIN]))
        dist = f * height_model / (placement.face_height * camera.height)
        cam = place(placement.center[0] * camera.width, placement.center[1] * camera.height, dist)
    else:
        x1, y1, x2, y2 = (float(v) for v in placement.box)
        u0, v0 = (x1 + x2) / 2, (y1 + y2) / 2
        height_model = float(np.linalg.norm(shape.points[M.FOREHEAD_TOP] - shape.points[M.CHIN]))
        dist = f * height_model / (y2 - y1)
        for _ in range(4):  # fit the projected mesh's bounding box inside the box, centred
            cam = place(u0, v0, dist)
            uv = camera.project(cam[: M.NUM_MESH])
            lo, hi = uv.min(0), uv.max(0)
            dist *= max((hi[0] - lo[0]) / (x2 - x1), (hi[1] - lo[1]) / (y2 - y1))
            cam = place(u0, v0, dist)
            uv = camera.project(cam[: M.NUM_MESH])
            u0 += (x1 + x2) / 2 - (uv[:, 0].min() + uv[:, 0].max()) / 2
            v0 += (y1 + y2) / 2 - (uv[:, 1].min() + uv[:, 1].max()) / 2
        cam = place(u0, v0, dist)
    return cam


def _finish(cam: np.ndarray, camera: PinholeCamera, rot: np.ndarray, target: TargetAttributes) -> GeneratedLandmarks:
    if (cam[:, 2] <= 1e-3).any():
        raise LandmarkError("the face would be behind the camera: use a smaller face size or a narrower field of view")
    uv = camera.project(cam)
    dist = float(cam[: M.NUM_MESH, 2].mean())
    depth = (cam[:, 2] - dist) * camera.focal / dist  # pixel scale, smaller = closer
    normals = np.zeros_like(cam)
    normals[: M.NUM_MESH] = vertex_normals(cam[: M.NUM_MESH], M.canonical_mesh().triangles)
    landmarks = np.concatenate([uv, depth[:, None]], axis=1)
    return GeneratedLandmarks(landmarks, cam, normals, camera, rot, target)
