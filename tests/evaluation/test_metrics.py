"""Each metric on constructed inputs whose correct value is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from hifi_portrait.evaluation.control import expression_error, landmark_nme, pose_error
from hifi_portrait.evaluation.distribution import (
    fid_from_features,
    frechet_distance,
    kid_from_features,
    mean_pairwise_dissimilarity,
    mmd2_unbiased,
)
from hifi_portrait.evaluation.identity import (
    copy_paste_over_references,
    copy_paste_score,
    cosine_similarity,
    identity_similarity,
    roc_auc,
)


def _unit_at(deg: float) -> np.ndarray:
    """A unit vector in the plane of the first two axes of R^8 at ``deg`` degrees."""
    v = np.zeros(8)
    v[0], v[1] = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return v


# ------------------------------------------------------------------ identity
def test_cosine_and_identity_similarity_known_angles():
    refs = np.stack([_unit_at(0), _unit_at(90)])
    gen = _unit_at(60) * 3.0  # scale must not matter
    sims = cosine_similarity(gen, refs)
    np.testing.assert_allclose(sims, [[0.5, np.sqrt(3) / 2]], atol=1e-12)
    assert identity_similarity(gen, refs) == pytest.approx((0.5 + np.sqrt(3) / 2) / 2)
    with pytest.raises(ValueError, match="dimension"):
        cosine_similarity(np.ones(3), np.ones(4))


@pytest.mark.parametrize("gen_deg, expected", [(0.0, 1.0), (90.0, -1.0), (45.0, 0.0), (30.0, (60 - 30) / 90)])
def test_copy_paste_geodesic_known_values(gen_deg, expected):
    # reference at 0 deg, ground truth at 90 deg: M_CP = (theta_gt - theta_gr) / theta_tr
    ref, gt = _unit_at(0), _unit_at(90)
    assert copy_paste_score(_unit_at(gen_deg), gt, ref) == pytest.approx(expected, abs=1e-9)


def test_copy_paste_degenerate_and_several_references():
    v = _unit_at(10)
    assert copy_paste_score(_unit_at(50), v, v) == 0.0  # target == reference: undefined -> 0
    # gen 20, gt 90: against ref 0 -> (70 - 20) / 90; against ref 45 -> (70 - 25) / 45 = 1
    mean, worst = copy_paste_over_references(_unit_at(20), _unit_at(90), np.stack([_unit_at(0), _unit_at(45)]))
    assert worst == pytest.approx(1.0)
    assert mean == pytest.approx((50 / 90 + 1.0) / 2)
    mean, worst = copy_paste_over_references(_unit_at(90), _unit_at(90), np.stack([_unit_at(0), _unit_at(45)]))
    assert mean == pytest.approx(-1.0) and worst == pytest.approx(-1.0)


def test_roc_auc_known_values():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    # one inversion out of 2x2 pairs, and a tie counting 1/2
    assert roc_auc([0.9, 0.3, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3 / 4)
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc([0.1, 0.2], [1, 1])


# ------------------------------------------------------------------ control
def test_pose_error_per_axis_mean_and_wraparound():
    err = pose_error({"yaw": 10.0, "pitch": -5.0, "roll": 0.0}, {"yaw": 0.0, "pitch": 5.0, "roll": 3.0})
    assert err == pytest.approx({"yaw_error": 10.0, "pitch_error": 10.0, "roll_error": 3.0, "mean_abs_error": 23 / 3})
    # only yaw commanded; 179 vs -179 is 2 degrees apart
    assert pose_error({"yaw": 179.0, "pitch": None}, {"yaw": -179.0, "pitch": 40.0, "roll": 0.0}) == pytest.approx(
        {"yaw_error": 2.0, "mean_abs_error": 2.0}
    )
    with pytest.raises(ValueError, match="unknown pose axes"):
        pose_error({"tilt": 3.0}, {"yaw": 0, "pitch": 0, "roll": 0})
    with pytest.raises(ValueError, match="no pose axis"):
        pose_error({}, {"yaw": 0, "pitch": 0, "roll": 0})


def test_expression_error_mean_abs_over_commanded_names():
    measured = {"jawOpen": 0.7, "mouthSmileLeft": 0.2, "mouthSmileRight": 0.4, "eyeBlinkLeft": 0.9}
    assert expression_error({"jawOpen": 0.5, "mouthSmileLeft": 0.8}, measured) == pytest.approx((0.2 + 0.6) / 2)
    with pytest.raises(ValueError, match="unknown blendshape"):
        expression_error({"smile": 1.0}, measured)


def test_landmark_nme_on_shifted_landmarks():
    rng = np.random.default_rng(0)
    target = rng.uniform(100, 400, size=(478, 3))
    target[33, :2], target[263, :2] = (150.0, 200.0), (250.0, 200.0)  # inter-ocular distance 100 px
    shifted = target.copy()
    shifted[:, :2] += (3.0, 4.0)  # every point moved by 5 px
    assert landmark_nme(shifted, target) == pytest.approx(0.05)
    assert landmark_nme(target, target) == 0.0
    kps = np.array([[0.0, 0.0], [40.0, 0.0], [20.0, 20.0], [5.0, 35.0], [35.0, 35.0]])
    assert landmark_nme(kps + (0.0, 2.0), kps) == pytest.approx(2.0 / 40.0)
    with pytest.raises(ValueError, match="shape"):
        landmark_nme(kps, target)


# ------------------------------------------------------------------ FID / KID / diversity
def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.5, 2.0, size=6), rng.uniform(0.5, 2.0, size=6)
    # diagonal covariances: ||mu1-mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # a full covariance against itself rotated-in-mean only: distance is the squared mean shift
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    assert frechet_distance(mu1, cov, mu2, cov) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-6, abs=1e-6)
    # sigma2 = c^2 sigma1 commute: trace term is (1 - c)^2 tr(sigma1)
    assert frechet_distance(mu1, cov, mu1, 4.0 * cov) == pytest.approx(np.trace(cov), rel=1e-6)


def test_fid_from_features_identical_and_known_gaussians():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 4))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)
    # N(0, I) vs N(m, 4 I): ||m||^2 + 4 * (2 - 1)^2 = 9 + 4 = 13; sampling error of a few percent
    y = rng.normal(size=(4000, 4)) * 2.0 + np.array([3.0, 0.0, 0.0, 0.0])
    assert fid_from_features(x, y) == pytest.approx(13.0, rel=0.05)


def test_kid_known_values():
    # constant sets: k(a,a) + k(b,b) - 2 k(a,b) with k(x,y) = (x.y/D + 1)^3, D = 1, a = 1, b = 0 -> 8 + 1 - 2 = 7
    a, b = np.ones((10, 1)), np.zeros((12, 1))
    assert mmd2_unbiased(a, b) == pytest.approx(7.0)
    mean, std = kid_from_features(a, b, num_subsets=5, subset_size=4)
    assert mean == pytest.approx(7.0) and std == pytest.approx(0.0)
    # brute-force definition on a small random case
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 1.0

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy)
    # same distribution: unbiased estimate near 0; shifted distribution: clearly positive
    p, q = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, same_std = kid_from_features(p, q, num_subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    shifted, _ = kid_from_features(p, q + 1.0, num_subsets=20, subset_size=200)
    assert shifted > 0.1


def test_mean_pairwise_dissimilarity_known_values():
    assert mean_pairwise_dissimilarity(np.eye(4)) == pytest.approx(1.0)
    assert mean_pairwise_dissimilarity(np.ones((3, 5))) == pytest.approx(0.0)
    pts = np.stack([_unit_at(0), _unit_at(60), _unit_at(120)])
    # pairwise cosines 0.5, 0.5, -0.5 -> mean(1 - cos) = (0.5 + 0.5 + 1.5) / 3
    assert mean_pairwise_dissimilarity(pts) == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_dissimilarity(np.ones((1, 5)))


def test_trace_term_matches_scipy_sqrtm_and_low_rank_route():
    from scipy import linalg

    from hifi_portrait.evaluation.distribution import trace_sqrt_product

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(7, 7)), rng.normal(size=(7, 7))
    s1, s2 = a @ a.T + 0.1 * np.eye(7), b @ b.T + 0.1 * np.eye(7)
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(linalg.sqrtm(s1 @ s2)).real, rel=1e-8)
    # fewer samples than dimensions: the nuclear-norm route equals the D x D route
    x, y = rng.normal(size=(6, 20)), rng.normal(size=(9, 20)) + 0.5
    m1, c1, m2, c2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    # (the D x D route takes square roots of round-off-sized eigenvalues of the singular product: ~1e-8 error)
    assert fid_from_features(x, y) == pytest.approx(frechet_distance(m1, c1, m2, c2), rel=1e-6)
