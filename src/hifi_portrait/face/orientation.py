"""In-plane orientation of a face: which quarter turn of the photo makes it upright, and mapping results back.

The 3D landmarker and the identity embedder expect upright faces: on a face turned by 90 or 180 degrees they give
a wrong pose and a poor identity vector. The detector finds turned faces, but its keypoints on them are unreliable
(on an upside-down face it often places the eyes where the mouth is, with a high score). So the orientation is
judged by detecting the face again on a small crop turned four ways (:func:`upright_turns`): the turn where the
face is found with upright keypoints and the highest score wins. The face is then analysed in the photo turned
upright and the results are mapped back (:func:`turn_back`), with the true roll.

Measured on the bundled photos (32 photos, each rotated in 15-degree steps, 812 faces): every face within 30 degrees
of upright kept its orientation; of the others, 629 were turned upright, 7 (1.1 %) were turned the wrong way (then
usually rejected by the mesh-versus-keypoints roll check of the analyzer) and 25 were not found in any orientation.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from hifi_portrait.face.alignment import compose_affine, keypoint_roll, quarter_turn_affine, transform_points
from hifi_portrait.face.detection import Detection, FaceDetector
from hifi_portrait.face.mesh import face_crop_affine, pose_from_matrix
from hifi_portrait.face.types import FaceAnalysis

#: A face whose keypoints are within this many degrees of upright counts as upright.
UPRIGHT_TOLERANCE = 45.0
#: Side in pixels of the crop (twice the face box) that is detected four ways to judge the orientation.
ORIENTATION_CROP = 192


def wrap_degrees(angle: float) -> float:
    """``angle`` wrapped to ``[-180, 180)``."""
    return float((angle + 180.0) % 360.0 - 180.0)


def keypoint_turns(keypoints: np.ndarray) -> int:
    """Counter-clockwise quarter turns (0-3, as ``np.rot90``) that make a face with these keypoints upright."""
    return int(-round(keypoint_roll(keypoints) / 90.0)) % 4


def map_detection(det: Detection, affine: np.ndarray) -> Detection:
    """A detection moved by a ``(2, 3)`` affine (a quarter turn): keypoints in the same order, box re-fitted."""
    x1, y1, x2, y2 = det.bbox
    corners = transform_points(np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]]), affine)
    bbox = np.concatenate([corners.min(0), corners.max(0)])
    return Detection(bbox=bbox, score=det.score, keypoints=transform_points(det.keypoints, affine))


def _center(det: Detection) -> np.ndarray:
    return (np.asarray(det.bbox[:2]) + np.asarray(det.bbox[2:])) / 2.0


def _upright_near(detections: list[Detection], center: np.ndarray, radius: float) -> Detection | None:
    """The best-scoring detection with upright keypoints whose box centre lies within ``radius`` of ``center``."""
    near = [
        d
        for d in detections
        if abs(keypoint_roll(d.keypoints)) < UPRIGHT_TOLERANCE and np.linalg.norm(_center(d) - center) <= radius
    ]
    return max(near, key=lambda d: d.score, default=None)


def upright_turns(detector: FaceDetector, image: np.ndarray, det: Detection) -> int:
    """Quarter turns (0-3, counter-clockwise as ``np.rot90``) of ``image`` that make the face ``det`` upright.

    The square crop of twice the face box, :data:`ORIENTATION_CROP` px, is detected in its four turns; the turn
    with an upright detection near the crop centre and the highest score wins (ties: the smaller turn). When no
    turn gives one, the full-photo keypoints decide.
    """
    affine, _ = face_crop_affine(det, 2.0, ORIENTATION_CROP)
    crop = cv2.warpAffine(image, affine, (ORIENTATION_CROP, ORIENTATION_CROP), flags=cv2.INTER_AREA)
    middle = np.full(2, (ORIENTATION_CROP - 1) / 2.0)
    best_turns, best_score = None, -1.0
    for turns in range(4):
        tile = np.ascontiguousarray(np.rot90(crop, turns))
        found = _upright_near(detector.detect(tile), middle, ORIENTATION_CROP / 4)
        if found is not None and found.score > best_score:
            best_turns, best_score = turns, found.score
    return keypoint_turns(det.keypoints) if best_turns is None else best_turns


def find_turned_faces(detector: FaceDetector, image: np.ndarray) -> tuple[int, list[Detection]]:
    """Faces found only in the photo turned by 180, 90 or 270 degrees: ``(turns, detections in photo pixels)``."""
    height, width = image.shape[:2]
    for turns in (2, 1, 3):
        found = detector.detect(np.ascontiguousarray(np.rot90(image, turns)))
        if found:
            back = cv2.invertAffineTransform(quarter_turn_affine(turns, width, height))
            return turns, [map_detection(d, back) for d in found]
    return 0, []


def redetect_upright(detector: FaceDetector, turned: np.ndarray, det: Detection, to_turned: np.ndarray):
    """The detection of face ``det`` (photo pixels) in the turned photo, with upright keypoints, or ``None``."""
    center = transform_points(_center(det)[None], to_turned)[0]
    return _upright_near(detector.detect(turned), center, 0.5 * max(det.size, 1.0))


def turn_back(analysis: FaceAnalysis, to_turned: np.ndarray, turns: int, size: tuple[int, int]) -> FaceAnalysis:
    """Map an analysis made on ``np.rot90(photo, turns)`` back to the photo (``size`` = its ``(width, height)``).

    Box, keypoints (in the upright face's order), landmarks and the encoder affine are moved; the facial
    transformation matrix is turned about the camera axis, so the pose's roll is the true in-plane rotation.
    Crops, mask, identity and quality are those of the upright face.
    """
    back = cv2.invertAffineTransform(to_turned)
    moved = map_detection(Detection(analysis.bbox, analysis.det_score, analysis.keypoints), back)
    landmarks = analysis.landmarks.copy()
    landmarks[:, :2] = transform_points(analysis.landmarks, back)
    # the photo shows the upright face turned clockwise by 90*turns degrees: about the camera's z axis (towards
    # the viewer) a rotation by -90*turns degrees
    angle = np.radians(-90.0 * turns)
    spin = np.eye(4)
    spin[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    transform = spin @ analysis.transform
    return dataclasses.replace(
        analysis,
        image_size=(int(size[0]), int(size[1])),
        bbox=moved.bbox,
        keypoints=moved.keypoints,
        landmarks=landmarks,
        transform=transform,
        pose=pose_from_matrix(transform),
        encoder_affine=compose_affine(analysis.encoder_affine, to_turned),
    )
