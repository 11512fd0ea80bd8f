"""Acceptance checks of issue 8 on real photos bundled in tests/data."""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

from hifi_portrait.evaluation import cosine_similarity, pose_error, roc_auc

SAME = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"]
OTHERS = ["biden.jpg", "astronaut.jpg", "tom_hanks.png"]


def test_same_vs_different_person_roc_auc(evaluator, data_dir, record_property):
    """dlib identity vectors separate same-person from different-person pairs with ROC AUC >= 0.95."""
    people: list[tuple[str, np.ndarray]] = []
    for name in SAME:
        people.append(("obama", evaluator.analyze(data_dir / name).identity["dlib-resnet-128"]))
    for name in OTHERS:
        people.append((name, evaluator.analyze(data_dir / name).identity["dlib-resnet-128"]))
    # six more different people from the group photo
    for i, face in enumerate(evaluator.analyzer.analyze_all(data_dir / "group_t1.jpg")):
        people.append((f"group{i}", np.asarray(face.identity, dtype=np.float64)))
    assert len(people) >= 12
    scores, labels = [], []
    for (pa, va), (pb, vb) in itertools.combinations(people, 2):
        scores.append(float(cosine_similarity(va, vb)[0, 0]))
        labels.append(pa == pb)
    auc = roc_auc(np.array(scores), np.array(labels))
    record_property("roc_auc", auc)
    n_pos = sum(labels)
    print(f"\nsame-vs-different ROC AUC = {auc:.4f} over {n_pos} positive / {len(labels) - n_pos} negative pairs")
    assert sum(labels) == 6
    assert auc >= 0.95


def test_pose_error_of_photos_against_their_own_pose_and_a_10_degree_offset(evaluator, data_dir):
    for name in ["obama.jpg", "obama2.jpg", "biden.jpg", "astronaut.jpg"]:
        measured = evaluator.analyze(data_dir / name).face.pose
        own = {"yaw": measured.yaw, "pitch": measured.pitch, "roll": measured.roll}
        # re-estimation on a fresh load of the same file
        again = evaluator.analyzer.analyze(data_dir / name).pose
        again = {"yaw": again.yaw, "pitch": again.pitch, "roll": again.roll}
        assert pose_error(own, again)["mean_abs_error"] < 1e-3
        offset = pose_error({**own, "yaw": own["yaw"] + 10.0}, again)
        assert abs(offset["yaw_error"] - 10.0) <= 1.0
        assert offset["pitch_error"] < 1e-3 and offset["roll_error"] < 1e-3


def test_roll_error_on_a_photo_rotated_by_10_degrees(evaluator, data_dir):
    """A real re-estimation: rotate the photo by +10 deg (counter-clockwise), command measured roll + 10."""
    for name in ["obama.jpg", "biden.jpg"]:
        image = Image.open(data_dir / name).convert("RGB")
        base = evaluator.analyzer.analyze(np.asarray(image)).pose
        rotated = evaluator.analyzer.analyze(np.asarray(image.rotate(10, resample=Image.BICUBIC))).pose
        measured = {"yaw": rotated.yaw, "pitch": rotated.pitch, "roll": rotated.roll}
        err = pose_error({"roll": base.roll + 10.0}, measured)
        assert err["roll_error"] < 1.0, err
