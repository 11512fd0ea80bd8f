"""An independent control measurement: head pose and expression ratios from dlib's 68-point shape predictor.

The target mesh, the training maps and the default pose/expression read-back all come from mediapipe. This module
measures the same things with a different landmark model, so that a generator cannot score well only because it
learned what mediapipe likes:

* **face box**: dlib's own HOG frontal face detector (``dlib.get_frontal_face_detector``); when it finds no face
  near ours (faces under ~40 px, profiles), the analyzer's RetinaFace box is used instead and the measurement says
  so (``box_source = "ours"``); a face whose eye line is tilted is turned upright first (both dlib models expect
  upright faces);
* **68 points**: dlib's ``shape_predictor_68_face_landmarks.dat`` (ensemble of regression trees, Kazemi &
  Sullivan 2014) in the iBUG 300-W layout;
* **head pose**: ``cv2.solvePnP`` of a subset of those points against a generic 3D 68-point face
  (:func:`model_points_68`), with the principal point at the face's centre (the pose relative to the line of
  sight to the face, as mediapipe's face-centred crop measures it) and a focal length of ``max(width, height)``;
* **expression ratios** (:func:`expression_ratios`): mouth opening, eye opening (EAR), mouth-corner lift and
  brow raise, scale- and roll-invariant numbers on the 68 points.

The 3D model is **derived from mediapipe's canonical face mesh** through the 478 -> 68 table of
:mod:`hifi_portrait.landmarks.openpose`: both estimators therefore share the reference shape that defines "pose 0"
(a pitch convention shared by construction, not an agreement found), while the detector, the 2-D landmark model
and the solver (2-D PnP against 3-D Procrustes) are independent. See docs/evaluation.md.

Licence: the 68-point model was trained on the iBUG 300-W data set, whose licence allows **non-commercial
research use only**. It is used here for evaluation only, loaded on demand, never in the generation path.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hifi_portrait.errors import ModelFilesMissingError

logger = logging.getLogger(__name__)

#: The model file in the ``face_recognition_models`` package.
DLIB68_MODEL = "shape_predictor_68_face_landmarks.dat"

#: Points used for PnP (0-based iBUG 300-W indices): every point; without the jaw line (0-16, a silhouette that
#: slides over the face as it turns); brows, nose and eyes only ("rigid": the mouth moves with expression); nose and
#: eyes only. ``"visible-jaw"`` (not a fixed set): every point, but once a first "rigid" fit finds
#: ``|yaw| > 10``, the jaw points of the far side (the silhouette) are left out.
PNP_POINT_SETS: dict[str, tuple[int, ...]] = {
    "all": tuple(range(68)),
    "no-jaw": tuple(range(17, 68)),
    "rigid": tuple(range(17, 48)),
    "eyes-nose": tuple(range(27, 48)),
}
POINT_SET_CHOICES = (*PNP_POINT_SETS, "visible-jaw")
#: Chosen among :data:`POINT_SET_CHOICES` as the least mean |yaw - mediapipe yaw| on the calibration photos
#: (tests/data/ids and their mirrors; ``benchmarks/control_agreement.py`` prints every candidate on both splits).
DEFAULT_POINT_SET = "all"
#: ``"visible-jaw"``: yaw beyond which the far-side jaw points are dropped (degrees).
VISIBLE_JAW_YAW = 10.0

#: Expression ratios and the mediapipe blendshape groups they relate to (a correlation, not an equality):
#: ratio -> (blendshape names averaged, expected sign of the correlation).
RATIO_BLENDSHAPES: dict[str, tuple[tuple[str, ...], int]] = {
    "mouth_open": (("jawOpen",), +1),
    "eye_open": (("eyeBlinkLeft", "eyeBlinkRight"), -1),
    "mouth_corner_lift": (("mouthSmileLeft", "mouthSmileRight"), +1),
    "brow_raise": (("browInnerUp",), +1),
}

#: dlib's HOG detector and shape predictor start from an upright face: a face whose eye line is tilted by more than
#: this (degrees) is turned upright about its centre and measured again (at most :data:`UPRIGHT_PASSES` times).
UPRIGHT_TOLERANCE = 5.0
UPRIGHT_PASSES = 2

#: Short names of the blendshape groups in reports.
GROUP_NAMES = {"mouth_open": "jawOpen", "eye_open": "eyeBlink", "mouth_corner_lift": "mouthSmile"}
GROUP_NAMES["brow_raise"] = "browInnerUp"

# iBUG 300-W indices (0-based). "Right"/"left" are the subject's: the right eye is on the image's left.
_RIGHT_EYE = (36, 37, 38, 39, 40, 41)
_LEFT_EYE = (42, 43, 44, 45, 46, 47)
_INNER_BROWS = (20, 21, 22, 23)
_MOUTH_CORNERS = (48, 54)
_INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
_LIP_CENTRE = (62, 66)


@dataclass
class Dlib68Measurement:
    """What the dlib 68-point measurement found on one face.

    Attributes:
        points: ``(68, 2)`` iBUG 300-W points in image pixels.
        box: ``(4,)`` ``x1, y1, x2, y2`` of the face box the predictor ran in (in the upright view when
            ``derotated_by`` is not 0).
        box_source: ``"dlib-hog"`` (dlib's own detector) or ``"ours"`` (HOG found no face near ours; the
            analyzer's box was used).
        derotated_by: the in-plane angle in degrees by which the face was turned upright before the final
            landmark pass (0 when its eye line was already within :data:`UPRIGHT_TOLERANCE` of horizontal).
        yaw, pitch, roll: head pose in degrees (convention of :mod:`hifi_portrait.face.types`).
        reprojection_px: RMS reprojection error of the PnP fit, in pixels.
        ratios: :func:`expression_ratios` of ``points``.
    """

    points: np.ndarray
    box: np.ndarray
    box_source: str
    yaw: float
    pitch: float
    roll: float
    reprojection_px: float
    ratios: dict[str, float] = field(default_factory=dict)
    derotated_by: float = 0.0


@functools.lru_cache(maxsize=1)
def model_points_68() -> np.ndarray:
    """``(68, 3)`` generic 3D face in centimetres, model space (x image-right, y up, z towards the camera).

    mediapipe's canonical face mesh mapped to the 68 iBUG points by
    :data:`hifi_portrait.landmarks.openpose.IBUG68_FROM_MESH` (vertex blends chosen against dlib's predictor on the
    calibration photos ``tests/data/ids``). The fixed table, not the pose-aware jaw line of the ``openpose`` maps:
    this is the 3D face itself (y up), not a projection of it whose outline moves with the pose.
    """
    from hifi_portrait.landmarks.mesh import canonical_landmarks
    from hifi_portrait.landmarks.openpose import face68

    return face68(canonical_landmarks(), contour=False)


def _face_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Image-plane unit axes of the face (right = towards the subject's left eye, up = towards the brows) and the
    inter-ocular distance (outer eye corners 36-45), so that ratios do not depend on roll or scale."""
    p = np.asarray(points, dtype=np.float64)
    axis = p[45] - p[36]
    iod = float(np.linalg.norm(axis))
    if not np.isfinite(iod) or iod <= 0:
        raise ValueError("the outer eye corners (points 36 and 45) coincide; not a face")
    right = axis / iod
    up = np.array([right[1], -right[0]])  # image y points down: up is the right axis turned by -90 degrees
    return right, up, iod


def expression_ratios(points: np.ndarray) -> dict[str, float]:
    """Scale- and roll-invariant expression ratios of 68 iBUG 300-W points ``(68, 2)`` in pixels.

    * ``mouth_open``: mean inner-lip gap (pairs 61-67, 62-66, 63-65) / mouth width (corners 48-54); 0 closed.
    * ``eye_open``: eye aspect ratio (Soukupová & Čech 2016), ``(|p1-p5| + |p2-p4|) / (2 |p0-p3|)`` per eye,
      averaged over both eyes; ~0.3 open, ~0.05 closed.
    * ``mouth_corner_lift``: height of the mouth corners (48, 54) above the lip centre (mean of 62 and 66),
      along the face's up axis, / inter-ocular distance; > 0 when the corners are raised (smile), < 0 lowered.
    * ``brow_raise``: height of the inner brows (20-23) above the eye centres, along the face's up axis, /
      inter-ocular distance.

    The face's axes come from the outer eye corners (36 -> 45), so an in-plane rotation or a uniform scale of
    the points leaves every ratio unchanged. Head yaw and pitch do change them (foreshortening): compare
    ratios across images of similar pose, or as correlations.
    """
    p = np.asarray(points, dtype=np.float64)[:, :2]
    if p.shape != (68, 2):
        raise ValueError(f"expression_ratios needs (68, 2) points, not {p.shape}")
    _, up, iod = _face_frame(p)
    width = float(np.linalg.norm(p[_MOUTH_CORNERS[1]] - p[_MOUTH_CORNERS[0]]))
    gap = np.mean([np.linalg.norm(p[a] - p[b]) for a, b in _INNER_LIP_PAIRS])
    ears = []
    for eye in (_RIGHT_EYE, _LEFT_EYE):
        e = p[list(eye)]
        ears.append((np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2.0 * np.linalg.norm(e[0] - e[3])))
    centre = p[list(_LIP_CENTRE)].mean(axis=0)
    lift = float(np.mean([(centre - p[c]) @ -up for c in _MOUTH_CORNERS]))
    eyes = p[list(_RIGHT_EYE + _LEFT_EYE)].mean(axis=0)
    brow = float(np.mean([(p[b] - eyes) @ up for b in _INNER_BROWS]))
    return {
        "mouth_open": float(gap / width) if width > 0 else float("nan"),
        "eye_open": float(np.mean(ears)),
        "mouth_corner_lift": lift / iod,
        "brow_raise": brow / iod,
    }


def blendshape_groups(blendshapes: dict[str, float]) -> dict[str, float]:
    """The mediapipe blendshape group of each ratio (:data:`RATIO_BLENDSHAPES`), keyed by :data:`GROUP_NAMES`."""
    out = {}
    for ratio, (names, _) in RATIO_BLENDSHAPES.items():
        if all(n in blendshapes for n in names):
            out[GROUP_NAMES[ratio]] = float(np.mean([blendshapes[n] for n in names]))
    return out


def _solve_pnp(p2: np.ndarray, idx: list[int], camera: np.ndarray) -> tuple[float, float, float, float]:
    """PnP of the points ``idx`` of ``p2`` against :func:`model_points_68`: yaw, pitch, roll, RMS reprojection."""
    import cv2

    from hifi_portrait.landmarks.geometry import FLIP_YZ, pose_from_rotation

    model = model_points_68()
    obj, img = model[idx], np.ascontiguousarray(p2[idx])
    f, cx, cy = camera[0, 0], camera[0, 2], camera[1, 2]
    # start frontal, at the distance where the model's eye span (outer corners) matches the image's
    z0 = f * np.linalg.norm(model[45] - model[36]) / max(float(np.linalg.norm(p2[45] - p2[36])), 1e-6)
    mean2 = img.mean(axis=0)
    tvec0 = np.array([[(mean2[0] - cx) * z0 / f], [(mean2[1] - cy) * z0 / f], [z0]])
    rvec0, _ = cv2.Rodrigues(FLIP_YZ)
    ok, rvec, tvec = cv2.solvePnP(obj, img, camera, None, rvec0, tvec0, True, cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("solvePnP found no pose for these points")
    rot_cv, _ = cv2.Rodrigues(rvec)
    yaw, pitch, roll = pose_from_rotation(FLIP_YZ @ rot_cv)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, camera, None)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))
    return yaw, pitch, roll, rms


def pose_from_68(
    points: np.ndarray,
    image_size: tuple[int, int],
    centre: tuple[float, float] | None = None,
    point_set: str = DEFAULT_POINT_SET,
    focal: float | None = None,
) -> tuple[float, float, float, float]:
    """Head pose of 68 iBUG points by PnP (``cv2.solvePnP``, iterative) against :func:`model_points_68`.

    Args:
        points: ``(68, 2)`` image pixels.
        image_size: ``(width, height)`` of the image.
        centre: principal point; default the centre of the points' bounding box (the pose relative to the line
            of sight to the face, as mediapipe measures it on its face-centred crop).
        point_set: one of :data:`POINT_SET_CHOICES`.
        focal: focal length in pixels; default ``max(width, height)`` (a ~53 degree field of view).

    Returns:
        ``(yaw, pitch, roll, rms_reprojection_px)``, angles in degrees (convention of
        :mod:`hifi_portrait.face.types`).
    """
    if point_set not in POINT_SET_CHOICES:
        raise ValueError(f"unknown point set {point_set!r}; use one of {list(POINT_SET_CHOICES)}")
    p2 = np.asarray(points, dtype=np.float64)[:, :2]
    if p2.shape != (68, 2) or not np.isfinite(p2).all():
        raise ValueError(f"pose_from_68 needs 68 finite (x, y) points, not an array of shape {p2.shape}")
    if centre is None:
        centre = tuple((p2.min(axis=0) + p2.max(axis=0)) / 2.0)
    f = float(focal if focal is not None else max(image_size))
    camera = np.array([[f, 0.0, centre[0]], [0.0, f, centre[1]], [0.0, 0.0, 1.0]])
    if point_set != "visible-jaw":
        return _solve_pnp(p2, list(PNP_POINT_SETS[point_set]), camera)
    yaw = _solve_pnp(p2, list(PNP_POINT_SETS["rigid"]), camera)[0]
    hidden = range(9, 17) if yaw > VISIBLE_JAW_YAW else range(0, 8) if yaw < -VISIBLE_JAW_YAW else range(0)
    return _solve_pnp(p2, [i for i in range(68) if i not in hidden], camera)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class Dlib68Estimator:
    """dlib's HOG detector + 68-point shape predictor + PnP: an independent pose and expression measurement.

    Args:
        model_path: ``shape_predictor_68_face_landmarks.dat``; default: the copy in the ``face_recognition_models``
            package. A missing file raises :class:`~hifi_portrait.errors.ModelFilesMissingError` (on construction).
        point_set: the points used for PnP (:data:`POINT_SET_CHOICES`).
        focal: PnP focal length in pixels (default ``max(width, height)`` of each image).
    """

    name = "dlib68"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        point_set: str = DEFAULT_POINT_SET,
        focal: float | None = None,
    ) -> None:
        if model_path is None:
            from hifi_portrait.face.model_files import dlib_model

            model_path = dlib_model(DLIB68_MODEL)
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelFilesMissingError(
                f"dlib's 68-point model {self.model_path} does not exist; it ships in the 'face_recognition_models' "
                f"package as models/{DLIB68_MODEL} (`pip install face_recognition_models`, needs `setuptools<81`)."
            )
        if point_set not in POINT_SET_CHOICES:
            raise ValueError(f"unknown point set {point_set!r}; use one of {list(POINT_SET_CHOICES)}")
        self.point_set = point_set
        self.focal = focal
        self._detector = None
        self._predictor = None

    def _load(self):
        if self._predictor is None:
            import dlib

            try:
                self._predictor = dlib.shape_predictor(str(self.model_path))
            except RuntimeError as exc:
                raise ModelFilesMissingError(
                    f"dlib could not read {self.model_path} ({exc}); it is not dlib's 68-point shape predictor: use "
                    f"models/{DLIB68_MODEL} of the 'face_recognition_models' package."
                ) from None
            self._detector = dlib.get_frontal_face_detector()
        return self._detector, self._predictor

    def find_box(self, image: np.ndarray, bbox: np.ndarray) -> np.ndarray | None:
        """dlib's HOG box of the face whose (our) box is ``bbox``, or None when HOG finds no face overlapping it.

        The image is searched as is, then upsampled once (faces under ~80 px) when nothing overlaps.
        """
        detector, _ = self._load()
        bbox = np.asarray(bbox, dtype=np.float64)
        for upsample in (0, 1):
            best, best_iou = None, 0.2
            for rect in detector(image, upsample):
                box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)
                iou = _box_iou(box, bbox)
                if iou > best_iou:
                    best, best_iou = box, iou
            if best is not None:
                return best
        return None

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """``(68, 2)`` points of the face in ``box`` (``x1, y1, x2, y2`` pixels) of an RGB uint8 image."""
        import dlib

        _, predictor = self._load()
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        shape = predictor(np.ascontiguousarray(image), dlib.rectangle(x1, y1, x2, y2))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)

    def _points(self, image: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """68 points, the box they were found in and its source, in ``image``."""
        box = self.find_box(image, bbox)
        source = "dlib-hog"
        if box is None:
            box, source = np.asarray(bbox, dtype=np.float64), "ours"
        return self.landmarks(image, box), box, source

    def _upright_pass(self, image: np.ndarray, points: np.ndarray, box: np.ndarray, angle: float):
        """Turn the face upright (rotate by ``angle`` degrees about the centre of ``points``, in a window of three
        face boxes), find its box and points there, and map the points back to ``image``."""
        import cv2

        centre = points.mean(axis=0)
        side = int(max(64, 3 * max(box[2] - box[0], box[3] - box[1])))
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
        m[:, 2] += side / 2.0 - centre
        window = cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        half = np.array([box[2] - box[0], box[3] - box[1]]) / 2.0
        ref = np.concatenate([side / 2.0 - half, side / 2.0 + half])
        upright, up_box, source = self._points(window, ref)
        inverse = cv2.invertAffineTransform(m)
        return upright @ inverse[:, :2].T + inverse[:, 2], up_box, source

    def measure(self, image: np.ndarray, bbox: np.ndarray, keypoints: np.ndarray | None = None) -> Dlib68Measurement:
        """Measure the face whose box (from our detector) is ``bbox`` in an RGB uint8 ``(H, W, 3)`` image.

        HOG box (or ours) -> 68 points; when the eye line (36 -> 45) is tilted by more than
        :data:`UPRIGHT_TOLERANCE`, the face is turned upright and measured again, since both dlib models expect an
        upright face (unrotated, a face rolled by 40 degrees reads about 15 degrees of roll) -> PnP pose and ratios.

        Args:
            keypoints: optional ``(5, 2)`` keypoints of our detector (RetinaFace; eyes first, image-left eye
                first): the first upright turn then uses their eye line rather than the points of a first pass on
                the tilted face, which dlib may misplace (or find in a wrong HOG box) beyond ~40 degrees of roll.
                Later turns, and every point measured, are dlib's.
        """
        image = np.ascontiguousarray(image)
        points, box, source = self._points(image, bbox)
        derotated = 0.0
        for i in range(UPRIGHT_PASSES):
            eye = points[45] - points[36]
            if i == 0 and keypoints is not None:
                eye = np.asarray(keypoints, dtype=np.float64)[1] - np.asarray(keypoints, dtype=np.float64)[0]
            tilt = float(np.degrees(np.arctan2(eye[1], eye[0])))  # of the eye line in the image, not the window
            if abs(tilt - derotated) <= UPRIGHT_TOLERANCE:
                break
            derotated = tilt
            points, box, source = self._upright_pass(image, points, box, derotated)
        h, w = image.shape[:2]
        yaw, pitch, roll, rms = pose_from_68(points, (w, h), point_set=self.point_set, focal=self.focal)
        return Dlib68Measurement(
            points=points,
            box=box,
            box_source=source,
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            reprojection_px=rms,
            ratios=expression_ratios(points),
            derotated_by=derotated,
        )
