"""Measure expression control with mediapipe's blendshape model: what it reads from generated landmarks.

Used by ``benchmarks/expression.py``, ``scripts/fit_expression_basis.py`` and ``tests/landmarks``. The reader
(:class:`~hifi_portrait.face.blendshapes.BlendshapeReader`) is the model that scores real photos in mediapipe's
face landmarker, so "reads back what was asked" means "a photo with these landmarks would be scored so".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hifi_portrait.face.blendshapes import BlendshapeReader
from hifi_portrait.landmarks.expression import BLENDSHAPE_NAMES, PRESETS, preset_scores, scores_to_vector
from hifi_portrait.landmarks.generate import generate_landmarks, make_target
from hifi_portrait.landmarks.shape import IdentityShape, fit_identity_shape

#: Scores mediapipe's blendshape model does not give on real faces: on the 74 bundled faces (photos and mirror
#: images) none exceeds 0.002, whatever the expression; no plausible mesh drives them (see docs/landmarks.md).
#: They stay in the presets (their hand-designed fields shape the mesh) but are not read back.
UNREADABLE = ("cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight")
#: ``(51,)`` True for the scores that are read back.
READABLE = np.array([n not in UNREADABLE for n in BLENDSHAPE_NAMES])
#: Canvas of the read-back measurements (the reader does not depend on position or size).
SIZE = (512, 512)


def read_back(
    reader: BlendshapeReader,
    shape: IdentityShape,
    scores: dict[str, float],
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
) -> np.ndarray:
    """``(51,)`` scores the reader gives the landmarks generated for ``scores`` at that pose."""
    gen = generate_landmarks(shape, make_target(yaw, pitch, roll, blendshapes=scores), size=SIZE)
    return reader.read(gen.landmarks)


@dataclass
class PresetRow:
    """One preset at one intensity and yaw on one identity: asked vs read (all 51 scores)."""

    person: str
    preset: str
    intensity: float
    yaw: float
    asked: np.ndarray
    read: np.ndarray

    @property
    def errors(self) -> np.ndarray:
        """``(51,)`` |read - asked|, 0 for the :data:`UNREADABLE` scores."""
        return np.abs(self.read - self.asked) * READABLE

    @property
    def max_error(self) -> float:
        """Largest |read - asked| over the readable scores (asked 0 included)."""
        return float(self.errors.max())

    @property
    def worst(self) -> int:
        return int(np.argmax(self.errors))


def preset_rows(
    reader: BlendshapeReader,
    shapes: dict[str, IdentityShape],
    intensities: Sequence[float] = (0.5, 1.0),
    yaws: Sequence[float] = (-30.0, 0.0, 30.0),
    presets: Sequence[str] = tuple(PRESETS),
) -> list[PresetRow]:
    rows = []
    for person, shape in shapes.items():
        for preset in presets:
            for intensity in intensities:
                asked = preset_scores(preset, intensity)
                for yaw in yaws:
                    read = read_back(reader, shape, asked, yaw=yaw)
                    rows.append(PresetRow(person, preset, intensity, yaw, scores_to_vector(asked), read))
    return rows


@dataclass
class RoundTrip:
    """A held-out photo's own scores and pose as the target, on its person's shape fitted without it."""

    source: str
    asked: np.ndarray
    read: np.ndarray

    @property
    def mae(self) -> float:
        """Mean |read - asked| over the 51 scores (the unreadable ones are asked ~0 and read ~0)."""
        return float(np.abs(self.read - self.asked).mean())


def driver_round_trips(reader: BlendshapeReader, faces: Sequence, expression_model: str = "fitted") -> list[RoundTrip]:
    """For every face with other photos of the same person (same mirroring, other files): fit the shape on those,
    generate with the face's pose and scores (its photo's canvas), read back.

    Args:
        faces: :class:`~hifi_portrait.landmarks.expression_data.PhotoFace` objects.
    """
    out = []
    for face in faces:
        file = face.source.split(" ")[0]
        others = [
            f
            for f in faces
            if f.person == face.person and f.mirrored == face.mirrored and f.source.split(" ")[0] != file
        ]
        if not others:
            continue
        shape = fit_identity_shape(others, expression_model=expression_model)
        gen = generate_landmarks(shape, make_target(driver=face), size=face.image_size)
        out.append(RoundTrip(face.source, face.scores, reader.read(gen.landmarks)))
    return out
