"""Identity embedding: a unit-norm vector per face; cosine similarity says "same person?".

Backends:

* :class:`DlibEmbedder` (default, offline): dlib's ResNet face recognition model v1 (128-d, trained on ~3M faces;
  the model files are public domain / CC0 and ship in the ``face_recognition_models`` package). dlib's own
  5-point shape predictor places the face chip, as ``face_recognition`` does; the network runs in PyTorch.
* :class:`InsightFaceEmbedder`: an ArcFace ONNX model (512-d) from a user-supplied insightface model folder
  (``antelopev2``: ``glintr100.onnx``; ``buffalo_l``: ``w600k_r50.onnx``; ``buffalo_s``/``buffalo_m``/
  ``buffalo_sc``: ``w600k_mbf.onnx``), run with onnxruntime directly (the ``insightface`` package is not needed).
  These models are licensed for non-commercial research only.

Similarities are only comparable between vectors of the same ``identity_model``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from hifi_portrait.errors import ModelFilesMissingError
from hifi_portrait.face.alignment import ARCFACE_SIZE, alignment_affine, warp
from hifi_portrait.face.detection import Detection

logger = logging.getLogger(__name__)


@runtime_checkable
class IdentityEmbedder(Protocol):
    """Maps one face of an RGB ``uint8`` ``(H, W, 3)`` image to a unit-norm ``(dim,)`` float32 vector.

    ``same_person_threshold`` is the cosine similarity above which two faces are probably the same person.
    """

    name: str
    dim: int
    same_person_threshold: float

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray: ...


def l2_normalize(vector: np.ndarray, axis: int = -1) -> np.ndarray:
    """``vector / ||vector||`` along ``axis`` (zero vectors stay zero), as float32."""
    v = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(v, axis=axis, keepdims=True)
    return (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)


class DlibEmbedder:
    """dlib ResNet 128-d face descriptor (``dlib_face_recognition_resnet_model_v1.dat``), unit-normalized.

    The face chip is placed by dlib's 5-point shape predictor inside the detector's box and cut by
    ``dlib.get_face_chip`` (150 px, padding 0.25), exactly as ``face_recognition`` does. The network runs in
    PyTorch (:class:`~hifi_portrait.face.dlib_resnet.DlibResNetTorch`, same weights and same outputs as dlib's,
    ~7x faster here) or in dlib itself (``backend="dlib"``).

    dlib's descriptors are designed for Euclidean distance < 0.6 = same person; on unit-normalized vectors our
    calibrated same-person threshold is cosine 0.905 (see :data:`hifi_portrait.face.face_set.SAME_PERSON_THRESHOLDS`).

    Args:
        backend: ``"torch"`` (default) or ``"dlib"``.
        num_threads: torch threads while the network runs (1 is fastest for this small network on a busy CPU).
        num_jitters: dlib's test-time augmentation (``backend="dlib"`` only; 0 = none).
    """

    name = "dlib-resnet-128"
    dim = 128
    same_person_threshold = 0.905  # calibrated: see hifi_portrait.face.face_set.SAME_PERSON_THRESHOLDS

    def __init__(self, backend: str = "torch", num_threads: int = 1, num_jitters: int = 0) -> None:
        if backend not in ("torch", "dlib"):
            from hifi_portrait.errors import ConfigError

            raise ConfigError(f"DlibEmbedder backend must be 'torch' or 'dlib', not {backend!r}")
        self.backend = backend
        self.num_threads = int(num_threads)
        self.num_jitters = int(num_jitters)
        self._predictor = None
        self._model = None

    def _load(self) -> None:
        if self._model is None:
            import dlib

            from hifi_portrait.face.model_files import dlib_model

            self._predictor = dlib.shape_predictor(str(dlib_model("shape_predictor_5_face_landmarks.dat")))
            path = dlib_model("dlib_face_recognition_resnet_model_v1.dat")
            if self.backend == "torch":
                from hifi_portrait.face.dlib_resnet import DlibResNetTorch

                self._model = DlibResNetTorch(path, num_threads=self.num_threads)
            else:
                self._model = dlib.face_recognition_model_v1(str(path))

    def chip(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """dlib's aligned ``(150, 150, 3)`` RGB uint8 face chip of ``detection``."""
        import dlib

        from hifi_portrait.face.dlib_resnet import CHIP_PADDING, CHIP_SIZE

        self._load()
        x1, y1, x2, y2 = (int(round(v)) for v in detection.bbox)
        image = np.ascontiguousarray(image)
        shape = self._predictor(image, dlib.rectangle(x1, y1, x2, y2))
        return dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """128-d unit vector of the face in ``detection`` (``image``: RGB uint8 ``(H, W, 3)``)."""
        chip = self.chip(image, detection)
        if self.backend == "torch":
            return l2_normalize(self._model(chip[None])[0])
        if self.num_jitters > 0:
            return l2_normalize(np.asarray(self._model.compute_face_descriptor(chip, self.num_jitters)))
        return l2_normalize(np.asarray(self._model.compute_face_descriptor(chip)))


#: Recognition model file names of the insightface model packs, in order of preference.
INSIGHTFACE_RECOGNITION_FILES = ("glintr100.onnx", "w600k_r50.onnx", "w600k_mbf.onnx")


class InsightFaceEmbedder:
    """ArcFace ONNX from a local insightface model folder (antelopev2 / buffalo_*), run with onnxruntime.

    Args:
        model_dir: folder holding one of :data:`INSIGHTFACE_RECOGNITION_FILES` (e.g.
            ``~/.insightface/models/antelopev2``), or the path of a recognition ``.onnx`` file itself.
        num_threads: onnxruntime intra-op threads.

    Raises:
        ModelFilesMissingError: the folder or the recognition model is missing (the message lists what was
            looked for and where the files come from).
    """

    name = "insightface-arcface"
    same_person_threshold = 0.4

    def __init__(self, model_dir: str | os.PathLike, num_threads: int = 2) -> None:
        self.model_path = self.find_model(model_dir)
        self.name = f"insightface-{self.model_path.stem}"
        self.num_threads = int(num_threads)
        self._session = None
        self.dim = 512

    @staticmethod
    def find_model(model_dir: str | os.PathLike) -> Path:
        """The recognition ``.onnx`` inside ``model_dir`` (or ``model_dir`` itself if it is an ``.onnx`` file)."""
        path = Path(model_dir).expanduser()
        where = (
            "Get the antelopev2 or buffalo_l pack from the insightface model zoo "
            "(https://github.com/deepinsight/insightface/tree/master/model_zoo; non-commercial licence), "
            "unzip it and pass the folder."
        )
        if path.is_file() and path.suffix == ".onnx":
            return path
        if not path.is_dir():
            raise ModelFilesMissingError(f"insightface model folder {path} does not exist. {where}")
        for name in INSIGHTFACE_RECOGNITION_FILES:
            for candidate in (path / name, *path.glob(f"*/{name}")):
                if candidate.is_file():
                    return candidate
        present = sorted(p.name for p in path.iterdir())[:20]
        raise ModelFilesMissingError(
            f"no ArcFace recognition model in {path}: expected one of {', '.join(INSIGHTFACE_RECOGNITION_FILES)} "
            f"(found: {', '.join(present) or 'nothing'}). {where}"
        )

    def _get_session(self):
        if self._session is None:
            from hifi_portrait.face.detection import _onnx_session

            self._session = _onnx_session(str(self.model_path), self.num_threads)
            out_shape = self._session.get_outputs()[0].shape
            if isinstance(out_shape[-1], int):
                self.dim = int(out_shape[-1])
        return self._session

    def embed_crop(self, crop: np.ndarray) -> np.ndarray:
        """Unit vector of an aligned ``(112, 112, 3)`` RGB uint8 ArcFace crop."""
        session = self._get_session()
        x = (crop.astype(np.float32) - 127.5) / 127.5
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        return l2_normalize(out[0])

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        crop = warp(image, alignment_affine(detection.keypoints, ARCFACE_SIZE), ARCFACE_SIZE)
        return self.embed_crop(crop)
