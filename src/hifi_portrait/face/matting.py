"""Person matting and face/head masks of aligned crops.

Two backends make ``FaceAnalysis.mask`` (``FaceAnalysis.mask_method`` records which):

* :class:`SelfieHeadMatting` (``"selfie-matte"``, the default): mediapipe's selfie segmentation model
  (``selfie_segmentation.tflite``, Apache-2.0, 249 KB, vendored in ``hifi_portrait/assets/selfie_segmentation/``
  with its licence and provenance) run with LiteRT by :class:`PersonMatting`, kept inside a head region around the
  face-mesh landmarks (:func:`head_region`): face, hair, ears and the top of the neck; background, shoulders and
  other people removed. This is the paper's preprocessing (references matted before the image encoder).
* :class:`LandmarkHullMatting` (``"landmark-hull"``): the convex hull of the 478 mesh points, dilated and feathered;
  forehead to chin, without hair or ears. No model needed.

:func:`face_coverage` measures how much of the face (the inner mesh hull) a mask covers: an object in front of
the face shows as a hole in the matte, which the dataset builder's occlusion filter uses.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from hifi_portrait.errors import ConfigError, ModelFilesMissingError

logger = logging.getLogger(__name__)

#: face-mesh indices: top of the forehead, chin, cheek at the image's left, cheek at the image's right, nose tip.
FOREHEAD_TOP, CHIN, CHEEK_LEFT, CHEEK_RIGHT, NOSE_TIP = 10, 152, 234, 454, 1
#: side of the selfie segmentation model's square input, pixels.
SELFIE_INPUT = 256
#: the vendored model file (provenance and licence beside it).
SELFIE_MODEL = Path(__file__).parents[1] / "assets" / "selfie_segmentation" / "selfie_segmentation.tflite"
#: background of matted reference crops (uint8 grey), the same at inference and in training.
MATTE_BACKGROUND = 127
#: the values of ``--mask`` / ``FaceAnalysis.mask_method``.
MASK_METHODS = ("selfie-matte", "landmark-hull")


@runtime_checkable
class FaceMatting(Protocol):
    """Makes a ``(S, S)`` uint8 mask (0..255, 255 = face) for an aligned ``(S, S, 3)`` crop.

    ``landmarks`` are the 478 mesh points already mapped into crop pixels, ``(478, 2)``.
    """

    name: str

    def mask(self, crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray: ...


class LandmarkHullMatting:
    """Convex hull of the face-mesh landmarks, dilated by ``grow`` and feathered by ``feather``.

    Args:
        grow: dilation as a fraction of the hull's size (sqrt of its area).
        feather: Gaussian blur sigma as a fraction of the hull's size (0 = hard edge).
        work_size: the mask is drawn at this resolution (longer side) and resized to the crop.
    """

    name = "landmark-hull"

    def __init__(self, grow: float = 0.03, feather: float = 0.02, work_size: int = 128) -> None:
        self.grow = float(grow)
        self.feather = float(feather)
        self.work_size = int(work_size)

    def mask(self, crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """``(S, S)`` uint8 mask for ``crop`` (``(S, S, 3)``) from landmarks in crop pixels ``(478, 2+)``.

        Drawn at (at most) ``work_size`` px and resized: the mask is smooth, so this loses nothing visible.
        """
        height, width = crop.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        out, size = _hull_mask((h, w), np.asarray(landmarks, dtype=np.float64)[:, :2] * scale)
        radius = int(round(self.grow * size))
        if radius > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            out = cv2.dilate(out, kernel)
        sigma = self.feather * size
        if sigma > 0.3:
            out = cv2.GaussianBlur(out, (0, 0), sigma)
        if (h, w) != (height, width):
            out = cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR)
        return out


def _hull_mask(shape: tuple[int, int], points: np.ndarray) -> tuple[np.ndarray, float]:
    """uint8 ``shape`` mask of the convex hull of ``(N, 2)`` pixel points (255 inside) and the hull's size
    (sqrt of its area, pixels)."""
    hull = cv2.convexHull(np.round(np.asarray(points, dtype=np.float64)[:, :2] * 16).astype(np.int32))
    out = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(out, hull, 255, lineType=cv2.LINE_AA, shift=4)
    return out, float(np.sqrt(max(cv2.contourArea(hull.astype(np.float32) / 16.0), 1.0)))


def face_coverage(mask: np.ndarray, landmarks: np.ndarray, shrink: float = 0.1) -> float:
    """Fraction in ``[0, 1]`` of the face that ``mask`` covers (``>= 128``).

    The face is the convex hull of the ``(478, 2+)`` mesh landmarks (in the mask's pixels), shrunk by ``shrink``
    of its size around its centre so that the soft edge of a matte does not count. A hand-held object in front
    of the face is not "person" for the matting model and shows as a hole; the hull mask always covers 1.0.
    """
    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    centre = pts.mean(0)
    inner, _ = _hull_mask(np.asarray(mask).shape[:2], centre + (pts - centre) * (1.0 - shrink))
    inside = inner >= 128
    if not inside.any():  # degenerate mesh (no area): nothing to measure, no evidence of occlusion
        return 1.0
    return float((np.asarray(mask)[inside] >= 128).mean())


# ---------------------------------------------------------------------------------------------- model file
def selfie_segmentation_model(path: str | os.PathLike | None = None) -> Path:
    """The vendored ``selfie_segmentation.tflite`` (see ``assets/selfie_segmentation/PROVENANCE.md``), or ``path``."""
    p = Path(path) if path is not None else SELFIE_MODEL
    if not p.is_file():
        raise ModelFilesMissingError(
            f"selfie segmentation model {p} does not exist. It ships inside the hifi-portrait package "
            "(hifi_portrait/assets/selfie_segmentation/); reinstall the package (`pip install -e .`), or pass "
            "--mask landmark-hull to use the landmark hull instead."
        )
    return p


class _TFLiteModel:
    """A one-input, one-output TFLite model run with LiteRT; one interpreter per thread (they are not thread-safe)."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        self.path, self.num_threads = Path(path), int(num_threads)
        self._local = threading.local()

    def _interpreter(self):
        interp = getattr(self._local, "interpreter", None)
        if interp is not None:
            return interp
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelFilesMissingError(
                f"LiteRT is needed to run {self.path.name}: `pip install ai-edge-litert` (a dependency of "
                "hifi-portrait), or pass --mask landmark-hull to use the landmark hull instead."
            ) from exc
        from hifi_portrait.face.mesh import native_stderr_silenced

        try:
            interp = Interpreter(model_path=str(self.path), num_threads=self.num_threads)
            with native_stderr_silenced():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" notice
                interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFilesMissingError(
                f"{self.path} is not a usable TFLite model ({exc}); reinstall hifi-portrait to restore it."
            ) from exc
        self._local.interpreter = interp
        self._local.io = (interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"])
        return interp

    def __call__(self, x: np.ndarray) -> np.ndarray:
        interp = self._interpreter()
        inp, out = self._local.io
        interp.set_tensor(inp, np.ascontiguousarray(x, dtype=np.float32))
        interp.invoke()
        return interp.get_tensor(out).copy()


# ---------------------------------------------------------------------------------------------- person matte
def guided_upsample(
    guide: np.ndarray, guide_low: np.ndarray, alpha_low: np.ndarray, radius: int = 2, eps: float = 1e-3
) -> np.ndarray:
    """Fast guided filter (He & Sun, 2015): ``alpha_low`` refined on the edges of ``guide`` and upsampled to it.

    Args:
        guide: ``(H, W)`` float32 grey image in ``[0, 1]`` at the output resolution.
        guide_low: the same image at the resolution of ``alpha_low``, ``(h, w)`` float32.
        alpha_low: ``(h, w)`` float32 matte in ``[0, 1]``.
        radius: box radius at the low resolution, pixels; eps: regularization (larger = smoother, less edge snap).

    Returns:
        ``(H, W)`` float32 matte in ``[0, 1]``. The local linear model ``alpha = a * guide + b`` is fitted in
        ``(2 radius + 1)^2`` windows at the low resolution (cheap) and applied at the full one, so the matte's
        edges follow the photo's edges (hair strands, ear outline) instead of the model's 256 px grid.
    """
    k = (2 * radius + 1, 2 * radius + 1)

    def box(a):
        return cv2.boxFilter(a, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide_low), box(alpha_low)
    var_i = box(guide_low * guide_low) - mean_i * mean_i
    cov_ip = box(guide_low * alpha_low) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    size = guide.shape[1], guide.shape[0]
    out = cv2.resize(box(a), size, interpolation=cv2.INTER_LINEAR)
    cv2.multiply(out, guide, dst=out)
    cv2.add(out, cv2.resize(box(b), size, interpolation=cv2.INTER_LINEAR), dst=out)
    return np.clip(out, 0.0, 1.0, out=out)


class PersonMatting:
    """Person matte of any RGB photo with mediapipe's selfie segmentation model (LiteRT, CPU).

    The photo is letterboxed (aspect ratio kept, zero border, centred) into the model's 256 x 256 input, the
    model's person probability ``p`` is cut back to the photo's area, turned into an alpha by a ramp of width
    ``softness`` centred on ``threshold`` (``alpha = clip((p - threshold) / softness + 0.5, 0, 1)``; mediapipe's own
    examples count a pixel as person when ``p > 0.1``, and thin or light hair at the outline gets ``p`` of only
    0.1-0.5) and upsampled to the photo's pixels with :func:`guided_upsample` (edge refinement, ``refine=True``)
    or bilinearly.

    Args:
        model_path: a ``selfie_segmentation.tflite`` (default: the vendored copy).
        num_threads: LiteRT CPU threads (1 is best when photos run in parallel or the CPU is shared).
        refine: snap the matte's edges to the photo's edges (fast guided filter).
        threshold, softness: the probability at which alpha is 0.5, and the width of the ramp around it.
        max_side: the refined matte is computed at most at this size (longer side) and resized beyond it.
    """

    name = "selfie-segmentation"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        num_threads: int = 1,
        refine: bool = True,
        threshold: float = 0.1,
        softness: float = 0.1,
        max_side: int = 1024,
    ) -> None:
        if not (0.0 < threshold < 1.0 and softness > 0.0):
            raise ConfigError(f"matting needs 0 < threshold < 1 and softness > 0, got {threshold}, {softness}")
        self.model_path = selfie_segmentation_model(model_path)
        self.refine, self.max_side = bool(refine), int(max_side)
        self.threshold, self.softness = float(threshold), float(softness)
        self._model = _TFLiteModel(self.model_path, num_threads)

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
        """``(256, 256, 3)`` float32 model input in ``[0, 1]`` (the photo resized into it, centred, zero border),
        the resized photo in grey (``(h, w)`` float32 in ``[0, 1]``) and its box ``(x, y, w, h)`` in the input."""
        height, width = image.shape[:2]
        scale = SELFIE_INPUT / max(height, width)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        x, y = (SELFIE_INPUT - w) // 2, (SELFIE_INPUT - h) // 2
        small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((SELFIE_INPUT, SELFIE_INPUT, 3), dtype=np.float32)
        np.multiply(small, np.float32(1 / 255), out=canvas[y : y + h, x : x + w])
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return canvas, np.multiply(grey, np.float32(1 / 255), out=grey), (x, y, w, h)

    def matte_low(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The alpha matte at the model's resolution, ``(h, w)`` float32 in ``[0, 1]`` (the photo's letterboxed
        area), and the grey photo at that resolution (``(h, w)`` float32 in ``[0, 1]``)."""
        image = _check_rgb(image)
        canvas, grey_low, (x, y, w, h) = self.letterbox(image)
        prob = self._model(canvas[None])[0, y : y + h, x : x + w, 0]
        alpha = (prob - np.float32(self.threshold)) * np.float32(1.0 / self.softness) + np.float32(0.5)
        return np.clip(alpha, 0.0, 1.0, out=alpha), grey_low

    def upsample(self, image: np.ndarray, alpha_low: np.ndarray, grey_low: np.ndarray) -> np.ndarray:
        """A low-resolution matte of ``image`` (from :meth:`matte_low`) at the photo's ``(H, W)``, float32."""
        height, width = image.shape[:2]
        if not self.refine:
            return cv2.resize(alpha_low, (width, height), interpolation=cv2.INTER_LINEAR)
        scale = min(1.0, self.max_side / max(height, width))
        work = image
        if scale < 1.0:
            work = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY).astype(np.float32)
        out = guided_upsample(np.multiply(grey, np.float32(1 / 255), out=grey), grey_low, alpha_low)
        return out if scale == 1.0 else cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR)

    def matte(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` float32 person probability in ``[0, 1]`` for an RGB uint8 ``(H, W, 3)`` photo."""
        alpha_low, grey_low = self.matte_low(image)
        return self.upsample(image, alpha_low, grey_low)


def _check_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) < 1:
        raise ConfigError(f"matting needs an RGB uint8 (H, W, 3) image, got {arr.dtype} {arr.shape}")
    return arr


# ---------------------------------------------------------------------------------------------- head mask
def head_region(
    landmarks: np.ndarray, shape: tuple[int, int], above: float = 1.0, below: float = 0.25, width: float = 0.95
) -> np.ndarray:
    """``shape`` float32 soft ellipse in ``[0, 1]`` around the head of a face mesh (``(478, 2+)`` pixels).

    The ellipse is oriented along the face's axis (chin -> top of the forehead, so it follows roll) and reaches
    ``above`` face heights above the top of the forehead (hair), ``below`` face heights under the chin (neck), and
    ``width`` times the larger of the face's width and 0.9 face heights on each side of the axis (ears, hair;
    the floor keeps turned faces wide enough). Its edge is feathered over 10 % of the ellipse.
    """
    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    top, chin = pts[FOREHEAD_TOP], pts[CHIN]
    up = top - chin
    face_h = float(np.hypot(*up))
    if face_h < 1e-6:
        return np.zeros(shape, dtype=np.float32)
    up /= face_h
    across = np.array([-up[1], up[0]])
    face_w = abs(float((pts[CHEEK_RIGHT] - pts[CHEEK_LEFT]) @ across))
    half_len = (1.0 + above + below) * face_h / 2.0
    half_w = width * max(face_w, 0.9 * face_h)
    centre = chin - below * face_h * up + half_len * up
    dx = (np.arange(shape[1], dtype=np.float32) - np.float32(centre[0]))[None, :]
    dy = (np.arange(shape[0], dtype=np.float32) - np.float32(centre[1]))[:, None]
    u = dx * np.float32(up[0] / half_len) + dy * np.float32(up[1] / half_len)
    v = dx * np.float32(across[0] / half_w) + dy * np.float32(across[1] / half_w)
    r = cv2.magnitude(u, v)
    return np.clip((np.float32(1.05) - r) * np.float32(10.0), 0.0, 1.0, out=r)


def _face_component(alpha: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """``alpha`` with the parts not connected to the face (another person inside the head region) set to 0."""
    labels_n, labels = cv2.connectedComponents((alpha >= 0.5).astype(np.uint8), connectivity=8)
    if labels_n <= 2:
        return alpha
    pts = np.round(np.asarray(landmarks)[:, :2]).astype(np.int64)
    h, w = alpha.shape
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    hits = labels[pts[inside, 1], pts[inside, 0]]
    hits = hits[hits > 0]
    if not len(hits):
        return alpha
    keep = (labels == np.bincount(hits).argmax()).astype(np.uint8)
    keep = cv2.dilate(keep, np.ones((5, 5), np.uint8))  # keep the soft edge below 0.5 around the component
    return alpha * keep


class SelfieHeadMatting:
    """Face/head mask: the :class:`PersonMatting` matte inside the :func:`head_region` of the landmarks.

    Only the part of the matte connected to the face is kept (another person's shoulder inside the region is
    dropped). Runs the model on the aligned crop itself (square, so the letterbox is the crop; pixels of the crop
    outside the photo are black, as a letterbox border), refines at the crop's resolution.

    Args:
        person: the :class:`PersonMatting` (default: the vendored model, 1 thread).
        above, below, width: the head region (see :func:`head_region`).
    """

    name = "selfie-matte"

    def __init__(
        self, person: PersonMatting | None = None, above: float = 1.0, below: float = 0.25, width: float = 0.95
    ) -> None:
        self.person = person or PersonMatting()
        self.above, self.below, self.width = float(above), float(below), float(width)

    def mask(self, crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """``(S, S)`` uint8 head mask of ``crop`` (``(S, S, 3)`` uint8) from its landmarks ``(478, 2+)`` in crop
        pixels."""
        crop = _check_rgb(crop)
        alpha_low, grey_low = self.person.matte_low(crop)
        scale = alpha_low.shape[1] / crop.shape[1]
        pts_low = np.asarray(landmarks, dtype=np.float64)[:, :2] * scale
        alpha_low = alpha_low * head_region(pts_low, alpha_low.shape, self.above, self.below, self.width)
        alpha_low = _face_component(alpha_low, pts_low)
        alpha = self.person.upsample(crop, alpha_low, grey_low)
        return cv2.convertScaleAbs(alpha, alpha=255.0)  # rounds and saturates to uint8


def make_matting(method: str = "selfie-matte", **kwargs) -> FaceMatting:
    """The mask backend named ``method`` (one of :data:`MASK_METHODS`); ``kwargs`` go to its constructor."""
    if method == "selfie-matte":
        return SelfieHeadMatting(**kwargs)
    if method == "landmark-hull":
        return LandmarkHullMatting(**kwargs)
    raise ConfigError(f"unknown mask method {method!r}; choose one of {', '.join(MASK_METHODS)}")


def mask_to_photo(
    mask: np.ndarray, encoder_affine: np.ndarray, size: tuple[int, int], scale: float = 1.0
) -> np.ndarray:
    """A crop's mask pasted back into photo pixels: ``(H, W)`` uint8, 0 outside the crop.

    Args:
        mask: ``(S, S)`` uint8 mask of an aligned crop.
        encoder_affine: ``(2, 3)`` affine from photo pixels to crop pixels (``FaceAnalysis.encoder_affine``).
        size: ``(width, height)`` of the output, pixels of the photo scaled by ``scale``.
        scale: the output's pixels per photo pixel (e.g. a dataset's downscaled photo).
    """
    affine = np.asarray(encoder_affine, dtype=np.float64).copy()
    affine[:, :2] /= float(scale)  # output pixel / scale = photo pixel -> crop pixel
    return cv2.warpAffine(
        np.asarray(mask, dtype=np.uint8),
        affine,
        (int(size[0]), int(size[1])),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def composite(image: np.ndarray, mask: np.ndarray, background: int = MATTE_BACKGROUND) -> np.ndarray:
    """``image`` (``(H, W, 3)`` uint8) over a plain grey ``background`` with ``mask`` (``(H, W)`` uint8, 255 =
    keep) as alpha: the matted reference the image encoder sees. Returns ``(H, W, 3)`` uint8."""
    image = np.asarray(image)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] * np.float32(1 / 255)
    if alpha.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask {alpha.shape[:2]} and image {image.shape[:2]} sizes differ")
    out = image.astype(np.float32) * alpha + np.float32(background) * (1.0 - alpha)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
