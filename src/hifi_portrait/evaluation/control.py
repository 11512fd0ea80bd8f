"""Controllability metrics: head-pose error, expression (blendshape) error, landmark NME.

Conventions are those of :mod:`hifi_portrait.face.types` (pose in degrees, pixel coordinates).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

AXES = ("yaw", "pitch", "roll")

#: Indices of the two points whose distance normalizes the NME, by landmark layout (number of points):
#: mediapipe face mesh (468/478): outer eye corners 33 and 263 ("inter-ocular", as in 300-W);
#: 68-point iBUG/300-W: outer eye corners 36 and 45; 5 keypoints (InsightFace order): the two eye centres
#: (so for 5 points the normalization is the inter-pupil distance).
EYE_INDICES: dict[int, tuple[int, int]] = {478: (33, 263), 468: (33, 263), 68: (36, 45), 5: (0, 1)}


def angle_diff(a: float, b: float) -> float:
    """Signed difference ``a - b`` in degrees wrapped into ``[-180, 180)``."""
    return float((a - b + 180.0) % 360.0 - 180.0)


def pose_error(commanded: Mapping[str, float | None], measured: Mapping[str, float]) -> dict[str, float]:
    """Absolute head-pose error per commanded axis and their mean, in degrees.

    Args:
        commanded: the requested angles, e.g. ``{"yaw": 20, "pitch": 0, "roll": 0}``; an axis that is absent or
            ``None`` was not commanded and is not scored.
        measured: the angles re-estimated on the generated image (same keys, degrees).

    Returns:
        ``{"yaw_error": ..., "pitch_error": ..., "roll_error": ..., "mean_abs_error": ...}`` for the commanded axes
        (differences wrapped into ``[-180, 180)`` before the absolute value).

    Raises:
        ValueError: if no axis is commanded or an axis name is unknown.
    """
    unknown = set(commanded) - set(AXES)
    if unknown:
        raise ValueError(f"unknown pose axes {sorted(unknown)}; use {list(AXES)}")
    out: dict[str, float] = {}
    for axis in AXES:
        value = commanded.get(axis)
        if value is None:
            continue
        out[f"{axis}_error"] = abs(angle_diff(float(measured[axis]), float(value)))
    if not out:
        raise ValueError("no pose axis was commanded")
    out["mean_abs_error"] = float(np.mean(list(out.values())))
    return out


def expression_error(commanded: Mapping[str, float], measured: Mapping[str, float]) -> float:
    """Mean absolute difference between commanded and measured blendshape scores over the commanded names.

    Args:
        commanded: blendshape name -> requested score in ``[0, 1]`` (mediapipe/ARKit names, e.g. ``"mouthSmileLeft"``).
        measured: the 52 scores measured on the generated image.

    Returns:
        ``mean_k |commanded_k - measured_k|`` in ``[0, 1]``.

    Raises:
        ValueError: if nothing is commanded or a commanded name is not among the measured blendshapes.
    """
    if not commanded:
        raise ValueError("no blendshape was commanded")
    missing = sorted(set(commanded) - set(measured))
    if missing:
        raise ValueError(f"unknown blendshape names {missing}; known names: {sorted(measured)}")
    return float(np.mean([abs(float(measured[k]) - float(v)) for k, v in commanded.items()]))


def landmark_nme(predicted: np.ndarray, target: np.ndarray, eye_indices: tuple[int, int] | None = None) -> float:
    """Normalized mean error of 2-D landmarks (the NME of face-alignment benchmarks such as 300-W / WFLW).

    ``NME = mean_i ||p_i - t_i||_2 / d``, where ``d`` is the distance between the two normalizing points of the
    *target* (outer eye corners, see :data:`EYE_INDICES`). Only ``x, y`` are used.

    Args:
        predicted: ``(N, 2)`` or ``(N, 3)`` landmarks detected on the generated image, in pixels.
        target: ``(N, 2)`` or ``(N, 3)`` landmarks that were requested (same layout and pixel frame).
        eye_indices: the two normalizing points; default by ``N`` from :data:`EYE_INDICES`.

    Returns:
        NME as a fraction of the inter-ocular distance (multiply by 100 for the usual "%").
    """
    p = np.asarray(predicted, dtype=np.float64)[:, :2]
    t = np.asarray(target, dtype=np.float64)[:, :2]
    if p.shape != t.shape:
        raise ValueError(f"landmark arrays differ in shape: predicted {p.shape}, target {t.shape}")
    if eye_indices is None:
        if len(t) not in EYE_INDICES:
            raise ValueError(f"no default normalizing points for {len(t)} landmarks; pass eye_indices")
        eye_indices = EYE_INDICES[len(t)]
    d = float(np.linalg.norm(t[eye_indices[0]] - t[eye_indices[1]]))
    if d <= 0:
        raise ValueError("the target's normalizing points coincide (inter-ocular distance is 0)")
    return float(np.linalg.norm(p - t, axis=1).mean() / d)
