"""Pose convention, similarity alignment, canonical mesh and camera placement."""

from __future__ import annotations

import numpy as np
import pytest

from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.generate import Placement, TargetAttributes, generate_landmarks
from hifi_portrait.landmarks.geometry import PinholeCamera, pose_from_rotation, rotation_from_pose, umeyama
from hifi_portrait.landmarks.shape import IdentityShape


def test_rotation_and_pose_are_inverse_and_match_face_analysis_convention():
    from hifi_portrait.face.mesh import pose_from_matrix

    rng = np.random.default_rng(0)
    for angles in rng.uniform([-80, -55, -85], [80, 55, 85], size=(300, 3)):
        rot = rotation_from_pose(*angles)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) > 0
        np.testing.assert_allclose(pose_from_rotation(rot), angles, atol=1e-9)
        measured = pose_from_matrix(np.block([[rot * 1.7, np.ones((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]))
        np.testing.assert_allclose([measured.yaw, measured.pitch, measured.roll], angles, atol=1e-9)


def test_pose_signs_follow_the_project_convention_on_generated_faces():
    shape = IdentityShape.canonical()
    front = generate_landmarks(shape, TargetAttributes())
    right = generate_landmarks(shape, TargetAttributes(yaw=30))
    up = generate_landmarks(shape, TargetAttributes(pitch=20))
    ccw = generate_landmarks(shape, TargetAttributes(roll=20))

    def nose_offset(g):  # nose tip relative to the mid-point of the face's widest points
        return g.points2d[M.NOSE_TIP] - 0.5 * (g.points2d[234] + g.points2d[454])

    assert nose_offset(right)[0] > nose_offset(front)[0] + 20  # yaw > 0: nose towards the image's right
    assert nose_offset(up)[1] < nose_offset(front)[1] - 10  # pitch > 0: nose up (smaller y)
    eyes = ccw.points2d[M.EYE_L_OUTER] - ccw.points2d[M.EYE_R_OUTER]
    assert np.degrees(np.arctan2(-eyes[1], eyes[0])) == pytest.approx(20, abs=1.0)  # counter-clockwise as displayed


def test_pose_of_real_photos_matches_nose_position(mp_faces):
    for name in ("obama2.jpg", "obama3.jpg"):
        face = mp_faces[name]
        yaw = pose_from_rotation(face.transform[:3, :3])[0]
        lm = face.landmarks
        offset = (lm[M.NOSE_TIP, 0] - 0.5 * (lm[234, 0] + lm[454, 0])) / (lm[454, 0] - lm[234, 0])
        assert abs(yaw) > 5 and np.sign(yaw) == np.sign(offset), (name, yaw, offset)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    rot = rotation_from_pose(20, -10, 35)
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 3.0])
    s, r, t = umeyama(src, dst)
    assert s == pytest.approx(2.5)
    np.testing.assert_allclose(r, rot, atol=1e-10)
    np.testing.assert_allclose(t, [1.0, -2.0, 3.0], atol=1e-10)


def test_canonical_mesh_from_task_bundle():
    mesh = M.canonical_mesh()
    assert mesh.vertices.shape == (468, 3) and mesh.triangles.shape == (898, 3)
    assert np.count_nonzero(mesh.procrustes_weights) == 33
    assert (mesh.procrustes_weights >= 0).all() and mesh.procrustes_weights.sum() == pytest.approx(1.0, abs=0.1)
    v = mesh.vertices
    assert v[:, 2].argmax() in (1, 4)  # the nose tip is closest to the camera (+z)
    assert v[M.EYE_L_OUTER, 0] > 0 > v[M.EYE_R_OUTER, 0]  # subject's left on +x
    assert v[M.FOREHEAD_TOP, 1] > v[M.CHIN, 1]  # y up
    lm = M.canonical_landmarks()
    assert lm.shape == (478, 3)
    assert lm[M.LEFT_IRIS_CENTER, 0] > 0 > lm[M.RIGHT_IRIS_CENTER, 0]


@pytest.mark.parametrize("size", [(1024, 1024), (832, 1216), (1216, 832)])
def test_placement_centre_scale_and_box(size):
    shape = IdentityShape.canonical()
    w, h = size
    placement = Placement(center=(0.3, 0.6), face_height=0.4)
    gen = generate_landmarks(shape, TargetAttributes(), size=size, placement=placement)
    pts = gen.points2d[:468]
    assert pts.mean(0) == pytest.approx((0.3 * w, 0.6 * h), abs=0.02 * h)
    face_h = np.linalg.norm(gen.points2d[M.FOREHEAD_TOP] - gen.points2d[M.CHIN])
    assert face_h == pytest.approx(0.4 * h, rel=0.03)

    box = (0.2 * w, 0.1 * h, 0.6 * w, 0.5 * h)
    for yaw in (0, 45):
        gen = generate_landmarks(shape, TargetAttributes(yaw=yaw), size=size, placement=Placement(box=box))
        lo, hi = gen.points2d[:468].min(0), gen.points2d[:468].max(0)
        assert lo[0] >= box[0] - 1 and lo[1] >= box[1] - 1 and hi[0] <= box[2] + 1 and hi[1] <= box[3] + 1
        fill = max((hi[0] - lo[0]) / (box[2] - box[0]), (hi[1] - lo[1]) / (box[3] - box[1]))
        assert fill == pytest.approx(1, abs=0.01)
        assert (lo + hi) / 2 == pytest.approx(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), abs=1.0)


def test_camera_focal_from_vertical_fov():
    cam = PinholeCamera(800, 600, fov_deg=60)
    assert cam.focal == pytest.approx(300 / np.tan(np.radians(30)))
    np.testing.assert_allclose(cam.project(np.array([[0.0, 0.0, 5.0]])), [[400, 300]])


def test_generated_landmarks_follow_detected_conventions():
    gen = generate_landmarks(IdentityShape.canonical(), TargetAttributes(), size=(512, 512))
    lm = gen.landmarks
    assert lm.shape == (478, 3)
    assert lm[:468, 2].argmin() in (1, 4)  # smaller z = closer: the nose tip
    assert lm[M.RIGHT_IRIS_CENTER, 0] < lm[M.LEFT_IRIS_CENTER, 0]  # subject's right eye on the image's left
    kps = gen.keypoints
    assert kps[0, 0] < kps[1, 0] and kps[3, 0] < kps[4, 0] and kps[0, 1] < kps[2, 1] < kps[3, 1]
    assert gen.normals_cam[M.NOSE_TIP, 2] < -0.8  # the nose faces the camera
