"""Face masks of aligned crops.

No segmentation/matting model ships in the installed packages (mediapipe's pip wheel carries no selfie or hair
segmenter, and ``face_landmarker.task`` holds only the detector, mesh and blendshape models), so the default
backend builds the mask geometrically from the 478 mesh landmarks: the convex hull of the face mesh (forehead
to chin, ear to ear at the cheeks), slightly dilated and feathered. It does not include hair, ears or neck.
``FaceAnalysis.mask_method`` records the backend that made each mask.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import cv2
import numpy as np


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
        pts = np.asarray(landmarks, dtype=np.float64)[:, :2] * scale
        hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
        out = np.zeros((h, w), dtype=np.uint8)
        cv2.fillConvexPoly(out, hull, 255, lineType=cv2.LINE_AA, shift=4)
        size = float(np.sqrt(max(cv2.contourArea(hull.astype(np.float32) / 16.0), 1.0)))
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
