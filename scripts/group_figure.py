"""docs/images/group_layouts.png: group layouts of 2, 3 and 4 people from the bundled photos (tests/data).

Rows: the automatic layout of 2, 3 and 4 people (relative sizes 1, 0.8, 0.65, 0.9; each with its own pose and
expression); columns: our 3D-aware map, InstantID's keypoint map, and each person's region (one colour each) over
the map, at latent resolution (what the ID attention reads, 1/8 of the image).

    python scripts/group_figure.py [--out docs/images/group_layouts.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hifi_portrait.cli.group import REGION_COLORS
from hifi_portrait.cli.landmarks import labelled_grid
from hifi_portrait.face import FaceAnalyzer
from hifi_portrait.landmarks import fit_identity_shape, make_target
from hifi_portrait.landmarks.group import layout_group

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
TARGETS = [
    make_target(yaw=20, pitch=-5),
    make_target(yaw=-30, pitch=10, roll=5, expression="smile:0.7"),
    make_target(roll=-10, expression="laugh:0.8"),
    make_target(yaw=45, pitch=-10, roll=10),
]
RELATIVE = [1.0, 0.8, 0.65, 0.9]


def regions_view(regions: np.ndarray, cond: np.ndarray) -> np.ndarray:
    """Regions pooled to latent resolution (8x8 blocks, the fraction of each block a person owns), coloured,
    upsampled back with nearest neighbours, the map drawn over them."""
    h, w = regions.shape[1:]
    latent = regions.reshape(len(regions), h // 8, 8, w // 8, 8).mean((2, 4))
    view = np.zeros((h // 8, w // 8, 3), np.float32)
    for i, r in enumerate(latent):
        view += r[..., None] * np.asarray(REGION_COLORS[i], np.float32)
    view = cv2.resize(view.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    drawn = cond.max(2) > 0
    view[drawn] = cond[drawn]
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/images/group_layouts.png"))
    args = parser.parse_args()
    analyzer = FaceAnalyzer()
    obama = fit_identity_shape([analyzer.analyze(DATA / n) for n in ("obama.jpg", "obama2.jpg")])
    biden = fit_identity_shape([analyzer.analyze(DATA / "biden.jpg")])
    astronaut = fit_identity_shape([analyzer.analyze(DATA / "astronaut.jpg")])
    shapes = [obama, biden, astronaut, obama]
    tiles, labels = [], []
    for n in (2, 3, 4):
        group = layout_group(shapes[:n], TARGETS[:n], size=(768, 512), relative_sizes=RELATIVE[:n])
        hifi = group.render("hifi")
        tiles += [hifi, group.render("instantid"), regions_view(group.regions, hifi)]
        labels += [f"{n} people: hifi map", f"{n} people: instantid map", f"{n} people: regions (latent)"]
    Image.fromarray(labelled_grid(tiles, labels, max_tile=384, cols=3)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
