"""The independent control measurement (dlib's 68 points + PnP, expression ratios) on real photos and known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from hifi_portrait.errors import ModelFilesMissingError
from hifi_portrait.evaluation.dlib68 import (
    POINT_SET_CHOICES,
    Dlib68Estimator,
    blendshape_groups,
    expression_ratios,
    model_points_68,
    pose_from_68,
)


@pytest.fixture(scope="module")
def estimator():
    return Dlib68Estimator()


def _measure(evaluator, estimator, image: np.ndarray, keypoints: bool = True):
    face = evaluator.analyzer.analyze(image)
    return face, estimator.measure(image, face.bbox, face.keypoints if keypoints else None)


# ---------------------------------------------------------------- pose on real photos
@pytest.mark.parametrize("name", ["obama2.jpg", "biden.jpg"])
def test_pose_of_a_photo_and_its_mirror(evaluator, estimator, data_dir, name):
    """Mirroring flips the signs of yaw and roll and keeps pitch; dlib68 agrees with mediapipe within 5 degrees."""
    image = np.asarray(Image.open(data_dir / name).convert("RGB"))
    face, m = _measure(evaluator, estimator, image)
    face_m, mm = _measure(evaluator, estimator, np.ascontiguousarray(image[:, ::-1]))
    assert m.box_source == mm.box_source == "dlib-hog"
    assert abs(m.yaw) > 5 and np.sign(mm.yaw) == -np.sign(m.yaw)
    assert abs(m.yaw + mm.yaw) < 3.0 and abs(m.roll + mm.roll) < 2.0 and abs(m.pitch - mm.pitch) < 3.0
    assert abs(m.yaw - face.pose.yaw) < 5.0 and abs(mm.yaw - face_m.pose.yaw) < 5.0
    assert m.reprojection_px < 0.1 * np.linalg.norm(m.points[45] - m.points[36])  # a generic face: not exact


@pytest.mark.parametrize(("angle", "keypoints"), [(15.0, True), (-15, True), (45, True), (-45, True), (30, False)])
def test_roll_of_a_rotated_photo(evaluator, estimator, data_dir, angle, keypoints):
    """A photo rotated counter-clockwise by ``angle`` (PIL's sign) reads ``angle`` more roll, yaw unchanged; beyond
    the tolerance the face is measured upright (dlib's models alone read a 40-degree roll as ~15 degrees)."""
    image = Image.open(data_dir / "obama.jpg").convert("RGB")
    base = _measure(evaluator, estimator, np.asarray(image))[1]
    turned = np.asarray(image.rotate(angle, resample=Image.BICUBIC, expand=True))
    rotated = _measure(evaluator, estimator, turned, keypoints)[1]
    assert rotated.roll - base.roll == pytest.approx(angle, abs=2.0)
    assert abs(rotated.yaw - base.yaw) < 3.0
    assert base.derotated_by == 0.0 and rotated.derotated_by == pytest.approx(-angle, abs=5.0)


def test_small_face_falls_back_to_our_box_and_says_so(evaluator, estimator, data_dir, tmp_path):
    """A 23-px face: dlib's HOG detector (smallest face ~40 px, upsampled once) finds none, our box is used."""
    from hifi_portrait.evaluation import load_manifest

    image = Image.open(data_dir / "obama.jpg").convert("RGB")
    small = image.resize((round(image.width * 0.12), round(image.height * 0.12)), Image.BICUBIC)
    face, m = _measure(evaluator, estimator, np.asarray(small))
    assert m.box_source == "ours"
    np.testing.assert_allclose(m.box, face.bbox)
    assert abs(m.yaw - face.pose.yaw) < 5.0  # still a usable reading of a frontal face
    gen = tmp_path / "gen"
    gen.mkdir()
    small.save(gen / "a_0.png")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"entries:\n  - id: a\n    references: [{data_dir / 'obama.jpg'}]\n")
    result = evaluator.evaluate(load_manifest(manifest), gen)
    assert result.rows[0]["dlib68_box"] == "ours"
    assert any("HOG detector found no face in 1 image(s) (a_0.png)" in n for n in result.notices)


def test_agreement_with_mediapipe_on_bundled_photos(evaluator, estimator, data_dir, tmp_path):
    """The acceptance quantity on the single-face report photos and their mirrors (the benchmark covers all)."""
    diffs = []
    for name in ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.jpg", "tom_hanks.png"]:
        image = np.asarray(Image.open(data_dir / name).convert("RGB"))
        for img in (image, np.ascontiguousarray(image[:, ::-1])):
            face, m = _measure(evaluator, estimator, img)
            diffs.append([m.yaw - face.pose.yaw, m.pitch - face.pose.pitch, m.roll - face.pose.roll])
    d = np.abs(np.array(diffs))
    print(f"\n|dlib68 - mediapipe| yaw mean {d[:, 0].mean():.2f} max {d[:, 0].max():.2f}")
    assert d[:, 0].max() <= 5.0 and d[:, 0].mean() <= 3.0
    assert d[:, 2].max() <= 5.0
    assert d[:, 1].max() <= 8.0  # pitch: depth is what a 2-D landmark set pins down least


# ---------------------------------------------------------------- PnP on exact projections
@pytest.mark.parametrize("pose", [(0.0, 0.0, 0.0), (25.0, -10.0, 5.0), (-40.0, 15.0, -20.0)])
@pytest.mark.parametrize("point_set", POINT_SET_CHOICES)
def test_pnp_recovers_the_pose_of_an_exact_projection(pose, point_set):
    import cv2

    from hifi_portrait.landmarks.geometry import FLIP_YZ, rotation_from_pose

    rot_cv = FLIP_YZ @ rotation_from_pose(*pose)
    rvec, _ = cv2.Rodrigues(rot_cv)
    f, size = 800.0, (640, 480)
    camera = np.array([[f, 0, 320.0], [0, f, 240.0], [0, 0, 1]])
    pts, _ = cv2.projectPoints(model_points_68(), rvec, np.array([1.0, -2.0, 60.0]), camera, None)
    pts = pts.reshape(-1, 2)
    # the principal point at the image centre, not at the face: the true camera
    yaw, pitch, roll, rms = pose_from_68(pts, size, centre=(320.0, 240.0), point_set=point_set, focal=f)
    assert (yaw, pitch, roll) == pytest.approx(pose, abs=0.05) and rms < 1e-3


def test_pnp_rejects_bad_input():
    with pytest.raises(ValueError, match="point set"):
        pose_from_68(np.zeros((68, 2)), (100, 100), point_set="jaw")
    with pytest.raises(ValueError, match="68 finite"):
        pose_from_68(np.full((68, 2), np.nan), (100, 100))


# ---------------------------------------------------------------- expression ratios on known landmark sets
def _known_face(gap: float = 0.0, lift: float = 0.0, brow: float = 30.0, lid: float = 4.5) -> np.ndarray:
    """A frontal 68-point face with exactly known geometry (pixels, y down): eye corners 36-39 and 42-45 span 30 px,
    outer corners 36-45 are 100 px apart, the mouth is 50 px wide."""
    p = np.zeros((68, 2))
    p[:17] = np.stack([np.linspace(-60, 60, 17), np.full(17, 60.0)], axis=1)  # jaw (unused by the ratios)
    for k, x in enumerate(np.linspace(-45, -5, 5)):
        p[17 + k] = (x, -brow)
        p[22 + k] = (-x if k else 45, -brow)
    p[22:27] = np.stack([np.linspace(5, 45, 5), np.full(5, -brow)], axis=1)
    p[27:36] = np.stack([np.zeros(9), np.linspace(0, 30, 9)], axis=1)
    for first, x0 in ((36, -50.0), (42, 20.0)):
        p[first] = (x0, 0)
        p[first + 1], p[first + 2] = (x0 + 10, -lid), (x0 + 20, -lid)
        p[first + 3] = (x0 + 30, 0)
        p[first + 4], p[first + 5] = (x0 + 20, lid), (x0 + 10, lid)
    mouth_y = 50.0
    p[48], p[54] = (-25, mouth_y - lift), (25, mouth_y - lift)
    p[49:54] = np.stack([np.linspace(-15, 15, 5), np.full(5, mouth_y - 5)], axis=1)
    p[55:60] = np.stack([np.linspace(15, -15, 5), np.full(5, mouth_y + 5)], axis=1)
    p[60], p[64] = (-20, mouth_y), (20, mouth_y)
    p[61:64] = np.stack([np.linspace(-10, 10, 3), np.full(3, mouth_y - gap / 2)], axis=1)
    p[65:68] = np.stack([np.linspace(10, -10, 3), np.full(3, mouth_y + gap / 2)], axis=1)
    return p


def test_known_landmarks_give_known_ratios():
    r = expression_ratios(_known_face(gap=10.0, lift=4.0, brow=30.0, lid=4.5))
    assert r["mouth_open"] == pytest.approx(10.0 / 50.0)  # inner-lip gap / mouth width
    assert r["eye_open"] == pytest.approx((2 * 9.0) / (2 * 30.0))  # EAR = (9 + 9) / (2 * 30)
    assert r["mouth_corner_lift"] == pytest.approx(4.0 / 100.0)  # corners 4 px above the lip centre / IOD
    assert r["brow_raise"] == pytest.approx(30.0 / 100.0)  # inner brows 30 px above the eye centres / IOD
    closed = expression_ratios(_known_face(gap=0.0, lift=-3.0, lid=0.0))
    assert closed["mouth_open"] == 0.0 and closed["eye_open"] == 0.0
    assert closed["mouth_corner_lift"] == pytest.approx(-0.03)  # corners lowered: a frown reads negative


def test_ratios_ignore_roll_scale_and_translation():
    p = _known_face(gap=7.0, lift=2.0, brow=25.0, lid=3.0)
    a = math.radians(33.0)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    q = 2.5 * p @ rot.T + (400.0, 123.0)
    for key, value in expression_ratios(p).items():
        assert expression_ratios(q)[key] == pytest.approx(value, abs=1e-12)


def test_blendshape_groups_average_left_and_right():
    groups = blendshape_groups({"jawOpen": 0.3, "eyeBlinkLeft": 0.2, "eyeBlinkRight": 0.4, "browInnerUp": 0.1})
    assert groups == pytest.approx({"jawOpen": 0.3, "eyeBlink": 0.3, "browInnerUp": 0.1})  # no smile scores given


def test_degenerate_points_are_a_counted_failure_not_a_crash(evaluator, data_dir, tmp_path):
    """dlib's predictor collapsing every point onto one pixel (real pose/ratio code on a degenerate input): the
    image keeps its mediapipe columns, dlib68 says why it has none."""
    from hifi_portrait.evaluation import Evaluator, load_manifest

    class Collapsed(Dlib68Estimator):
        def landmarks(self, image, box):
            return np.tile([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], (68, 1))

    ev = Evaluator(analyzer=evaluator.analyzer, progress=False, dlib68=Collapsed())
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"entries:\n  - id: a\n    references: [{data_dir / 'obama.jpg'}]\n")
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "a_0.jpg").write_bytes((data_dir / "obama2.jpg").read_bytes())
    result = ev.evaluate(load_manifest(manifest), gen)
    row = result.rows[0]
    assert row["face_detected"] and "yaw" in row and "dlib68_yaw" not in row
    assert "68 finite" in row["dlib68_failure"] or "coincide" in row["dlib68_failure"]
    assert any("dlib68: no measurement in 1 image(s) (a_0.jpg)" in n for n in result.notices)


# ---------------------------------------------------------------- model file
def test_missing_model_file_is_a_typed_error(tmp_path):
    with pytest.raises(ModelFilesMissingError, match="face_recognition_models"):
        Dlib68Estimator(tmp_path / "shape_predictor_68_face_landmarks.dat")
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"not a dlib model")
    with pytest.raises(ModelFilesMissingError, match="not dlib's 68-point"):
        Dlib68Estimator(bad).landmarks(np.zeros((64, 64, 3), np.uint8), np.array([0, 0, 63, 63]))
