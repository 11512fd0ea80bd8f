"""The local engine's process pool gives the same bytes as an in-process run (engine plumbing only)."""

from __future__ import annotations

import json

from builder_helpers import IDS, colour_stats_factory

from hifi_portrait.data import BuilderConfig, build_dataset


def _files(out):
    manifest = json.loads((out / "manifest.json").read_text())
    return {rel: (out / rel).read_bytes() for rel in manifest["files"]} | {"m": (out / "manifest.json").read_bytes()}


def test_pool_matches_in_process(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for n, path in enumerate(sorted(IDS.glob("*/*.jpg"))[:12]):
        (src / f"{n:02d}-{path.name}").write_bytes(path.read_bytes())
        (src / f"{n:02d}-copy-{path.name}").write_bytes(path.read_bytes())  # a second photo of the "same person"
    (src / "zz-noface.jpg").write_bytes((IDS / "obama" / "1.jpg").read_bytes())
    # copies are exact duplicates: keep them (duplicate_hash_distance -1) so that each "person" has two photos
    cfg = {"shard_size": 3, "labels": "none", "cluster": {"threshold": 0.99, "duplicate_hash_distance": -1}}
    runs = {}
    for name, workers in (("one", 1), ("pool", 2)):
        config = BuilderConfig.from_dict({**cfg, "workers": workers, "output": {"plots": False}})
        runs[name] = build_dataset(
            [src], tmp_path / name, config, analyzer_factory=colour_stats_factory, progress=False
        )
    one, pool = runs["one"], runs["pool"]
    assert pool.shards_computed == one.shards_computed == 9
    assert one.stats["excluded_by_stage"].get("detect") == 1
    assert one.identities >= 10  # a photo and its copy are one identity
    assert _files(tmp_path / "one") == _files(tmp_path / "pool")
