"""Clustering on synthetic identity vectors, purification, near-duplicates, metric, diversity selection, captions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hifi_portrait.data import ClusterParams, cluster_identities, pairwise_precision_recall
from hifi_portrait.data.captions import describe_expression, describe_pose, load_captioner, template_caption
from hifi_portrait.data.cluster import near_duplicates, purify
from hifi_portrait.data.select import choose_refs_and_targets, diversity_features, farthest_point_sampling
from hifi_portrait.errors import ConfigError


def synthetic_ids(n_people: int, per_person: int, dim: int, noise: float, seed: int = 0):
    """Unit vectors around random person centres (the same-person cosine is ~1 / (1 + noise^2))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_people), per_person)
    x = centres[labels] + rng.normal(size=(len(labels), dim)) * noise / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_pairwise_metric_matches_brute_force():
    rng = np.random.default_rng(1)
    pred, true = rng.integers(-1, 5, 60), rng.integers(0, 6, 60)
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(60), 2):
        same_pred = pred[i] >= 0 and pred[i] == pred[j]
        tp += same_pred and true[i] == true[j]
        fp += same_pred and true[i] != true[j]
        fn += (not same_pred) and true[i] == true[j]
    p, r = pairwise_precision_recall(pred, true)
    assert p == pytest.approx(tp / (tp + fp)) and r == pytest.approx(tp / (tp + fn))


@pytest.mark.parametrize("index", ["flat", "blocked", "hnsw", "ivf"])
def test_synthetic_clusters_recovered(index):
    x, labels = synthetic_ids(60, 8, 128, noise=0.45)
    pred = cluster_identities(x, ClusterParams(threshold=0.7, k=10, index=index))
    p, r = pairwise_precision_recall(pred, labels)
    assert p >= 0.99 and r >= 0.97, (p, r)


def test_chain_broken_outlier_dropped_split_merged():
    x, labels = synthetic_ids(3, 10, 64, noise=0.3)
    # an impostor half-way between person 0 and person 1 chains the two in the k-NN graph
    bridge = x[0] + x[10]
    x = np.vstack([x, bridge / np.linalg.norm(bridge)])
    labels = np.append(labels, 3)
    assert (x[-1] @ x[[0, 10]].T > 0.6).all()
    pred = cluster_identities(x, ClusterParams(threshold=0.6))
    assert pred[0] != pred[10]  # average linkage inside the component breaks the single-link chain
    assert pairwise_precision_recall(pred, labels)[1] == 1.0
    # a member attached by one borderline edge but far from its cluster's centroid is dropped
    rng = np.random.default_rng(5)
    other = rng.normal(size=64)
    other -= (other @ x[0]) * x[0]
    stray = x[0] + 1.1 * other / np.linalg.norm(other)
    y = np.vstack([x[:30], stray / np.linalg.norm(stray)])
    pred = cluster_identities(y, ClusterParams(threshold=0.6, outlier_threshold=0.75))
    assert pred[-1] == -1 and pairwise_precision_recall(pred[:-1], labels[:30]) == (1.0, 1.0)
    # one person split in two clusters is merged back when the centroids are close
    split = np.arange(30) // 5
    merged = purify(x[:30], split, outlier_threshold=0.0, merge_threshold=0.9)
    assert pairwise_precision_recall(merged, labels[:30]) == (1.0, 1.0)


def test_near_duplicates_keep_best():
    hashes = np.array([0b1111, 0b1110, 0xFF00FF00FF00FF00, 0b1111], dtype=np.uint64)
    vec = np.array([[1, 0], [1, 0.01], [1, 0], [0, 1]], dtype=np.float32)
    quality = np.array([0.5, 0.9, 0.7, 0.8])
    dup_of = near_duplicates(hashes, vec, quality, np.array([0, 0, 0, 0]), max_bits=2, min_cosine=0.97)
    # 0 duplicates 1 (1 bit apart, same identity) and 1 is better; 2 differs in the hash; 3 in identity
    assert dup_of.tolist() == [1, -1, -1, -1]
    dup_of = near_duplicates(hashes, vec, quality, np.array([0, 1, 0, 0]), max_bits=2, min_cosine=0.97)
    assert dup_of.tolist() == [-1, -1, -1, -1]  # only within an identity


def test_farthest_point_sampling_spreads_poses():
    yaw = np.array([0, 2, -40, 40, 1, 20, -20], dtype=np.float64)
    pose = np.stack([yaw, np.zeros(7), np.zeros(7)], 1)
    feats = diversity_features(pose, np.zeros((7, 51)), 30.0, 1.0)
    picked = farthest_point_sampling(feats, 3, [], [0, 1, 2, 3, 4, 5, 6])
    assert picked[0] == 0 and set(picked[1:]) == {2, 3}
    refs, targets = choose_refs_and_targets(feats, np.array([1.0, 0.9, 0.5, 0.5, 0.8, 0.6, 0.6]), 2, 2)
    assert refs[0] == 0 and not set(refs) & set(targets) and len(targets) == 2
    # targets are far from the references: each target is farther from them than any unpicked image
    rest = set(range(7)) - set(refs) - set(targets)
    dist = lambda i: min(abs(yaw[i] - yaw[r]) for r in refs)  # noqa: E731
    assert min(dist(t) for t in targets) >= max(dist(i) for i in rest)


def test_captions_follow_attributes():
    assert describe_pose(0, 0, 0) == "facing the camera"
    assert "to the right" in describe_pose(35, 0, 0) and "to the left" in describe_pose(-35, 0, 0)
    assert "looking up" in describe_pose(0, 20, 0) and "profile" in describe_pose(70, 0, 0)
    assert "smiling" in describe_expression({"mouthSmileLeft": 0.8, "mouthSmileRight": 0.7})
    assert "neutral" in describe_expression({})
    assert "eyes closed" in describe_expression({"eyeBlinkLeft": 0.9, "eyeBlinkRight": 0.9})
    record = {"pose": {"yaw": -30, "pitch": 0, "roll": 0}, "blendshapes": {"jawOpen": 0.6}}
    assert template_caption(record) == "a photo of a person, head turned to the left, with the mouth open"


def test_captioner_hook_errors():
    import builder_helpers

    assert load_captioner(None) is None
    assert load_captioner("builder_helpers:shouting_captioner") is builder_helpers.shouting_captioner
    # the template takes (record) only: it would fail when called with (image, record), so it is refused up front
    with pytest.raises(ConfigError, match=r"signature \(record.*must take \(image, record\)"):
        load_captioner("hifi_portrait.data.captions:template_caption")
    with pytest.raises(ConfigError, match="package.module:function"):
        load_captioner("no_colon")
    with pytest.raises(ConfigError, match="could not be loaded"):
        load_captioner("hifi_portrait.data.captions:nothing_here")


def test_person_split_over_knn_components_is_joined_back():
    from hifi_portrait.data.cluster import graph_clusters

    x, labels = synthetic_ids(4, 30, 64, noise=0.5)
    params = ClusterParams(threshold=0.6, k=1)
    # with 1 neighbour per photo, the k-NN graph cuts each person of 30 photos into pieces ...
    assert graph_clusters(x, params).max() + 1 > 4
    # ... which are joined back by their mean cross-pair similarity, without joining two people
    assert pairwise_precision_recall(cluster_identities(x, params), labels) == (1.0, 1.0)


def test_component_too_large_for_exact_linkage_is_split_first():
    x, labels = synthetic_ids(3, 40, 64, noise=0.5)
    params = ClusterParams(threshold=0.6, edge_threshold=0.0, max_exact=50)  # every edge kept: one component
    pred = cluster_identities(x, params)
    assert pairwise_precision_recall(pred, labels) == (1.0, 1.0)


def test_unknown_method_is_refused():
    from hifi_portrait.data.cluster import cluster_params
    from hifi_portrait.data.config import ClusterConfig

    with pytest.raises(ConfigError, match="method must be one of 'average' or 'components'; got 'single'"):
        ClusterConfig(method="single")  # the config layer refuses it before any clustering
    with pytest.raises(ConfigError, match="set cluster.threshold"):
        cluster_params(ClusterConfig(), "my-recognizer")
    assert cluster_params(ClusterConfig(), "insightface-glintr100").threshold == pytest.approx(0.4)
