"""Bad input gives a LandmarkError that says what is wrong and what to do."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import (
    IdentityShape,
    Placement,
    TargetAttributes,
    fit_identity_shape,
    generate_landmarks,
    make_target,
    parse_expression,
)
from hifi_portrait.landmarks.geometry import PinholeCamera


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(LandmarkError, match="unknown expression preset 'grin'.*smile"):
        make_target(expression="grin")


@pytest.mark.parametrize("spec", ["smile:1.5", "smile:-0.1", "smile:abc", "smile:nan"])
def test_bad_intensity(spec):
    with pytest.raises(LandmarkError, match="intensity|INTENSITY"):
        parse_expression(spec)


def test_unknown_blendshape_suggests_the_right_spelling():
    with pytest.raises(LandmarkError, match="unknown blendshape 'jawopen'.*did you mean 'jawOpen'"):
        make_target(blendshapes={"jawopen": 0.5})
    with pytest.raises(LandmarkError, match="unknown blendshape 'smileHard'"):
        TargetAttributes(blendshapes={"smileHard": 0.5})
    with pytest.raises(LandmarkError, match=r"in \[0, 1\]"):
        make_target(blendshapes={"jawOpen": 2.0})


@pytest.mark.parametrize(
    ("yaw", "pitch", "roll"), [(95, 0, 0), (-86, 0, 0), (0, 61, 0), (0, 0, -91), (math.nan, 0, 0), (0, math.inf, 0)]
)
def test_out_of_range_angles(yaw, pitch, roll):
    with pytest.raises(LandmarkError, match="outside the supported range"):
        make_target(yaw=yaw, pitch=pitch, roll=roll)


def test_empty_reference_set_and_bad_arrays():
    with pytest.raises(LandmarkError, match="no reference faces"):
        fit_identity_shape([])
    with pytest.raises(LandmarkError, match=r"\(478, 3\)"):
        fit_identity_shape([np.zeros((468, 3))])
    bad = np.zeros((478, 3))
    bad[5, 0] = np.nan
    with pytest.raises(LandmarkError, match="finite"):
        fit_identity_shape([bad])
    with pytest.raises(LandmarkError, match="weights"):
        fit_identity_shape([np.random.default_rng(0).normal(size=(478, 3))] * 2, weights=[0, 0])


def test_bad_placement_and_canvas():
    shape = IdentityShape.canonical()
    with pytest.raises(LandmarkError, match="face box"):
        Placement(box=(10, 10, 5, 50))
    with pytest.raises(LandmarkError, match="face_height"):
        Placement(face_height=0)
    with pytest.raises(LandmarkError, match="canvas size"):
        generate_landmarks(shape, size=(4, 4000))
    with pytest.raises(LandmarkError, match="field of view"):
        PinholeCamera(64, 64, fov_deg=170)
    with pytest.raises(LandmarkError, match="behind the camera"):
        generate_landmarks(shape, size=(64, 64), placement=Placement(face_height=5.0), fov_deg=120)
