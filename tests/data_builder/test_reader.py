"""The training reader: refs + target + landmark map + caption, variable reference counts, padding collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hifi_portrait.data import PortraitDataset, collate_portraits, draw_landmark_points
from hifi_portrait.errors import DatasetError


@pytest.fixture(scope="module")
def dataset(clustered_build):
    return PortraitDataset(clustered_build.out_dir, resolution=96, ref_size=64, min_refs=1, max_refs=3, seed=3)


def test_items(dataset, clustered_build):
    assert len(dataset) == clustered_build.stats["roles"]["target"]
    counts = set()
    for i in range(len(dataset)):
        item = dataset[i]
        n = item["refs"].shape[0]
        counts.add(n)
        assert 1 <= n <= 3
        assert item["refs"].shape == (n, 3, 64, 64) and item["ref_masks"].shape == (n, 1, 64, 64)
        assert item["ref_identity"].shape == (n, 128) and item["ref_quality"].shape == (n,)
        assert item["target"].shape == (3, 96, 96) and -1 <= item["target"].min() and item["target"].max() <= 1
        assert item["landmark_map"].shape == (3, 96, 96) and item["landmark_map"].max() > 0
        assert isinstance(item["caption"], str) and item["caption"]
        # references are other photos of the same identity: similar identity vectors, never the target itself
        sims = item["ref_identity"] @ item["target_identity"]
        assert (sims > 0.85).all() and (sims < 0.9999).all()
    assert len(counts) > 1  # the number of references varies


def test_landmark_map_is_on_the_face(dataset):
    item = dataset[0]
    lmap = item["landmark_map"].sum(0)
    ys, xs = torch.nonzero(lmap, as_tuple=True)
    # the face sits in the middle of the square target crop (crop_expand=2.2 times the face box)
    assert 0.2 * 96 < xs.float().mean() < 0.8 * 96 and 0.2 * 96 < ys.float().mean() < 0.8 * 96
    assert (xs.max() - xs.min()) > 0.25 * 96


def test_epochs_draw_other_references(dataset):
    first = [dataset[i]["ref_identity"].sum().item() for i in range(len(dataset))]
    again = [dataset[i]["ref_identity"].sum().item() for i in range(len(dataset))]
    dataset.set_epoch(1)
    other = [dataset[i]["ref_identity"].sum().item() for i in range(len(dataset))]
    dataset.set_epoch(0)
    assert first == again and first != other


def test_collate_pads_and_masks(dataset):
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_portraits, shuffle=False)
    batch = next(iter(loader))
    items = [dataset[i] for i in range(4)]
    n = [it["refs"].shape[0] for it in items]
    assert batch["refs"].shape == (4, max(n), 3, 64, 64)
    assert batch["ref_mask"].sum(1).tolist() == n
    for b, it in enumerate(items):
        assert torch.equal(batch["refs"][b, : n[b]], it["refs"])
        assert batch["refs"][b, n[b] :].abs().sum() == 0 and batch["ref_identity"][b, n[b] :].abs().sum() == 0
    assert batch["target"].shape == (4, 3, 96, 96) and len(batch["caption"]) == 4


def test_draw_landmark_points():
    pts = np.array([[10.2, 20.7, 0.0], [-5, 3, 0], [31.5, 31.5, 0]])
    canvas = draw_landmark_points(pts, 32)
    assert canvas[20, 10].tolist() == [255, 255, 255] and canvas.sum() == 4 * 3 * 255  # one dot; others outside


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="manifest.json"):
        PortraitDataset(tmp_path)
