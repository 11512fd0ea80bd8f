"""Atomic analysis shards, output-folder safety and the ``build-dataset`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builder_helpers import IDS
from typer.testing import CliRunner

from hifi_portrait.cli.main import app
from hifi_portrait.data import build_dataset
from hifi_portrait.data.inputs import InputItem
from hifi_portrait.data.shards import (
    SUMMARY_ARRAYS,
    ShardResult,
    ShardSpec,
    ShardView,
    plan_shards,
    read_shard,
    read_shard_summary,
    write_shard,
)
from hifi_portrait.errors import ConfigError


def _result() -> ShardResult:
    rng = np.random.default_rng(0)
    arrays = {
        "identity": rng.normal(size=(2, 8)).astype(np.float32),
        "landmarks": rng.normal(size=(2, 478, 3)).astype(np.float32),
        "keypoints": np.zeros((2, 5, 2), np.float32),
        "bbox": np.ones((2, 4), np.float32),
        "blendshapes": np.zeros((2, 51), np.float32),
        "pose": np.zeros((2, 3), np.float32),
    }
    records = [{"key": "a", "label": "", "ok": True, "row": 0}, {"key": "b", "ok": False, "reason": "x"}]
    return ShardResult(records, arrays, [{"crop": b"\xff\xd8crop", "mask": b"png"}, {"crop": b"", "mask": b"m"}])


def test_shard_round_trip(tmp_path):
    path = tmp_path / "s.npz"
    write_shard(path, _result())
    back = read_shard(path)
    assert back.records == _result().records and back.blobs == _result().blobs
    for name, arr in _result().arrays.items():
        assert np.array_equal(back.arrays[name], arr)


def test_shard_view_reads_rows_lazily(tmp_path):
    path = tmp_path / "s.npz"
    write_shard(path, _result())
    view = ShardView(path)
    records, small = read_shard_summary(path)
    assert records == _result().records and set(small) == set(SUMMARY_ARRAYS)
    for row in range(2):
        assert np.array_equal(view.landmarks(row), _result().arrays["landmarks"][row])
        assert view.blobs(row) == _result().blobs[row]


def test_shard_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "s.npz"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped in the middle of writing

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        write_shard(path, _result())
    assert list(tmp_path.iterdir()) == []  # neither a partial shard nor a temporary file


def test_plan_is_stable_and_content_addressed():
    items = [InputItem(key=f"k{i}", path=f"p{i}") for i in range(5)]
    a = plan_shards(items, 2, "fp")
    assert [len(s.items) for s in a] == [2, 2, 1]
    assert [s.filename() for s in a] == [s.filename() for s in plan_shards(items, 2, "fp")]
    assert a[0].filename() != plan_shards(items, 2, "other")[0].filename()
    changed = [InputItem(key="k0", path="p0", label="x"), *items[1:]]
    assert plan_shards(changed, 2, "fp")[0].filename() != a[0].filename()
    assert plan_shards(changed, 2, "fp")[1].filename() == a[1].filename()
    assert isinstance(a[0], ShardSpec)


def test_refuses_foreign_output_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(ConfigError, match="not empty"):
        build_dataset([IDS], tmp_path)


def test_cli_build_dataset(analyzer_factory, tmp_path, monkeypatch):
    import hifi_portrait.data.stages as stages

    monkeypatch.setattr(stages, "DefaultAnalyzerFactory", lambda **kw: analyzer_factory)  # reuse the loaded models
    src = tmp_path / "in"
    for person in ("rose_leslie", "kit_harington"):
        (src / person).mkdir(parents=True)
        for path in sorted((IDS / person).glob("*.jpg"))[:2]:
            (src / person / path.name).write_bytes(path.read_bytes())
    runner = CliRunner()
    res = runner.invoke(app, ["-q", "build-dataset", str(src), "--out", str(tmp_path / "out"), "-j", "1"])
    assert res.exit_code == 0, res.output
    assert "identities 2" in res.output and "samples 4" in res.output
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["identities"] == 2
    (tmp_path / "bad.yaml").write_text("quality:\n  min_face: 3\n")
    res = runner.invoke(
        app, ["build-dataset", str(src), "--out", str(tmp_path / "o2"), "-c", str(tmp_path / "bad.yaml")]
    )
    assert res.exit_code == 2 and "min_face" in res.output
    res = runner.invoke(app, ["build-dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "o3")])
    assert res.exit_code == 1 and "does not exist" in res.output
