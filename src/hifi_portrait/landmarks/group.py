"""Group portraits: several people's 3D-aware faces on one canvas, and each person's region.

Each person gets a :class:`~hifi_portrait.landmarks.generate.Placement` (an explicit box, or :func:`auto_layout`
for 2-4 people side by side, with relative sizes) and its own target pose and expression. All faces are generated
with the same pinhole camera (one canvas), so their depths are comparable: :func:`render_group` draws them far to
near (a nearer face hides a farther one), and :func:`region_masks` gives each person its region (the face, a
head margin for hair, the neck and shoulders below), nearer people owning the pixels where regions would overlap,
so regions never overlap. The regions route each person's identity in the generator
(:class:`hifi_portrait.models.RegionalIDTokens`).

Region shape, in units of the face height ``h`` (forehead top to chin, measured on the projected face) around the
face centre ``(cx, cy)``: a head ellipse of half-axes ``0.75 h x 0.9 h`` centred ``0.1 h`` above the face centre,
a neck ``0.6 h`` wide, and shoulders ``2 h`` wide from ``0.25 h`` to ``1.3 h`` below the chin. It depends only on
the face's size and position, so regions of faces of relative sizes ``s_i`` have areas in the ratio ``s_i^2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from hifi_portrait.errors import LandmarkError
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.generate import GeneratedLandmarks, Placement, TargetAttributes, generate_landmarks
from hifi_portrait.landmarks.render import render_map
from hifi_portrait.landmarks.shape import IdentityShape

__all__ = ["GroupLayout", "auto_layout", "layout_group", "region_masks", "render_group"]

#: Region geometry (fractions of the face height), see the module docstring.
HEAD_HALF_WIDTH, HEAD_HALF_HEIGHT, HEAD_RAISE = 0.75, 0.9, 0.1
NECK_HALF_WIDTH = 0.3
SHOULDER_HALF_WIDTH, SHOULDER_TOP, SHOULDER_BOTTOM = 1.0, 0.25, 1.3
#: Extent of a region around the face centre, in face heights: width, above, below (chin at +0.5).
REGION_WIDTH = 2 * max(HEAD_HALF_WIDTH, SHOULDER_HALF_WIDTH)
REGION_ABOVE = HEAD_RAISE + HEAD_HALF_HEIGHT
REGION_BELOW = 0.5 + SHOULDER_BOTTOM
MAX_AUTO_PEOPLE = 4


@dataclass
class GroupLayout:
    """Every person's generated landmarks on one canvas and their regions.

    Attributes:
        people: per person (input order), its :class:`GeneratedLandmarks`.
        regions: ``(P, H, W)`` float32 masks in {0, 1}, disjoint.
        order: person indices from the farthest to the nearest (drawing order).
    """

    people: list[GeneratedLandmarks]
    regions: np.ndarray
    order: list[int]

    @property
    def size(self) -> tuple[int, int]:
        return self.people[0].size

    def render(self, style: str = "hifi", **options: bool) -> np.ndarray:
        return render_group(self.people, style, **options)


def _face_box(gen: GeneratedLandmarks) -> tuple[float, float, float]:
    """``(cx, cy, h)`` of the projected face mesh: centre of its bounding box and forehead-to-chin height."""
    uv = gen.points2d[: M.NUM_MESH]
    lo, hi = uv.min(0), uv.max(0)
    return float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2), float(hi[1] - lo[1])


def depth(gen: GeneratedLandmarks) -> float:
    """Mean camera distance of the face mesh (larger = farther)."""
    return float(gen.points_cam[: M.NUM_MESH, 2].mean())


def _region(gen: GeneratedLandmarks) -> np.ndarray:
    w, h_img = gen.size
    cx, cy, h = _face_box(gen)
    mask = np.zeros((h_img, w), dtype=np.uint8)
    s = 16  # 4 bits of sub-pixel precision
    centre = (int(round(cx * s)), int(round((cy - HEAD_RAISE * h) * s)))
    axes = (int(round(HEAD_HALF_WIDTH * h * s)), int(round(HEAD_HALF_HEIGHT * h * s)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1, cv2.LINE_8, 4)
    chin = cy + 0.5 * h

    def rect(half: float, top: float, bottom: float) -> None:
        x1, x2 = int(round(cx - half * h)), int(round(cx + half * h))
        y1, y2 = int(round(top)), int(round(bottom))
        mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 1

    rect(NECK_HALF_WIDTH, cy, chin + SHOULDER_TOP * h)
    rect(SHOULDER_HALF_WIDTH, chin + SHOULDER_TOP * h, chin + SHOULDER_BOTTOM * h)
    return mask


def region_masks(people: Sequence[GeneratedLandmarks]) -> tuple[np.ndarray, list[int]]:
    """``((P, H, W) float32 disjoint masks, far-to-near order)``: each face's region (module docstring); where
    regions overlap, the nearer person's wins (what occlusion shows)."""
    order = sorted(range(len(people)), key=lambda i: -depth(people[i]))
    w, h = people[0].size
    owner = np.full((h, w), -1, dtype=np.int64)
    for i in order:  # far to near: nearer regions overwrite
        owner[_region(people[i]) > 0] = i
    masks = np.stack([(owner == i).astype(np.float32) for i in range(len(people))])
    return masks, order


def render_group(people: Sequence[GeneratedLandmarks], style: str = "hifi", **options: bool) -> np.ndarray:
    """One map with every face (``render_map`` of each, drawn far to near: a nearer face hides a farther one)."""
    sizes = {p.size for p in people}
    if len(sizes) != 1:
        raise LandmarkError(f"the faces of a group map must share one canvas, got sizes {sorted(sizes)}")
    canvas = None
    for i in sorted(range(len(people)), key=lambda i: -depth(people[i])):
        layer = render_map(people[i], style, **options)
        if canvas is None:
            canvas = layer
            continue
        drawn = layer.max(axis=2) > 0
        canvas[drawn] = layer[drawn]
    return canvas


def auto_layout(
    n: int, size: tuple[int, int], relative_sizes: Sequence[float] | None = None, pad: float = 0.03
) -> list[Placement]:
    """Boxes for ``n`` (2-4) people side by side, left to right, face heights in the ratio ``relative_sizes``.

    Each person's region (module docstring) gets a slot ``REGION_WIDTH`` face heights wide; the face size is the
    largest for which every slot fits the canvas width (with gaps) and every region its height; all faces are centred
    on one line, the region of the largest centred vertically (at least ``pad`` from the top). Face boxes are as
    wide as high (the projected face is fitted inside: its height fills the box for poses within about +-60 degrees
    of yaw).
    """
    if not 1 <= n <= MAX_AUTO_PEOPLE:
        raise LandmarkError(
            f"automatic layout places 1 to {MAX_AUTO_PEOPLE} people, not {n}: give an explicit box per person"
        )
    rel = np.ones(n) if relative_sizes is None else np.asarray(relative_sizes, dtype=np.float64)
    if rel.shape != (n,) or not np.all(np.isfinite(rel)) or (rel <= 0).any():
        raise LandmarkError(f"relative sizes {relative_sizes} must be {n} positive numbers, one per person")
    rel = rel / rel.max()
    w, h = (float(v) for v in size)
    gap = 0.02 * w
    unit_w = (w * (1 - 2 * pad) - gap * (n - 1)) / (REGION_WIDTH * rel.sum())
    unit_h = h * (1 - 2 * pad) / (REGION_ABOVE + REGION_BELOW)
    unit = min(unit_w, unit_h)  # face height of the largest person, in pixels
    heights = rel * unit
    used = REGION_WIDTH * heights.sum() + gap * (n - 1)
    x = (w - used) / 2
    cy = max(pad * h, (h - (REGION_ABOVE + REGION_BELOW) * unit) / 2) + REGION_ABOVE * unit  # centred vertically
    placements = []
    for fh in heights:
        cx = x + REGION_WIDTH * fh / 2
        placements.append(Placement(box=(cx - fh / 2, cy - fh / 2, cx + fh / 2, cy + fh / 2)))
        x += REGION_WIDTH * fh + gap
    return placements


def layout_group(
    shapes: Sequence[IdentityShape],
    targets: Sequence[TargetAttributes | None],
    size: tuple[int, int] = (1024, 1024),
    placements: Sequence[Placement] | str = "auto",
    relative_sizes: Sequence[float] | None = None,
    fov_deg: float = 30.0,
) -> GroupLayout:
    """Generate every person's face at its place (``placements``: one :class:`Placement` per person, or ``"auto"``
    for :func:`auto_layout`) with its target, on one ``size = (W, H)`` canvas; returns the faces and their regions.
    """
    n = len(shapes)
    if n == 0:
        raise LandmarkError("a group needs at least one person")
    if len(targets) != n:
        raise LandmarkError(f"{n} people but {len(targets)} targets: give one target (or None) per person")
    if isinstance(placements, str):
        if placements != "auto":
            raise LandmarkError(f"placements must be 'auto' or one Placement per person, not {placements!r}")
        placements = auto_layout(n, size, relative_sizes)
    elif relative_sizes is not None:
        raise LandmarkError("relative_sizes is for the automatic layout; explicit boxes already set each size")
    if len(placements) != n:
        raise LandmarkError(f"{n} people but {len(placements)} placements: give one per person")
    people = [
        generate_landmarks(shape, target, size=size, placement=placement, fov_deg=fov_deg)
        for shape, target, placement in zip(shapes, targets, placements, strict=True)
    ]
    regions, order = region_masks(people)
    for i, m in enumerate(regions):
        if not m.any():
            raise LandmarkError(
                f"person {i + 1}'s region is entirely hidden by nearer people or off the canvas: move its box"
            )
    return GroupLayout(people=people, regions=regions, order=order)
