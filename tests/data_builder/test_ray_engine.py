"""``engine="ray"`` runs the same stage on a local Ray instance and gives the same dataset as the local engine."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from builder_helpers import IDS

from hifi_portrait.data import BuilderConfig, build_dataset

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'hifi-portrait[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install 'hifi-portrait[ray]'")


def _read(out):
    samples = {}
    with tarfile.open(out / "shards" / "shard-000000.tar") as tar:
        for member in tar.getmembers():
            name, ext = member.name.split(".", 1)
            data = tar.extractfile(member).read()
            samples.setdefault(name, {})[ext] = json.loads(data) if ext == "json" else data
    return samples


@pytest.mark.slow
def test_ray_engine_matches_local(analyzer_factory, tmp_path):
    src = tmp_path / "people"
    for person in ("guido_van_rossum", "steve_wozniak"):
        (src / person).mkdir(parents=True)
        for path in sorted((IDS / person).glob("*.jpg"))[:2]:
            (src / person / path.name).write_bytes(path.read_bytes())
    (src / "steve_wozniak" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cfg = BuilderConfig(workers=1, shard_size=2, labels="folders")  # one actor: one model load
    ray_result = build_dataset([src], tmp_path / "ray", cfg, engine="ray", progress=False)
    assert not ray.is_initialized()  # the local instance it started was shut down
    local_cfg = BuilderConfig(workers=1, shard_size=2, labels="folders")
    build_dataset([src], tmp_path / "local", local_cfg, analyzer_factory=analyzer_factory, progress=False)

    assert ray_result.shards_computed == 3 and ray_result.samples == 4 and ray_result.excluded == 1
    a, b = _read(tmp_path / "ray"), _read(tmp_path / "local")
    assert a.keys() == b.keys()
    for name in a:
        for key in ("identity", "role", "source", "caption"):
            assert a[name]["json"][key] == b[name]["json"][key]
        assert a[name]["jpg"] == b[name]["jpg"]  # the same photo bytes
        ida = np.load(io.BytesIO(a[name]["id.npy"]))
        idb = np.load(io.BytesIO(b[name]["id.npy"]))
        assert np.allclose(ida, idb, atol=1e-4)
    fails = (tmp_path / "ray" / "failures.jsonl").read_text()
    assert "corrupt.jpg" in fails and '"stage": "decode"' in fails
