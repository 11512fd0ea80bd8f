"""Identity metrics on embedding vectors: cosine similarity, MultiID-Bench copy-paste, ROC AUC.

All functions take plain arrays so that they are testable without any face model; the runner
(:mod:`hifi_portrait.evaluation.runner`) feeds them the vectors of a recognizer.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix.

    Args:
        a: ``(D,)`` or ``(N, D)`` vectors.
        b: ``(D,)`` or ``(M, D)`` vectors (same ``D``, same recognizer).

    Returns:
        ``(N, M)`` array of cosines in ``[-1, 1]`` (a 1-D input counts as ``N = 1`` / ``M = 1``).
    """
    a2, b2 = np.atleast_2d(_unit(a)), np.atleast_2d(_unit(b))
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"cannot compare vectors of dimension {a2.shape[1]} and {b2.shape[1]} (different models?)")
    return np.clip(a2 @ b2.T, -1.0, 1.0)


def identity_similarity(generated: np.ndarray, references: np.ndarray) -> float:
    """Mean cosine similarity of one generated face to each reference face.

    This is the "Face Sim." / "ID" score of InstantID, PhotoMaker and PuLID evaluations (there computed with an
    ArcFace model), here with whichever recognizer produced the vectors.

    Args:
        generated: ``(D,)`` identity vector of the generated face.
        references: ``(R, D)`` identity vectors of the reference faces.
    """
    return float(cosine_similarity(generated, references).mean())


def copy_paste_score(generated: np.ndarray, target: np.ndarray, reference: np.ndarray, eps: float = 1e-6) -> float:
    """MultiID-Bench copy-paste measure ``M_CP`` (Xu et al. 2025, "WithAnyone").

    With the angular distances ``theta_xy = arccos(cos(x, y))`` between unit identity vectors of the generated
    face ``g``, the held-out ground-truth (target) face ``t`` and the reference face ``r``::

        M_CP = (theta_gt - theta_gr) / theta_tr

    By the triangle inequality on the sphere ``M_CP`` lies in ``[-1, 1]``: ``+1`` when the generated face is the
    reference (pure copy-paste), ``-1`` when it is the ground truth, 0 when it is equally far from both.
    When ``theta_tr < eps`` (the target and reference are the same face) the measure is undefined and 0 is
    returned, as in the reference implementation.

    Args:
        generated, target, reference: ``(D,)`` identity vectors of one recognizer.
    """
    g, t, r = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (generated, target, reference))
    theta_gt = np.arccos(cosine_similarity(g, t)[0, 0])
    theta_gr = np.arccos(cosine_similarity(g, r)[0, 0])
    theta_tr = np.arccos(cosine_similarity(t, r)[0, 0])
    if theta_tr < eps:
        return 0.0
    return float((theta_gt - theta_gr) / theta_tr)


def copy_paste_over_references(
    generated: np.ndarray, target: np.ndarray, references: np.ndarray
) -> tuple[float, float]:
    """``M_CP`` against each of several references of one person: ``(mean, max)`` over the references.

    MultiID-Bench has one reference per person; with several references we report the mean, and the max
    (the reference that was copied the most).

    Args:
        generated, target: ``(D,)`` vectors; references: ``(R, D)`` vectors.
    """
    scores = [copy_paste_score(generated, target, r) for r in np.atleast_2d(references)]
    return float(np.mean(scores)), float(np.max(scores))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, computed exactly as the Mann-Whitney U statistic (ties count 1/2).

    Args:
        scores: ``(N,)`` similarity scores (higher = more likely positive).
        labels: ``(N,)`` booleans, True for positive (same-person) pairs.

    Returns:
        AUC in ``[0, 1]``: the probability that a random positive scores higher than a random negative.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"ROC AUC needs positives and negatives (got {len(pos)} positive, {len(neg)} negative)")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
