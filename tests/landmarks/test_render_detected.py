"""Maps drawn from *detected* landmarks (training targets) look like maps generated for the same pose (inference)."""

from __future__ import annotations

import numpy as np
import pytest

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import Placement, fit_identity_shape, generate_landmarks, make_target, render_map
from hifi_portrait.landmarks.render import render_detected


def _face_colour(img: np.ndarray) -> np.ndarray:
    pixels = img.reshape(-1, 3)
    return pixels[pixels.sum(1) > 0].astype(np.float64).mean(0)


def _detected_and_generated(face) -> tuple[np.ndarray, np.ndarray]:
    w, h = face.image_size
    detected = render_detected(face.landmarks, (w, h), "hifi")
    x1, y1 = face.landmarks[:468, :2].min(0)
    x2, y2 = face.landmarks[:468, :2].max(0)
    gen = generate_landmarks(
        fit_identity_shape([face]), make_target(driver=face), size=(w, h), placement=Placement(box=(x1, y1, x2, y2))
    )
    return detected, render_map(gen, "hifi")


@pytest.mark.parametrize("name", ["obama2.jpg", "obama3.jpg"])
def test_detected_map_matches_generated_map_of_the_same_pose(mp_faces, name):
    detected, generated = _detected_and_generated(mp_faces[name])
    a, b = detected.sum(2) > 0, generated.sum(2) > 0
    assert (a & b).sum() / (a | b).sum() > 0.75  # same place and extent on the canvas
    assert np.abs(_face_colour(detected) - _face_colour(generated)).max() < 12  # same surface orientation


def test_render_detected_rejects_wrong_shape():
    with pytest.raises(LandmarkError, match="478"):
        render_detected(np.zeros((468, 3)), (64, 64))
