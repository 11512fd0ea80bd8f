"""The canonical face mesh and the landmark index sets used by the landmark generator.

The canonical mesh is mediapipe's metric face model (468 vertices, centimetres, Apache-2.0). It is read from the
``geometry_pipeline_metadata_landmarks.binarypb`` entry of the ``face_landmarker.task`` bundle, together with the
33 weighted "procrustes" landmarks mediapipe itself uses to estimate head pose (points that barely move with
expression: eye corners, nose bridge, forehead, cheek bones).

Frame of the canonical mesh (and of every *model-space* shape in this package): ``x`` towards the image's right
when the face is frontal (the subject's left), ``y`` up, ``z`` towards the camera (the nose tip has the largest
``z``). Right-handed.
"""

from __future__ import annotations

import functools
import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hifi_portrait.errors import ModelFilesMissingError

logger = logging.getLogger(__name__)

#: Environment variable naming a ``face_landmarker.task`` file to use instead of the packaged one.
TASK_ENV = "HIFI_PORTRAIT_FACE_LANDMARKER"
NUM_MESH = 468
NUM_LANDMARKS = 478

# Landmark indices (mediapipe face mesh). "R" = the subject's right (image left in a frontal photo).
RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER = 468, 473
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_IRIS = (473, 474, 475, 476, 477)
NOSE_TIP = 1
FOREHEAD_TOP, CHIN = 10, 152
MOUTH_CORNER_R, MOUTH_CORNER_L = 61, 291
INNER_LIP_TOP, INNER_LIP_BOTTOM = 13, 14
EYE_R_OUTER, EYE_R_INNER, EYE_R_TOP, EYE_R_BOTTOM = 33, 133, 159, 145
EYE_L_OUTER, EYE_L_INNER, EYE_L_TOP, EYE_L_BOTTOM = 263, 362, 386, 374
#: Canonical mesh, outer eye corner to outer eye corner (vertices 33-263), centimetres.
CANONICAL_EYE_CORNERS_CM = 8.89


def eye_corner_scale(points: np.ndarray) -> float:
    """Size of ``(478, 3)`` (or ``(468, 3)``) ``points`` in canonical centimetres: their outer-eye-corner distance
    over the canonical mesh's. Expression amplitudes and anthropometric offsets are scaled by it."""
    return float(np.linalg.norm(points[EYE_L_OUTER] - points[EYE_R_OUTER])) / CANONICAL_EYE_CORNERS_CM


# Eyelid contours (subject's right eye / left eye), outer corner -> inner corner.
UPPER_LID_R = (33, 246, 161, 160, 159, 158, 157, 173, 133)
LOWER_LID_R = (33, 7, 163, 144, 145, 153, 154, 155, 133)
UPPER_LID_L = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LOWER_LID_L = (263, 249, 390, 373, 374, 380, 381, 382, 362)
# Second ring above / below the lids (moves about half as much as the lid margin).
UPPER_LID_RING_R = (130, 247, 30, 29, 27, 28, 56, 190, 243)
LOWER_LID_RING_R = (130, 25, 110, 24, 23, 22, 26, 112, 243)
UPPER_LID_RING_L = (359, 467, 260, 259, 257, 258, 286, 414, 463)
LOWER_LID_RING_L = (359, 255, 339, 254, 253, 252, 256, 341, 463)
BROW_R = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)
BROW_L = (300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
BROW_INNER_R, BROW_INNER_L = (107, 66, 55, 65), (336, 296, 285, 295)
BROW_OUTER_R, BROW_OUTER_L = (70, 46, 63, 53), (300, 276, 293, 283)
# Lips: outer and inner contours of the upper and lower lip, corners included in both.
UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_LIP = (146, 91, 181, 84, 17, 314, 405, 321, 375, 95, 88, 178, 87, 14, 317, 402, 318, 324)
MOUTH_CORNERS = (61, 291, 78, 308)
#: The 5 keypoints in the order of :mod:`hifi_portrait.face.types` (eye, eye, nose, mouth corner, mouth corner);
#: the eyes are iris centres.
FIVE_POINTS = (RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER, NOSE_TIP, MOUTH_CORNER_R, MOUTH_CORNER_L)


@dataclass(frozen=True)
class CanonicalMesh:
    """Mediapipe's canonical face model.

    Attributes:
        vertices: ``(468, 3)`` float64, centimetres, model-space frame (see module docstring).
        triangles: ``(898, 3)`` int, counter-clockwise seen from the front.
        procrustes_weights: ``(468,)`` float64, mediapipe's pose-estimation weights (33 non-zero, sum 1).
    """

    vertices: np.ndarray
    triangles: np.ndarray
    procrustes_weights: np.ndarray


def find_face_landmarker_task() -> Path:
    """Path of ``face_landmarker.task`` (see :func:`hifi_portrait.face.model_files.face_landmarker_task`)."""
    from hifi_portrait.face.model_files import face_landmarker_task

    return face_landmarker_task()


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _proto_fields(buf: bytes) -> list[tuple[int, object]]:
    """Decode one protobuf message into ``(field number, value)`` pairs (wire types 0, 1, 2, 5)."""
    out: list[tuple[int, object]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = struct.unpack("<f", buf[i : i + 4])[0], i + 4
        elif wire == 1:
            value, i = struct.unpack("<d", buf[i : i + 8])[0], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def parse_geometry_metadata(buf: bytes) -> CanonicalMesh:
    """Parse mediapipe's ``GeometryPipelineMetadata`` protobuf (canonical_mesh = 1, procrustes basis = 2)."""
    top = _proto_fields(buf)
    mesh = _proto_fields(next(v for n, v in top if n == 1))
    floats = [v for n, v in mesh if n == 3]
    vertex_buffer = np.array(floats, dtype=np.float64).reshape(-1, 5)  # x y z u v
    indices = np.array([v for n, v in mesh if n == 4], dtype=np.int64).reshape(-1, 3)
    weights = np.zeros(len(vertex_buffer))
    for n, v in top:
        if n == 2:
            ref = dict(_proto_fields(v))
            weights[int(ref.get(1, 0))] = float(ref.get(2, 0.0))
    return CanonicalMesh(vertices=vertex_buffer[:, :3].copy(), triangles=indices, procrustes_weights=weights)


@functools.lru_cache(maxsize=1)
def canonical_mesh() -> CanonicalMesh:
    """The canonical mesh, read once from the ``face_landmarker.task`` bundle."""
    path = find_face_landmarker_task()
    with zipfile.ZipFile(path) as bundle:
        buf = bundle.read("geometry_pipeline_metadata_landmarks.binarypb")
    mesh = parse_geometry_metadata(buf)
    if mesh.vertices.shape != (NUM_MESH, 3):
        raise ModelFilesMissingError(f"{path}: unexpected canonical mesh of shape {mesh.vertices.shape}.")
    return mesh


@functools.lru_cache(maxsize=1)
def stable_weights() -> np.ndarray:
    """``(468,)`` weights of the skull-fixed points used to define head pose: uniform over mediapipe's procrustes
    points minus the two on the jaw line (they move when the mouth opens), normalized to sum 1."""
    w = (canonical_mesh().procrustes_weights > 0).astype(np.float64)
    w[canonical_mesh().vertices[:, 1] < -3.0] = 0.0  # below the mouth corners: jaw
    return w / w.sum()


@functools.lru_cache(maxsize=1)
def canonical_landmarks() -> np.ndarray:
    """``(478, 3)`` canonical shape: the 468 mesh vertices plus 10 iris points placed in the canonical eyes.

    The iris centre is the mean of the eye's lid contour, pushed forward to the front of the eyeball; the 4 rim
    points sit 0.59 cm (the mean human iris radius) around it in the eye's plane.
    """
    verts = canonical_mesh().vertices
    out = np.zeros((NUM_LANDMARKS, 3))
    out[:NUM_MESH] = verts
    for iris, upper, lower in ((RIGHT_IRIS, UPPER_LID_R, LOWER_LID_R), (LEFT_IRIS, UPPER_LID_L, LOWER_LID_L)):
        contour = verts[list(upper) + list(lower)]
        centre = contour.mean(axis=0)
        centre[2] = contour[:, 2].max()
        radius = 0.59
        # mediapipe's rim order: right, top, left, bottom (as seen in the image)
        offsets = np.array([[radius, 0, 0], [0, radius, 0], [-radius, 0, 0], [0, -radius, 0]])
        out[iris[0]] = centre
        out[list(iris[1:])] = centre + offsets
    return out


@functools.lru_cache(maxsize=1)
def mediapipe_connections() -> dict[str, np.ndarray]:
    """Mediapipe's face-mesh connection sets as ``(E, 2)`` int arrays, by name (``tesselation``, ``lips``, ...)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as conn  # slow import, done once

    names = {
        "tesselation": conn.FACE_LANDMARKS_TESSELATION,
        "face_oval": conn.FACE_LANDMARKS_FACE_OVAL,
        "lips": conn.FACE_LANDMARKS_LIPS,
        "left_eye": conn.FACE_LANDMARKS_LEFT_EYE,
        "left_eyebrow": conn.FACE_LANDMARKS_LEFT_EYEBROW,
        "left_iris": conn.FACE_LANDMARKS_LEFT_IRIS,
        "right_eye": conn.FACE_LANDMARKS_RIGHT_EYE,
        "right_eyebrow": conn.FACE_LANDMARKS_RIGHT_EYEBROW,
        "right_iris": conn.FACE_LANDMARKS_RIGHT_IRIS,
        "nose": conn.FACE_LANDMARKS_NOSE,
    }
    return {k: np.array([(c.start, c.end) for c in v], dtype=np.int32) for k, v in names.items()}
