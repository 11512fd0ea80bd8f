"""The local engine's process pool gives the same bytes as an in-process run (engine plumbing only)."""

from __future__ import annotations

import json

import pytest
from builder_helpers import IDS, colour_stats_factory

from hifi_portrait.data import BuilderConfig, build_dataset
from hifi_portrait.errors import DatasetError


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


def test_rerun_after_interrupted_output_writing(tmp_path):
    """A build stopped while writing its outputs (manifest missing, a shard half-written, temp files left behind)
    is completed by a re-run, with the same bytes and without recomputing the analysis."""
    src = tmp_path / "in"
    src.mkdir()
    for n, path in enumerate(sorted(IDS.glob("*/*.jpg"))[:6]):
        for copy in range(2):
            (src / f"{n:02d}-{copy}-{path.name}").write_bytes(path.read_bytes())
    cluster = {"threshold": 0.99, "duplicate_hash_distance": -1}
    settings = {"workers": 1, "shard_size": 4, "labels": "none", "cluster": cluster}
    cfg = BuilderConfig.from_dict({**settings, "output": {"identities_per_shard": 2}})
    out = tmp_path / "out"
    build_dataset([src], out, cfg, analyzer_factory=colour_stats_factory, progress=False)
    complete = _files(out)
    (out / "manifest.json").unlink()
    shard = out / "shards" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    (out / ".tmp-stats").write_text("partial")
    (out / "shards" / ".tmp-x.tar").write_bytes(b"partial")
    (out / "shards" / "shard-000099.tar").write_bytes(b"from an earlier, larger build")
    again = build_dataset([src], out, cfg, analyzer_factory=colour_stats_factory, progress=False)
    assert again.shards_computed == 0 and again.shards_reused == 3
    assert _files(out) == complete
    assert not list(out.rglob(".tmp-*")) and not (out / "shards" / "shard-000099.tar").exists()


def test_nothing_usable_still_reports_why(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"not an image")
    (src / "b-noface.jpg").write_bytes((IDS / "obama" / "1.jpg").read_bytes())
    cfg = BuilderConfig(workers=1, labels="none")
    with pytest.raises(DatasetError, match="failures.jsonl"):
        build_dataset([src], tmp_path / "out", cfg, analyzer_factory=colour_stats_factory, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [(f["key"].rsplit("/", 1)[1], f["stage"]) for f in lines] == [
        ("a.jpg", "decode"),
        ("b-noface.jpg", "detect"),
    ]
