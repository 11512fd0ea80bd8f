"""`hifi-portrait train --config FILE` on a dataset built by the dataset builder from the bundled photos."""

from __future__ import annotations

import json

import torch
import yaml
from safetensors import safe_open
from training_helpers import tiny_config
from typer.testing import CliRunner

from hifi_portrait.cli.main import app
from hifi_portrait.training.data import collate_samples, face_mask_from_landmark_map


def _write_config(path, cfg) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict()))


def test_cli_trains_on_built_dataset(tiny_sdxl, built_dataset, tmp_path):
    cfg = tiny_config(
        tiny_sdxl,
        tmp_path / "run",
        data={"train_data_dir": str(built_dataset), "ref_size": 32, "min_refs": 1, "max_refs": 2},
        train={"max_train_steps": 3, "report_to": "tensorboard"},
        validation={"validation_steps": 2, "num_validation_samples": 2, "num_inference_steps": 2, "loss_samples": 2},
    )
    _write_config(tmp_path / "train.yaml", cfg)
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.yaml")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    adapter = run / "hifi_portrait_adapter.safetensors"
    assert adapter.is_file() and "done: 3 steps" in result.output
    with safe_open(str(adapter), "pt") as f:
        assert f.metadata()["format"] == "hifi-portrait-adapter" and f.metadata()["training_step"] == "3"
    assert (run / "validation" / "step-2.png").is_file() and (run / "validation" / "final.png").is_file()
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss", "lr", "val_loss"} <= set(tags["scalars"]), tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert "validation" in tags["images"] and "validation/final" in tags["images"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train_data_dir"] == str(built_dataset) and saved["train"]["max_train_steps"] == 3


def test_built_dataset_batches_have_padded_refs_and_face_masks(built_dataset):
    from hifi_portrait.data import PortraitDataset

    ds = PortraitDataset(built_dataset, resolution=64, ref_size=32, min_refs=1, max_refs=2, seed=0)
    items = [ds[i] for i in range(len(ds))]
    batch = collate_samples(items)
    counts = [it["refs"].shape[0] for it in items]
    assert batch["ref_mask"].sum(1).tolist() == counts
    assert batch["refs"].shape[1] == max(counts)
    mask = batch["face_mask"]
    assert mask.shape == (len(items), 1, 64, 64)
    # the face mask covers a real part of the crop, but not all of it
    assert 0.05 < mask.mean().item() < 0.9
    # it is the dataset's matted head mask of each target (photo_mask.png), not the landmark hull: it reaches
    # above the top of the drawn face mesh (hair) and stays off the crop's corners
    assert all("face_mask" in it for it in items)
    for item, m in zip(items, mask, strict=True):
        hull = face_mask_from_landmark_map(item["landmark_map"])
        top = int(torch.nonzero(hull[0].amax(1) > 0)[0])  # first row of the mesh
        assert m[0, : max(top - 2, 1)].max() > 0.5 and hull[0, : max(top - 2, 1)].max() == 0
        assert m.sum() > hull.sum()
        assert m[0, :4, :4].max() == 0 and m[0, :4, -4:].max() == 0
    manifest = json.loads((built_dataset / "manifest.json").read_text())
    assert manifest["mask_methods"] == ["selfie-matte"]
    assert {ds.store.meta[s]["mask_method"] for s in ds.targets} == {"selfie-matte"}
    empty = face_mask_from_landmark_map(torch.zeros(3, 16, 16))
    assert empty.sum().item() == 0


def test_cli_exit_codes(tiny_sdxl, built_dataset, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_train_step: 3\n")
    r = runner.invoke(app, ["train", "--config", str(bad)])
    assert r.exit_code == 2 and "max_train_step" in r.output and "max_train_steps" in r.output
    cfg = tiny_config(tiny_sdxl, tmp_path / "r", data={"train_data_dir": str(tmp_path / "missing")})
    _write_config(tmp_path / "nodata.yaml", cfg)
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "nodata.yaml")])
    assert r.exit_code == 1 and "does not exist" in r.output
    cfg = tiny_config(
        tiny_sdxl,
        tmp_path / "r",
        data={"train_data_dir": str(built_dataset)},
        model={"pretrained_model_name_or_path": str(tmp_path / "no-sdxl")},
    )
    _write_config(tmp_path / "nomodel.yaml", cfg)
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "nomodel.yaml")])
    assert r.exit_code == 3 and "no-sdxl does not exist" in r.output and "stable-diffusion-xl" in r.output


def test_accelerate_entry_point_stops_and_resumes(tiny_sdxl, built_dataset, tmp_path):
    """`accelerate launch -m hifi_portrait.training.train` runs main(): stop after 1 step, then resume to 2."""
    from hifi_portrait.training.train import main

    cfg = tiny_config(
        tiny_sdxl,
        tmp_path / "run",
        data={"train_data_dir": str(built_dataset), "ref_size": 32},
        train={"max_train_steps": 2},
        validation={"loss_samples": 0},
    )
    _write_config(tmp_path / "train.yaml", cfg)
    assert main(["--config", str(tmp_path / "train.yaml"), "--stop-after-steps", "1"]) == 0
    assert (tmp_path / "run" / "checkpoint-1").is_dir()
    assert not (tmp_path / "run" / "hifi_portrait_adapter.safetensors").exists()
    assert main(["--config", str(tmp_path / "train.yaml"), "--resume", "latest"]) == 0
    assert (tmp_path / "run" / "hifi_portrait_adapter.safetensors").is_file()
    assert main(["--config", str(tmp_path / "train.yaml"), "--set", "optim.lr=1"]) == 2
