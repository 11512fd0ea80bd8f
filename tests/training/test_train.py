"""End-to-end training on tiny random SDXL models and a tiny dataset made from the bundled photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import ListDataset, tiny_config

from hifi_portrait.errors import ConfigError, DatasetError, ModelFilesMissingError
from hifi_portrait.training.checkpointing import list_checkpoints
from hifi_portrait.training.train import ADAPTER_NAME, CONFIG_NAME, train


def test_overfits_tiny_photo_dataset(tiny_sdxl, photo_dataset, tmp_path):
    cfg = tiny_config(
        tiny_sdxl,
        tmp_path / "run",
        train={"max_train_steps": 40},
        optim={"learning_rate": 3e-3},
        loss={"face_weight": 2.0},
        validation={"validation_steps": 20, "loss_samples": 5, "loss_timesteps": 4},
    )
    result = train(cfg, dataset=photo_dataset)
    assert result.global_step == 40 and len(result.losses) == 40
    start, end = result.val_losses[0], result.val_losses[40]
    # fixed-noise loss on the training samples: clearly lower after 40 steps
    assert end < 0.8 * start, result.val_losses
    first, last = np.mean(result.losses[:10]), np.mean(result.losses[-10:])
    assert last < 0.85 * first, (first, last)
    # outputs: adapter file in the pipeline's format, full config beside it
    adapter = load_file(str(result.adapter_path))
    assert {k.split(".")[0] for k in adapter} == {"face_refiner", "hifi_net", "ip_attn"}
    assert (tmp_path / "run" / CONFIG_NAME).is_file()


def _final_weights(path):
    return {k: v.float() for k, v in load_file(str(path)).items()}


def test_interrupt_and_resume_matches_uninterrupted_run(tiny_sdxl, photo_dataset, tmp_path):
    common = {
        "train": {"max_train_steps": 6, "use_ema": True, "ema_decay": 0.9},
        "checkpointing": {"checkpointing_steps": 3, "checkpoints_total_limit": 2},
        "conditioning": {"drop_id_prob": 0.3, "drop_text_prob": 0.3, "drop_landmarks_prob": 0.3},
        "validation": {"loss_samples": 0},
    }
    # 5 samples, batch 2: 3 batches per epoch; stopping at step 4 resumes inside the second epoch
    full = train(tiny_config(tiny_sdxl, tmp_path / "full", **common), dataset=photo_dataset)
    part = train(tiny_config(tiny_sdxl, tmp_path / "resumed", **common), dataset=photo_dataset, stop_after_steps=4)
    assert part.global_step == 4 and part.adapter_path is None
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-3", "checkpoint-4"]
    resume = {**common, "checkpointing": {**common["checkpointing"], "resume_from_checkpoint": "latest"}}
    resumed_cfg = tiny_config(tiny_sdxl, tmp_path / "resumed", **resume)
    rest = train(resumed_cfg, dataset=photo_dataset)
    assert rest.resumed_from.name == "checkpoint-4" and rest.global_step == 6 and len(rest.losses) == 2
    assert rest.losses == pytest.approx(full.losses[4:], rel=1e-4)
    a, b = _final_weights(full.adapter_path), _final_weights(rest.adapter_path)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    # the weights did change during training (the comparison is not vacuous)
    first_ckpt = _final_weights(tmp_path / "full" / "checkpoint-3" / ADAPTER_NAME)
    assert max((a[k] - first_ckpt[k]).abs().max().item() for k in a) > 1e-4
    # total limit: 2 checkpoints kept
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-4", "checkpoint-6"]


def test_clear_errors(tiny_sdxl, photo_dataset, tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        train(tiny_config(tiny_sdxl, tmp_path / "a"), dataset=ListDataset([]))
    cfg = tiny_config(tiny_sdxl, tmp_path / "b", data={"train_data_dir": str(tmp_path / "no-such-dataset")})
    with pytest.raises(DatasetError, match="does not exist.*build-dataset"):
        train(cfg)
    (tmp_path / "empty-dataset").mkdir()
    cfg = tiny_config(tiny_sdxl, tmp_path / "b", data={"train_data_dir": str(tmp_path / "empty-dataset")})
    with pytest.raises(DatasetError, match="empty"):
        train(cfg)
    fake_base = tmp_path / "not-sdxl"
    (fake_base / "vae").mkdir(parents=True)
    (fake_base / "vae" / "config.json").write_text("{}")
    cfg = tiny_config(tiny_sdxl, tmp_path / "c", model={"pretrained_model_name_or_path": str(fake_base)})
    with pytest.raises(ModelFilesMissingError) as err:
        train(cfg, dataset=photo_dataset)
    assert "model_index.json" in str(err.value) and "unet/" in str(err.value) and "vae/" not in str(err.value)
    cfg = tiny_config(tiny_sdxl, tmp_path / "d", checkpointing={"resume_from_checkpoint": "checkpoint-9"})
    with pytest.raises(ConfigError, match="checkpoint-9"):
        train(cfg, dataset=photo_dataset)
    cfg = tiny_config(tiny_sdxl, tmp_path / "e", loss={"id_loss_weight": 1.0})
    with pytest.raises(ConfigError, match="id_recognizer"):
        train(cfg, dataset=photo_dataset)


class TinyRecognizer(torch.nn.Module):
    """A stand-in face recognizer: conv features of the face crop (differentiable, seeded)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)


def _adapter_diff(a, b) -> float:
    wa, wb = _final_weights(a), _final_weights(b)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_identity_loss_changes_training(tiny_sdxl, photo_dataset, tmp_path):
    common = {"train": {"max_train_steps": 2}, "validation": {"loss_samples": 0}}
    base = train(tiny_config(tiny_sdxl, tmp_path / "plain", **common), dataset=photo_dataset)
    with_id = train(
        tiny_config(
            tiny_sdxl,
            tmp_path / "id",
            **common,
            loss={"id_loss_weight": 1.0, "id_loss_max_timestep": 1000, "id_recognizer_input_size": 16},
        ),
        dataset=photo_dataset,
        id_recognizer=TinyRecognizer(),
    )
    # same seed and data: the only difference is the identity loss, which adds to the loss and moves the weights
    assert all(b > a for a, b in zip(base.losses, with_id.losses, strict=True))
    assert _adapter_diff(base.adapter_path, with_id.adapter_path) > 1e-6


def test_gradient_checkpointing_and_accumulation(tiny_sdxl, photo_dataset, tmp_path):
    common = {"validation": {"loss_samples": 0}}
    plain = train(
        tiny_config(tiny_sdxl, tmp_path / "a", train={"max_train_steps": 2}, **common), dataset=photo_dataset
    )
    ckpt = train(
        tiny_config(tiny_sdxl, tmp_path / "b", train={"max_train_steps": 2, "gradient_checkpointing": True}, **common),
        dataset=photo_dataset,
    )
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-5)
    assert _adapter_diff(plain.adapter_path, ckpt.adapter_path) < 1e-5
    accum = train(
        tiny_config(
            tiny_sdxl, tmp_path / "c", train={"max_train_steps": 2, "gradient_accumulation_steps": 2}, **common
        ),
        dataset=photo_dataset,
    )
    assert accum.global_step == 2 and len(accum.losses) == 2  # 2 optimizer steps = 4 batches
    bf16 = train(
        tiny_config(tiny_sdxl, tmp_path / "d", train={"max_train_steps": 2, "mixed_precision": "bf16"}, **common),
        dataset=photo_dataset,
    )
    assert all(np.isfinite(bf16.losses)) and bf16.adapter_path.is_file()
    # trainable weights stay fp32 in the exported adapter
    assert all(v.dtype == torch.float32 for v in load_file(str(bf16.adapter_path)).values())


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(tiny_sdxl, photo_dataset, tmp_path):
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    cfg = tiny_config(tiny_sdxl, tmp_path / "a", optim={"use_8bit_adam": True})
    with pytest.raises(ConfigError, match="bitsandbytes"):
        train(cfg, dataset=photo_dataset)
