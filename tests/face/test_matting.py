"""Person matting and head masks on the bundled photos, against hand-drawn hair regions (tests/data/hair_regions.json).

The hair polygons were drawn by hand on the photos (not by any model); see tests/data/SOURCES.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading

import cv2
import numpy as np
import pytest
from conftest import DATA

from hifi_portrait.errors import ConfigError, ModelFilesMissingError
from hifi_portrait.face import FaceAnalyzer, LandmarkHullMatting, PersonMatting, load_image, make_matting
from hifi_portrait.face.alignment import transform_points
from hifi_portrait.face.matting import SELFIE_MODEL, composite, face_coverage, mask_to_photo

HAIR = json.loads((DATA / "hair_regions.json").read_text())["polygons"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a >= 128, b >= 128
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def hair_analyses(analyses, analyzer):
    """FaceAnalysis (default selfie-matte mask) of every photo with a hand-drawn hair region."""
    out = {name: analyses[name] for name in HAIR if name in analyses}
    for name in HAIR:
        if name not in out:
            out[name] = analyzer.analyze(load_image(DATA / name), source=name)
    return out


def test_vendored_model_is_the_documented_file():
    provenance = (SELFIE_MODEL.parent / "PROVENANCE.md").read_text()
    digest = hashlib.sha256(SELFIE_MODEL.read_bytes()).hexdigest()
    assert digest in provenance and "@mediapipe/selfie_segmentation" in provenance and "0.1.1675465747" in provenance
    assert SELFIE_MODEL.stat().st_size == 249_024
    assert "Apache License" in (SELFIE_MODEL.parent / "LICENSE").read_text()[:200]


def test_head_mask_contains_the_hair_and_excludes_the_corners_the_hull_does_not(hair_analyses):
    hull = LandmarkHullMatting()
    for name, fa in hair_analyses.items():
        assert fa.mask_method == "selfie-matte"
        width, height = fa.image_size
        hair = np.zeros((height, width), np.uint8)
        cv2.fillPoly(hair, [np.array(HAIR[name], np.int32)], 1)
        hair = hair > 0
        # the hand-drawn hair lies above the forehead landmarks (the mesh's top edge)
        assert np.median(np.nonzero(hair)[0]) < fa.landmarks[10, 1]
        matte = mask_to_photo(fa.mask, fa.encoder_affine, fa.image_size)
        hull_mask = hull.mask(fa.encoder_crop, transform_points(fa.landmarks, fa.encoder_affine))
        hull_photo = mask_to_photo(hull_mask, fa.encoder_affine, fa.image_size)
        inside = (matte[hair] >= 128).mean()
        assert inside >= 0.90, f"{name}: the head mask holds {inside:.3f} of the hair"
        assert (hull_photo[hair] >= 128).mean() < 0.1, name
        c = max(4, min(width, height) // 20)
        for corner in (matte[:c, :c], matte[:c, -c:], matte[-c:, :c], matte[-c:, -c:]):
            assert corner.max() == 0, name
        for corner in (fa.mask[:16, :16], fa.mask[:16, -16:], fa.mask[-16:, :16], fa.mask[-16:, -16:]):
            assert corner.max() == 0, name


def test_mirrored_photo_gives_the_mirrored_matte_and_head_mask(analyzer, photos, analyses):
    person = analyzer.matting.person
    for name in ("obama.jpg", "astronaut.jpg"):
        image = photos[name]
        mirrored = np.ascontiguousarray(image[:, ::-1])
        matte = np.round(person.matte(image) * 255).astype(np.uint8)
        matte_m = np.round(person.matte(mirrored) * 255).astype(np.uint8)
        assert matte.shape == image.shape[:2]
        assert _iou(matte, matte_m[:, ::-1]) >= 0.95
        fa, fa_m = analyses[name], analyzer.analyze(mirrored)
        head = mask_to_photo(fa.mask, fa.encoder_affine, fa.image_size)
        head_m = mask_to_photo(fa_m.mask, fa_m.encoder_affine, fa_m.image_size)
        assert _iou(head, head_m[:, ::-1]) >= 0.95, name


def test_person_matte_is_in_photo_pixels_for_any_aspect_ratio(analyzer, photos, analyses):
    person = analyzer.matting.person
    for name in ("obama.jpg", "biden.jpg", "group_t1.jpg"):  # portrait, narrow portrait, landscape
        image = photos[name]
        matte = person.matte(image)
        assert matte.shape == image.shape[:2] and matte.dtype == np.float32
        assert 0.0 <= matte.min() and matte.max() <= 1.0
        if name in analyses:
            x1, y1, x2, y2 = analyses[name].bbox
            assert matte[int((y1 + y2) / 2), int((x1 + x2) / 2)] > 0.9  # the face is person
        assert matte[:8, :8].max() < 0.1 and matte[:8, -8:].max() < 0.1


def test_a_large_object_over_the_face_is_a_hole_the_hull_cannot_see(analyzer, photos, analyses):
    from hifi_portrait.data.stages import face_occlusion

    image, fa = photos["obama.jpg"], analyses["obama.jpg"]
    x1, y1, x2, y2 = fa.bbox
    texture = image[100:300, 150:230]  # the curtain behind him: not a person
    h, top = int((y2 - y1) * 0.5), int(fa.landmarks[13, 1] - (y2 - y1) * 0.15)
    band = np.tile(texture, (h // texture.shape[0] + 1, image.shape[1] // texture.shape[1] + 1, 1))
    occluded = image.copy()
    occluded[top : top + h] = band[:h, : image.shape[1]]
    fo = analyzer.analyze(occluded)
    occlusion, coverage = face_occlusion(fo)
    assert face_occlusion(fa)[0] < 0.05 and occlusion > 0.15  # the builder's default max_occlusion
    crop_landmarks = transform_points(fo.landmarks, fo.encoder_affine)
    assert face_coverage(LandmarkHullMatting().mask(fo.encoder_crop, crop_landmarks), crop_landmarks) == 1.0


def test_masks_are_the_same_from_several_threads(analyses):
    matting = make_matting("selfie-matte")
    items = [(fa.encoder_crop, transform_points(fa.landmarks, fa.encoder_affine)) for fa in analyses.values()]
    serial = [matting.mask(crop, lm) for crop, lm in items]
    results: dict[int, list] = {}

    def work(k: int) -> None:
        results[k] = [matting.mask(crop, lm) for crop, lm in items]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert all(np.array_equal(a, b) for a, b in zip(serial, results[k], strict=True))


def test_composite_greys_the_background_and_keeps_the_masked_pixels(analyses):
    fa = analyses["obama.jpg"]
    out = composite(fa.encoder_crop, fa.mask)
    assert out.dtype == np.uint8 and out.shape == fa.encoder_crop.shape
    assert np.array_equal(out[fa.mask == 255], fa.encoder_crop[fa.mask == 255])
    assert (out[fa.mask == 0] == 127).all()
    with pytest.raises(ValueError, match="sizes differ"):
        composite(fa.encoder_crop, fa.mask[:100])


def test_mask_method_is_chosen_by_name_and_recorded(photos):
    analyzer = FaceAnalyzer(matting=make_matting("landmark-hull"))
    assert analyzer.analyze(photos["obama.jpg"]).mask_method == "landmark-hull"
    with pytest.raises(ConfigError, match="selfie-matte, landmark-hull"):
        make_matting("grabcut")


def test_missing_model_file_or_litert_names_the_fix(tmp_path, monkeypatch, photos):
    with pytest.raises(ModelFilesMissingError, match="landmark-hull"):
        PersonMatting(model_path=tmp_path / "nope.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFilesMissingError, match=re.escape(str(bad))):
        PersonMatting(model_path=bad).matte(photos["obama.jpg"])
    monkeypatch.setitem(__import__("sys").modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ModelFilesMissingError, match="pip install ai-edge-litert"):
        PersonMatting().matte(photos["obama.jpg"])
    with pytest.raises(ConfigError):
        PersonMatting(threshold=1.5)
