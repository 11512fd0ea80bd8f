"""Identity shape: the references' 3D face shape with their pose and (as far as possible) expression removed.

Method (details and limits in docs/landmarks.md):

1. each reference's 478 landmarks (pixels, mediapipe convention) are turned into model space (``y`` up, ``z``
   towards the camera) and aligned to the canonical mesh by a weighted similarity (Umeyama) over mediapipe's
   expression-stable "procrustes" points (jaw excluded): this removes position, scale and head rotation;
2. the reference's expression is removed by subtracting the expression fields
   (:func:`~hifi_portrait.landmarks.expression.expression_fields`, hand-designed or fitted) for its detected
   blendshape scores at its head pose; the fields are computed on the current estimate of the neutral shape
   (two passes);
3. the neutralized references are combined point by point with a weighted Huber mean (robust IRLS), weights
   = quality x cos^2(yaw) (a turned face has its far side hallucinated by the landmarker). It down-weights a
   minority of references that are wrong on some part of the face (occlusion, bad detection).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.expression import (
    DEFAULT_EXPRESSION_MODEL,
    EXPRESSION_MODELS,
    ExpressionFields,
    apply_expression,
    expression_fields,
    scores_to_vector,
)
from hifi_portrait.landmarks.geometry import pose_from_rotation, umeyama

if TYPE_CHECKING:
    from hifi_portrait.face.types import FaceAnalysis

logger = logging.getLogger(__name__)

#: Pixel frame (x right, y down, z away) -> model frame (x right, y up, z towards the camera).
_PIXEL_TO_MODEL = np.array([1.0, -1.0, -1.0])


@dataclass
class IdentityShape:
    """A neutral, frontal 3D face shape in model space, scaled to the canonical mesh (centimetres).

    Attributes:
        points: ``(478, 3)`` float64 model-space landmarks (mediapipe indices).
        weights: ``(N,)`` normalized weight of each reference in the fit.
        residuals: ``(N,)`` mean distance (cm) of each neutralized reference to ``points``.
        sources: names of the references.
        expression_model: the expression model of :attr:`basis` (and of the neutralization): ``"hand"``
            (default) or ``"fitted"`` (:data:`~hifi_portrait.landmarks.expression.EXPRESSION_MODELS`).
    """

    points: np.ndarray
    weights: np.ndarray = field(default_factory=lambda: np.ones(1))
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(1))
    sources: list[str] = field(default_factory=list)
    expression_model: str = DEFAULT_EXPRESSION_MODEL
    _basis: ExpressionFields | None = field(default=None, repr=False, compare=False)

    @property
    def basis(self) -> ExpressionFields:
        """The expression model on this shape (computed once; see
        :func:`~hifi_portrait.landmarks.expression.expression_fields`)."""
        if self._basis is None:
            self._basis = expression_fields(self.points, self.expression_model)
        return self._basis

    @classmethod
    def canonical(cls, expression_model: str = DEFAULT_EXPRESSION_MODEL) -> IdentityShape:
        """mediapipe's canonical (average) face, as a shape with no identity."""
        return cls(points=M.canonical_landmarks().copy(), sources=["canonical"], expression_model=expression_model)

    def save(self, path: str | Path) -> Path:
        """Write a ``.npz`` file (no pickle) that :meth:`load` reads back."""
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            points=self.points,
            weights=self.weights,
            residuals=self.residuals,
            sources=np.array(self.sources, dtype=str),
            expression_model=np.array(self.expression_model),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> IdentityShape:
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(
                points=data["points"],
                weights=data["weights"],
                residuals=data["residuals"],
                sources=[str(s) for s in data["sources"]],
                # files written before the fitted model existed were neutralized with the hand-designed one
                expression_model=str(data["expression_model"]) if "expression_model" in data else "hand",
            )


def to_model_space(landmarks_px: np.ndarray) -> np.ndarray:
    """``(478, 3)`` landmarks in pixels (mediapipe convention) -> model-space frame (same scale, not aligned)."""
    pts = np.asarray(landmarks_px, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] != M.NUM_LANDMARKS or pts.shape[1] != 3 or not np.isfinite(pts).all():
        raise LandmarkError(f"expected finite (478, 3) mediapipe landmarks, got an array of shape {pts.shape}.")
    return pts * _PIXEL_TO_MODEL


def align_to_canonical(points_model: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Similarity-align model-space landmarks to the canonical mesh over the skull-fixed points.

    The points are mediapipe's pose-estimation ("procrustes") points without the jaw
    (:func:`~hifi_portrait.landmarks.mesh.stable_weights`), so an open mouth does not tilt the estimate.

    Returns:
        ``(aligned (478, 3), scale, rotation (3, 3), translation (3,))`` with ``aligned = s R p + t``; ``R`` is
        the inverse of the face's head rotation (so :func:`pose_from_rotation` of ``R.T`` is its pose).
    """
    mesh = M.canonical_mesh()
    weights = M.stable_weights() + 0.02 / M.NUM_MESH  # a little weight on every point keeps it well posed
    s, rot, t = umeyama(points_model[: M.NUM_MESH], mesh.vertices, weights)
    return s * points_model @ rot.T + t, s, rot, t


def _robust_mean(stack: np.ndarray, weights: np.ndarray, delta: float = 0.3, iters: int = 20) -> np.ndarray:
    """Per-point weighted Huber mean of ``(N, P, 3)`` samples -> ``(P, 3)`` (iteratively reweighted).

    Samples within ``delta`` (cm) of the estimate count fully (a weighted mean, well defined for 2 references);
    farther ones count as ``delta / distance`` (a geometric median for them), so that a minority of references
    wrong on part of the face pull it little.
    """
    est = np.tensordot(weights, stack, axes=1)
    for _ in range(iters):
        dist = np.linalg.norm(stack - est[None], axis=-1)  # (N, P)
        w = weights[:, None] * np.minimum(1.0, delta / np.maximum(dist, 1e-6))
        est = (w[..., None] * stack).sum(0) / w.sum(0)[:, None]
    return est


def fit_identity_shape(
    references: Sequence[FaceAnalysis] | Sequence[np.ndarray],
    blendshapes: Sequence[dict[str, float]] | None = None,
    weights: Sequence[float] | None = None,
    neutralize: bool = True,
    expression_model: str = DEFAULT_EXPRESSION_MODEL,
) -> IdentityShape:
    """Fit the neutral identity shape of one person from N reference faces.

    Args:
        references: :class:`~hifi_portrait.face.types.FaceAnalysis` objects, or ``(478, 3)`` landmark arrays in
            pixels (then ``blendshapes`` gives their expressions, if known).
        blendshapes: per-reference blendshape scores, overriding those of the analyses.
        weights: per-reference weights (default: quality x cos^2(yaw); 1 for plain arrays).
        neutralize: remove each reference's expression (else only pose is removed).
        expression_model: ``"hand"`` (default) or ``"fitted"``: the expression fields used to neutralize the
            references and kept for generation.

    Raises:
        LandmarkError: empty reference set, wrong array shapes, or all weights zero.
    """
    if expression_model not in EXPRESSION_MODELS:
        raise LandmarkError(f"unknown expression model {expression_model!r}; choose one of {EXPRESSION_MODELS}.")
    if len(references) == 0:
        raise LandmarkError("no reference faces were given: pass at least one analyzed photo of the person.")
    aligned, scores, poses, auto_w, sources = [], [], [], [], []
    for i, ref in enumerate(references):
        if isinstance(ref, np.ndarray):
            lm, bs, w, src = ref, {}, 1.0, f"reference_{i}"
        else:
            lm, bs, src = ref.landmarks, dict(ref.blendshapes or {}), str(ref.source)
            q = getattr(getattr(ref, "quality", None), "total", 1.0)
            w = float(q) if q is not None and math.isfinite(float(q)) else 1.0
        pts, _, rot, _ = align_to_canonical(to_model_space(lm))
        pose = pose_from_rotation(rot.T)
        yaw = pose[0]
        aligned.append(pts)
        poses.append(pose)
        if blendshapes is not None:
            bs = dict(blendshapes[i])
        scores.append(scores_to_vector(bs))
        auto_w.append(max(w, 1e-3) * math.cos(math.radians(yaw)) ** 2)
        sources.append(src)
    stack = np.stack(aligned)
    score_mat = np.stack(scores)
    w = np.asarray(weights if weights is not None else auto_w, dtype=np.float64)
    if w.shape != (len(stack),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise LandmarkError(f"reference weights must be {len(stack)} non-negative numbers, not all zero; got {w}.")
    w = w / w.sum()

    estimate = _robust_mean(stack, w)
    neutral = stack
    if neutralize:
        for _ in range(2):  # fields computed on the current neutral estimate
            basis = expression_fields(estimate, expression_model)
            neutral = np.stack(
                [apply_expression(p, basis, -s, pose) for p, s, pose in zip(stack, score_mat, poses, strict=True)]
            )
            estimate = _robust_mean(neutral, w)
    # re-centre on the canonical mesh so that the shape's pose is exactly frontal by the same definition
    estimate, _, _, _ = align_to_canonical(estimate)
    residuals = np.array([np.linalg.norm(align_to_canonical(p)[0] - estimate, axis=1).mean() for p in neutral])
    logger.info("identity shape from %d reference(s); residuals (cm): %s", len(stack), np.round(residuals, 3))
    return IdentityShape(
        points=estimate, weights=w, residuals=residuals, sources=sources, expression_model=expression_model
    )


def neutral_shape_of(
    face: FaceAnalysis | np.ndarray,
    blendshapes: dict[str, float] | None = None,
    expression_model: str = DEFAULT_EXPRESSION_MODEL,
) -> np.ndarray:
    """``(478, 3)`` pose- and expression-normalized shape of a single face (e.g. a driver), model space."""
    bs = None if blendshapes is None else [blendshapes]
    return fit_identity_shape([face], blendshapes=bs, expression_model=expression_model).points
