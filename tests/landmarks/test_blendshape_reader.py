"""mediapipe's blendshape model run alone (LiteRT) and as a torch graph: it reproduces the landmarker's scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hifi_portrait.errors import LandmarkError
from hifi_portrait.face.blendshapes import LANDMARKS_SUBSET, BlendshapeReader, subset_points
from hifi_portrait.landmarks.expression import BLENDSHAPE_NAMES


@pytest.fixture(scope="module")
def reader() -> BlendshapeReader:
    return BlendshapeReader()


def test_reproduces_the_landmarkers_own_scores(mp_faces, reader):
    assert len(LANDMARKS_SUBSET) == 146 and len(set(LANDMARKS_SUBSET)) == 146
    worst = 0.0
    for face in mp_faces.values():
        read = reader.read_dict(face.landmarks)
        assert read.keys() == set(BLENDSHAPE_NAMES)
        worst = max(worst, max(abs(read[k] - face.blendshapes[k]) for k in BLENDSHAPE_NAMES))
    assert worst < 1e-4, worst
    # a smiling photo reads as smiling, and the scores do not depend on position or size
    obama = mp_faces["obama.jpg"].landmarks
    assert reader.read_dict(obama)["mouthSmileLeft"] > 0.5
    moved = obama * 0.5 + np.array([13.0, -7.0, 0.0])
    np.testing.assert_allclose(reader.read(moved), reader.read(obama), atol=1e-4)


def test_torch_graph_matches_litert_and_has_useful_gradients(mp_faces, reader):
    graph = reader.torch_module()
    faces = [f.landmarks for f in mp_faces.values()]
    x = torch.from_numpy(subset_points(np.stack(faces)))
    out = graph(x).detach().numpy()
    np.testing.assert_allclose(out, reader.read_all(np.stack(faces)), atol=1e-4)
    # gradient of jawOpen w.r.t. the points agrees with a finite difference along it
    x0 = x[:1].clone().requires_grad_(True)
    jaw = 1 + BLENDSHAPE_NAMES.index("jawOpen")
    graph(x0)[0, jaw].backward()
    g = x0.grad[0]
    step = 0.5 * g / g.norm()
    lm = faces[0].copy()
    lm[list(LANDMARKS_SUBSET), :2] += step.numpy()
    fd = (reader.read_all(lm)[jaw] - reader.read_all(faces[0])[jaw]) / float(step.norm())
    assert fd > 0 and fd == pytest.approx(float(g.norm()), rel=0.2)


def test_bad_input_is_a_landmark_error(reader):
    with pytest.raises(LandmarkError, match="478"):
        reader.read(np.zeros((468, 3)))
    bad = np.zeros((478, 2))
    bad[3, 0] = np.nan
    with pytest.raises(LandmarkError, match="finite"):
        reader.read(bad)
