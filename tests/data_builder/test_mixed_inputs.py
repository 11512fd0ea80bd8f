"""A folder of good, corrupt, non-image, empty and face-less files: the build finishes and records every failure."""

from __future__ import annotations

import io
import json

import numpy as np
from builder_helpers import IDS
from PIL import Image

from hifi_portrait.data import BuilderConfig, build_dataset


def _make_mixed(folder):
    folder.mkdir()
    for person in ("guido_van_rossum", "steve_wozniak"):
        for path in sorted((IDS / person).glob("*.jpg"))[:3]:
            (folder / f"{person}-{path.name}").write_bytes(path.read_bytes())
    good = (IDS / "paul_allen" / "2.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])  # decodes partially: PIL refuses the rest
    (folder / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    (folder / "empty.png").write_bytes(b"")
    rng = np.random.default_rng(0)
    buf = io.BytesIO()  # a real image without any face: smooth colour noise
    noise = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((320, 240), Image.BICUBIC).save(buf, format="PNG")
    (folder / "no_face.png").write_bytes(buf.getvalue())
    return {"truncated.jpg": "decode", "garbage.jpg": "decode", "empty.png": "decode", "no_face.png": "detect"}


def test_mixed_folder(analyzer_factory, tmp_path):
    expected = _make_mixed(tmp_path / "mixed")
    cfg = BuilderConfig(workers=1, shard_size=4, labels="none", captioner="builder_helpers:shouting_captioner")
    result = build_dataset(
        [tmp_path / "mixed"], tmp_path / "out", cfg, analyzer_factory=analyzer_factory, progress=False
    )
    failures = {
        f["key"].rsplit("/", 1)[1]: f
        for f in map(json.loads, (tmp_path / "out/failures.jsonl").read_text().splitlines())
    }
    for name, stage in expected.items():
        assert failures[name]["stage"] == stage, failures[name]
        assert failures[name]["reason"]
    assert "no face" in failures["no_face.png"]["reason"]
    assert result.identities == 2 and result.samples == 6  # both people found, every good photo kept
    assert result.stats["excluded_by_stage"] == {"decode": 3, "detect": 1}
    # the user's captioning hook was used instead of the template
    meta = json.loads((tmp_path / "out/stats.json").read_text())
    assert meta["samples"] == 6
    import tarfile

    with tarfile.open(tmp_path / "out/shards/shard-000000.tar") as tar:
        caption = json.load(tar.extractfile("000000_000.json"))["caption"]
    assert caption.startswith("A PHOTO OF A PERSON")
