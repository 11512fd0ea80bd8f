"""Set-level metrics on feature arrays: FID (Heusel et al. 2017), KID (Binkowski et al. 2018), diversity.

The feature extractor (Inception pool3 for FID/KID, CLIP image tower for diversity) is separate: these
functions only see ``(N, D)`` arrays, so they are tested on constructed features with known answers.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features (``N >= 2``)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need an (N, D) feature array with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped to 0)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((sigma1 sigma2)^{1/2})`` for symmetric PSD matrices.

    ``sigma1 sigma2`` is similar to the PSD matrix ``sigma1^{1/2} sigma2 sigma1^{1/2}``, so the trace of its
    principal square root is the sum of the square roots of that matrix's (non-negative) eigenvalues. This is
    the same quantity that pytorch-fid obtains with ``scipy.linalg.sqrtm``, without complex round-off and exact
    for singular covariances (fewer samples than dimensions).
    """
    s1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    w = np.linalg.eigvalsh(s1 @ np.asarray(sigma2, dtype=np.float64) @ s1)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^{1/2})`` (Dowson & Landau 1982),
    the quantity that FID reports (Heusel et al. 2017); see :func:`trace_sqrt_product` for the last term.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two sets of ``(N, D)`` features: a Gaussian fit to each set, then :func:`frechet_distance`.

    When a set has fewer samples than dimensions (common: 2048-d Inception features), the covariances have low
    rank and the trace term is computed exactly from the centred features ``A`` (n1 x D) and ``B`` (n2 x D):
    ``Tr((sigma1 sigma2)^{1/2}) = ||A B^T||_* / sqrt((n1 - 1)(n2 - 1))`` (nuclear norm), which is much cheaper
    than a D x D matrix square root.
    """
    f1, f2 = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    mu1, sigma1 = feature_statistics(f1)
    mu2, sigma2 = feature_statistics(f2)
    if min(len(f1), len(f2)) >= f1.shape[1]:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    a, b = f1 - mu1, f2 - mu2
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    tr_sqrt = nuclear / np.sqrt((len(f1) - 1) * (len(f2) - 1))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3`` for ``(N, D)`` and ``(M, D)`` inputs."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimator of the squared MMD with :func:`polynomial_kernel` (Gretton et al. 2012, eq. 3)::

    1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j)
    """
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set (got {m} and {n})")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def kid_from_features(
    features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and standard deviation of :func:`mmd2_unbiased` over random subsets.

    As in Binkowski et al. (2018) and torch-fidelity's defaults (100 subsets of 1000); the subset size is capped
    by the smaller set. Subsets are drawn without replacement within a subset, with a seeded generator.
    """
    x, y = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) feature arrays, got {x.shape} and {y.shape}")
    size = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def mean_pairwise_dissimilarity(features: np.ndarray) -> float:
    """Diversity of a set: mean over pairs ``i < j`` of ``1 - cos(f_i, f_j)`` for ``(N, D)`` features, ``N >= 2``.

    With CLIP image embeddings this is "1 - mean pairwise CLIP-I"; 0 when all images are identical.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"diversity needs at least 2 feature vectors, got shape {f.shape}")
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sims = f @ f.T
    iu = np.triu_indices(len(f), k=1)
    return float(np.mean(1.0 - sims[iu]))
