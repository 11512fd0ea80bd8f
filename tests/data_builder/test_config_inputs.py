"""Config loading (YAML/JSON, unknown keys, bad values) and input enumeration (folders, tar, CSV, Parquet)."""

from __future__ import annotations

import csv
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builder_helpers import IDS

from hifi_portrait.data import BuilderConfig, load_config
from hifi_portrait.data.inputs import enumerate_inputs
from hifi_portrait.data.stages import iter_item_bytes
from hifi_portrait.errors import ConfigError, DatasetError, ImageLoadError


def test_config_yaml_and_json(tmp_path):
    (tmp_path / "c.yaml").write_text("shard_size: 16\ncluster:\n  threshold: 0.8\noutput:\n  format: parquet\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.shard_size == 16 and cfg.cluster.threshold == 0.8 and cfg.output.format == "parquet"
    assert cfg.quality.max_abs_yaw == BuilderConfig().quality.max_abs_yaw  # untouched defaults stay
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.json") == cfg
    assert load_config(None) == BuilderConfig()


@pytest.mark.parametrize(
    "text, words",
    [
        ("shard_sise: 3\n", ["shard_sise", "shard_size"]),
        ("quality:\n  max_yaw: 3\n", ["quality", "max_yaw", "max_abs_yaw"]),
        ("output:\n  format: zip\n", ["output.format", "zip"]),
        ("shard_size: 0\n", ["shard_size"]),
        ("labels: maybe\n", ["labels"]),
        ("cluster: [1, 2]\n", ["cluster", "mapping"]),
        ("shard_size: [\n", ["could not be parsed"]),
    ],
)
def test_config_errors_name_the_problem(tmp_path, text, words):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "bad.yaml")
    for word in words:
        assert word in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_folder_labels_auto(tmp_path):
    items, labelled = enumerate_inputs([IDS])
    assert labelled and {i.label for i in items} >= {"obama", "guido_van_rossum", "_distractors"}
    assert [i.key for i in items] == sorted(i.key for i in items)
    flat = tmp_path / "flat"
    (flat / "sub").mkdir(parents=True)
    (flat / "a.jpg").write_bytes(b"x")
    (flat / "sub" / "b.png").write_bytes(b"x")
    (flat / "notes.txt").write_text("not an image")
    items, labelled = enumerate_inputs([flat])  # images at the top level: no folder labels
    assert not labelled and [i.key.rsplit("/", 1)[1] for i in items] == ["a.jpg", "b.png"]
    items, labelled = enumerate_inputs([flat], labels="folders")
    assert [i.label for i in items] == ["", "sub"]


def test_tar_shard_input(tmp_path):
    tar_path = tmp_path / "shard.tar"
    with tarfile.open(tar_path, "w") as tar:
        for person in ("obama", "rose_leslie"):
            for path in sorted((IDS / person).glob("*.jpg"))[:2]:
                tar.add(path, arcname=f"{person}/{path.name}")
        tar.add(IDS.parent / "obama.jpg", arcname="obama/readme.txt")
    items, labelled = enumerate_inputs([tar_path])
    assert labelled and len(items) == 4 and items[0].member == "obama/1.jpg" and items[0].label == "obama"
    got = list(iter_item_bytes(items))
    assert got[0][1] == (IDS / "obama" / "1.jpg").read_bytes()
    missing = items[0].__class__(key="x", path=str(tar_path), member="nope.jpg")
    ((_, err),) = list(iter_item_bytes([missing]))
    assert isinstance(err, (KeyError, ImageLoadError))


def test_csv_and_parquet_lists(tmp_path):
    rows = [{"path": str(p), "label": p.parent.name} for p in sorted((IDS / "paul_allen").glob("*.jpg"))[:3]]
    rows.append({"path": "relative.jpg", "label": ""})
    with open(tmp_path / "list.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "list.parquet")
    for name in ("list.csv", "list.parquet"):
        items, labelled = enumerate_inputs([tmp_path / name])
        assert labelled and [i.label for i in items].count("paul_allen") == 3
        assert any(i.key == str(tmp_path / "relative.jpg") for i in items)  # relative to the list's folder
    items, labelled = enumerate_inputs([tmp_path / "list.csv"], labels="none")
    assert not labelled
    (tmp_path / "bad.csv").write_text("file,label\na.jpg,x\n")
    with pytest.raises(DatasetError, match="'path' column"):
        enumerate_inputs([tmp_path / "bad.csv"])


def test_input_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        enumerate_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        enumerate_inputs([tmp_path / "empty"])
    with pytest.raises(DatasetError, match="no input carries identity labels"):
        (tmp_path / "empty" / "a.jpg").write_bytes(b"x")
        enumerate_inputs([tmp_path / "empty"], labels="folders")
