"""The 478 -> 68 correspondence of the OpenPose styles: against dlib's 68-point predictor on real photos (every
report face, the group photo's included), the pose-aware jaw line on generated targets, and the 68 points re-read
from rendered maps move as the commanded pose and expression ask.

dlib is called directly (its HOG detector and ``shape_predictor_68_face_landmarks.dat`` from face_recognition_models);
a shared dlib 68-point wrapper is being written in another branch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import fit_identity_shape, generate_landmarks, make_target, render_map
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.openpose import (
    IBUG68_FROM_MESH,
    L_EAR,
    R_EAR,
    face68,
    face70,
    jaw_contour,
    openpose_keypoints,
)

DATA = Path(__file__).resolve().parents[1] / "data"
# photos never used to choose IBUG68_FROM_MESH or the jaw contour's parameters (chosen on tests/data/ids/;
# benchmarks/openpose_face68.py)
HELD_OUT = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.jpg")
# report faces above NME 0.05, with the bound they stay under (benchmarks/results/openpose_face68.md) and why:
KNOWN_ABOVE = {
    # yaw -46: the points other than the jaw alone add 0.058 (dlib and the mesh disagree on the lips and nose of a
    # face this turned); no jaw line can bring it under 0.05
    "group_t1.jpg": 0.095,
    # yaw -29 with roll 29 and yaw -21, 30 and 33 px between the outer eye corners: jaw 0.086 and 0.073 after the
    # contour step (0.118 and 0.101 on fixed vertices), mostly along the outline
    "group_t1.jpg #3": 0.058,
    "group_t1.jpg #4": 0.053,
    # cut by the frame: dlib guesses the jaw points outside the image
    "obama_partial_face.jpg": 0.058,
}
EAR_COLORS = {R_EAR: (255, 0, 170), L_EAR: (255, 0, 85)}  # controlnet_aux's disc colours of keypoints 16 and 17


@pytest.fixture(scope="module")
def dlib_points(mp_faces) -> dict[str, np.ndarray]:
    import dlib

    from hifi_portrait.face.model_files import dlib_model

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model("shape_predictor_68_face_landmarks.dat")))
    out = {}
    for name in HELD_OUT:
        image = mp_faces[name].image
        rects = sorted(detector(image, 1), key=lambda r: -r.area())
        assert rects, f"dlib found no face in {name}"
        shape = predictor(image, rects[0])
        out[name] = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
    return out


def nme(points: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45]))


def test_mapping_matches_dlib_on_held_out_photos(mp_faces, dlib_points):
    errors = {name: nme(face68(mp_faces[name].landmarks)[:, :2], dlib_points[name]) for name in HELD_OUT}
    assert all(e <= 0.05 for e in errors.values()), errors
    # the same comparison with the points of one photo against another photo's dlib points is far off: the
    # threshold is not met by any face-shaped set of points
    assert nme(face68(mp_faces["obama2.jpg"].landmarks)[:, :2], dlib_points["astronaut.jpg"]) > 0.5


@pytest.fixture(scope="module")
def report_faces() -> list[dict]:
    """Every face of the report photos (``tests/data/*``) that dlib's HOG detector also finds: our landmarks
    (:class:`~hifi_portrait.face.FaceAnalyzer`, as the benchmark) and dlib's 68 points on dlib's own box."""
    import dlib
    from PIL import Image

    from hifi_portrait.face import FaceAnalyzer
    from hifi_portrait.face.model_files import dlib_model

    analyzer = FaceAnalyzer()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model("shape_predictor_68_face_landmarks.dat")))
    out = []
    for path in sorted(p for p in DATA.glob("*") if p.suffix in (".jpg", ".png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        rects = detector(image, 1)
        for face in analyzer.analyze_all(path):
            x1, y1, x2, y2 = face.bbox
            centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
            for rect in rects:
                c = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
                if np.linalg.norm(c - centre) < 0.3 * (x2 - x1):
                    shape = predictor(image, rect)
                    truth = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
                    name = path.name + (f" #{face.face_index}" if face.face_index else "")
                    out.append({"name": name, "yaw": face.pose.yaw, "mesh": face.landmarks[:, :2], "dlib": truth})
                    break
    return out


def test_mapping_matches_dlib_on_every_report_face(report_faces):
    assert len(report_faces) == 13  # 8 photos; 6 faces of the group photo
    errors = {f["name"]: nme(face68(f["mesh"]), f["dlib"]) for f in report_faces}
    fixed = {f["name"]: nme(face68(f["mesh"], contour=False), f["dlib"]) for f in report_faces}
    above = {name: e for name, e in errors.items() if e > 0.05}
    assert set(above) <= set(KNOWN_ABOVE), above
    assert all(errors[name] <= bound for name, bound in KNOWN_ABOVE.items()), errors
    for f in report_faces:
        if abs(f["yaw"]) < 10:  # frontal faces: the contour step keeps the table's points (within noise)
            assert errors[f["name"]] <= fixed[f["name"]] + 0.001, (f["name"], errors[f["name"]], fixed[f["name"]])
        if abs(f["yaw"]) >= 20:  # turned faces: the jaw line follows the outline, as dlib's does
            jaw = np.linalg.norm(face68(f["mesh"])[:17] - f["dlib"][:17], axis=1).mean()
            jaw_fixed = np.linalg.norm(face68(f["mesh"], contour=False)[:17] - f["dlib"][:17], axis=1).mean()
            assert jaw < 0.8 * jaw_fixed, (f["name"], jaw, jaw_fixed)


def test_jaw_contour_follows_the_silhouette_of_generated_targets(mp_faces):
    shape = fit_identity_shape([mp_faces[n] for n in ("obama.jpg", "obama2.jpg", "obama3.jpg")])
    previous = None
    for yaw in range(-60, 61, 3):
        gen = generate_landmarks(shape, make_target(yaw=yaw), size=(768, 768))
        points, fixed = face68(gen.points2d), face68(gen.points2d, contour=False)
        iod = np.linalg.norm(points[36] - points[45])
        np.testing.assert_array_equal(points[17:], fixed[17:])  # only the jaw line moves
        np.testing.assert_array_equal(points[:17], jaw_contour(gen.points2d))
        if yaw == 0:  # frontal: the table's points
            assert np.linalg.norm(points[:17] - fixed[:17], axis=1).max() < 0.025 * iod
        if previous is not None:  # continuous over a yaw sweep (3-degree steps)
            assert np.linalg.norm(points[:17] - previous, axis=1).max() < 0.06 * iod
        previous = points[:17]
        if abs(yaw) == 45:
            # the upper jaw points of the side turned away lie on the mesh's outline at their height; the fixed
            # vertices lie inside it
            mesh = gen.points2d[: M.NUM_MESH]
            extreme = np.min if yaw < 0 else np.max

            def gap(p: np.ndarray, mesh=mesh, extreme=extreme, iod=iod) -> float:
                row = mesh[np.abs(mesh[:, 1] - p[1]) < 0.05 * iod, 0]
                return abs(p[0] - extreme(row)) / iod

            far = range(5) if yaw < 0 else range(12, 17)
            contour_gap, fixed_gap = (np.mean([gap(p[k]) for k in far]) for p in (points, fixed))
            assert contour_gap < 0.05 and fixed_gap > 0.15, (yaw, contour_gap, fixed_gap)


def test_layout_semantics_and_shapes(mp_faces):
    assert len(IBUG68_FROM_MESH) == 68 and all(
        0 <= a < M.NUM_MESH and 0 <= b < M.NUM_MESH for a, b, _ in IBUG68_FROM_MESH
    )
    pts = face68(mp_faces["obama.jpg"].landmarks)
    assert pts.shape == (68, 3)
    x = pts[:, 0]
    # image-left to image-right orderings of a frontal face, as in the 300-W layout
    assert x[0] < x[8] < x[16] and x[36] < x[39] < x[42] < x[45] and x[48] < x[51] < x[54] and x[31] < x[33] < x[35]
    assert pts[27, 1] < pts[30, 1] < pts[33, 1] < pts[51, 1] < pts[57, 1] < pts[8, 1]  # top to bottom on the midline
    seventy = face70(mp_faces["obama.jpg"].landmarks)
    np.testing.assert_array_equal(seventy[68:], mp_faces["obama.jpg"].landmarks[[468, 473]])
    with pytest.raises(LandmarkError, match="478"):
        face68(np.zeros((68, 2)))
    # depth (a third coordinate) of the jaw points stays the table's; image coordinates follow the contour
    lm = mp_faces["obama2.jpg"].landmarks
    np.testing.assert_array_equal(face68(lm)[:, 2], face68(lm, contour=False)[:, 2])
    np.testing.assert_array_equal(face68(lm)[:, :2], face68(lm[:, :2]))


def reread(face_map: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The 68 points read back from a map: the centroid of the white disc (connected component) under each
    expected point (points whose discs merged read the same centroid)."""
    white = np.all(face_map == 255, axis=2).astype(np.uint8)
    _, labels, _, centroids = cv2.connectedComponentsWithStats(white, connectivity=8)
    ids = labels[expected[:, 1].astype(int), expected[:, 0].astype(int)]
    assert (ids > 0).all(), "every face point is drawn as a white disc"
    return centroids[ids]


def openings(points: np.ndarray) -> tuple[float, float]:
    """Mouth opening (inner lips 62-66) and eye opening (eye aspect ratio, both eyes), over the eye-corner width."""
    iod = np.linalg.norm(points[36] - points[45])
    mouth = np.linalg.norm(points[62] - points[66]) / iod
    ear = [
        (np.linalg.norm(points[a + 1] - points[a + 5]) + np.linalg.norm(points[a + 2] - points[a + 4]))
        / (2 * np.linalg.norm(points[a] - points[a + 3]))
        for a in (36, 42)
    ]
    return float(mouth), float(np.mean(ear))


@pytest.mark.parametrize("yaw", [-45, 0, 45])
def test_pose_and_expression_move_the_reread_points(mp_faces, yaw):
    shape = fit_identity_shape([mp_faces[n] for n in ("obama.jpg", "obama2.jpg", "obama3.jpg")])
    read = {}
    for preset in ("neutral", "mouth_open", "eyes_closed"):
        gen = generate_landmarks(shape, make_target(yaw=yaw, expression=preset), size=(768, 768))
        face_map = render_map(gen, "openpose")
        read[preset] = reread(face_map, openpose_keypoints(gen).face[:68])
        if preset == "neutral":
            neutral_map, body = face_map, openpose_keypoints(gen).body
    mouth0, eye0 = openings(read["neutral"])
    mouth1, _ = openings(read["mouth_open"])
    _, eye2 = openings(read["eyes_closed"])
    assert mouth1 > mouth0 + 0.15, (mouth0, mouth1)  # the jaw drops: the inner lips part
    assert eye2 < 0.35 * eye0, (eye0, eye2)  # the lids meet
    # yaw: the nose tip (30) moves towards the side the face turns to, relative to the eye corners
    p = read["neutral"]
    offset = (p[30, 0] - (p[36, 0] + p[45, 0]) / 2) / np.linalg.norm(p[36] - p[45])
    assert offset > 0.2 if yaw > 0 else offset < -0.2 if yaw < 0 else abs(offset) < 0.05
    # the ear turned away from the camera is left out of the skeleton, the other one drawn (colour on the map)
    drawn = {part: bool(np.all(neutral_map == color, axis=2).any()) for part, color in EAR_COLORS.items()}
    assert drawn == {R_EAR: yaw >= 0, L_EAR: yaw <= 0}
    assert np.isnan(body[R_EAR, 0]) == (yaw < 0) and np.isnan(body[L_EAR, 0]) == (yaw > 0)
