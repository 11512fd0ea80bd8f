"""Pure geometry: pose from a rotation matrix (sign convention), similarity alignment, quality formula."""

from __future__ import annotations

import numpy as np
import pytest

from hifi_portrait.errors import ConfigError
from hifi_portrait.face import HeadPose, QualityConfig, pose_from_matrix, umeyama_similarity
from hifi_portrait.face.alignment import ARCFACE_TEMPLATE, alignment_affine, transform_points
from hifi_portrait.face.quality import compute_quality


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def _matrix(rot: np.ndarray, scale: float = 1.0) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot * scale
    m[:3, 3] = [1.0, -2.0, -40.0]
    return m


@pytest.mark.parametrize("deg", [-40, -10, 10, 40])
def test_single_axis_rotations(deg):
    # camera space: x right, y up, z towards the viewer; a face turning to the image's right rotates about +y
    assert pose_from_matrix(_matrix(_rot("y", deg))).yaw == pytest.approx(deg, abs=1e-9)
    # looking up: the forward axis tilts towards +y, a rotation about -x
    assert pose_from_matrix(_matrix(_rot("x", -deg))).pitch == pytest.approx(deg, abs=1e-9)
    # counter-clockwise in the displayed image (y up): rotation about +z
    assert pose_from_matrix(_matrix(_rot("z", deg), scale=1.7)).roll == pytest.approx(deg, abs=1e-9)


def test_mirroring_negates_yaw_and_roll():
    rot = _rot("z", 12) @ _rot("x", -8) @ _rot("y", 25)
    flip = np.diag([-1.0, 1.0, 1.0])
    pose, mirrored = pose_from_matrix(_matrix(rot)), pose_from_matrix(_matrix(flip @ rot @ flip))
    assert mirrored.yaw == pytest.approx(-pose.yaw) and mirrored.roll == pytest.approx(-pose.roll)
    assert mirrored.pitch == pytest.approx(pose.pitch)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = np.radians(23), 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    affine = umeyama_similarity(src, dst)
    assert np.allclose(affine[:, :2], scale * rot) and np.allclose(affine[:, 2], shift)
    # keypoints already on the template map to themselves
    assert np.allclose(transform_points(ARCFACE_TEMPLATE, alignment_affine(ARCFACE_TEMPLATE, 112)), ARCFACE_TEMPLATE)


def test_quality_parts_follow_their_formulas():
    cfg = QualityConfig()
    flat = np.full((112, 112, 3), 128, np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    frontal, turned = HeadPose(0, 0, 0), HeadPose(60, 0, 0)
    q = compute_quality(80, noisy, frontal, 0.9, cfg)
    assert q.size == pytest.approx(80 / cfg.good_face_px) and q.confidence == pytest.approx(0.9)
    assert q.frontalness == pytest.approx(1.0) and q.sharpness > 0.99
    assert compute_quality(80, noisy, turned, 0.9, cfg).frontalness == pytest.approx(0.5)
    blurred = compute_quality(80, flat, frontal, 0.9, cfg)
    assert blurred.sharpness == 0 and blurred.raw["laplacian_var"] == 0 and blurred.total < q.total / 5
    expected = np.exp(np.mean(np.log([q.size, q.sharpness, q.frontalness, q.confidence])))
    assert q.total == pytest.approx(expected)
    with pytest.raises(ConfigError):
        QualityConfig(on_unusable="ignore")
    with pytest.raises(ConfigError):
        QualityConfig(weights={"beauty": 1.0})
