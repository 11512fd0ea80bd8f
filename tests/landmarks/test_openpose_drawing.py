"""The ``openpose`` / ``dwpose`` styles equal controlnet_aux's own drawing, pixel for pixel: on 256 random keypoint
sets per format (missing body points, points off the canvas, odd canvas sizes) and on maps made from the bundled
photos' detected landmarks and from generated targets."""

from __future__ import annotations

import numpy as np
import pytest
from controlnet_aux_reference import detector_size, dwpose_map, openpose_map

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import generate_landmarks, make_target, render_map
from hifi_portrait.landmarks.openpose import (
    OpenPoseKeypoints,
    draw_openpose,
    openpose_keypoints,
    render_openpose,
    thick_ratio,
)
from hifi_portrait.landmarks.render import from_detected
from hifi_portrait.landmarks.shape import IdentityShape

N_RANDOM = 256


def reference(keypoints: OpenPoseKeypoints, format: str) -> np.ndarray:
    body, face = keypoints.normalized()
    w, h = keypoints.size
    return openpose_map(body, face, h, w) if format == "openpose" else dwpose_map(body, face, h, w)


def random_keypoints(rng: np.random.Generator, format: str) -> OpenPoseKeypoints:
    w, h = (int(v) for v in rng.integers(24, 320, size=2))
    body = rng.uniform(-0.1, 1.1, size=(18, 2)) * (w, h)
    body[rng.random(18) < 0.3] = np.nan
    face = rng.uniform(-0.05, 1.05, size=(70 if format == "openpose" else 68, 2)) * (w, h)
    return OpenPoseKeypoints(body=body, face=face, size=(w, h))


@pytest.mark.parametrize("format", ["openpose", "dwpose"])
def test_random_keypoint_sets_match_controlnet_aux(format):
    rng = np.random.default_rng(15 if format == "openpose" else 16)
    differing = []
    for i in range(N_RANDOM):
        kps = random_keypoints(rng, format)
        ours = draw_openpose(np.zeros((kps.size[1], kps.size[0], 3), np.uint8), kps, format)
        if not np.array_equal(ours, reference(kps, format)):
            differing.append(i)
    assert differing == [], f"{len(differing)} of {N_RANDOM} maps differ from controlnet_aux's"


@pytest.mark.parametrize("format", ["openpose", "dwpose"])
def test_maps_of_real_photos_match_controlnet_aux(mp_faces, format):
    for name, face in mp_faces.items():
        for shoulders in (False, True):
            gen = from_detected(face.landmarks, face.image_size)
            kps = openpose_keypoints(gen, format, shoulders=shoulders)
            assert np.isfinite(kps.body[[0, 14, 15]]).all(), f"{name}: nose and eyes of a frontal photo are drawn"
            ours = render_map(gen, format, shoulders=shoulders)
            np.testing.assert_array_equal(ours, reference(kps, format), err_msg=f"{name} shoulders={shoulders}")


@pytest.mark.parametrize("format", ["openpose", "dwpose"])
def test_maps_of_generated_targets_match_controlnet_aux(mp_faces, format):
    from hifi_portrait.landmarks import fit_identity_shape

    shape = fit_identity_shape([mp_faces[n] for n in ("obama.jpg", "obama2.jpg", "obama3.jpg")])
    for target in (make_target(yaw=-45), make_target(yaw=45, expression="laugh"), make_target(pitch=20, roll=-15)):
        gen = generate_landmarks(shape, target, size=(512, 768))
        kps = openpose_keypoints(gen, format, shoulders=True)
        np.testing.assert_array_equal(render_openpose(gen, format, shoulders=True), reference(kps, format))


def test_face_only_and_options():
    gen = generate_landmarks(IdentityShape.canonical(), make_target(yaw=10), size=(320, 320))
    kps = openpose_keypoints(gen)
    body, face = kps.normalized()
    face_only = render_map(gen, "openpose", body=False)
    np.testing.assert_array_equal(face_only, openpose_map(body, face, 320, 320, draw_body=False))
    assert np.unique(face_only.reshape(-1, 3), axis=0).tolist() == [[0, 0, 0], [255, 255, 255]]
    assert render_map(gen, "openpose", face=False).max() > 0 and not render_map(gen, "openpose", face=False).all()
    with pytest.raises(LandmarkError, match="unknown option"):
        render_map(gen, "openpose", hands=True)
    with pytest.raises(LandmarkError, match="no drawing options"):
        render_map(gen, "hifi", shoulders=True)
    with pytest.raises(LandmarkError, match="unknown OpenPose format"):
        openpose_keypoints(gen, "coco")
    with pytest.raises(LandmarkError, match="differs"):
        draw_openpose(np.zeros((10, 10, 3), np.uint8), kps)


def test_thick_body_lines_follow_xinsirs_size_ratio():
    # xinsir's replacement of draw_bodypose: stick width and disc radius times 1 below 500 px, 2 below 1000, ...
    assert [thick_ratio(s, 10) for s in (499, 500, 999, 1000, 1999, 2000, 4999, 5000, 9000)] == [
        1,
        2,
        2,
        3,
        3,
        4,
        6,
        7,
        7,
    ]
    shape = IdentityShape.canonical()
    small = generate_landmarks(shape, make_target(yaw=20), size=(400, 400))
    np.testing.assert_array_equal(render_map(small, "openpose", thick=True), render_map(small, "openpose"))
    big = generate_landmarks(shape, make_target(yaw=20), size=(1024, 1024))
    thin = render_map(big, "openpose", face=False)
    thick = render_map(big, "openpose", face=False, thick=True)
    assert 2.0 < (thick.max(2) > 0).sum() / (thin.max(2) > 0).sum() < 4.0  # limbs ~3x wider, discs ~3x larger


@pytest.mark.parametrize("format", ["openpose", "dwpose"])
def test_detect_resolution_draws_like_the_detectors_then_resizes(format):
    """``detect_resolution=512``: OpenposeDetector / DWposeDetector's default pipeline (draw on the image resized to
    a 512 short side, rounded to multiples of 64, then cv2.resize bilinear to the output size)."""
    import cv2

    shape = IdentityShape.canonical()
    for size in ((1024, 1024), (832, 1216), (640, 480)):
        gen = generate_landmarks(shape, make_target(yaw=25, expression="smile"), size=size)
        kps = openpose_keypoints(gen, format)
        body, face = kps.normalized()
        h, w = detector_size(size[1], size[0], 512)
        drawn = openpose_map(body, face, h, w) if format == "openpose" else dwpose_map(body, face, h, w)
        expected = cv2.resize(drawn, size, interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(render_map(gen, format, detect_resolution=512), expected)
    big = generate_landmarks(shape, make_target(yaw=25), size=(1024, 1024))
    thin, wide = render_map(big, format), render_map(big, format, detect_resolution=512)
    assert (wide.max(2) > 0).sum() > 2.5 * (thin.max(2) > 0).sum()  # lines and discs twice as wide
    with pytest.raises(LandmarkError, match=">= 64"):
        render_map(big, format, detect_resolution=16)
