"""End-to-end builds on real photos with the real face analyzer: clustering quality, outputs, labels, Parquet."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from builder_helpers import IDS, person_of
from PIL import Image

from hifi_portrait.data import BuilderConfig, build_dataset, pairwise_precision_recall
from hifi_portrait.data.stages import BLENDSHAPE_NAMES
from hifi_portrait.data.writer import sha256_file


def _samples(out: Path) -> list[dict]:
    metas = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    metas.append(json.load(tar.extractfile(member)))
    return metas


def _failures(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


def test_clustering_quality_on_real_photos(clustered_build, capsys):
    """Acceptance: pairwise precision >= 0.95 and recall >= 0.9 of identities found by clustering.

    Scored over every photo whose face passed the quality filter: a photo in the dataset has the identity the
    builder gave it; a photo left out as an identity outlier, a near-duplicate or a one-photo identity counts as
    a singleton (which can only lower recall); a near-duplicate gets the identity of the photo it duplicates
    (duplicates are only searched for inside a cluster).
    """
    out = clustered_build.out_dir
    samples = _samples(out)
    failures = _failures(out)
    keys, pred = [], []
    for meta in samples:
        keys.append(meta["source"])
        pred.append(meta["identity"])
    identity_of = dict(zip(keys, pred, strict=True))
    for f in failures:  # a near-duplicate was found inside its cluster: it has the identity of the photo it copies
        if f["stage"] == "duplicate":
            keys.append(f["key"])
            pred.append(identity_of[f["reason"].removeprefix("near-duplicate of ")])
    singles = [f for f in failures if f["stage"] == "identity"]
    keys += [f["key"] for f in singles]
    pred += [f"single-{n}" for n in range(len(singles))]
    names = sorted(set(pred))
    truth_names = sorted({person_of(k) for k in keys})
    pred_ids = np.array([names.index(p) for p in pred])
    true_ids = np.array([truth_names.index(person_of(k)) for k in keys])
    precision, recall = pairwise_precision_recall(pred_ids, true_ids)
    people = Counter(person_of(k) for k in keys)
    with capsys.disabled():
        print(
            f"\nclustering on {len(keys)} real faces of {sum(v > 1 for v in people.values())} people + "
            f"{sum(v == 1 for v in people.values())} distractors: "
            f"pairwise precision {precision:.3f}, recall {recall:.3f}"
        )
    assert len([p for p in people.values() if p > 1]) >= 8
    assert precision >= 0.95
    assert recall >= 0.9


def test_every_input_is_accounted_for(clustered_build, flat_set):
    out = clustered_build.out_dir
    keys = [m["source"] for m in _samples(out)] + [f["key"] for f in _failures(out)]
    inputs = sorted(str(p) for p in flat_set.iterdir())
    assert sorted(keys) == inputs  # each input exactly once: in the dataset or in failures.jsonl with a reason
    assert all(f["reason"] and f["stage"] for f in _failures(out))
    # the near-duplicate (a smaller copy of obama.jpg) is detected as such
    dups = [f for f in _failures(out) if f["stage"] == "duplicate"]
    assert any("obama__small" in f["key"] for f in dups)


def test_outputs_manifest_stats_plots(clustered_build):
    out = clustered_build.out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    for rel, digest in manifest["files"].items():
        assert sha256_file(out / rel) == digest, rel
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples"] == len(_samples(out)) == clustered_build.samples
    assert stats["inputs"] == stats["samples"] + stats["excluded"]
    assert stats["identities"] == len((out / "identities.jsonl").read_text().splitlines())
    assert set(stats["pose_degrees"]) == {"yaw", "pitch", "roll"}
    for name in ("images_per_identity.png", "pose_distribution.png", "quality_histogram.png"):
        with Image.open(out / "plots" / name) as img:
            assert img.format == "PNG" and img.width > 200
    # every identity has at least one reference and one target, and they are different images
    for line in (out / "identities.jsonl").read_text().splitlines():
        entry = json.loads(line)
        roles = Counter(s["role"] for s in entry["samples"])
        assert roles["ref"] >= 1 and roles["target"] >= 1
    # each identity records its tightness; the ones to review are listed in stats.json with their reasons
    entries = [json.loads(line) for line in (out / "identities.jsonl").read_text().splitlines()]
    names = {e["identity"] for e in entries}
    for entry in entries:
        t = entry["tightness"]
        assert t["images"] == len(entry["samples"]) and -1 <= t["min_member_similarity"] <= t["mean_similarity"] <= 1
        assert t["nearest"] in names - {entry["identity"]} and t["nearest_similarity"] < t["mean_similarity"]
    threshold = stats["clustering"]["threshold"]
    assert stats["clustering"]["method"] == "average" and threshold == stats["same_person_threshold"]
    by_name = {e["identity"]: e["tightness"] for e in entries}
    assert stats["uncertain_identities_total"] == len(stats["uncertain_identities"])
    for review in stats["uncertain_identities"]:
        t = by_name[review["identity"]]
        assert review["reasons"] and (t["mean_similarity"] < threshold or t["nearest_similarity"] >= threshold - 0.1)


def test_samples_carry_consistent_metadata(clustered_build):
    out = clustered_build.out_dir
    with tarfile.open(out / "shards" / "shard-000000.tar") as tar:
        names = tar.getnames()
        first = names[0].split(".")[0]
        assert {n.split(".", 1)[1] for n in names if n.startswith(first)} == {
            "jpg",
            "crop.jpg",
            "mask.png",
            "id.npy",
            "lmk.npy",
            "json",
        }
        meta = json.load(tar.extractfile(f"{first}.json"))
        photo = Image.open(tar.extractfile(f"{first}.jpg"))
        lmk = np.load(io.BytesIO(tar.extractfile(f"{first}.lmk.npy").read()))
        ident = np.load(io.BytesIO(tar.extractfile(f"{first}.id.npy").read()))
    assert list(photo.size) == meta["image_size"] and max(photo.size) <= 1024
    x1, y1, x2, y2 = meta["bbox"]
    w, h = x2 - x1, y2 - y1
    inside = (lmk[:, 0] > x1 - 0.2 * w) & (lmk[:, 0] < x2 + 0.2 * w) & (lmk[:, 1] > y1 - 0.3 * h)
    assert inside.mean() > 0.95  # landmarks are in the stored photo's pixels, on the face
    assert ident.shape == (128,) and abs(np.linalg.norm(ident) - 1) < 1e-4
    assert meta["caption"].startswith("a photo of a person")
    assert list(meta["blendshapes"]) == sorted(BLENDSHAPE_NAMES) and len(BLENDSHAPE_NAMES) == 51


@pytest.mark.slow
def test_folder_labels_and_parquet(analyzer_factory, tmp_path):
    """With one folder per person the labels are used as identities; Parquet output is read back by the reader."""
    from hifi_portrait.data import PortraitDataset

    people = ["guido_van_rossum", "steve_wozniak", "alex_lacamoire"]
    src = tmp_path / "people"
    for person in people:
        (src / person).mkdir(parents=True)
        for path in sorted((IDS / person).glob("*.jpg"))[:3]:
            (src / person / path.name).write_bytes(path.read_bytes())
    cfg = BuilderConfig.from_dict({"workers": 1, "output": {"format": "parquet"}, "selection": {"max_targets": 1}})
    result = build_dataset([src], tmp_path / "out", cfg, analyzer_factory=analyzer_factory, progress=False)
    assert result.stats["labels"] == "from input"
    idents = [json.loads(x)["identity"] for x in (tmp_path / "out" / "identities.jsonl").read_text().splitlines()]
    assert idents == sorted(people)
    assert list((tmp_path / "out" / "shards").glob("*.parquet"))
    ds = PortraitDataset(tmp_path / "out", resolution=64, max_refs=2)
    assert len(ds) == 3
    item = ds[0]
    assert item["identity"] in people and item["refs"].shape[0] >= 1
