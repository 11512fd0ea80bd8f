"""The fitted expression model, read back by mediapipe's blendshape model on a person the fit never saw (Obama).

Issue 14's acceptance (presets within 0.10 at intensities 0.5 and 1.0 and yaw -30/0/+30, monotonic in intensity,
neutral <= 0.1, driver round trip MAE <= 0.015) is not reached yet: those tests are strict xfails (they fail the
suite once they pass, so the marks get removed). What holds is asserted: the fitted model reads back closer than
the hand-designed one, each preset's main score rises with intensity, the identity residual is unchanged within
0.05 cm, <= 5 ms per target, mirror symmetry, no lip or eyelid crossing.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from hifi_portrait.face.blendshapes import BlendshapeReader
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.expression import (
    BLENDSHAPE_NAMES,
    FITTED_BASIS_PATH,
    FITTED_BASIS_VERSION,
    PRESETS,
    apply_expression,
    expression_fields,
    mirror_index,
    mirror_permutation,
    preset_scores,
    scores_to_vector,
)
from hifi_portrait.landmarks.expression_check import READABLE, UNREADABLE, read_back
from hifi_portrait.landmarks.expression_data import HELD_OUT_PEOPLE, LOOSE_PHOTOS
from hifi_portrait.landmarks.generate import generate_landmarks, make_target
from hifi_portrait.landmarks.shape import fit_identity_shape

OBAMA = ("obama.jpg", "obama2.jpg", "obama3.jpg")
YAWS = (-30.0, 0.0, 30.0)


@pytest.fixture(scope="module")
def reader() -> BlendshapeReader:
    return BlendshapeReader()


@pytest.fixture(scope="module")
def obama(mp_faces):
    assert all(LOOSE_PHOTOS[n] in HELD_OUT_PEOPLE for n in OBAMA)  # the fit never saw these photos
    return fit_identity_shape([mp_faces[n] for n in OBAMA], expression_model="fitted")


@pytest.fixture(scope="module")
def obama_hand(mp_faces):
    return fit_identity_shape([mp_faces[n] for n in OBAMA], expression_model="hand")


def preset_errors(reader, shape) -> np.ndarray:
    """Worst |read - asked| over the readable scores, per (preset, intensity 0.5 / 1.0, yaw -30 / 0 / +30)."""
    out = []
    for preset in PRESETS:
        for intensity in (0.5, 1.0):
            asked = preset_scores(preset, intensity)
            for yaw in YAWS:
                read = read_back(reader, shape, asked, yaw=yaw)
                out.append((np.abs(read - scores_to_vector(asked)) * READABLE).max())
    return np.array(out)


def driver_maes(reader, mp_faces, model: str) -> np.ndarray:
    """Each Obama photo's own scores and pose, on the shape fitted from the two others: mean |read - asked|."""
    out = []
    for name in OBAMA:
        driver = mp_faces[name]
        shape = fit_identity_shape([mp_faces[n] for n in OBAMA if n != name], expression_model=model)
        gen = generate_landmarks(shape, make_target(driver=driver), size=driver.image_size)
        out.append(np.abs(reader.read(gen.landmarks) - scores_to_vector(driver.blendshapes)).mean())
    return np.array(out)


def test_fitted_file_is_versioned_and_held_out_people_were_not_fitted():
    with np.load(FITTED_BASIS_PATH, allow_pickle=False) as data:
        assert str(data["version"]) == FITTED_BASIS_VERSION
        assert tuple(str(n) for n in data["names"]) == BLENDSHAPE_NAMES
        assert not {str(p) for p in data["fit_people"]} & set(HELD_OUT_PEOPLE)
        assert len(data["fit_people"]) >= 5


def test_fitted_model_reads_back_better_than_the_hand_designed_one(reader, obama, obama_hand, mp_faces):
    fitted, hand = preset_errors(reader, obama), preset_errors(reader, obama_hand)
    print(
        f"preset read-back error: fitted worst {fitted.max():.3f} median {np.median(fitted):.3f}; "
        f"hand worst {hand.max():.3f} median {np.median(hand):.3f}"
    )
    assert np.median(fitted) < np.median(hand)
    assert fitted.max() < hand.max()
    trips_fitted, trips_hand = driver_maes(reader, mp_faces, "fitted"), driver_maes(reader, mp_faces, "hand")
    print(f"driver round trip MAE: fitted {trips_fitted.round(4)}, hand {trips_hand.round(4)}")
    assert trips_fitted.mean() < trips_hand.mean()


ACCEPTANCE_GAP = (
    "issue 14 acceptance not reached yet by the fitted model (benchmarks/results/expression.md, docs/landmarks.md): "
    "the reader's gaze scores keep a floor of ~0.1-0.15 on neutral faces and some mouth scores follow their presets "
    "poorly, on the held-out people"
)


@pytest.mark.xfail(strict=True, reason=ACCEPTANCE_GAP)
def test_presets_read_back_within_0_10(reader, obama):
    assert preset_errors(reader, obama).max() <= 0.10


@pytest.mark.xfail(strict=True, reason=ACCEPTANCE_GAP)
def test_driver_round_trip_mae_at_most_0_015(reader, mp_faces):
    assert driver_maes(reader, mp_faces, "fitted").mean() <= 0.015


def test_unreadable_scores_are_never_given_on_real_photos(reader, mp_faces):
    """The scores left out of the read-back: mediapipe's model gives none of them on any bundled photo."""
    for face in mp_faces.values():
        assert max(face.blendshapes[n] for n in UNREADABLE) < 0.01
    assert READABLE.sum() == 51 - len(UNREADABLE)


def neutral_max(reader, shape) -> float:
    return max(float(read_back(reader, shape, {}, yaw=yaw)[READABLE].max()) for yaw in YAWS)


def test_neutral_reads_closer_to_zero_than_with_the_hand_designed_model(reader, obama, obama_hand):
    fitted, hand = neutral_max(reader, obama), neutral_max(reader, obama_hand)
    print(f"neutral: largest score read, fitted {fitted:.3f}, hand {hand:.3f}")
    assert fitted < hand


@pytest.mark.xfail(strict=True, reason=ACCEPTANCE_GAP)
def test_neutral_reads_at_most_0_1(reader, obama, mp_faces):
    biden = fit_identity_shape(
        [mp_faces["biden.jpg"]], expression_model="fitted"
    )  # one photo, smiling: its neutralization must hold too
    assert max(neutral_max(reader, obama), neutral_max(reader, biden)) <= 0.1


def requested_series(reader, shape, preset: str) -> np.ndarray:
    """``(6, n)`` read-back of the preset's requested (readable) scores at intensities 0, 0.2, ..., 1."""
    asked = (scores_to_vector(preset_scores(preset, 1.0)) > 0) & READABLE
    return np.stack([read_back(reader, shape, preset_scores(preset, t))[asked] for t in np.linspace(0, 1, 6)])


def test_each_presets_main_score_rises_with_intensity(reader, obama):
    """The score each preset asks most (smile, jaw, brows, blink, frown...) rises steadily and reaches at least half
    of what is asked; the other scores, per preset, are in benchmarks/results/expression.md."""
    for preset in PRESETS:
        if preset == "neutral":
            continue
        asked = scores_to_vector(preset_scores(preset, 1.0)) * READABLE
        k = int(np.argmax(asked))
        series = np.array([read_back(reader, obama, preset_scores(preset, t))[k] for t in np.linspace(0, 1, 6)])
        assert (np.diff(series) > -0.005).all(), (preset, BLENDSHAPE_NAMES[k], series.round(3))
        assert series[-1] - series[0] >= 0.5 * asked[k], (preset, BLENDSHAPE_NAMES[k], series.round(3))


@pytest.mark.xfail(strict=True, reason=ACCEPTANCE_GAP + " (a few requested scores dip by up to 0.03 between steps)")
def test_requested_scores_are_monotonic_in_intensity(reader, obama):
    dips = [np.diff(requested_series(reader, obama, p), axis=0).min() for p in PRESETS if p != "neutral"]
    assert min(dips) >= -0.005


def test_identity_residual_unchanged(mp_faces):
    refs = [mp_faces[n] for n in OBAMA]
    fitted = fit_identity_shape(refs, expression_model="fitted")
    hand = fit_identity_shape(refs, expression_model="hand")
    moved = np.linalg.norm(fitted.points - hand.points, axis=1).mean()
    print(
        f"identity residual (cm): fitted {fitted.residuals.mean():.3f}, hand {hand.residuals.mean():.3f}; "
        f"shape moved {moved:.3f}"
    )
    assert fitted.residuals.mean() <= hand.residuals.mean() + 0.05


def test_fields_and_amplitudes_are_mirror_symmetric():
    fields = expression_fields(M.canonical_landmarks(), "fitted")
    lin = fields.linear
    mirror = mirror_index()
    flip = np.array([-1.0, 1.0, 1.0])
    for k, name in enumerate(BLENDSHAPE_NAMES):
        twin = name[:-4] + "Right" if name.endswith("Left") else name if not name.endswith("Right") else None
        if twin is None:
            continue
        j = BLENDSHAPE_NAMES.index(twin)
        np.testing.assert_allclose(lin[k], lin[j][mirror] * flip, atol=1e-3, err_msg=name)
    # amplitudes: the mirrored request (left/right swapped, yaw and roll negated) gives the mirrored amplitudes
    perm = mirror_permutation()
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.uniform(0, 1, len(BLENDSHAPE_NAMES)) * (rng.random(len(BLENDSHAPE_NAMES)) < 0.3)
        pose = rng.uniform(-30, 30, 3)
        a = fields.amplitudes(s, pose)
        np.testing.assert_allclose(fields.amplitudes(s[perm], pose * [-1, 1, -1]), a[perm], atol=1e-9)
        np.testing.assert_allclose(fields.amplitudes(-s, pose), -a, atol=1e-12)  # undoing is the exact inverse


def test_no_lip_or_eyelid_crossing(obama):
    lips = ((191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (310, 318), (415, 324))
    lids = list(zip(M.UPPER_LID_R[1:-1], M.LOWER_LID_R[1:-1], strict=True))
    lids += list(zip(M.UPPER_LID_L[1:-1], M.LOWER_LID_L[1:-1], strict=True))
    rng = np.random.default_rng(0)
    targets = [scores_to_vector(preset_scores(p, 1.0)) for p in PRESETS]
    targets += [
        rng.uniform(0, 1, len(BLENDSHAPE_NAMES)) * (rng.random(len(BLENDSHAPE_NAMES)) < 0.15) for _ in range(50)
    ]
    for s in targets:
        pts = apply_expression(obama.points, obama.basis, s)
        assert min(pts[u, 1] - pts[d, 1] for u, d in lips) > -0.02, s
        assert min(pts[u, 1] - pts[d, 1] for u, d in lids) > -0.02, s


def test_generation_within_5_ms_per_target(obama):
    generate_landmarks(obama, make_target(expression="laugh"))  # warm-up (fields cached on the shape)
    times = []
    for i in range(40):
        target = make_target(yaw=i - 20, expression=f"{list(PRESETS)[i % len(PRESETS)]}:{(i % 10) / 10}")
        t0 = time.process_time()
        generate_landmarks(obama, target, size=(1024, 1024))
        times.append(time.process_time() - t0)
    assert statistics.median(times) < 0.005


def _roughness(points: np.ndarray) -> float:
    """Mean distance (cm) of each mesh point to the mean of its neighbours in mediapipe's tesselation."""
    edges = M.mediapipe_connections()["tesselation"]
    adj = np.zeros((M.NUM_MESH, M.NUM_MESH))
    adj[edges[:, 0], edges[:, 1]] = adj[edges[:, 1], edges[:, 0]] = 1.0
    p = points[: M.NUM_MESH]
    return float(np.linalg.norm(p - (adj @ p) / adj.sum(1, keepdims=True), axis=1).mean())


def test_fitted_meshes_are_as_smooth_as_real_faces(obama, obama_hand, mp_faces):
    """A plausibility check that does not use the reader: the fit must not buy read-back with jagged contours."""
    from hifi_portrait.landmarks.shape import align_to_canonical, to_model_space

    def presets_roughness(shape) -> float:
        return np.mean(
            [
                _roughness(apply_expression(shape.points, shape.basis, scores_to_vector(preset_scores(p))))
                for p in PRESETS
            ]
        )

    photos = np.mean([_roughness(align_to_canonical(to_model_space(mp_faces[n].landmarks))[0]) for n in OBAMA])
    fitted, hand = presets_roughness(obama), presets_roughness(obama_hand)
    print(f"mesh roughness (cm): fitted {fitted:.4f}, hand {hand:.4f}, Obama's photos {photos:.4f}")
    assert fitted <= hand + 0.005 and fitted <= photos + 0.01
