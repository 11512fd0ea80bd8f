"""Blocked k-NN internals: top-k selection with ties, projected search re-scored exactly, chunked row dots."""

from __future__ import annotations

import numpy as np
import pytest

from hifi_portrait.data.cluster import _rowwise_dot, _top_k_rows, blocked_knn, knn_search, purify


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_rows_are_the_largest(ties):
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((40, 30)).astype(np.float32)
    if ties:  # rows whose k-th largest value is shared by several columns (rounded values, repeated maxima)
        sims = np.round(sims, 0)
        sims[3] = 1.0
    values, top = _top_k_rows(sims, 5)
    assert top.shape == values.shape == (40, 5)
    np.testing.assert_array_equal(values, np.take_along_axis(sims, top, axis=1))
    for row, cols in zip(sims, top, strict=True):
        assert len(set(cols.tolist())) == 5
        assert np.sort(row[cols]).tolist() == np.sort(row)[-5:].tolist()


def test_rowwise_dot_matches_dense():
    rng = np.random.default_rng(1)
    a, table = _unit(rng, 50, 16), _unit(rng, 7, 16)
    index = rng.integers(0, 7, size=50)
    np.testing.assert_allclose(_rowwise_dot(a, table, index, chunk=8), np.sum(a * table[index], 1), atol=1e-6)
    index2 = rng.integers(0, 7, size=(50, 3))
    dense = np.einsum("nd,nkd->nk", a, table[index2])
    np.testing.assert_allclose(_rowwise_dot(a, table, index2, chunk=8), dense, atol=1e-6)


def test_blocked_knn_projected_search_is_rescored_exactly():
    # 256-d vectors (> search_dim): candidates come from a 64-d projection, similarities must be exact 256-d ones
    rng = np.random.default_rng(2)
    centres = _unit(rng, 60, 256)
    labels = np.repeat(np.arange(60), 8)
    x = centres[labels] + rng.standard_normal((480, 256)).astype(np.float32) * 0.6 / 16
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims, idx = blocked_knn(x, 8, search_dim=64, proj_dim=32)
    again = blocked_knn(x, 8, search_dim=64, proj_dim=32)
    assert np.array_equal(idx, again[1]) and np.array_equal(sims, again[0])  # deterministic
    found = idx >= 0
    exact = np.einsum("nd,nkd->nk", x, x[np.maximum(idx, 0)])
    np.testing.assert_allclose(sims[found], exact[found], atol=1e-5)
    true_sims, true_idx = knn_search(x, 8, "flat")
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(idx.tolist(), true_idx.tolist(), strict=True)])
    assert recall >= 0.95, recall


def test_purify_all_outliers():
    x = _unit(np.random.default_rng(3), 5, 8)
    assert purify(x, np.full(5, -1), 0.5, 0.9).tolist() == [-1] * 5
