"""Conditioning map styles: sizes, colours where the spec puts them, occlusion, speed-relevant behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.generate import TargetAttributes, generate_landmarks, make_target
from hifi_portrait.landmarks.render import OPENPOSE_STYLES, STYLES, draw_instantid, overlay, render_map, warp_reference
from hifi_portrait.landmarks.shape import IdentityShape


@pytest.fixture(scope="module")
def shape() -> IdentityShape:
    return IdentityShape.canonical()


# the OpenPose styles also draw the ears and neck, outside the face (tests/landmarks/test_openpose_*.py)
@pytest.mark.parametrize("style", [s for s in STYLES if s not in OPENPOSE_STYLES])
@pytest.mark.parametrize("size", [(512, 512), (832, 1216)])
def test_every_style_draws_the_face_inside_its_box(shape, style, size):
    gen = generate_landmarks(shape, make_target(yaw=20, expression="smile"), size=size)
    img = render_map(gen, style)
    assert img.shape == (size[1], size[0], 3) and img.dtype == np.uint8
    ys, xs = np.nonzero(img.max(axis=2))
    assert len(xs) > 200
    lo, hi = gen.points2d.min(0) - 12, gen.points2d.max(0) + 12
    assert xs.min() >= lo[0] and xs.max() <= hi[0] and ys.min() >= lo[1] and ys.max() <= hi[1]


def test_instantid_style_follows_draw_kps(shape):
    gen = generate_landmarks(shape, TargetAttributes(yaw=-15), size=(640, 640))
    img = render_map(gen, "instantid")
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    for (x, y), color in zip(gen.keypoints, colors, strict=True):
        assert tuple(img[int(y), int(x)]) == color  # radius-10 discs on the keypoints
    # limbs: 60 % of the colour of their outer point, half-way to the nose
    mid = ((gen.keypoints[0] + gen.keypoints[2]) / 2).astype(int)
    assert tuple(img[mid[1], mid[0]]) == (153, 0, 0)
    # pixel-identical to InstantID's float pipeline (limbs filled in float64, scaled by 0.6, truncated)
    import math

    import cv2

    ref = np.zeros(img.shape, dtype=np.float64)
    for a, b in ((0, 2), (1, 2), (3, 2), (4, 2)):
        x, y = gen.keypoints[[a, b], 0], gen.keypoints[[a, b], 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        poly = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), 4), int(angle), 0, 360, 1)
        ref = cv2.fillConvexPoly(ref.copy(), poly, colors[a])
    ref = (ref * 0.6).astype(np.uint8)
    for (x, y), color in zip(gen.keypoints, colors, strict=True):
        ref = cv2.circle(ref.copy(), (int(x), int(y)), 10, color, -1)
    np.testing.assert_array_equal(img, ref)
    np.testing.assert_array_equal(draw_instantid(np.zeros_like(img), gen.keypoints), img)


def test_mediapipe_style_uses_crucible_colours(shape):
    gen = generate_landmarks(shape, TargetAttributes(), size=(512, 512))
    img = render_map(gen, "mediapipe")
    colours = {tuple(c) for c in img.reshape(-1, 3)} - {(0, 0, 0)}
    expected = {
        (10, 200, 10),
        (10, 200, 180),
        (10, 220, 180),
        (180, 200, 10),
        (180, 220, 10),
        (10, 180, 10),
        (250, 200, 10),
        (10, 200, 250),
    }
    assert colours <= expected and len(colours) >= 6
    x, y = np.floor(gen.points2d[M.RIGHT_IRIS_CENTER]).astype(int)
    assert tuple(img[y, x]) == (250, 200, 10)  # right pupil square (subject's right = image left)
    assert gen.points2d[M.RIGHT_IRIS_CENTER, 0] < 256


def test_hifi_style_shows_surface_orientation_and_hides_back_faces(shape):
    front = generate_landmarks(shape, TargetAttributes(), size=(512, 512))
    turned = generate_landmarks(shape, TargetAttributes(yaw=50), size=(512, 512))
    img_front, img_turned = render_map(front, "hifi"), render_map(turned, "hifi")

    def colour_at(img, gen, idx):  # a cheek point, away from contours
        x, y = np.round(gen.points2d[idx]).astype(int)
        return img[y, x].astype(int)

    c_front, c_turned = colour_at(img_front, front, 205), colour_at(img_turned, turned, 425)
    assert c_front[2] > 200  # facing the camera: blue (normal-map z)
    assert c_turned[0] > c_front[0] + 30  # the subject's left cheek turned towards the image's right: more red
    # triangles turned away from the camera are not drawn
    from hifi_portrait.landmarks.render import _visible_triangles

    n_front, n_turned = len(_visible_triangles(front)[0]), len(_visible_triangles(turned)[0])
    assert n_turned < n_front - 50
    # closed eyes have no iris disc
    closed = render_map(generate_landmarks(shape, make_target(expression="eyes_closed"), size=(512, 512)), "hifi")
    x, y = np.round(front.points2d[M.LEFT_IRIS_CENTER]).astype(int)
    assert tuple(img_front[y, x]) == (255, 255, 0) and tuple(closed[y, x]) != (255, 255, 0)


def test_unknown_style_and_overlay_errors(shape):
    gen = generate_landmarks(shape, TargetAttributes(), size=(64, 64))
    with pytest.raises(LandmarkError, match="unknown map style"):
        render_map(gen, "canny")
    with pytest.raises(LandmarkError, match="same shape"):
        overlay(np.zeros((10, 10, 3), np.uint8), render_map(gen, "hifi"))


def test_warp_reference_moves_the_photo_face_onto_the_target(mp_faces, shape):
    face = mp_faces["obama2.jpg"]
    gen = generate_landmarks(shape, make_target(driver=face), size=(400, 400))
    warped = warp_reference(face.image, face.landmarks, gen)
    assert warped.shape == (400, 400, 3)
    x, y = np.round(gen.points2d[M.NOSE_TIP]).astype(int)
    assert warped[y - 5 : y + 5, x - 5 : x + 5].mean() > 30  # photo content where the generated nose is
    blended = overlay(warped, render_map(gen, "mediapipe"))
    assert blended.shape == warped.shape
