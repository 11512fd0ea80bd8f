"""Training config: strict YAML keys, types and ranges; overrides; a saved config reloads unchanged."""

from __future__ import annotations

import pytest

from hifi_portrait.errors import ConfigError
from hifi_portrait.training.config import TrainingConfig, load_config


def test_defaults_roundtrip_through_yaml(tmp_path):
    cfg = TrainingConfig()
    cfg.optim.learning_rate = 3e-5
    cfg.validation.prompts = ["a photo of a person smiling"]
    cfg.model.hifi_net = {"size_ratio": 0.25}
    path = cfg.save(tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg


def test_unknown_key_names_file_section_and_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rat: 1.0e-4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "learning_rat" in msg and "'learning_rate'" in msg and "optim" in msg


def test_unknown_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  learning_rate: 1.0e-4\n")
    with pytest.raises(ConfigError, match="unknown section 'optimizer'.*'optim'"):
        load_config(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("train:\n  train_batch_size: two\n", "train.train_batch_size must be int"),
        ("train:\n  gradient_checkpointing: 1\n", "must be bool"),
        ("train:\n  mixed_precision: fp8\n", "mixed_precision"),
        ("conditioning:\n  drop_id_prob: 1.5\n", "probability"),
        ("data:\n  resolution: 1001\n", "multiple of 8"),
        ("optim:\n  learning_rate: fast\n", "optim.learning_rate must be float"),
        ("- a\n- list\n", "mapping"),
        ("optim: [1, 2]\n", "must be a mapping"),
    ],
)
def test_bad_values(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_parse_yaml_values_and_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_train_steps: 10\n")
    cfg = load_config(path, ["optim.learning_rate=2e-4", "train.max_train_steps=20", "train.use_ema=true"])
    assert cfg.optim.learning_rate == pytest.approx(2e-4)
    assert cfg.train.max_train_steps == 20 and cfg.train.use_ema is True
    with pytest.raises(ConfigError, match="unknown key 'lr'"):
        load_config(path, ["optim.lr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["learning_rate=1"])


def test_int_accepted_for_float_and_flat_view():
    from hifi_portrait.training.config import config_from_dict

    cfg = config_from_dict({"optim": {"learning_rate": 1}, "loss": {"face_weight": 2}})
    assert isinstance(cfg.optim.learning_rate, float) and cfg.loss.face_weight == 2.0
    flat = cfg.flat()
    assert flat["optim.learning_rate"] == 1.0 and all(not isinstance(v, (list, dict)) for v in flat.values())


def test_documented_config_is_valid():
    """The full config shown in docs/training.md loads without error (keys and values checked)."""
    import re
    from pathlib import Path

    import yaml

    from hifi_portrait.training.config import config_from_dict

    doc = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    assert blocks, "docs/training.md has no yaml block"
    cfg = config_from_dict(yaml.safe_load(blocks[0]), source="docs/training.md")
    assert cfg.data.resolution == 1024 and cfg.train.mixed_precision == "bf16"
    assert cfg.optim.learning_rate == pytest.approx(1e-4)
