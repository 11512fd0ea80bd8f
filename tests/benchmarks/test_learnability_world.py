"""The learnability benchmark's synthetic identity world: deterministic, readable as a dataset, identities differ."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.learnability import world as W  # noqa: E402


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "train"
    return W.write_world(out, seed=3, identities=range(6), images_per_identity=4, targets_per_identity=1)


def test_same_seed_same_bytes_other_seed_other_bytes(small_world, tmp_path):
    again = W.write_world(
        tmp_path / "again", seed=3, identities=range(6), images_per_identity=4, targets_per_identity=1
    )
    assert W.folder_digest(again) == W.folder_digest(small_world)
    other = W.write_world(
        tmp_path / "other", seed=4, identities=range(6), images_per_identity=4, targets_per_identity=1
    )
    assert W.folder_digest(other) != W.folder_digest(small_world)


def test_portrait_dataset_reads_the_world(small_world):
    from hifi_portrait.data import PortraitDataset

    ds = PortraitDataset(small_world, resolution=64, max_refs=3, min_refs=3)
    assert len(ds) == 6  # one target per identity
    item = ds[0]
    assert item["refs"].shape == (3, 3, 64, 64)
    assert item["target"].shape == (3, 64, 64) and -1 <= item["target"].min() < item["target"].max() <= 1
    assert item["ref_identity"].shape == (3, W.ID_DIM)
    lmap = item["landmark_map"]
    assert lmap.shape == (3, 64, 64) and (lmap.amax(0) > 0).float().mean() > 0.05  # the face is drawn
    assert item["face_mask"].mean() > 0.1
    assert item["identity"] == "id00000"


def _image_features(ident, n, seed=3):
    # mean colour of the face pixels and a coarse 8x8 thumbnail of the face mask x colour (pose varies per image)
    feats = []
    for j in range(n):
        img, _, mask = W.render_identity(ident, W.make_view(seed, ident.index, j))
        sel = mask > 200
        feats.append(img[sel].mean(0))
    return np.array(feats)


def test_identities_differ_measurably():
    # identity vectors: same person close, different people far (the simulated recognizer)
    ids = [W.make_identity(3, i) for i in range(8)]
    vecs = np.array([[W.identity_vector(3, ident, j, 0.9) for j in range(3)] for ident in ids])  # (8, 3, D)
    same = np.mean([vecs[i, 0] @ vecs[i, 1] for i in range(8)])
    diff = np.mean([vecs[i, 0] @ vecs[k, 0] for i in range(8) for k in range(8) if i != k])
    assert same > 0.8 and abs(diff) < 0.3, (same, diff)
    # rendered appearance: the mean face colour varies less within an identity (pose, light) than between them
    feats = np.array([_image_features(ident, 3) for ident in ids])  # (8, 3, 3)
    within = feats.std(axis=1).mean()
    between = feats.mean(axis=1).std(axis=0).mean()
    assert between > 1.5 * within, (between, within)
    # shapes differ: mean vertex distance between identities is a sizeable fraction of the face size (cm)
    d = np.linalg.norm(ids[0].shape.points - ids[1].shape.points, axis=1).mean()
    assert d > 0.2, d
