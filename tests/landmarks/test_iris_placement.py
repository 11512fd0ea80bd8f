"""The fitted expression model places the irises from the lids and the gaze request (``IrisPlacement``): the
references' own gaze does not leak into generated faces, gaze requests move the irises the right way, the irises
keep real proportions, left and right are mirror images, and the fitting script's torch twin computes the same."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.expression import (
    BLENDSHAPE_INDEX,
    IRIS_PARAMS,
    IRIS_RADIUS,
    IrisPlacement,
    apply_expression,
    expression_fields,
    fitted_model,
    mirror_index,
    mirror_permutation,
    scores_to_vector,
)
from hifi_portrait.landmarks.generate import generate_landmarks, make_target
from hifi_portrait.landmarks.shape import IdentityShape

ROOT = Path(__file__).resolve().parents[2]
IRISES = list(M.RIGHT_IRIS + M.LEFT_IRIS)


@pytest.fixture(scope="module")
def canonical() -> IdentityShape:
    return IdentityShape.canonical(expression_model="fitted")


def test_the_references_gaze_does_not_reach_generated_faces(canonical):
    """Irises of the identity shape moved as if its photos looked aside: the generated landmarks are unchanged."""
    looking_aside = canonical.points.copy()
    looking_aside[IRISES] += np.array([0.3, -0.15, 0.05])
    other = dataclasses.replace(canonical, points=looking_aside, _basis=None)
    for target in (make_target(), make_target(yaw=25, expression="smile"), make_target(blendshapes={"jawOpen": 0.5})):
        a = generate_landmarks(canonical, target, size=(512, 512)).landmarks
        b = generate_landmarks(other, target, size=(512, 512)).landmarks
        np.testing.assert_allclose(a, b, atol=1e-9)


@pytest.mark.parametrize(
    ("score", "axis", "direction"),
    [
        ("eyeLookOutLeft", 0, 1.0),  # the subject's left eye is at model-space x > 0: outwards is +x
        ("eyeLookInLeft", 0, -1.0),
        ("eyeLookOutRight", 0, -1.0),
        ("eyeLookInRight", 0, 1.0),
        ("eyeLookUpLeft", 1, 1.0),
        ("eyeLookDownRight", 1, -1.0),
    ],
)
def test_a_gaze_request_moves_its_iris_that_way(canonical, score, axis, direction):
    iris = M.LEFT_IRIS if score.endswith("Left") else M.RIGHT_IRIS
    other = M.RIGHT_IRIS if score.endswith("Left") else M.LEFT_IRIS
    neutral = apply_expression(canonical.points, canonical.basis, np.zeros(51))
    moves = []
    for t in (0.3, 0.6, 1.0):
        looked = apply_expression(canonical.points, canonical.basis, scores_to_vector({score: t}))
        moves.append(direction * (looked[iris[0], axis] - neutral[iris[0], axis]))
        # the rim moves with the centre (its radius follows the eye-corner distance, which the expression may
        # change a little); the other eye moves much less (the amplitude network couples the eyes slightly)
        rim, rim0 = looked[list(iris)] - looked[iris[0]], neutral[list(iris)] - neutral[iris[0]]
        np.testing.assert_allclose(rim, rim0, atol=1e-3)
        assert np.abs(looked[other[0]] - neutral[other[0]]).max() < 0.5 * moves[-1]
    assert moves[0] > 0.02 and np.all(np.diff(moves) > 0), moves


def test_irises_have_real_proportions(canonical):
    """Radius: mediapipe's own irises (0.59 canonical cm); centre 0.1-0.5 cm behind the lids' frontmost point."""
    params = dict(zip(("bx", "by", "bz"), fitted_model()[2].params[:3], strict=True))
    assert -0.5 <= params["bz"] <= -0.1
    for scores in (np.zeros(51), scores_to_vector({"eyeWideLeft": 1.0, "eyeWideRight": 1.0, "jawOpen": 0.4})):
        pts = apply_expression(canonical.points, canonical.basis, scores)
        unit = M.eye_corner_scale(pts)
        for iris, lids in (
            (M.RIGHT_IRIS, M.UPPER_LID_R + M.LOWER_LID_R),
            (M.LEFT_IRIS, M.UPPER_LID_L + M.LOWER_LID_L),
        ):
            radii = np.linalg.norm(pts[list(iris[1:])] - pts[iris[0]], axis=1)
            np.testing.assert_allclose(radii, IRIS_RADIUS * unit)
            depth = pts[list(lids), 2].max() - pts[iris[0], 2]
            assert 0.1 * unit - 1e-9 <= depth <= 0.5 * unit + 1e-9


def test_left_and_right_irises_are_mirror_images(canonical):
    """A mirrored request on a mirror-symmetric face gives mirrored irises, up to the one shift of both irises the
    same way (``cx``) that cancels the reader's own left/right asymmetry."""
    mirror, perm = mirror_index(), mirror_permutation()
    flip = np.array([-1.0, 1.0, 1.0])
    sym = 0.5 * (canonical.points + canonical.points[mirror] * flip)
    fields = expression_fields(sym, "fitted")
    cx = fields.iris.params[IRIS_PARAMS.index("cx")]
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = rng.uniform(0, 1, 51) * (rng.random(51) < 0.3)
        a = apply_expression(sym, fields, s)
        b = apply_expression(sym, fields, s[perm])
        shift = np.array([cx * M.eye_corner_scale(a), 0.0, 0.0])
        np.testing.assert_allclose(a[IRISES] - shift, (b[mirror] * flip)[IRISES] + shift, atol=1e-6)


def test_the_reader_is_not_mirror_symmetric_which_the_conjugate_shift_answers(canonical):
    """Why ``cx`` exists: on an exactly symmetric face mediapipe's blendshape model reads a sideways gaze (its
    ``eyeLookInRight`` and ``eyeLookOutLeft`` well above their mirror twins); the fitted shift is small."""
    from hifi_portrait.face.blendshapes import BlendshapeReader

    hand = IdentityShape.canonical(expression_model="hand")
    gen = generate_landmarks(hand, make_target(), size=(512, 512))
    read = dict(zip(BLENDSHAPE_INDEX, BlendshapeReader().read(gen.landmarks), strict=True))
    assert read["eyeLookInRight"] - read["eyeLookInLeft"] > 0.05
    assert read["eyeLookOutLeft"] - read["eyeLookOutRight"] > 0.05
    assert abs(fitted_model()[2].params[IRIS_PARAMS.index("cx")]) <= 0.1


def test_the_fitting_scripts_torch_twin_places_them_the_same():
    spec = importlib.util.spec_from_file_location("fit_expression_basis", ROOT / "scripts" / "fit_expression_basis.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    placement = fitted_model()[2]
    twin = script.Irises(placement.params)
    rng = np.random.default_rng(1)
    neutral = M.canonical_landmarks() + rng.normal(0, 0.05, (M.NUM_LANDMARKS, 3))
    amps = rng.uniform(0, 1, (4, 51))
    expressed = neutral + rng.normal(0, 0.05, (4, M.NUM_LANDMARKS, 3))
    with torch.no_grad():
        got = twin(
            torch.as_tensor(expressed, dtype=torch.float32),
            torch.as_tensor(np.repeat(neutral[None], 4, 0), dtype=torch.float32),
            torch.as_tensor(amps, dtype=torch.float32),
        ).numpy()
    for i in range(4):
        np.testing.assert_allclose(got[i], placement(expressed[i], neutral, amps[i]), atol=1e-5)


def test_a_placement_is_plain_data():
    placement = IrisPlacement(np.zeros(len(IRIS_PARAMS)))
    pts = M.canonical_landmarks()
    out = placement(pts, pts, np.zeros(51))
    assert out.shape == pts.shape and np.array_equal(out[: M.NUM_MESH], pts[: M.NUM_MESH])
    assert BLENDSHAPE_INDEX["eyeLookUpLeft"] >= 0
