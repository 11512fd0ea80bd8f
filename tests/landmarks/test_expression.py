"""Expression presets and blendshapes: monotonic measurable effects, sides, driver transfer."""

from __future__ import annotations

import numpy as np
import pytest

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.expression import (
    BLENDSHAPE_NAMES,
    PRESETS,
    expression_basis,
    parse_expression,
    preset_scores,
    scores_to_vector,
)
from hifi_portrait.landmarks.generate import TargetAttributes, generate_landmarks, make_target
from hifi_portrait.landmarks.shape import IdentityShape, fit_identity_shape

INTENSITIES = np.linspace(0.0, 1.0, 6)
CORNERS = (M.EYE_R_OUTER, M.EYE_R_INNER, M.EYE_L_OUTER, M.EYE_L_INNER)


def ratios(points2d: np.ndarray) -> dict[str, float]:
    """Mouth opening and width over the inter-ocular distance; eye aperture over eye width (mean of both eyes)."""
    p = points2d
    iod = np.linalg.norm(p[M.RIGHT_IRIS_CENTER] - p[M.LEFT_IRIS_CENTER])
    eye = np.mean(
        [
            np.linalg.norm(p[M.EYE_R_TOP] - p[M.EYE_R_BOTTOM]) / np.linalg.norm(p[M.EYE_R_OUTER] - p[M.EYE_R_INNER]),
            np.linalg.norm(p[M.EYE_L_TOP] - p[M.EYE_L_BOTTOM]) / np.linalg.norm(p[M.EYE_L_OUTER] - p[M.EYE_L_INNER]),
        ]
    )
    return {
        "mouth_open": np.linalg.norm(p[M.INNER_LIP_TOP] - p[M.INNER_LIP_BOTTOM]) / iod,
        "mouth_width": np.linalg.norm(p[M.MOUTH_CORNER_R] - p[M.MOUTH_CORNER_L]) / iod,
        "eye_aperture": eye,
        "brow_height": (p[list(CORNERS), 1].mean() - p[list(M.BROW_R) + list(M.BROW_L), 1].mean()) / iod,
        "corner_lift": (p[M.INNER_LIP_TOP, 1] - 0.5 * (p[M.MOUTH_CORNER_R, 1] + p[M.MOUTH_CORNER_L, 1])) / iod,
    }


# the main effect of each preset: (ratio, direction) pairs that must change by at least 0.02
EXPECTED = {
    "smile": [("mouth_width", +1), ("corner_lift", +1)],
    "laugh": [("mouth_width", +1), ("mouth_open", +1), ("eye_aperture", -1)],
    "surprise": [("mouth_open", +1), ("eye_aperture", +1), ("brow_height", +1)],
    "angry": [("brow_height", -1), ("eye_aperture", -1)],
    "sad": [("corner_lift", -1)],
    "eyes_closed": [("eye_aperture", -1)],
    "mouth_open": [("mouth_open", +1)],
}


@pytest.fixture(scope="module")
def shape(mp_faces) -> IdentityShape:
    return fit_identity_shape([mp_faces["obama.jpg"], mp_faces["obama2.jpg"]])


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("yaw", [0, 30])
def test_ratios_change_monotonically_with_intensity(shape, preset, yaw):
    series = {k: [] for k in ratios(np.zeros((478, 2)) + np.arange(478)[:, None])}
    for intensity in INTENSITIES:
        gen = generate_landmarks(shape, make_target(yaw=yaw, expression=f"{preset}:{intensity}"), size=(512, 512))
        for key, value in ratios(gen.points2d).items():
            series[key].append(value)
    for key in ("mouth_open", "mouth_width", "eye_aperture"):
        diffs = np.diff(series[key])
        assert (diffs >= -1e-9).all() or (diffs <= 1e-9).all(), (preset, key, series[key])
    for key, sign in EXPECTED.get(preset, []):
        values = np.array(series[key])
        assert (sign * np.diff(values) > 0).all(), (preset, key, values)
        assert sign * (values[-1] - values[0]) > 0.02, (preset, key, values)
    if preset == "neutral":
        assert all(np.ptp(v) < 1e-9 for v in series.values())


def test_eyes_closed_closes_the_eyes(shape):
    closed = ratios(generate_landmarks(shape, make_target(expression="eyes_closed")).points2d)["eye_aperture"]
    opened = ratios(generate_landmarks(shape, make_target()).points2d)["eye_aperture"]
    assert closed < 0.1 and closed < 0.3 * opened


def test_left_and_right_are_the_subjects_sides(shape):
    front = ratios(generate_landmarks(shape, TargetAttributes()).points2d)
    gen = generate_landmarks(shape, TargetAttributes(blendshapes={"eyeBlinkLeft": 1.0}))
    p = gen.points2d
    left = np.linalg.norm(p[M.EYE_L_TOP] - p[M.EYE_L_BOTTOM])  # subject's left eye: the image's right
    right = np.linalg.norm(p[M.EYE_R_TOP] - p[M.EYE_R_BOTTOM])
    assert p[M.EYE_L_OUTER, 0] > p[M.EYE_R_OUTER, 0]
    assert left < 0.2 * right
    assert front["eye_aperture"] > 0.1


def test_every_blendshape_moves_landmarks_and_matches_mediapipe_names(mp_faces):
    assert set(BLENDSHAPE_NAMES) == set(mp_faces["obama.jpg"].blendshapes)  # mediapipe's 52 minus _neutral
    assert len(BLENDSHAPE_NAMES) == 51
    basis = expression_basis(M.canonical_landmarks())
    motion = np.linalg.norm(basis, axis=2).max(axis=1)
    silent = [n for n, m in zip(BLENDSHAPE_NAMES, motion, strict=True) if m < 0.05]
    assert silent == [], silent
    # left/right pairs mirror each other
    mirror = np.array(
        [np.argmin(np.linalg.norm(M.canonical_landmarks() * [-1, 1, 1] - q, axis=1)) for q in M.canonical_landmarks()]
    )
    for name in BLENDSHAPE_NAMES:
        if name.endswith("Left"):
            a, b = basis[BLENDSHAPE_NAMES.index(name)], basis[BLENDSHAPE_NAMES.index(name[:-4] + "Right")]
            np.testing.assert_allclose(a, b[mirror] * [-1, 1, 1], atol=1e-6, err_msg=name)


def test_blendshape_dict_and_presets_combine():
    assert parse_expression("smile:0.5") == preset_scores("smile", 0.5)
    target = make_target(expression="smile:0.5", blendshapes={"jawOpen": 0.4})
    assert target.blendshapes["jawOpen"] == 0.4
    assert target.blendshapes["mouthSmileLeft"] == pytest.approx(0.4)
    vec = scores_to_vector({"jawOpen": 0.4, "_neutral": 0.9})
    assert vec.sum() == pytest.approx(0.4)


def test_driver_expression_replaced_by_preset_and_angles_override(mp_faces):
    driver = mp_faces["obama.jpg"]  # smiling
    t = make_target(driver=driver, expression="neutral", yaw=10)
    assert t.blendshapes == {} and t.yaw == 10
    t2 = make_target(driver=driver)
    assert t2.blendshapes["mouthSmileLeft"] > 0.5


def test_identity_neutral_shape_keeps_reference_mouth_neutral(mp_faces, shape):
    # obama.jpg smiles broadly; the fitted neutral shape has a narrower mouth than that photo aligned the same way
    from hifi_portrait.landmarks.shape import align_to_canonical, to_model_space

    smiling = align_to_canonical(to_model_space(mp_faces["obama.jpg"].landmarks))[0]
    width = lambda p: np.linalg.norm(p[M.MOUTH_CORNER_L] - p[M.MOUTH_CORNER_R])  # noqa: E731
    assert width(shape.points) < width(smiling) - 0.3


def test_parse_expression_takes_any_blendshapes_and_presets():
    assert parse_expression("jawOpen=0.4,mouthSmileLeft=0.7") == {"jawOpen": 0.4, "mouthSmileLeft": 0.7}
    mixed = parse_expression("smile:0.5, jawOpen=0.3, mouthSmileLeft=0.9")
    assert mixed["jawOpen"] == 0.3 and mixed["mouthSmileLeft"] == 0.9
    assert mixed["mouthSmileRight"] == pytest.approx(0.4)  # from the preset
    target = make_target(expression="eyeBlinkLeft=1")
    assert target.blendshapes == {"eyeBlinkLeft": 1.0}
    for bad, message in (
        ("jawOpen=wide", "NAME=SCORE"),
        ("jawopen=0.2", "did you mean 'jawOpen'"),
        ("jawOpen=1.5", r"\[0, 1\]"),
        ("grin", "unknown expression preset"),
        (" , ", "empty expression"),
    ):
        with pytest.raises(LandmarkError, match=message):
            parse_expression(bad)
