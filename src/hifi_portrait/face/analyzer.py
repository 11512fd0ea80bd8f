"""``FaceAnalyzer``: photo -> :class:`~hifi_portrait.face.types.FaceAnalysis` with pluggable backends.

Models load lazily on first use and are kept, so one analyzer should be reused for many photos.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hifi_portrait.errors import (
    ConfigError,
    FaceNotFoundError,
    HiFiPortraitError,
    ModelFilesMissingError,
    MultipleFacesError,
    UnusableFaceError,
)
from hifi_portrait.face.alignment import (
    ARCFACE_SIZE,
    ENCODER_SIZE,
    ENCODER_ZOOM,
    alignment_affine,
    keypoint_roll,
    quarter_turn_affine,
    transform_points,
    warp,
)
from hifi_portrait.face.detection import Detection, FaceDetector, RetinaFaceDetector
from hifi_portrait.face.identity import DlibEmbedder, IdentityEmbedder, InsightFaceEmbedder
from hifi_portrait.face.matting import FaceMatting, LandmarkHullMatting, SelfieHeadMatting, face_coverage
from hifi_portrait.face.mesh import Landmarker3D, MediaPipeLandmarker
from hifi_portrait.face.orientation import (
    find_turned_faces,
    keypoint_turns,
    redetect_upright,
    turn_back,
    upright_turns,
    wrap_degrees,
)
from hifi_portrait.face.quality import QualityConfig, compute_quality, unusable_reasons
from hifi_portrait.face.types import FaceAnalysis
from hifi_portrait.utils.image_io import load_image

logger = logging.getLogger(__name__)

Policy = str | int

#: Largest accepted difference between the 3D mesh's roll and the keypoints' roll (degrees); a larger one means a
#: mesh fitted to a face it misread, whose pose would be wrong, so the face is rejected instead.
MAX_ROLL_DISAGREEMENT = 35.0


def _check_policy(policy: Policy) -> Policy:
    if isinstance(policy, bool) or not (isinstance(policy, int) or policy in ("largest", "error")):
        raise ConfigError(f"face policy must be 'largest', 'error' or a face index (int), not {policy!r}")
    return policy


class FaceAnalyzer:
    """Detect, fit a 3D mesh, align, embed, mask and score faces.

    Args:
        detector: a :class:`FaceDetector` (default :class:`RetinaFaceDetector`).
        landmarker: a :class:`Landmarker3D` (default :class:`MediaPipeLandmarker`, created on first use).
        embedder: an :class:`IdentityEmbedder` (default :class:`DlibEmbedder`).
        matting: a :class:`FaceMatting` (default :class:`SelfieHeadMatting`: person matte inside the head region;
            :class:`LandmarkHullMatting` for the landmark hull, or ``make_matting("landmark-hull")``).
        quality: thresholds of the quality score and what to do with unusable faces.
        encoder_size: side of ``FaceAnalysis.encoder_crop`` in pixels.
        insightface_dir: shortcut for ``embedder=InsightFaceEmbedder(insightface_dir)``.
        face_landmarker_path: a ``face_landmarker.task`` file for the default landmarker.
        num_threads: threads of the default detector (onnxruntime); 1 is best when several photos are analysed in
            parallel (:meth:`analyze_many`) or the CPU is shared.
        check_orientation: judge each face's orientation by detecting it on a small crop turned four ways, and
            analyse faces turned by about 90 or 180 degrees upright (:mod:`hifi_portrait.face.orientation`);
            ``False`` trusts the detector's keypoints (faster, for photos known to be upright).
    """

    def __init__(
        self,
        detector: FaceDetector | None = None,
        landmarker: Landmarker3D | None = None,
        embedder: IdentityEmbedder | None = None,
        matting: FaceMatting | None = None,
        quality: QualityConfig | None = None,
        encoder_size: int = ENCODER_SIZE,
        insightface_dir: str | os.PathLike | None = None,
        face_landmarker_path: str | os.PathLike | None = None,
        num_threads: int = 1,
        check_orientation: bool = True,
    ) -> None:
        if embedder is not None and insightface_dir is not None:
            raise ConfigError("pass either embedder or insightface_dir, not both")
        if landmarker is None:  # a wrong model file is an error now, not one per photo later
            from hifi_portrait.face.model_files import face_landmarker_task

            face_landmarker_path = face_landmarker_task(face_landmarker_path)
        self.detector = detector or RetinaFaceDetector(num_threads=num_threads)
        self._landmarker = landmarker
        self._face_landmarker_path = face_landmarker_path
        self.embedder = embedder or (InsightFaceEmbedder(insightface_dir) if insightface_dir else DlibEmbedder())
        self.matting = matting or SelfieHeadMatting()
        self.quality_config = quality or QualityConfig()
        self.encoder_size = int(encoder_size)
        self.check_orientation = bool(check_orientation)
        self._workers: list[FaceAnalyzer] = []
        self._defaults = {
            "detector": detector is None,
            "landmarker": landmarker is None,
            "embedder": embedder is None,
            "insightface_dir": insightface_dir,
            "num_threads": num_threads,
        }

    @property
    def landmarker(self) -> Landmarker3D:
        if self._landmarker is None:
            self._landmarker = MediaPipeLandmarker(self._face_landmarker_path)
        return self._landmarker

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _read(image: str | os.PathLike | bytes | np.ndarray, source: str | None) -> tuple[np.ndarray, str]:
        if isinstance(image, np.ndarray):
            arr = image
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
                raise ConfigError(
                    f"expected an RGB uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}; "
                    "use hifi_portrait.face.load_image() to read files"
                )
            return np.ascontiguousarray(arr[..., :3]), source or "<array>"
        if isinstance(image, bytes | bytearray):
            return load_image(image), source or "<bytes>"
        return load_image(image), source or str(Path(image))

    # ------------------------------------------------------------------ API
    def detect(self, image: str | os.PathLike | bytes | np.ndarray) -> list[Detection]:
        """All faces of a photo, largest first (boxes, scores, 5 keypoints in photo pixels)."""
        arr, _ = self._read(image, None)
        return self.detector.detect(arr)

    def analyze(
        self,
        image: str | os.PathLike | bytes | np.ndarray,
        policy: Policy = "largest",
        source: str | None = None,
    ) -> FaceAnalysis:
        """Analyse one face of a photo.

        Args:
            image: a path, encoded bytes, or an RGB uint8 ``(H, W, 3)`` array (upright).
            policy: which face when there are several: ``"largest"``, ``"error"`` (raise
                :class:`MultipleFacesError`), or an index into the faces sorted largest first.
            source: name recorded in ``FaceAnalysis.source`` (default: the path).

        Raises:
            ImageLoadError, FaceNotFoundError, MultipleFacesError, UnusableFaceError, ConfigError.
        """
        _check_policy(policy)
        arr, name = self._read(image, source)
        faces = self._find_faces(arr)
        if not faces:
            raise FaceNotFoundError(
                f"{name}: no face found; use a photo where one face is clearly visible (at least "
                f"{self.quality_config.min_face_px:.0f} px wide), or crop the photo around the face."
            )
        if policy == "error" and len(faces) > 1:
            raise MultipleFacesError(
                f"{name}: {len(faces)} faces found and the policy is 'error'; crop the photo to one person, or use "
                "policy 'largest' or a face index (0 = largest)."
            )
        index = 0 if policy in ("largest", "error") else int(policy)
        if not 0 <= index < len(faces):
            raise FaceNotFoundError(
                f"{name}: face index {index} requested but only {len(faces)} face(s) found (indices 0.."
                f"{len(faces) - 1}, largest first)."
            )
        return self._analyze_detection(arr, faces[index], index, name)

    def analyze_all(
        self, image: str | os.PathLike | bytes | np.ndarray, source: str | None = None, skip_unusable: bool = True
    ) -> list[FaceAnalysis]:
        """Analyse every face of a photo (group photos), largest first.

        Faces that are unusable (too small, too blurred, no mesh) are skipped with a warning when
        ``skip_unusable``; otherwise the error is raised.
        """
        arr, name = self._read(image, source)
        out = []
        for index, det in enumerate(self._find_faces(arr)):
            try:
                out.append(self._analyze_detection(arr, det, index, name))
            except UnusableFaceError as exc:
                if not skip_unusable:
                    raise
                logger.warning("skipping face %d: %s", index, exc)
        return out

    def close(self) -> None:
        """Release the models' native resources now (mediapipe graphs); the analyzer reloads them if used again."""
        for worker in self._workers:
            worker.close()
        self._workers.clear()
        close = getattr(self._landmarker, "close", None)
        if close is not None:
            close()

    def _worker_copy(self) -> FaceAnalyzer:
        """An analyzer for another thread: fresh default backends, user-supplied backends shared."""
        d = self._defaults
        return FaceAnalyzer(
            detector=None if d["detector"] else self.detector,
            landmarker=None if d["landmarker"] else self._landmarker,
            embedder=None if d["embedder"] else self.embedder,
            matting=self.matting,
            quality=self.quality_config,
            encoder_size=self.encoder_size,
            insightface_dir=d["insightface_dir"] if d["embedder"] else None,
            face_landmarker_path=self._face_landmarker_path,
            num_threads=d["num_threads"],
            check_orientation=self.check_orientation,
        )

    def analyze_many(
        self,
        images: Iterable[str | os.PathLike | bytes | np.ndarray],
        policy: Policy = "largest",
        workers: int = 1,
        sources: list[str] | None = None,
    ) -> Iterator[FaceAnalysis | HiFiPortraitError]:
        """Analyse many photos, ``workers`` at a time (threads, each with its own models); results in input order.

        Yields a :class:`FaceAnalysis` per photo, or the typed error that photo raised (so that one bad file does
        not stop a batch). ``sources`` names the photos (default: their paths). With ``workers=2`` on 2 idle
        cores throughput rises well above one worker's: the models release the GIL while they run.
        """
        _check_policy(policy)
        items = list(images)
        names = list(sources) if sources is not None else [None] * len(items)
        if len(names) != len(items):
            raise ConfigError(f"{len(items)} images but {len(names)} source names")

        def one(analyzer: FaceAnalyzer, item) -> FaceAnalysis | HiFiPortraitError:
            index, image = item
            try:
                return analyzer.analyze(image, policy=policy, source=names[index])
            except HiFiPortraitError as exc:
                if isinstance(exc, ConfigError | ModelFilesMissingError):  # not about this photo: stop the batch
                    raise
                return exc

        if workers <= 1 or len(items) <= 1:
            for item in enumerate(items):
                yield one(self, item)
            return
        pool_size = min(int(workers), len(items))
        # worker copies are kept for later calls: models load once, and mediapipe graphs are never garbage
        # collected mid-run (closing one from a finalizer can deadlock)
        while len(self._workers) < pool_size - 1:
            self._workers.append(self._worker_copy())
        analyzers = [self, *self._workers[: pool_size - 1]]
        free: queue.SimpleQueue = queue.SimpleQueue()
        for analyzer in analyzers:
            free.put(analyzer)

        def task(item):
            analyzer = free.get()
            try:
                return one(analyzer, item)
            finally:
                free.put(analyzer)

        with ThreadPoolExecutor(max_workers=pool_size) as pool:
            yield from pool.map(task, enumerate(items))

    # ------------------------------------------------------------------ one face
    def _unusable(self, name: str, index: int, reasons: list[str]) -> None:
        message = (
            f"{name}: face {index} is unusable: {'; '.join(reasons)}. Use a sharper or larger photo of the face, "
            "or lower the thresholds (QualityConfig)."
        )
        if self.quality_config.on_unusable == "raise":
            raise UnusableFaceError(message)
        logger.warning(message)

    def _mask(self, crop: np.ndarray, crop_landmarks: np.ndarray, name: str, index: int) -> np.ndarray:
        """The face/head mask of the encoder crop; warns when a matte leaves most of the face out."""
        mask = self.matting.mask(crop, crop_landmarks)
        if not isinstance(self.matting, LandmarkHullMatting):
            coverage = face_coverage(mask, crop_landmarks)
            if coverage < 0.5:
                logger.warning(
                    "%s: face %d: the %s mask covers only %.0f %% of the face (occluded face, or the matting "
                    "failed); the reference will be mostly gray for the image encoder. Use another photo or the "
                    "landmark-hull mask.",
                    name,
                    index,
                    self.matting.name,
                    100 * coverage,
                )
        return mask

    def _find_faces(self, image: np.ndarray) -> list[Detection]:
        """Faces of the photo, largest first; when none is found upright, the photo turned by 180, 90 and 270 degrees
        is searched too (detections mapped back to the photo's pixels)."""
        faces = self.detector.detect(image)
        if faces or not self.check_orientation:
            return faces
        turns, faces = find_turned_faces(self.detector, image)
        if faces:
            logger.info("face(s) found only in the photo turned by %d degrees", 90 * turns)
        return faces

    def _analyze_detection(self, image: np.ndarray, det: Detection, index: int, name: str) -> FaceAnalysis:
        """Analyse one detected face; a face turned by about 90 or 180 degrees is analysed upright (true roll)."""
        if self.check_orientation:
            turns = upright_turns(self.detector, image, det)
        else:
            turns = keypoint_turns(det.keypoints)
        if turns == 0:
            return self._analyze_upright(image, det, index, name)
        height, width = image.shape[:2]
        to_turned = quarter_turn_affine(turns, width, height)
        turned = np.ascontiguousarray(np.rot90(image, turns))
        found = redetect_upright(self.detector, turned, det, to_turned)
        if found is None:
            raise UnusableFaceError(
                f"{name}: face {index} is turned by about {-90 * turns % 360} degrees in the photo and was not found "
                "again in the photo turned upright, so its pose cannot be measured; rotate the photo so that the "
                "face is upright."
            )
        return turn_back(self._analyze_upright(turned, found, index, name), to_turned, turns, (width, height))

    def _analyze_upright(self, image: np.ndarray, det: Detection, index: int, name: str) -> FaceAnalysis:
        cfg = self.quality_config
        if det.size < cfg.min_face_px and cfg.on_unusable == "raise":  # fail fast, before the expensive models
            self._unusable(name, index, [f"face too small ({det.size:.0f} px < min_face_px={cfg.min_face_px:.0f})"])
        mesh = self.landmarker.fit(image, det)
        if mesh is None:
            raise UnusableFaceError(
                f"{name}: face {index} was detected but the 3D face mesh could not be fitted (face turned away, "
                "occluded or cut off?); use a photo where the face is more visible."
            )
        kp_roll = keypoint_roll(det.keypoints)
        if abs(wrap_degrees(mesh.pose.roll - kp_roll)) > MAX_ROLL_DISAGREEMENT:
            raise UnusableFaceError(
                f"{name}: face {index}: the 3D face mesh's roll ({mesh.pose.roll:.0f} degrees) disagrees with the "
                f"keypoints' ({kp_roll:.0f} degrees), so its pose would be wrong; use a photo where the face is "
                "upright and clearly visible."
            )
        arc_affine = alignment_affine(det.keypoints, ARCFACE_SIZE)
        arcface_crop = warp(image, arc_affine, ARCFACE_SIZE)
        quality = compute_quality(det.size, arcface_crop, mesh.pose, det.score, cfg)
        reasons = unusable_reasons(quality, cfg)
        if reasons:
            self._unusable(name, index, reasons)
        enc_affine = alignment_affine(det.keypoints, self.encoder_size, ENCODER_ZOOM)
        encoder_crop = warp(image, enc_affine, self.encoder_size)
        mask = self._mask(encoder_crop, transform_points(mesh.landmarks, enc_affine), name, index)
        identity = self.embedder.embed(image, det)
        height, width = image.shape[:2]
        return FaceAnalysis(
            source=name,
            image_size=(int(width), int(height)),
            face_index=int(index),
            bbox=np.asarray(det.bbox, dtype=np.float64),
            det_score=float(det.score),
            keypoints=np.asarray(det.keypoints, dtype=np.float64),
            landmarks=mesh.landmarks,
            pose=mesh.pose,
            transform=mesh.transform,
            blendshapes=mesh.blendshapes,
            identity=identity,
            identity_model=self.embedder.name,
            quality=quality,
            arcface_crop=arcface_crop,
            encoder_crop=encoder_crop,
            mask=mask,
            mask_method=self.matting.name,
            encoder_affine=enc_affine,
        )
