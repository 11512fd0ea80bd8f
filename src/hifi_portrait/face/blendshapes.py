"""mediapipe's blendshape model run on its own: 478 landmarks in pixels -> 52 expression scores.

``face_blendshapes.tflite`` (inside ``face_landmarker.task``, Apache-2.0) is the last stage of mediapipe's face
landmarker: it reads the ``(x, y)`` pixel coordinates of 146 of the 478 mesh points (``kLandmarksSubsetIdxs`` of
mediapipe's ``face_blendshapes_graph.cc``) and returns the 52 scores (``_neutral`` then the 51 ARKit shapes). Run
here with LiteRT, it reproduces the landmarker's own scores (to ~3e-5 on the bundled photos) and can therefore
read the expression of *any* set of landmarks, e.g. generated ones: it is the independent reader used to fit and
to measure the expression basis (:mod:`hifi_portrait.landmarks.expression`).

The model normalizes its input itself (centred on the mean point, divided by the mean distance to it), so the
scores do not depend on position or size, but they do depend on in-plane rotation and on the head pose.

For gradients, :meth:`BlendshapeReader.torch_module` returns the same graph as a :class:`torch.nn.Module`
(:mod:`hifi_portrait.face.tflite_torch`).
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np

from hifi_portrait.errors import LandmarkError, ModelFilesMissingError

#: The 146 landmark indices the model reads, in its input order (mediapipe ``kLandmarksSubsetIdxs``).
LANDMARKS_SUBSET: tuple[int, ...] = tuple(
    int(i)
    for i in """
0 1 4 5 6 7 8 10 13 14 17 21 33 37 39 40 46 52 53 54 55 58 61 63 65 66 67 70 78 80 81 82 84 87 88
91 93 95 103 105 107 109 127 132 133 136 144 145 146 148 149 150 152 153 154 155 157 158 159 160
161 162 163 168 172 173 176 178 181 185 191 195 197 234 246 249 251 263 267 269 270 276 282 283 284
285 288 291 293 295 296 297 300 308 310 311 312 314 317 318 321 323 324 332 334 336 338 356 361 362
365 373 374 375 377 378 379 380 381 382 384 385 386 387 388 389 390 397 398 400 402 405 409 415 454
466 468 469 470 471 472 473 474 475 476 477
""".split()
)
MODEL_MEMBER = "face_blendshapes.tflite"


def blendshape_model_bytes(task_path: str | Path | None = None) -> bytes:
    """The ``face_blendshapes.tflite`` file read from the ``face_landmarker.task`` bundle."""
    from hifi_portrait.face.model_files import face_landmarker_task

    path = face_landmarker_task(task_path)
    with zipfile.ZipFile(path) as bundle:
        member = next((n for n in bundle.namelist() if Path(n).name == MODEL_MEMBER), None)
        if member is None:
            raise ModelFilesMissingError(f"{path} has no {MODEL_MEMBER}; use an unmodified face_landmarker.task.")
        return bundle.read(member)


def subset_points(landmarks: np.ndarray) -> np.ndarray:
    """``(..., 478, >=2)`` landmarks in pixels -> ``(..., 146, 2)`` float32 model input."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim < 2 or lm.shape[-2] != 478 or lm.shape[-1] < 2 or not np.isfinite(lm[..., :2]).all():
        raise LandmarkError(f"the blendshape model needs finite (478, 2) or (478, 3) landmarks, got {lm.shape}.")
    return np.ascontiguousarray(lm[..., list(LANDMARKS_SUBSET), :2], dtype=np.float32)


class BlendshapeReader:
    """Reads 52 blendshape scores from 478 landmarks with mediapipe's blendshape model (LiteRT, CPU).

    One interpreter per thread (LiteRT interpreters are not thread-safe). About 0.1 ms per face.
    """

    def __init__(self, task_path: str | Path | None = None, num_threads: int = 1) -> None:
        self._model = blendshape_model_bytes(task_path)
        self.num_threads = int(num_threads)
        self._local = threading.local()

    def _interpreter(self):
        interp = getattr(self._local, "interpreter", None)
        if interp is None:
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError as exc:
                raise ModelFilesMissingError(
                    "LiteRT is needed to run the blendshape model: `pip install ai-edge-litert` (a dependency of "
                    "hifi-portrait)."
                ) from exc
            from hifi_portrait.face.mesh import native_stderr_silenced

            interp = Interpreter(model_content=self._model, num_threads=self.num_threads)
            with native_stderr_silenced():
                interp.allocate_tensors()
            self._local.interpreter = interp
            self._local.io = (interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"])
        return interp

    def read_all(self, landmarks: np.ndarray) -> np.ndarray:
        """``(478, >=2)`` or ``(B, 478, >=2)`` pixels -> ``(52,)`` or ``(B, 52)`` scores (``_neutral`` first)."""
        pts = subset_points(landmarks)
        single = pts.ndim == 2
        pts = pts[None] if single else pts.reshape(-1, 146, 2)
        interp = self._interpreter()
        inp, out = self._local.io
        scores = np.empty((len(pts), 52), dtype=np.float64)
        for i, p in enumerate(pts):
            interp.set_tensor(inp, p[None])
            interp.invoke()
            scores[i] = interp.get_tensor(out).reshape(-1)
        return scores[0] if single else scores

    def read(self, landmarks: np.ndarray) -> np.ndarray:
        """The 51 ARKit scores (mediapipe's order, ``_neutral`` dropped): ``(51,)`` or ``(B, 51)``."""
        return self.read_all(landmarks)[..., 1:]

    def read_dict(self, landmarks: np.ndarray) -> dict[str, float]:
        """``{name: score}`` for the 51 ARKit blendshapes of one face."""
        from hifi_portrait.landmarks.expression import BLENDSHAPE_NAMES

        return dict(zip(BLENDSHAPE_NAMES, (float(v) for v in self.read(landmarks)), strict=True))

    def torch_module(self):
        """The same model as a differentiable :class:`torch.nn.Module`: ``(B, 146, 2)`` float32 -> ``(B, 52)``."""
        from hifi_portrait.face.tflite_torch import TFLiteGraph

        return TFLiteGraph(self._model)
