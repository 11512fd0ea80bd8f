"""Group layouts on real face shapes: disjoint regions of the requested relative sizes, every face with its commanded
pose (PnP within 1 degree), occlusion by depth in the map."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.generate import Placement, make_target
from hifi_portrait.landmarks.geometry import FLIP_YZ, pose_from_rotation
from hifi_portrait.landmarks.group import auto_layout, depth, layout_group, render_group
from hifi_portrait.landmarks.shape import fit_identity_shape


def pnp_pose(points2d: np.ndarray, camera_matrix: np.ndarray) -> tuple[float, float, float]:
    """Head pose read back from 2D landmarks by PnP against the canonical mesh's skull-fixed points (global SQPnP,
    no initial guess), as tests/landmarks/test_landmarks_acceptance.py does."""
    idx = np.flatnonzero(M.stable_weights() > 0)
    model = np.ascontiguousarray(M.canonical_mesh().vertices[idx] @ FLIP_YZ)
    image = np.ascontiguousarray(points2d[idx], dtype=np.float64)
    ok, rvec, _ = cv2.solvePnP(model, image, camera_matrix, None, flags=cv2.SOLVEPNP_SQPNP)
    assert ok
    return pose_from_rotation(FLIP_YZ @ cv2.Rodrigues(rvec)[0] @ FLIP_YZ)


SIZE = (1216, 832)
TARGETS = [
    make_target(yaw=20, pitch=-5, roll=0),
    make_target(yaw=-30, pitch=10, roll=5, expression="smile:0.7"),
    make_target(yaw=0, pitch=0, roll=-10, expression="laugh:0.8"),
    make_target(yaw=45, pitch=-10, roll=10),
]
RELATIVE = [1.0, 0.8, 0.65, 0.9]


@pytest.fixture(scope="module")
def shapes(mp_faces):
    """Three real people (fitted on the bundled photos), the fourth = the first again."""
    obama = fit_identity_shape([mp_faces["obama.jpg"], mp_faces["obama2.jpg"]])
    biden = fit_identity_shape([mp_faces["biden.jpg"]])
    astronaut = fit_identity_shape([mp_faces["astronaut.jpg"]])
    return [obama, biden, astronaut, obama]


def _face_height(gen) -> float:
    uv = gen.points2d[: M.NUM_MESH]
    return float(np.ptp(uv[:, 1]))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_auto_layout_gives_disjoint_regions_of_requested_sizes_and_commanded_poses(shapes, n):
    rel = RELATIVE[:n]
    layout = layout_group(shapes[:n], TARGETS[:n], size=SIZE, relative_sizes=rel)
    regions = layout.regions
    assert regions.shape == (n, SIZE[1], SIZE[0])
    assert regions.sum(0).max() == 1.0  # disjoint
    areas = regions.reshape(n, -1).sum(1)
    assert (areas > 0).all()
    # regions are scaled copies (in face heights): areas in the ratio of the squared requested sizes
    area_ratio = areas / areas[0]
    want = (np.asarray(rel) / rel[0]) ** 2
    assert np.abs(area_ratio / want - 1).max() < 0.01, (area_ratio, want)  # measured <= 0.0012 (rasterisation)
    # requested relative sizes of the faces themselves (projected forehead-to-chin height): the box fit makes the
    # face fill its box's height for these poses (measured error < 1e-4)
    heights = np.array([_face_height(g) for g in layout.people])
    assert np.abs((heights / heights[0]) / (np.asarray(rel) / rel[0]) - 1).max() < 0.01, heights
    # each face inside its own region, at its commanded pose read back by PnP (global, no initial guess)
    for i, (gen, target) in enumerate(zip(layout.people, TARGETS[:n], strict=True)):
        pts = np.round(gen.points2d[: M.NUM_MESH]).astype(int)
        inside = regions[i][pts[:, 1].clip(0, SIZE[1] - 1), pts[:, 0].clip(0, SIZE[0] - 1)]
        assert inside.mean() > 0.97
        measured = pnp_pose(gen.points2d, gen.camera.matrix)
        err = np.abs(np.array(measured) - (target.yaw, target.pitch, target.roll)).max()
        assert err < 1.0, (i, measured, target)
    # the map has every face: each region holds drawn pixels
    cond = layout.render("hifi")
    assert cond.shape == (SIZE[1], SIZE[0], 3)
    for i in range(n):
        assert (cond.max(2)[regions[i] > 0] > 0).sum() > 0.05 * regions[i].sum()


def test_explicit_boxes_overlap_resolved_by_depth(shapes):
    """Two overlapping boxes: the nearer (larger) face is drawn over the farther one and owns the overlap."""
    near = Placement(box=(300, 200, 700, 600))
    far = Placement(box=(600, 250, 800, 450))
    layout = layout_group(shapes[:2], [None, make_target(yaw=-20)], size=SIZE, placements=[far, near])
    assert depth(layout.people[1]) < depth(layout.people[0]) and layout.order == [0, 1]
    assert layout.regions.sum(0).max() == 1.0
    only_far = render_group([layout.people[0]])
    both = layout.render()
    only_near = render_group([layout.people[1]])
    drawn_near = only_near.max(2) > 0
    overlap = drawn_near & (only_far.max(2) > 0)
    assert overlap.sum() > 100  # the faces do overlap in the map
    assert np.array_equal(both[drawn_near], only_near[drawn_near])  # near face on top
    # the far face's pixels outside the near face are kept
    far_only = (only_far.max(2) > 0) & ~drawn_near
    assert np.array_equal(both[far_only], only_far[far_only])
    # the pose of each is kept
    assert abs(pnp_pose(layout.people[1].points2d, layout.people[1].camera.matrix)[0] - (-20)) < 1.0


def test_layout_errors_are_typed(shapes):
    with pytest.raises(LandmarkError, match="1 to 4 people"):
        auto_layout(5, SIZE)
    with pytest.raises(LandmarkError, match="positive"):
        auto_layout(2, SIZE, [1.0, -1.0])
    with pytest.raises(LandmarkError, match="targets"):
        layout_group(shapes[:2], [None], size=SIZE)
    with pytest.raises(LandmarkError, match="explicit boxes"):
        layout_group(shapes[:2], [None, None], size=SIZE, placements=[Placement(), Placement()], relative_sizes=[1, 1])
    hidden = [Placement(box=(300, 200, 700, 600)), Placement(box=(450, 350, 470, 370))]
    # a tiny face far behind a big one, its whole region inside the big one's: hidden
    with pytest.raises(LandmarkError, match="hidden"):
        layout_group(shapes[:2], [None, None], size=SIZE, placements=hidden)
