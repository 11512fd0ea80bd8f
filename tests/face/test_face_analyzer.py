"""FaceAnalyzer on real photos: outputs, acceptance properties (identity, pose signs) and bad input."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from hifi_portrait.errors import ConfigError, FaceNotFoundError, MultipleFacesError, UnusableFaceError
from hifi_portrait.face import FaceAnalysis, QualityConfig
from hifi_portrait.face.alignment import ARCFACE_TEMPLATE, transform_points

OBAMA = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"]
OTHERS = ["biden.jpg", "astronaut.jpg", "tom_hanks.png"]


def test_analysis_fields_have_documented_shapes(analyses):
    fa: FaceAnalysis = analyses["obama.jpg"]
    assert fa.image_size == (640, 800) and fa.face_index == 0
    assert fa.bbox.shape == (4,) and fa.keypoints.shape == (5, 2) and fa.landmarks.shape == (478, 3)
    assert fa.transform.shape == (4, 4) and fa.encoder_affine.shape == (2, 3)
    assert fa.identity.shape == (128,) and fa.identity.dtype == np.float32
    assert abs(np.linalg.norm(fa.identity) - 1) < 1e-5 and fa.identity_model == "dlib-resnet-128"
    assert len(fa.blendshapes) == 51 and "_neutral" not in fa.blendshapes and "jawOpen" in fa.blendshapes
    assert all(0 <= v <= 1 for v in fa.blendshapes.values())
    assert fa.arcface_crop.shape == (112, 112, 3) and fa.encoder_crop.shape == (512, 512, 3)
    assert fa.mask.shape == (512, 512) and fa.mask.dtype == np.uint8 and fa.mask_method == "selfie-matte"
    x1, y1, x2, y2 = fa.bbox
    # keypoints and mesh lie on the face; keypoint order: image-left eye, image-right eye, nose, mouth L, mouth R
    assert ((fa.keypoints >= [x1, y1]) & (fa.keypoints <= [x2, y2])).all()
    inside = (fa.landmarks[:, 0] > x1 - 10) & (fa.landmarks[:, 0] < x2 + 10) & (fa.landmarks[:, 1] > y1 - 30)
    assert inside.mean() > 0.95
    kp = fa.keypoints
    assert kp[0, 0] < kp[1, 0] and kp[3, 0] < kp[4, 0] and kp[0, 1] < kp[2, 1] < kp[3, 1]
    # the smiling Obama photo: the smile blendshapes are among the strongest
    assert fa.blendshapes["mouthSmileLeft"] > 0.5 and fa.blendshapes["mouthSmileRight"] > 0.5
    assert 0 < fa.quality.total <= 1 and fa.quality.raw["face_px"] > 150


def test_crops_are_aligned_on_the_template(analyses):
    fa = analyses["obama2.jpg"]
    # the encoder affine maps the keypoints close to the (scaled) ArcFace template
    from hifi_portrait.face.alignment import ENCODER_ZOOM, template_for

    error = np.abs(transform_points(fa.keypoints, fa.encoder_affine) - template_for(512, ENCODER_ZOOM))
    assert error[:2].max() < 10 and error.max() < 25  # eyes on the template; nose off by the head's turn
    assert np.allclose(template_for(112), ARCFACE_TEMPLATE)
    # the mask covers the face in the middle of the encoder crop and not the corners
    assert fa.mask[256, 256] == 255 and fa.mask[5, 5] == 0 and fa.mask[-5, -5] == 0
    assert 0.1 < (fa.mask > 127).mean() < 0.6


def test_same_person_pairs_score_clearly_above_different_person_pairs(analyses):
    same = [float(analyses[a].identity @ analyses[b].identity) for a, b in itertools.combinations(OBAMA, 2)]
    different = [float(analyses[a].identity @ analyses[b].identity) for a in OBAMA for b in OTHERS]
    different += [float(analyses[a].identity @ analyses[b].identity) for a, b in itertools.combinations(OTHERS, 2)]
    margin = min(same) - max(different)
    assert margin > 0.04, (sorted(same), sorted(different))
    assert np.mean(same) - np.mean(different) > 0.1


@pytest.mark.parametrize("name", ["obama2.jpg", "obama3.jpg", "biden.jpg"])
def test_mirrored_photo_gives_opposite_yaw(analyzer, photos, analyses, name):
    yaw = analyses[name].pose.yaw
    assert abs(yaw) > 8  # these photos are turned enough for the sign to mean something
    mirrored = analyzer.analyze(np.ascontiguousarray(photos[name][:, ::-1]))
    assert np.sign(mirrored.pose.yaw) == -np.sign(yaw)
    assert abs(mirrored.pose.yaw + yaw) <= 3
    assert abs(mirrored.pose.roll + analyses[name].pose.roll) <= 3  # roll flips too
    assert abs(mirrored.pose.pitch - analyses[name].pose.pitch) <= 3


def test_yaw_sign_follows_the_keypoints(analyses):
    """yaw > 0 when the face turns to the image's right: the nose is then right of the eyes' midpoint."""
    for name in ["obama2.jpg", "obama3.jpg", "biden.jpg"]:
        fa = analyses[name]
        nose_offset = fa.keypoints[2, 0] - fa.keypoints[:2, 0].mean()
        assert np.sign(fa.pose.yaw) == np.sign(nose_offset), name


@pytest.mark.parametrize("angle", [15, -15])
def test_in_plane_rotation_gives_roll(analyzer, photos, analyses, angle):
    base = analyses["obama.jpg"].pose.roll
    rotated = np.asarray(Image.fromarray(photos["obama.jpg"]).rotate(angle, resample=Image.BICUBIC, expand=True))
    roll = analyzer.analyze(rotated).pose.roll
    assert abs((roll - base) - angle) <= 3, (roll, base)


def test_group_photo_gives_one_face_per_person(analyzer, photos):
    faces = analyzer.analyze_all(photos["group_t1.jpg"], source="group_t1.jpg")
    assert len(faces) == 6
    centers = np.array([(f.bbox[:2] + f.bbox[2:]) / 2 for f in faces])
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1) + np.eye(6) * 1e9
    assert dist.min() > 40  # six different people, not duplicates
    # each face got its own mesh: the nose tip of the mesh lies inside its own box
    for f in faces:
        x, y = f.landmarks[1, :2]
        assert f.bbox[0] < x < f.bbox[2] and f.bbox[1] < y < f.bbox[3]
    sims = np.array([[a.identity @ b.identity for b in faces] for a in faces])
    assert sims[~np.eye(6, dtype=bool)].max() < 0.95


def test_several_faces_policies(analyzer, photos):
    group = photos["group_t1.jpg"]
    detections = analyzer.detect(group)
    assert len(detections) == 6
    areas = [d.area for d in detections]
    assert areas == sorted(areas, reverse=True)
    largest = analyzer.analyze(group, policy="largest")
    assert largest.face_index == 0 and np.allclose(largest.bbox, detections[0].bbox)
    third = analyzer.analyze(group, policy=2)
    assert third.face_index == 2 and np.allclose(third.bbox, detections[2].bbox)
    with pytest.raises(MultipleFacesError, match="6 faces"):
        analyzer.analyze(group, policy="error")
    with pytest.raises(FaceNotFoundError, match="index 9"):
        analyzer.analyze(group, policy=9)
    with pytest.raises(ConfigError):
        analyzer.analyze(group, policy="smallest")


def test_one_face_with_error_policy_is_fine(analyzer, photos):
    assert analyzer.analyze(photos["obama.jpg"], policy="error").face_index == 0


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_no_face(analyzer, name):
    image = getattr(skimage.data, name)()
    with pytest.raises(FaceNotFoundError, match="no face found"):
        analyzer.analyze(image, source=name)


def test_tiny_face(analyzer, photos):
    small = cv2.resize(photos["obama.jpg"], None, fx=0.15, fy=0.15, interpolation=cv2.INTER_AREA)
    canvas = np.full((256, 256, 3), 127, np.uint8)
    canvas[: small.shape[0], : small.shape[1]] = small
    assert len(analyzer.detect(canvas)) == 1  # found, but too small to be used
    with pytest.raises(UnusableFaceError, match="too small"):
        analyzer.analyze(canvas)


def test_heavily_blurred_face(analyzer, photos):
    blurred = cv2.GaussianBlur(photos["obama.jpg"], (0, 0), 8)
    with pytest.raises(UnusableFaceError, match="blurred"):
        analyzer.analyze(blurred)


def test_unusable_face_can_warn_instead(photos, caplog):
    from hifi_portrait.face import FaceAnalyzer

    lenient = FaceAnalyzer(quality=QualityConfig(on_unusable="warn"))
    blurred = cv2.GaussianBlur(photos["obama.jpg"], (0, 0), 8)
    with caplog.at_level("WARNING"):
        fa = lenient.analyze(blurred)
    assert "blurred" in caplog.text
    sharp_q = 1 - np.exp(-1000 / QualityConfig().sharpness_ref)
    assert fa.quality.sharpness < 0.2 < sharp_q


def test_quality_orders_sharp_above_blurred(analyzer, photos, analyses):
    mild = analyzer.analyze(cv2.GaussianBlur(photos["obama.jpg"], (0, 0), 2.5))
    assert mild.quality.raw["laplacian_var"] < analyses["obama.jpg"].quality.raw["laplacian_var"] / 4
    assert mild.quality.total < analyses["obama.jpg"].quality.total


def test_bad_array_input_is_a_config_error(analyzer):
    with pytest.raises(ConfigError, match="uint8"):
        analyzer.analyze(np.zeros((64, 64, 3), dtype=np.float32))


def test_analyze_many_in_parallel_keeps_order_and_errors(analyzer, photos, analyses):
    images = [photos["obama2.jpg"], skimage.data.coffee(), photos["biden.jpg"], photos["obama3.jpg"]]
    names = ["obama2.jpg", "coffee", "biden.jpg", "obama3.jpg"]
    results = list(analyzer.analyze_many(images, workers=2, sources=names))
    assert isinstance(results[1], FaceNotFoundError) and "coffee" in str(results[1])
    for i in (0, 2, 3):
        assert results[i].source == names[i]
        assert np.allclose(results[i].identity, analyses[names[i]].identity, atol=1e-5)
        assert np.allclose(results[i].landmarks, analyses[names[i]].landmarks, atol=1e-3)
