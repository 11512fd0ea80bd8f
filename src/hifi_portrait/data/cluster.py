"""Identity clustering of unit identity vectors, and cluster purification.

Default method, ``"average"`` (average linkage on a k-NN graph; it does not chain two people together):

1. k-NN graph with faiss (exact inner product below ``FLAT_LIMIT`` vectors, exact inside k-means blocks above, or
   faiss IVF / HNSW on request), edges kept when the cosine similarity reaches ``edge_threshold`` (optionally only
   mutual k-NN edges);
2. connected components of that graph (scipy's C implementation, i.e. union-find). A component whose members all
   have a mean similarity to the other members of at least ``threshold`` is one identity (checked for every
   component at once from per-component vector sums). The others are re-clustered with exact average linkage cut
   at ``threshold``: two groups join only when the *mean* similarity of all their cross pairs reaches it, so one
   look-alike pair cannot merge two people. Components too large for the exact step are split first by raising
   the edge threshold inside them;
3. purification: members whose cosine to their cluster centroid is below ``outlier_threshold`` are dropped
   (label ``-1``). Clusters are never merged on centroid similarity (centroids are more similar than members).

``"components"`` is the previous method, kept for comparison (benchmarks/identity_calibration.py): connected
components at ``threshold``, average linkage only inside components that are loose around their centroid, then
centroid merging at ``merge_threshold``. It merges look-alike people.

Thresholds per identity model come from labelled photos (:data:`CLUSTER_THRESHOLDS`, measured by
benchmarks/identity_calibration.py). :func:`identity_tightness` measures each identity's internal similarity and its
nearest other identity; :func:`pairwise_precision_recall` scores a clustering against labels. Near-duplicate images
(same aligned face up to a few bits of a perceptual hash, near-identical identity vector) are found by
:func:`near_duplicates`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

logger = logging.getLogger(__name__)

FLAT_LIMIT = 20_000
METHODS = ("average", "components")

#: Calibrated clustering thresholds per identity model: ``(threshold, edge_threshold)`` of the ``"average"``
#: method (mean cross-pair cosine to join two groups; cosine of a candidate k-NN edge and mean cosine for a lone
#: photo to rejoin a group). Measured on the calibration half (20 people) of tests/data/calib + tests/data/ids by
#: benchmarks/identity_calibration.py, precision first: the strictest threshold whose pairwise recall stays >= 0.9,
#: then the strictest edge threshold reaching the best recall at the same precision; held-out half: pairwise
#: precision 1.0, recall 1.0 (benchmarks/results/identity_calibration.md).
CLUSTER_THRESHOLDS = {"dlib-resnet-128": (0.9275, 0.9075)}
#: ArcFace-like models (``insightface-*``): NOT calibrated here (no model files offline); the usual ArcFace
#: verification range. Set ``cluster.threshold`` from your own labelled photos.
ARCFACE_CLUSTER_THRESHOLDS = (0.4, 0.35)


def default_cluster_thresholds(identity_model: str) -> tuple[float, float]:
    """``(threshold, edge_threshold)`` of the ``"average"`` method for ``identity_model``.

    Raises:
        ConfigError: no default is known for that model (set ``cluster.threshold``).
    """
    from hifi_portrait.errors import ConfigError

    if identity_model in CLUSTER_THRESHOLDS:
        return CLUSTER_THRESHOLDS[identity_model]
    if identity_model.startswith("insightface") or "arcface" in identity_model.lower():
        return ARCFACE_CLUSTER_THRESHOLDS
    raise ConfigError(
        f"no default clustering threshold for identity model {identity_model!r}; set cluster.threshold in the config "
        "(measure one with benchmarks/identity_calibration.py on labelled photos)"
    )


def cluster_params(config, identity_model: str) -> ClusterParams:
    """The :class:`ClusterParams` of a builder ``ClusterConfig`` (calibrated defaults for ``None`` thresholds).

    Raises:
        ConfigError: unknown ``cluster.method``, or no default threshold for ``identity_model``.
    """
    from hifi_portrait.errors import ConfigError

    if config.method not in METHODS:
        raise ConfigError(f"cluster.method must be one of {', '.join(METHODS)}, not {config.method!r}")
    threshold, edge = config.threshold, config.edge_threshold
    if threshold is None:
        threshold, default_edge = default_cluster_thresholds(identity_model)
        edge = default_edge if edge is None else edge
    return ClusterParams(
        threshold=float(threshold),
        k=config.k,
        mutual=config.mutual,
        outlier_threshold=config.outlier_threshold,
        merge_threshold=config.merge_threshold,
        index=config.index,
        method=config.method,
        edge_threshold=edge,
    )


@dataclass
class ClusterParams:
    """Clustering parameters (``None`` fields are derived from ``threshold`` by :meth:`resolved` / :meth:`edge`).

    Attributes:
        threshold: ``"average"``: mean cross-pair cosine at which two groups are one person; ``"components"``:
            cosine of an edge.
        edge_threshold: ``"average"`` only: cosine of a k-NN edge between candidates (``<= threshold``; ``None`` =
            ``threshold``). Lower finds photos of a person that are only similar on average.
        outlier_threshold: drop members whose cosine to their cluster centroid is below (``None``: the edge
            threshold for ``"average"``, ``threshold`` for ``"components"``).
        merge_threshold: ``"components"`` only: merge clusters whose centroids are closer.
        max_exact: largest component clustered by exact average linkage (bigger ones are split first).
    """

    threshold: float
    k: int = 10
    mutual: bool = False
    outlier_threshold: float | None = None
    merge_threshold: float | None = None
    index: str = "auto"
    method: str = "average"
    edge_threshold: float | None = None
    max_exact: int = 2000

    def edge(self) -> float:
        """The k-NN edge threshold in use."""
        if self.method != "average" or self.edge_threshold is None:
            return float(self.threshold)
        return float(min(self.edge_threshold, self.threshold))

    def resolved(self) -> tuple[float, float]:
        """``(outlier threshold, merge threshold)`` in use (merge is unused by ``"average"``)."""
        default_outlier = self.edge() if self.method == "average" else self.threshold
        outlier = default_outlier if self.outlier_threshold is None else self.outlier_threshold
        merge = (
            self.threshold + 0.25 * (1.0 - self.threshold) if self.merge_threshold is None else self.merge_threshold
        )
        return float(outlier), float(merge)


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("nd,nd->n", x, x))  # no (N, D) temporary, unlike np.linalg.norm
    return x / np.maximum(norms, 1e-12)[:, None]


def _rowwise_dot(a: np.ndarray, table: np.ndarray, index: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``(N,)`` float32 ``a[i] . table[index[i]]`` (``a`` ``(N, D)``, ``index`` ``(N,)`` or ``(N, K)`` -> ``(N, K)``).

    Gathers ``chunk`` rows at a time: the gathered rows stay in cache instead of one ``(N, K, D)`` copy in memory.
    """
    out = np.empty(index.shape, dtype=np.float32)
    spec = "nd,nd->n" if index.ndim == 1 else "nd,nkd->nk"
    for start in range(0, len(a), chunk):
        rows = slice(start, min(len(a), start + chunk))
        out[rows] = np.einsum(spec, a[rows], table[index[rows]])
    return out


def _top_k_rows(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values (Q, k), column indices (Q, k))`` of the ``k`` largest values of each row of ``sims`` ``(Q, M)``.

    ``k < M``; the k columns of a row are in no particular order.

    ``np.partition`` on values (several times faster than ``np.argpartition``) gives each row's k-th largest
    value; the entries at or above it are the top k unless a row has ties at that value (then argpartition).
    """
    kth = np.partition(sims, -k, axis=1)[:, -k]
    flat = np.flatnonzero(sims >= kth[:, None])  # row-major: every row has >= k hits
    if len(flat) == sims.shape[0] * k:  # hence exactly k in every row
        return sims.ravel()[flat].reshape(-1, k), (flat % sims.shape[1]).reshape(-1, k)
    cols = np.argpartition(sims, -k, axis=1)[:, -k:]
    return np.take_along_axis(sims, cols, axis=1), cols


def knn_search(vectors: np.ndarray, k: int, index: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours (inner product) of every vector among all vectors, itself included.

    Args:
        vectors: ``(N, D)`` float32 unit vectors.
        k: neighbours per vector (clipped to ``N``).
        index: ``flat`` (exact), ``blocked`` (:func:`blocked_knn`), ``ivf`` (faiss inverted lists, ``4 sqrt(N)``
            lists, 8 probed), ``hnsw`` (faiss HNSW graph), or ``auto`` (flat below ``FLAT_LIMIT`` vectors, else
            blocked).

    Returns:
        ``(similarities (N, k) float32, indices (N, k) int64)``; missing neighbours have index ``-1``.
    """
    import faiss

    n, d = vectors.shape
    k = min(k, n)
    if index == "auto":
        index = "flat" if n < FLAT_LIMIT else "blocked"
    if index == "blocked":
        return blocked_knn(vectors, k)
    if index == "flat":
        faiss_index = faiss.IndexFlatIP(d)
    elif index == "hnsw":
        faiss_index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        faiss_index.hnsw.efConstruction = 40
        faiss_index.hnsw.efSearch = max(2 * k, 32)
    elif index == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(d)
        faiss_index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        faiss_index.cp.seed = 0
        faiss_index.train(train)
        faiss_index.nprobe = min(nlist, 8)
    else:
        raise ValueError(f"unknown index {index!r}")
    faiss_index.add(vectors)
    sims, idx = faiss_index.search(vectors, k)
    return sims, idx


def _blocked_pass(vectors: np.ndarray, k: int, nprobe: int, nlist: int, proj_dim: int, seed: int):
    """One partition of :func:`blocked_knn`: ``(sims (N, nprobe * k), idx (N, nprobe * k))``."""
    import faiss

    n, d = vectors.shape
    z = vectors
    if d > proj_dim:  # blocking only needs a rough position: project to proj_dim dimensions
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.standard_normal((d, proj_dim)))
        z = _normalize(vectors @ basis.astype(np.float32))
    kmeans = faiss.Kmeans(z.shape[1], nlist, niter=6, seed=seed, spherical=True, max_points_per_centroid=20)
    kmeans.train(z)
    _, assign = kmeans.index.search(z, nprobe)  # (n, nprobe) nearest blocks, nearest first
    primary = assign[:, 0]
    db_order = np.argsort(primary, kind="stable")
    db_bounds = np.searchsorted(primary[db_order], np.arange(nlist + 1))
    flat = assign.ravel()
    q_order = np.argsort(flat, kind="stable")
    q_bounds = np.searchsorted(flat[q_order], np.arange(nlist + 1))
    sims = np.full((n, nprobe, k), -np.inf, dtype=np.float32)
    idx = np.full((n, nprobe, k), -1, dtype=np.int64)
    for block in range(nlist):
        members = db_order[db_bounds[block] : db_bounds[block + 1]]
        entries = q_order[q_bounds[block] : q_bounds[block + 1]]
        if len(members) == 0 or len(entries) == 0:
            continue
        queries, slots = entries // nprobe, entries % nprobe
        kk = min(k, len(members))
        block_sims = vectors[queries] @ vectors[members].T  # BLAS; faster than faiss.knn on blocks this small
        if kk < len(members):
            top_sims, nn = _top_k_rows(block_sims, kk)
        else:
            top_sims, nn = block_sims, np.broadcast_to(np.arange(len(members)), block_sims.shape)
        sims[queries, slots, :kk] = top_sims
        idx[queries, slots, :kk] = members[nn]
    return sims.reshape(n, -1), idx.reshape(n, -1)


def blocked_knn(
    vectors: np.ndarray,
    k: int,
    nprobe: int = 2,
    passes: int = 2,
    nlist: int | None = None,
    proj_dim: int = 64,
    search_dim: int = 128,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k-NN graph of many unit vectors: exact inner products inside k-means blocks (BLAS).

    Each pass partitions the vectors with k-means on a random ``proj_dim``-d projection; every vector is a member
    of the block of its nearest centroid and looks for neighbours, exactly, among the members of its ``nprobe``
    nearest blocks. In high dimension many same-person pairs straddle block borders, so ``passes`` independent
    partitions (other projection and seed) are combined: a pair missed by one is usually found by another.
    Vectors of more than ``search_dim`` dimensions are searched in a ``search_dim``-d random projection and the
    candidates re-scored exactly. Work: ``~ passes * n * min(d, search_dim) * nprobe * block size`` in matrix
    products.

    Returns:
        ``(similarities (N, k), indices (N, k))`` like :func:`knn_search` (``-1`` where fewer were found).
    """
    n, d = vectors.shape
    k = min(k, n)
    search = vectors
    if d > search_dim:  # candidates are searched in a random projection, then re-scored exactly (below)
        rng = np.random.default_rng(seed + 1000)
        basis, _ = np.linalg.qr(rng.standard_normal((d, search_dim)))
        search = _normalize(vectors @ basis.astype(np.float32))
    sdim, pdim = search.shape[1], min(search.shape[1], proj_dim)
    if nlist is None:  # balances k-means assignment (n*pdim*nlist) and block products (n*sdim*nprobe*n/nlist)
        nlist = int(math.sqrt(nprobe * n * sdim / pdim))
    nlist = max(1, min(nlist, n // 8))
    nprobe = min(nprobe, nlist)
    parts = [_blocked_pass(search, k, nprobe, nlist, proj_dim, seed + p) for p in range(passes)]
    sims = np.concatenate([p[0] for p in parts], axis=1)
    idx = np.concatenate([p[1] for p in parts], axis=1)
    # a neighbour found by several passes appears several times: keep one copy, then the k most similar
    order = np.argsort(idx, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    sims = np.take_along_axis(sims, order, axis=1)
    repeat = np.zeros_like(idx, dtype=bool)
    repeat[:, 1:] = idx[:, 1:] == idx[:, :-1]
    sims[repeat | (idx < 0)] = -np.inf
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if sims.shape[1] > k else np.argsort(-sims, axis=1)
    sims = np.take_along_axis(sims, top, axis=1)
    idx = np.take_along_axis(idx, top, axis=1)
    idx[~np.isfinite(sims)] = -1
    if search is not vectors:  # exact similarities of the candidates
        sims = np.where(idx >= 0, _rowwise_dot(vectors, vectors, np.maximum(idx, 0)), -np.inf).astype(np.float32)
    return sims, idx


def _components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return _relabel(labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster ids ``0..C-1`` by first appearance (deterministic); ``-1`` stays ``-1``."""
    out = np.full(len(labels), -1, dtype=np.int64)
    valid = labels >= 0
    if valid.any():
        _, first, inverse = np.unique(labels[valid], return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))
        out[valid] = order[inverse]
    return out


def centroids_of(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(C, D)`` unit mean vector of each cluster ``0..C-1`` (``labels`` ``-1`` ignored)."""
    from scipy.sparse import csr_matrix

    n_clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
    valid = np.flatnonzero(labels >= 0)
    members = csr_matrix(
        (np.ones(len(valid), dtype=np.float32), (labels[valid], valid)), shape=(n_clusters, len(labels))
    )
    return _normalize(np.asarray(members @ vectors))


def graph_edges(vectors: np.ndarray, params: ClusterParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(rows, cols, cosine)`` of the k-NN graph with cosine ``>= params.edge()`` (both directions may
    appear; only mutual k-NN pairs when ``params.mutual``)."""
    n = len(vectors)
    sims, idx = knn_search(vectors, params.k + 1, params.index)
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols = idx.ravel()
    sims = sims.ravel()
    keep = (cols >= 0) & (sims >= params.edge()) & (cols != rows)
    rows, cols, sims = rows[keep], cols[keep], sims[keep]
    if params.mutual:
        codes = rows.astype(np.int64) * n + cols
        mutual = np.isin(cols.astype(np.int64) * n + rows, codes)
        rows, cols, sims = rows[mutual], cols[mutual], sims[mutual]
    return rows, cols, sims


def graph_clusters(vectors: np.ndarray, params: ClusterParams) -> np.ndarray:
    """Connected components of the thresholded k-NN graph: ``(N,)`` int64 cluster ids ``0..C-1``."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows, cols, _ = graph_edges(vectors, params)
    return _components(n, rows, cols)


def _member_mean_similarity(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean cosine of each member to the other members of its cluster (1 for singletons), cluster sizes)``.

    From per-cluster vector sums ``S``: ``x_i . S = 1 + sum_{j != i} x_i . x_j`` (unit vectors), one pass.
    """
    from scipy.sparse import csr_matrix

    n_clusters = int(labels.max()) + 1
    members = csr_matrix(
        (np.ones(len(labels), dtype=np.float32), (labels, np.arange(len(labels)))), shape=(n_clusters, len(labels))
    )
    sums = np.asarray(members @ vectors, dtype=np.float32)
    sizes = np.bincount(labels, minlength=n_clusters)
    dots = _rowwise_dot(vectors, sums, labels)
    others = np.maximum(sizes[labels] - 1, 1)
    return np.where(sizes[labels] > 1, (dots - 1.0) / others, 1.0), sizes


def _split_large(n: int, rows, cols, sims, labels: np.ndarray, threshold: float, max_size: int) -> np.ndarray:
    """Split components larger than ``max_size`` by raising the edge threshold inside them, step by step."""
    sizes = np.bincount(labels)
    big = sizes > max_size
    level = threshold
    while big.any() and level < 0.999:
        level = level + 0.1 * (1.0 - level)
        inside = big[labels[rows]]
        keep = ~inside | (sims >= level)
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
        labels = _components(n, rows, cols)
        sizes = np.bincount(labels)
        big = sizes > max_size
    if big.any():
        logger.warning("%d identity clusters of > %d images left unsplit", int(big.sum()), max_size)
    return labels


def average_linkage_clusters(vectors: np.ndarray, params: ClusterParams) -> np.ndarray:
    """The ``"average"`` method without purification: ``(N,)`` int64 cluster ids ``0..C-1`` (see module doc)."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows, cols, sims = graph_edges(vectors, params)
    labels = _components(n, rows, cols)
    labels = _split_large(n, rows, cols, sims, labels, params.edge(), params.max_exact)
    labels = _refine_mixed(vectors, labels, params)
    # one person split over k-NN components (more photos than k neighbours reach): join clusters whose mean
    # cross-pair cosine (exact, from vector sums; not the cosine of their centroids) reaches the threshold, then
    # re-check the joined groups member by member like any component
    merged = _join_by_mean_similarity(vectors, labels, params.threshold)
    if merged.max() < labels.max():
        labels = _refine_mixed(vectors, merged[labels], params)
    return labels


def _join_by_mean_similarity(vectors: np.ndarray, labels: np.ndarray, threshold: float, k: int = 8) -> np.ndarray:
    """``(C,)`` new id of each cluster: clusters linked when their mean cross-pair cosine is ``>= threshold``."""
    from scipy.sparse import csr_matrix

    n_clusters = int(labels.max()) + 1
    if n_clusters < 2:
        return np.arange(n_clusters)
    members = csr_matrix(
        (np.ones(len(labels), dtype=np.float32), (labels, np.arange(len(labels)))), shape=(n_clusters, len(labels))
    )
    sizes = np.bincount(labels, minlength=n_clusters).astype(np.float32)
    means = np.asarray(members @ vectors, dtype=np.float32) / sizes[:, None]
    _, idx = knn_search(_normalize(means), min(n_clusters, k + 1), "auto")
    cross = np.where(idx >= 0, _rowwise_dot(means, means, np.maximum(idx, 0)), -np.inf)
    rows = np.repeat(np.arange(n_clusters), idx.shape[1])
    keep = (cross.ravel() >= threshold) & (idx.ravel() != rows) & (idx.ravel() >= 0)
    return _components(n_clusters, rows[keep], idx.ravel()[keep])


def _refine_mixed(vectors: np.ndarray, labels: np.ndarray, params: ClusterParams) -> np.ndarray:
    """Re-cluster with exact average linkage every group that has a member whose mean cosine to the others is
    below the threshold (groups above ``params.max_exact`` members are left as they are)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    mean_sim, sizes = _member_mean_similarity(vectors, labels)
    mixed = np.zeros(len(sizes), dtype=bool)
    mixed[labels[mean_sim < params.threshold]] = True
    mixed &= (sizes > 1) & (sizes <= params.max_exact)
    out = labels.copy()
    next_id = len(sizes)
    candidates = np.flatnonzero(mixed[labels])
    candidates = candidates[np.argsort(labels[candidates], kind="stable")]
    groups = np.split(candidates, np.flatnonzero(np.diff(labels[candidates])) + 1) if len(candidates) else []
    for members in groups:
        x = vectors[members].astype(np.float64)
        dist = np.clip(1.0 - x @ x.T, 0.0, 2.0)
        condensed = dist[np.triu_indices(len(members), 1)]
        parts = fcluster(linkage(condensed, method="average"), t=1.0 - params.threshold, criterion="distance") - 1
        if params.edge() < params.threshold:
            parts = _attach_singles(x, parts, params.edge())
        for p in np.unique(parts)[1:]:
            out[members[parts == p]] = next_id
            next_id += 1
    return _relabel(out)


def _attach_singles(x: np.ndarray, parts: np.ndarray, attach: float) -> np.ndarray:
    """Put each single image of ``parts`` into the group (of 2+) of highest mean cosine, if that mean >= ``attach``.

    A photo unlike the others of its person (profile, blur) falls below the average-linkage threshold; it rejoins
    them when its mean similarity over *all* of them is high enough: one look-alike image is not enough.
    """
    sizes = np.bincount(parts)
    groups = np.flatnonzero(sizes >= 2)
    singles = np.flatnonzero(sizes[parts] == 1)
    if not len(groups) or not len(singles):
        return parts
    sims = x[singles] @ x.T
    means = np.stack([sims[:, parts == g].mean(axis=1) for g in groups], axis=1)
    best = means.argmax(axis=1)
    ok = means[np.arange(len(singles)), best] >= attach
    parts = parts.copy()
    parts[singles[ok]] = groups[best[ok]]
    return parts


def drop_outliers(vectors: np.ndarray, labels: np.ndarray, outlier_threshold: float) -> np.ndarray:
    """Label ``-1`` the members (of clusters of 2+) whose cosine to their cluster centroid is below the threshold.

    Two passes: the centroid moves once its outliers are gone.
    """
    labels = labels.copy()
    for _ in range(2):
        cents = centroids_of(vectors, labels)
        if len(cents) == 0:
            break
        valid = labels >= 0
        sim = _rowwise_dot(vectors, cents, np.maximum(labels, 0))
        sizes = np.bincount(labels[valid], minlength=len(cents))
        drop = valid & (sim < outlier_threshold) & (sizes[np.maximum(labels, 0)] > 1)
        labels[drop] = -1
        labels = _relabel(labels)
    return labels


def identity_tightness(vectors: np.ndarray, labels: np.ndarray, k: int = 8) -> list[dict[str, float | int]]:
    """How tight each cluster ``0..C-1`` is, and how close its nearest other cluster is.

    Returns one dict per cluster: ``images``, ``mean_similarity`` (mean cosine over its pairs of images; 1 for a
    single image), ``min_member_similarity`` (lowest mean cosine of one image to the others), ``nearest`` (id of
    the other cluster with the highest mean cross-pair cosine among the ``k`` nearest centroids, ``-1`` if none)
    and ``nearest_similarity`` (that mean cross-pair cosine: averaged over every pair, not between centroids).
    """
    vectors = _normalize(vectors)
    valid = labels >= 0
    if not valid.any():
        return []
    lab = labels[valid]
    x = vectors[valid]
    mean_member, sizes = _member_mean_similarity(x, lab)
    n_clusters = len(sizes)
    from scipy.sparse import csr_matrix

    members = csr_matrix(
        (np.ones(len(lab), dtype=np.float32), (lab, np.arange(len(lab)))), shape=(n_clusters, len(lab))
    )
    means = np.asarray(members @ x, dtype=np.float64) / sizes[:, None]
    sq = np.einsum("cd,cd->c", means, means)
    within = np.where(sizes > 1, (sizes**2 * sq - sizes) / np.maximum(sizes * (sizes - 1), 1), 1.0)
    min_member = np.ones(n_clusters)
    np.minimum.at(min_member, lab, mean_member)
    nearest = np.full(n_clusters, -1, dtype=np.int64)
    nearest_sim = np.full(n_clusters, np.nan)
    if n_clusters > 1:
        _, idx = knn_search(_normalize(means.astype(np.float32)), min(n_clusters, k + 1), "auto")
        idx = np.where(idx == np.arange(n_clusters)[:, None], -1, idx)
        cross = np.where(idx >= 0, _rowwise_dot(means, means, np.maximum(idx, 0)), -np.inf)
        best = np.argmax(cross, axis=1)
        found = np.isfinite(cross[np.arange(n_clusters), best])
        nearest[found] = idx[np.arange(n_clusters), best][found]
        nearest_sim[found] = cross[np.arange(n_clusters), best][found]
    return [
        {
            "images": int(sizes[c]),
            "mean_similarity": round(float(within[c]), 4),
            "min_member_similarity": round(float(min_member[c]), 4),
            "nearest": int(nearest[c]),
            "nearest_similarity": None if np.isnan(nearest_sim[c]) else round(float(nearest_sim[c]), 4),
        }
        for c in range(n_clusters)
    ]


def refine_components(vectors: np.ndarray, labels: np.ndarray, threshold: float, tight: float, max_size: int = 2000):
    """Split loose connected components with average-linkage agglomerative clustering (cut at ``threshold``).

    Connected components chain different people through a few borderline edges (single linkage). A component
    whose members are all within ``tight`` cosine of its centroid is kept as is (the common case, checked in
    one vectorized pass); the others (at most ``max_size`` members, larger ones are left whole with a warning) are
    re-clustered with average linkage, which does not chain.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    cents = centroids_of(vectors, labels)
    sims = _rowwise_dot(vectors, cents, labels)
    loose = np.zeros(len(cents), dtype=bool)
    loose[np.unique(labels[sims < tight])] = True
    sizes = np.bincount(labels, minlength=len(cents))
    loose &= sizes > 2
    out = labels.copy()
    next_id = len(cents)
    candidates = np.flatnonzero(loose[labels])
    candidates = candidates[np.argsort(labels[candidates], kind="stable")]
    groups = np.split(candidates, np.flatnonzero(np.diff(labels[candidates])) + 1) if len(candidates) else []
    for members in groups:
        if len(members) > max_size:
            logger.warning("identity cluster of %d images left unrefined (> %d)", len(members), max_size)
            continue
        x = vectors[members].astype(np.float64)
        dist = np.clip(1.0 - x @ x.T, 0.0, 2.0)
        condensed = dist[np.triu_indices(len(members), 1)]
        parts = fcluster(linkage(condensed, method="average"), t=1.0 - threshold, criterion="distance")
        for p in np.unique(parts)[1:]:
            out[members[parts == p]] = next_id
            next_id += 1
    return _relabel(out)


def purify(vectors: np.ndarray, labels: np.ndarray, outlier_threshold: float, merge_threshold: float) -> np.ndarray:
    """``"components"`` method: drop members far from their centroid (label ``-1``), then merge clusters with
    close centroids (this merges look-alike people; the ``"average"`` method does not merge)."""
    labels = drop_outliers(vectors, labels, outlier_threshold)
    # merge: clusters whose centroids are closer than merge_threshold
    cents = centroids_of(vectors, labels)
    if len(cents) > 1:
        sims, idx = knn_search(cents, min(len(cents), 8), "auto")
        rows = np.repeat(np.arange(len(cents)), idx.shape[1])
        cols = idx.ravel()
        keep = (cols >= 0) & (sims.ravel() >= merge_threshold) & (cols != rows)
        merged = _components(len(cents), rows[keep], cols[keep])
        valid = labels >= 0
        labels[valid] = merged[labels[valid]]
        labels = _relabel(labels)
    return labels


def cluster_identities(vectors: np.ndarray, params: ClusterParams) -> np.ndarray:
    """Cluster identity vectors: ``(N,)`` int64 ids ``0..C-1``, ``-1`` for outliers removed by purification."""
    if params.method not in METHODS:
        raise ValueError(f"unknown clustering method {params.method!r}; one of {', '.join(METHODS)}")
    vectors = _normalize(vectors)
    outlier, merge = params.resolved()
    if params.method == "average":
        labels = average_linkage_clusters(vectors, params)
        labels = drop_outliers(vectors, labels, outlier)
    else:
        labels = graph_clusters(vectors, params)
        labels = refine_components(vectors, labels, params.threshold, tight=merge)
        labels = purify(vectors, labels, outlier, merge)
    logger.info(
        "clustered %d vectors into %d identities (%d outliers dropped)",
        len(vectors),
        int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0,
        int((labels < 0).sum()),
    )
    return labels


def near_duplicates(
    hashes: np.ndarray, vectors: np.ndarray, quality: np.ndarray, groups: np.ndarray, max_bits: int, min_cosine: float
) -> np.ndarray:
    """For each image, the index of the better image of the same group it duplicates, or ``-1``: ``(N,)`` int64.

    Two images of one group are duplicates when their 64-bit dHashes differ in at most ``max_bits`` bits and their
    identity cosine is at least ``min_cosine``; of each duplicate set, the highest ``quality`` (then first) stays.
    """
    drop = np.full(len(hashes), -1, dtype=np.int64)
    hashes = np.asarray(hashes, dtype=np.uint64)
    vectors = _normalize(vectors) if len(vectors) else vectors
    valid = np.flatnonzero(groups >= 0)
    by_group = valid[np.argsort(groups[valid], kind="stable")]
    bounds = np.flatnonzero(np.diff(groups[by_group])) + 1
    for members in np.split(by_group, bounds) if len(by_group) else []:
        if len(members) < 2:
            continue
        order = members[np.lexsort((members, -quality[members]))]  # best first, ties by position
        kept: list[int] = []
        for i in order:
            if kept:
                x = np.bitwise_xor(hashes[kept], hashes[i])
                bits = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
                cos = vectors[kept] @ vectors[i]
                hit = np.flatnonzero((bits <= max_bits) & (cos >= min_cosine))
                if len(hit):
                    drop[i] = kept[int(hit[0])]
                    continue
            kept.append(int(i))
    return drop


def pairwise_precision_recall(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Pairwise precision and recall of a clustering ``pred`` against labels ``true`` (both ``(N,)`` ints).

    A pair of images is "predicted together" when both have the same ``pred`` id ``>= 0`` (images with ``-1``
    are singletons). Precision = correct predicted pairs / predicted pairs; recall = correct / true pairs.
    """
    pred = np.asarray(pred).copy()
    true = np.asarray(true)
    singles = pred < 0
    pred[singles] = pred.max(initial=0) + 1 + np.arange(singles.sum())

    def pairs(counts: np.ndarray) -> float:
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    _, joint = np.unique(np.stack([pred, true]), axis=1, return_counts=True)
    tp = pairs(joint)
    pred_pairs = pairs(np.unique(pred, return_counts=True)[1])
    true_pairs = pairs(np.unique(true, return_counts=True)[1])
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    return precision, recall
