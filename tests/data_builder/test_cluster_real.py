"""Identity clustering on real photos (tests/data/calib): look-alikes stay apart, a poor photo stays with its person.

The vectors are the ones ``build-dataset`` computes (RetinaFace, largest face, dlib ResNet 128-d); the thresholds are
the calibrated defaults of the dlib model (benchmarks/identity_calibration.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hifi_portrait.data.cluster import (
    ClusterParams,
    cluster_identities,
    default_cluster_thresholds,
    identity_tightness,
)
from hifi_portrait.data.report import uncertain_identities

CALIB = Path(__file__).resolve().parents[1] / "data" / "calib"
IDS = Path(__file__).resolve().parents[1] / "data" / "ids"
THRESHOLD, EDGE = default_cluster_thresholds("dlib-resnet-128")


@pytest.fixture(scope="module")
def embed():
    from hifi_portrait.face.detection import RetinaFaceDetector
    from hifi_portrait.face.identity import DlibEmbedder
    from hifi_portrait.utils.image_io import load_image

    detector, embedder = RetinaFaceDetector(num_threads=1), DlibEmbedder()

    def run(paths: list[Path]) -> np.ndarray:
        out = []
        for path in paths:
            image = load_image(path)
            out.append(embedder.embed(image, detector.detect(image)[0]))
        return np.stack(out)

    return run


def _people(*folders: Path) -> tuple[list[Path], np.ndarray]:
    paths = [p for folder in folders for p in sorted(folder.glob("*.jpg"))]
    return paths, np.array([p.parent.name for p in paths])


def _apart(pred: np.ndarray, names: np.ndarray) -> bool:
    """No cluster holds photos of two people."""
    return all(len(set(names[pred == c])) == 1 for c in set(pred.tolist()) if c >= 0)


def test_lookalikes_joined_by_one_close_pair_stay_apart(embed):
    paths, names = _people(CALIB / "donald_rumsfeld", IDS / "paul_allen")
    x = embed(paths)
    a, b = names == "donald_rumsfeld", names == "paul_allen"
    cross = x[a] @ x[b].T
    # the premise: one cross pair is closer than the same-person threshold (single linkage would join them) ...
    assert cross.max() >= THRESHOLD, cross.max()
    chained = cluster_identities(x, ClusterParams(threshold=THRESHOLD, method="components"))
    assert not _apart(chained, names)  # ... and the previous method does merge the two men
    pred = cluster_identities(x, ClusterParams(threshold=THRESHOLD, edge_threshold=EDGE))
    assert _apart(pred, names)
    assert (pred >= 0).all() and len(set(pred[a])) == 1 and len(set(pred[b])) == 1
    # they are reported as close for review, from the true grouping
    tight = identity_tightness(x, b.astype(np.int64))
    named = {
        n: t | {"nearest": ["donald_rumsfeld", "paul_allen"][t["nearest"]]}
        for n, t in zip(["donald_rumsfeld", "paul_allen"], tight, strict=True)
    }
    flagged = {r["identity"] for r in uncertain_identities(named, THRESHOLD)}
    assert flagged == {"donald_rumsfeld", "paul_allen"}
    assert tight[0]["nearest_similarity"] == pytest.approx(float(cross.mean()), abs=1e-4)


def test_person_with_one_poor_photo_stays_together(embed):
    paths, names = _people(CALIB / "arnold_schwarzenegger", CALIB / "colin_powell")
    x = embed(paths)
    arnold = np.flatnonzero(names == "arnold_schwarzenegger")
    sims = x[arnold] @ x[arnold].T
    mean_to_others = (sims.sum(axis=1) - 1) / (len(arnold) - 1)
    # the premise: one photo is, on average, less similar to the others than the threshold ...
    assert mean_to_others.min() < THRESHOLD, mean_to_others.min()
    strict = cluster_identities(x, ClusterParams(threshold=THRESHOLD))  # no attach step (edge = threshold)
    assert len(set(strict[arnold].tolist())) > 1  # ... so average linkage alone leaves it out
    pred = cluster_identities(x, ClusterParams(threshold=THRESHOLD, edge_threshold=EDGE))
    assert _apart(pred, names)
    assert len(set(pred[arnold].tolist())) == 1 and pred[arnold[0]] >= 0
    tight = identity_tightness(x, pred)
    assert min(t["min_member_similarity"] for t in tight) == pytest.approx(float(mean_to_others.min()), abs=1e-4)
