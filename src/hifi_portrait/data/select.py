"""Per identity, the choice of references and held-out targets that maximise pose and expression diversity.

Each image is a point in a "pose + expression" space: ``(yaw, pitch, roll) / pose_scale`` concatenated with the
51 blendshape scores times ``expression_weight``. References are picked by farthest-point sampling starting from the
best-quality image; targets by farthest-point sampling among the remaining images, measured against the references
already chosen, so that targets show poses/expressions the references do not (what the model must learn to render).
"""

from __future__ import annotations

import numpy as np


def diversity_features(pose: np.ndarray, blendshapes: np.ndarray, pose_scale: float, expression_weight: float):
    """``(N, 3 + 51)`` float64 features: pose in units of ``pose_scale`` degrees, weighted blendshapes."""
    return np.concatenate(
        [np.asarray(pose, np.float64) / pose_scale, np.asarray(blendshapes, np.float64) * expression_weight], axis=1
    )


def farthest_point_sampling(features: np.ndarray, count: int, seeds: list[int], candidates: list[int]) -> list[int]:
    """Greedily pick ``count`` of ``candidates``, each the farthest (Euclidean) from everything picked so far.

    Args:
        features: ``(N, F)`` points.
        count: how many to pick.
        seeds: indices already chosen (distances are measured to them too); if empty, the first candidate starts.
        candidates: indices to choose from, in priority order (ties go to the earlier one).

    Returns:
        The picked indices, in the order they were picked.
    """
    picked: list[int] = []
    candidates = list(candidates)
    if not candidates or count <= 0:
        return picked
    chosen = list(seeds)
    if not chosen:
        chosen.append(candidates.pop(0))
        picked.append(chosen[0])
    cand = np.array(candidates, dtype=np.int64)
    dist = np.min(np.linalg.norm(features[cand][:, None] - features[chosen][None], axis=2), axis=1)
    alive = np.ones(len(cand), dtype=bool)
    while len(picked) < count and alive.any():
        j = int(np.argmax(np.where(alive, dist, -np.inf)))
        picked.append(int(cand[j]))
        alive[j] = False
        dist = np.minimum(dist, np.linalg.norm(features[cand] - features[cand[j]], axis=1))
    return picked


def choose_refs_and_targets(
    features: np.ndarray, quality: np.ndarray, max_refs: int, max_targets: int
) -> tuple[list[int], list[int]]:
    """Split one identity's images (rows of ``features``) into references and targets (local row indices).

    With ``n`` images: ``targets = min(max_targets, max(1, n // 3))`` is held out (at least one), the references
    are ``min(max_refs, n - targets)``; images beyond both are left unused. Deterministic (ties by quality, then row).
    """
    n = len(features)
    if n < 2:
        return list(range(n)), []
    n_targets = min(max_targets, max(1, n // 3))
    n_refs = min(max_refs, n - n_targets)
    by_quality = [int(i) for i in np.lexsort((np.arange(n), -np.asarray(quality)))]
    refs = farthest_point_sampling(features, n_refs, [], by_quality)
    rest = [i for i in by_quality if i not in refs]
    targets = farthest_point_sampling(features, n_targets, refs, rest)
    return refs, targets
