"""The demo's callbacks on the bundled photos, without a browser."""

from __future__ import annotations

import numpy as np
import pytest
from demo_photos import BIDEN, DATA, OBAMAS

from hifi_portrait.demo import callbacks as cb
from hifi_portrait.errors import LandmarkError


def _color_centroid(image: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    ys, xs = np.nonzero(np.all(image == np.array(rgb, dtype=np.uint8), axis=-1))
    assert len(xs) > 20, f"no {rgb} disc in the map"
    return np.array([xs.mean(), ys.mean()])


def test_analysis_flags_the_other_person_and_keeps_the_rest(mixed_view):
    view = mixed_view
    rows = {row[0]: row for row in view.table}
    assert set(rows) == {p.name for p in [*OBAMAS, BIDEN]}
    assert "different person" in rows["biden.jpg"][1]
    assert all(rows[p.name][1] == "ok" for p in OBAMAS)
    # the same-person similarity column separates them
    assert rows["biden.jpg"][8] < min(rows[p.name][8] for p in OBAMAS)
    assert "biden.jpg" in view.warnings and "different person" in view.warnings
    assert not any(p.name in view.warnings for p in OBAMAS)
    assert [a.source for a in view.state.kept] == [p.name for p in OBAMAS]
    # the identity shape is fitted on the kept references only
    assert list(view.state.shape.sources) == [p.name for p in OBAMAS]
    assert len(view.gallery) == 3 * 4  # per reference: crop, mask, matted crop
    for crop, caption in view.gallery:
        assert crop.dtype == np.uint8 and crop.ndim == 3 and crop.shape[0] == crop.shape[1] >= 112
        assert caption.split(":")[0] in rows
    assert "different person" in view.gallery[9][1] and view.gallery[9][1].startswith("biden.jpg")
    crop, mask, matted = (image for image, _ in view.gallery[:3])
    assert "selfie-matte" in view.gallery[1][1]
    # the matted crop keeps the face and greys out the background (the crop's corners)
    assert np.array_equal(matted[256, 256], crop[256, 256]) and mask[256, 256, 0] == 255
    assert (matted[:16, :16] == 127).all() and mask[:16, :16].max() == 0


def test_bad_files_are_listed_and_the_good_ones_used(tmp_path, analyzer, landmark_backend):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    view = cb.analyze_references([str(empty), str(OBAMAS[0]), str(text)], analyzer, landmark_backend)
    rows = {row[0]: row[1] for row in view.table}
    assert rows["obama.jpg"] == "ok"
    assert rows["empty.jpg"].startswith("skipped:") and rows["notes.png"].startswith("skipped:")
    assert "empty.jpg" in view.warnings and "notes.png" in view.warnings
    assert "Only one usable reference" in view.warnings
    assert len(view.state.kept) == 1 and view.state.shape is not None


def test_nothing_usable_still_previews_the_neutral_face(tmp_path, analyzer, landmark_backend):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    view = cb.analyze_references([str(bad)], analyzer, landmark_backend)
    assert view.state.face_set is None and view.gallery == []
    assert "No usable reference" in view.warnings
    image = cb.render_preview(view.state, cb.TargetSpec(), landmark_backend, size=(256, 256))
    assert image.shape == (256, 256, 3) and image.max() > 0
    assert cb.analyze_references(None, analyzer, landmark_backend).warnings.startswith("Upload")
    with pytest.raises(Exception, match="upload photos"):
        cb.require_references(view.state)


def test_per_request_reference_limit(analyzer):
    view = cb.analyze_references([str(p) for p in OBAMAS], analyzer, None, max_references=2)
    assert len(view.table) == 2
    assert "first 2 of 3" in view.warnings


def test_preview_follows_every_control(mixed_view, landmark_backend):
    state = mixed_view.state

    def render(style="hifi", size=(384, 384), **kw):
        return cb.render_preview(state, cb.TargetSpec(**kw), landmark_backend, size=size, style=style)

    neutral = render()
    assert neutral.shape == (384, 384, 3) and neutral.dtype == np.uint8
    assert np.array_equal(neutral, render()), "same target, same map"
    for changed in (
        dict(yaw=20),
        dict(pitch=-15),
        dict(roll=10),
        dict(preset="smile"),
        dict(blendshapes=cb.blendshapes_from_sliders({"jaw open": 0.6})),
    ):
        assert not np.array_equal(neutral, render(**changed)), changed
    # intensity scales the preset: 0 is neutral
    assert np.array_equal(neutral, render(preset="smile", intensity=0.0))
    # the references' own face shape, not the generic canonical face
    canonical = cb.render_preview(None, cb.TargetSpec(), landmark_backend, size=(384, 384), style="hifi")
    assert not np.array_equal(neutral, canonical)
    # every style renders, at any aspect ratio
    for style in landmark_backend.styles:
        image = render(style=style, size=(320, 480))
        assert image.shape == (480, 320, 3) and image.max() > 0
    # the roll slider is roll, with the documented sign (+ = counter-clockwise: the eye on the image's right rises)
    kps = render(style="instantid", roll=20)
    left_eye, right_eye = _color_centroid(kps, (255, 0, 0)), _color_centroid(kps, (0, 255, 0))
    assert right_eye[1] < left_eye[1] - 10
    # yaw + turns the face to the image's right: the nose moves right of the eyes' midpoint
    kps = render(style="instantid", yaw=30)
    nose = _color_centroid(kps, (0, 0, 255))
    eyes_mid = (_color_centroid(kps, (255, 0, 0)) + _color_centroid(kps, (0, 255, 0))) / 2
    assert nose[0] > eyes_mid[0] + 5


def test_out_of_range_pose_is_a_clear_error(mixed_view, landmark_backend):
    with pytest.raises(LandmarkError, match="yaw"):
        cb.render_preview(mixed_view.state, cb.TargetSpec(yaw=500), landmark_backend)


def test_driver_photo_sets_pose_and_expression(mixed_view, analyzer, landmark_backend, tmp_path):
    driver, message = cb.analyze_driver(str(BIDEN), analyzer)
    assert driver is not None and "biden.jpg" in message and f"{driver.pose.yaw:+.1f}" in message
    state = mixed_view.state
    with_driver = cb.render_preview(state, cb.TargetSpec(driver=driver), landmark_backend, size=(256, 256))
    # sliders are ignored while a driver is used
    moved = cb.render_preview(
        state, cb.TargetSpec(yaw=40, preset="laugh", driver=driver), landmark_backend, size=(256, 256)
    )
    assert np.array_equal(with_driver, moved)
    assert not np.array_equal(
        with_driver, cb.render_preview(state, cb.TargetSpec(), landmark_backend, size=(256, 256))
    )
    assert cb.analyze_driver(None, analyzer)[0] is None
    no_face = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (200, 200), (128, 128, 128)).save(no_face)
    none, message = cb.analyze_driver(str(no_face), analyzer)
    assert none is None and "not usable" in message and "no face" in message


def test_blendshape_sliders_map_to_mediapipe_names():
    scores = cb.blendshapes_from_sliders({"smile": 0.5, "eyes closed": 0.0, "jaw open": 1.0})
    assert scores == {"mouthSmileLeft": 0.5, "mouthSmileRight": 0.5, "jawOpen": 1.0}
    from hifi_portrait.landmarks.expression import BLENDSHAPE_NAMES

    assert {n for names in cb.BLENDSHAPE_SLIDERS.values() for n in names} <= set(BLENDSHAPE_NAMES)
    with pytest.raises(KeyError, match="unknown blendshape slider"):
        cb.blendshapes_from_sliders({"wink": 1.0})
    # the main groups (smile, jaw, eyes, brows) each have a slider, and every slider its own page element
    assert {"smile", "jaw open", "mouth frown", "eyes closed", "eyes wide", "brows up"} <= set(cb.BLENDSHAPE_SLIDERS)
    assert len({cb.slider_id(label) for label in cb.BLENDSHAPE_SLIDERS}) == len(cb.BLENDSHAPE_SLIDERS)
    assert cb.slider_id("brows down (frown)") == "bs-brows-down-frown"


def test_group_photo_uses_the_largest_face(analyzer, landmark_backend):
    view = cb.analyze_references([str(DATA / "group_t1.jpg")], analyzer, landmark_backend)
    assert [row[1] for row in view.table] == ["ok"]


def test_a_set_of_several_people_is_reported_as_mixed(analyzer, landmark_backend):
    # three photos of three people: no identity has more photos than another, so no single photo can be blamed
    photos = [OBAMAS[0], BIDEN, DATA / "astronaut.jpg"]
    view = cb.analyze_references([str(p) for p in photos], analyzer, landmark_backend)
    assert view.state.face_set.outliers == [0, 1, 2]
    assert all(row[1].startswith("mixed set") for row in view.table)
    assert "No photo agrees with the majority" in view.warnings
    assert len(view.state.kept) == 3


def test_the_largest_identity_group_wins_over_strangers(analyzer, landmark_backend):
    # two photos of one person and one each of two others: the pair is the person, the others are flagged
    photos = [OBAMAS[0], OBAMAS[1], BIDEN, DATA / "astronaut.jpg"]
    view = cb.analyze_references([str(p) for p in photos], analyzer, landmark_backend)
    assert view.state.face_set.outliers == [2, 3]
    assert [row[1].startswith("mixed set") for row in view.table] == [False] * 4
    assert len(view.state.kept) == 2
