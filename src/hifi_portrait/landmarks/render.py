"""Conditioning maps drawn from generated (or detected) landmarks, with OpenCV, on black ``(H, W, 3)`` RGB canvases.

Styles:

* ``"hifi"`` (ours, 3D-aware): the face mesh's front-facing triangles filled with the colour of their surface
  normal (camera space, as in a normal map: red = facing image right, green = facing up, blue = facing the camera),
  drawn back to front, then the eyes, brows and lips contours in fixed colours on top and the irises as discs.
  Head orientation and the 3D shape of the face are readable from the colours; hidden parts are not drawn.
* ``"instantid"``: InstantID's 5-keypoint map (eyes, nose, mouth corners): ellipse limbs from each point to the
  nose, 60 % brightness, then discs of radius 10 (red, green, blue, yellow, magenta).
* ``"mediapipe"``: the face-mesh drawing of public MediaPipe-face ControlNets (CrucibleAI/ControlNetMediaPipeFace,
  also ``controlnet_aux``'s MediapipeFaceDetector): face oval, eyes, brows and lips contours 2 px wide in their
  colours, the two iris centres as 4x4 squares; every landmark is drawn (as the detector outputs them).
* ``"mesh"``: mediapipe's default face-mesh style (grey tesselation, contours, irises) for previews.
* ``"openpose"`` / ``"dwpose"``: the maps of public OpenPose ControlNets, drawn exactly as ``controlnet_aux``'s
  OpenPose / DWPose detectors draw them: the 68 iBUG face points (+ pupils for OpenPose) and the head keypoints of
  the body skeleton (:mod:`hifi_portrait.landmarks.openpose`; options ``shoulders``, ``body``, ``face``,
  ``thick``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.generate import GeneratedLandmarks

STYLES = ("hifi", "instantid", "mediapipe", "mesh", "openpose", "dwpose")
#: Styles that take drawing options (``render_map(gen, style, **options)``).
OPENPOSE_STYLES = ("openpose", "dwpose")

# ---- InstantID: RGB colours of the 5 points, limbs from each point to the nose (index 2)
_KPS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
_KPS_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))

# ---- CrucibleAI MediaPipe-face spec. Their colours are written for a BGR canvas that is flipped to RGB at the end;
# these are the resulting RGB colours. "right" = the subject's right (mediapipe naming).
_CRUCIBLE = {
    "face_oval": (10, 200, 10),
    "left_eye": (10, 200, 180),
    "left_eyebrow": (10, 220, 180),
    "right_eye": (180, 200, 10),
    "right_eyebrow": (180, 220, 10),
    "lips": (10, 180, 10),
}
_CRUCIBLE_PUPILS = {M.RIGHT_IRIS_CENTER: (250, 200, 10), M.LEFT_IRIS_CENTER: (10, 200, 250)}

# ---- mediapipe default face-mesh style (RGB), used by the "mesh" preview style
_MESH_CONTOURS = {
    "lips": (224, 224, 224),
    "left_eye": (48, 255, 48),
    "left_eyebrow": (48, 255, 48),
    "right_eye": (255, 48, 48),
    "right_eyebrow": (255, 48, 48),
    "face_oval": (224, 224, 224),
    "left_iris": (48, 255, 48),
    "right_iris": (255, 48, 48),
}

# ---- our style: contour colours (RGB) drawn over the normal-coloured mesh
_HIFI_CONTOURS = {
    "lips": (255, 255, 255),
    "left_eye": (255, 255, 0),
    "right_eye": (0, 255, 255),
    "left_eyebrow": (255, 128, 0),
    "right_eyebrow": (255, 0, 128),
}
_HIFI_IRIS = {M.LEFT_IRIS: (255, 255, 0), M.RIGHT_IRIS: (0, 255, 255)}


def _canvas(gen: GeneratedLandmarks) -> np.ndarray:
    return np.zeros((gen.camera.height, gen.camera.width, 3), dtype=np.uint8)


def draw_instantid(canvas: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """InstantID's keypoint map of ``(5, 2)`` pixel keypoints (order of :mod:`hifi_portrait.face.types`).

    Draws in place and returns ``canvas``; on a black canvas the result equals InstantID's ``draw_kps``.
    """
    stick = 4
    for a, b in _KPS_LIMBS:
        xs, ys = keypoints[[a, b], 0], keypoints[[a, b], 1]
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        poly = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), stick), int(angle), 0, 360, 1)
        # InstantID fills in float and scales the limbs by 0.6 before truncating to uint8: same values
        cv2.fillConvexPoly(canvas, poly, tuple(int(c * 0.6) for c in _KPS_COLORS[a]))
    for (x, y), color in zip(keypoints, _KPS_COLORS, strict=True):
        cv2.circle(canvas, (int(x), int(y)), 10, color, -1)
    return canvas


def _pixel(points: np.ndarray, w: int, h: int) -> np.ndarray:
    """mediapipe's normalized-to-pixel rounding: floor, clamped to the image."""
    px = np.floor(points[:, :2]).astype(np.int64)
    px[:, 0] = np.clip(px[:, 0], 0, w - 1)
    px[:, 1] = np.clip(px[:, 1], 0, h - 1)
    return px


def _inside(points: np.ndarray, w: int, h: int) -> np.ndarray:
    return (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)


def _draw_edges(canvas, points, edges, color, thickness, valid) -> None:
    h, w = canvas.shape[:2]
    px = _pixel(points, w, h)
    keep = valid[edges[:, 0]] & valid[edges[:, 1]]
    lines = px[edges[keep]].astype(np.int32)  # (E, 2, 2): one 2-point polyline per edge
    if len(lines):
        cv2.polylines(canvas, list(lines), False, color, thickness)


def draw_mediapipe(canvas: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The CrucibleAI MediaPipe-face map of ``(478, 2+)`` pixel landmarks (drawn in place and returned)."""
    h, w = canvas.shape[:2]
    conns = M.mediapipe_connections()
    valid = _inside(landmarks, w, h)
    for name, color in _CRUCIBLE.items():
        _draw_edges(canvas, landmarks, conns[name], color, 2, valid)
    for idx, color in _CRUCIBLE_PUPILS.items():
        if valid[idx]:
            x, y = (int(v) for v in np.floor(landmarks[idx, :2]))
            canvas[max(y - 2, 0) : y + 2, max(x - 2, 0) : x + 2] = color
    return canvas


def draw_mesh(canvas: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """mediapipe's default face-mesh drawing (grey tesselation, coloured contours and irises)."""
    h, w = canvas.shape[:2]
    conns = M.mediapipe_connections()
    valid = _inside(landmarks, w, h)
    _draw_edges(canvas, landmarks, conns["tesselation"], (128, 128, 128), 1, valid)
    for name, color in _MESH_CONTOURS.items():
        _draw_edges(canvas, landmarks, conns[name], color, 2, valid)
    return canvas


def _visible_triangles(gen: GeneratedLandmarks) -> tuple[np.ndarray, np.ndarray]:
    """Front-facing triangles sorted back to front, and their camera-space unit normals."""
    tri = M.canonical_mesh().triangles
    p = gen.points_cam
    a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    n = np.cross(b - a, c - a)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    centre = (a + b + c) / 3
    front = (n * centre).sum(1) < 0  # normal points towards the camera (at the origin)
    order = np.argsort(-centre[front, 2])  # far first
    return tri[front][order], n[front][order]


def draw_hifi(canvas: np.ndarray, gen: GeneratedLandmarks, line: int | None = None) -> np.ndarray:
    """Our 3D-aware map (see the module docstring); ``line`` = contour width in pixels (default: scales with size)."""
    h, w = canvas.shape[:2]
    tri, normals = _visible_triangles(gen)
    # normal-map colours in a view frame with y up and z towards the camera
    rgb = np.stack([normals[:, 0], -normals[:, 1], -normals[:, 2]], axis=1)
    colors = np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.int32).tolist()
    corners = np.round(gen.points2d * 16).astype(np.int32)[tri]  # 4 bits of sub-pixel precision
    for k in range(len(tri)):
        cv2.fillConvexPoly(canvas, corners[k], colors[k], cv2.LINE_8, 4)
    visible = np.zeros(M.NUM_LANDMARKS, dtype=bool)
    visible[tri.ravel()] = True
    face_px = np.ptp(gen.points2d[: M.NUM_MESH, 1])
    width = line or max(1, int(round(face_px / 200)))
    conns = M.mediapipe_connections()
    for name, color in _HIFI_CONTOURS.items():
        _draw_edges(canvas, gen.points2d, conns[name], color, width, visible)
    for iris, color in _HIFI_IRIS.items():
        eye_visible = visible[list(iris[1:])].any() or visible[M.EYE_L_TOP if iris == M.LEFT_IRIS else M.EYE_R_TOP]
        upper, lower = (M.EYE_L_TOP, M.EYE_L_BOTTOM) if iris == M.LEFT_IRIS else (M.EYE_R_TOP, M.EYE_R_BOTTOM)
        aperture = np.linalg.norm(gen.points2d[upper] - gen.points2d[lower])
        if eye_visible and aperture > 2:
            centre = gen.points2d[iris[0]]
            radius = np.linalg.norm(gen.points2d[list(iris[1:])] - centre, axis=1).mean()
            radius = max(1, int(round(min(radius, aperture / 2))))
            cv2.circle(canvas, (int(round(centre[0])), int(round(centre[1]))), radius, color, -1)
    return canvas


def render_map(gen: GeneratedLandmarks, style: str = "hifi", **options: bool) -> np.ndarray:
    """The conditioning map of one target: ``(H, W, 3)`` uint8 RGB, the canvas size of ``gen``.

    ``options`` go to the OpenPose styles (:func:`~hifi_portrait.landmarks.openpose.render_openpose`:
    ``shoulders``, ``body``, ``face``, ``thick``); the other styles take none.
    """
    if style not in STYLES:
        raise LandmarkError(f"unknown map style {style!r}; choose one of: {', '.join(STYLES)}.")
    if style in OPENPOSE_STYLES:
        from hifi_portrait.landmarks.openpose import DRAW_OPTIONS, render_openpose

        unknown = sorted(set(options) - set(DRAW_OPTIONS))
        if unknown:
            raise LandmarkError(f"unknown option(s) {unknown} for style {style!r}; use: {', '.join(DRAW_OPTIONS)}.")
        return render_openpose(gen, format=style, **options)
    if options:
        raise LandmarkError(f"style {style!r} takes no drawing options (got {sorted(options)}).")
    canvas = _canvas(gen)
    if style == "hifi":
        return draw_hifi(canvas, gen)
    if style == "instantid":
        return draw_instantid(canvas, gen.keypoints)
    if style == "mediapipe":
        return draw_mediapipe(canvas, gen.points2d)
    return draw_mesh(canvas, gen.points2d)


def overlay(image: np.ndarray, condition: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend a map over an RGB image of the same size: map pixels that are not black replace the image by ``alpha``."""
    if image.shape != condition.shape:
        raise LandmarkError(f"overlay needs images of the same shape, got {image.shape} and {condition.shape}.")
    mask = condition.max(axis=2, keepdims=True) > 0
    mixed = (image.astype(np.float32) * (1 - alpha) + condition.astype(np.float32) * alpha).astype(np.uint8)
    return np.where(mask, mixed, image)


def warp_reference(image: np.ndarray, ref_landmarks: np.ndarray, gen: GeneratedLandmarks) -> np.ndarray:
    """Move a reference photo onto the target canvas by the 2D similarity that best maps its stable landmarks onto
    the generated ones (for previews: the photo shows where the face was, the map where it will be)."""
    idx = np.flatnonzero(M.stable_weights() > 0)
    matrix, _ = cv2.estimateAffinePartial2D(
        ref_landmarks[idx, :2].astype(np.float32), gen.points2d[idx].astype(np.float32), method=cv2.LMEDS
    )
    if matrix is None:
        return np.zeros((gen.camera.height, gen.camera.width, 3), dtype=np.uint8)
    return cv2.warpAffine(image, matrix, (gen.camera.width, gen.camera.height), borderMode=cv2.BORDER_CONSTANT)


def from_detected(landmarks: np.ndarray, size: tuple[int, int]) -> GeneratedLandmarks:
    """Wrap *detected* ``(478, 3)`` landmarks (pixels, ``z`` in pixel scale, :mod:`hifi_portrait.face.types`) so
    that :func:`render_map` draws them in any style, the 3D-aware ``"hifi"`` one included.

    Detected faces have no camera-space points; they are taken under a weak-perspective camera, far away along the
    optical axis (``z + 20 * max(W, H)``), which is what mediapipe's ``z`` assumes. Visibility and surface normals
    then come from the detected depth, so a training target's map (made from its detected landmarks) and an
    inference map (made by :func:`~hifi_portrait.landmarks.generate_landmarks`) look alike for the same face.
    """
    from hifi_portrait.landmarks.generate import TargetAttributes, vertex_normals
    from hifi_portrait.landmarks.geometry import PinholeCamera

    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (M.NUM_LANDMARKS, 3):
        raise LandmarkError(f"detected landmarks must have shape ({M.NUM_LANDMARKS}, 3), not {pts.shape}")
    w, h = int(size[0]), int(size[1])
    far = 20.0 * max(w, h)
    points_cam = np.stack([pts[:, 0] - w / 2, pts[:, 1] - h / 2, pts[:, 2] + far], axis=1)
    normals = vertex_normals(points_cam, M.canonical_mesh().triangles)
    return GeneratedLandmarks(
        landmarks=pts,
        points_cam=points_cam,
        normals_cam=normals,
        camera=PinholeCamera(w, h),
        rotation=np.eye(3),
        target=TargetAttributes(),
    )


def render_detected(landmarks: np.ndarray, size: tuple[int, int], style: str = "hifi", **options: bool) -> np.ndarray:
    """The conditioning map of detected ``(478, 3)`` landmarks on a ``size = (W, H)`` canvas (see
    :func:`from_detected`)."""
    return render_map(from_detected(landmarks, size), style, **options)
