"""Helpers of the training tests: a tiny dataset from the bundled photos, configs for tiny random SDXL models.

The dataset is made from real face analyses (RetinaFace + mediapipe + dlib) of ``tests/data``: per target photo of
a person, the other photos of that person are its references (a person with one photo uses its mirror image).
Images are 32x32 so that a training step of the tiny models takes a few tens of milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hifi_portrait.training.config import config_from_dict

DATA = Path(__file__).resolve().parents[1] / "data"
PEOPLE = {"obama": ["obama.jpg", "obama2.jpg", "obama3.jpg"], "biden": ["biden.jpg"], "astronaut": ["astronaut.jpg"]}
SIZE = 32
REF_SIZE = 32  # the dummy CLIP vision tower's image size


def _resize(arr: np.ndarray, size: int, resample=Image.BICUBIC) -> np.ndarray:
    return np.array(Image.fromarray(arr).resize((size, size), resample))


def _landmark_map(face, size: int) -> np.ndarray:
    """Face-mesh points of the encoder crop splatted on a black canvas (3, size, size) in [0, 1]."""
    from hifi_portrait.face.alignment import transform_points

    pts = transform_points(face.landmarks[:, :2], face.encoder_affine) * (size / face.encoder_crop.shape[0])
    canvas = np.zeros((3, size, size), dtype=np.float32)
    depth = face.landmarks[:, 2]
    depth = (depth - depth.min()) / max(np.ptp(depth), 1e-6)
    ij = np.clip(np.round(pts).astype(int), 0, size - 1)
    canvas[0, ij[:, 1], ij[:, 0]] = 1.0
    canvas[1, ij[:, 1], ij[:, 0]] = 1.0 - depth
    return canvas


def _sample(target, refs: list, size: int) -> dict:
    crop = _resize(target.encoder_crop, size)
    mask = _resize(target.mask, size, Image.BILINEAR).astype(np.float32) / 255.0
    ref_imgs = np.stack([_resize(r.encoder_crop, REF_SIZE) for r in refs]).astype(np.float32) / 255.0
    ref_masks = np.stack([_resize(r.mask, REF_SIZE, Image.BILINEAR) for r in refs]).astype(np.float32) / 255.0
    return {  # the item keys of hifi_portrait.data.PortraitDataset (+ the target's face mask)
        "target": torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1.0,
        "landmark_map": torch.from_numpy(_landmark_map(target, size)),
        "face_mask": torch.from_numpy(mask)[None],
        "caption": "a photo of a person",
        "ref_identity": torch.from_numpy(np.stack([r.identity for r in refs]).astype(np.float32)),
        "refs": torch.from_numpy(ref_imgs).permute(0, 3, 1, 2).contiguous(),
        "ref_masks": torch.from_numpy(ref_masks)[:, None],
        "ref_quality": torch.tensor([r.quality.total for r in refs], dtype=torch.float32),
    }


def _mirrored(face):
    import copy

    m = copy.copy(face)
    m.encoder_crop = np.ascontiguousarray(face.encoder_crop[:, ::-1])
    m.mask = np.ascontiguousarray(face.mask[:, ::-1])
    return m


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


def tiny_config(tiny_sdxl: dict[str, Path], output_dir: Path, **sections) -> object:
    """A config for the tiny models; ``sections`` update the defaults (``train={"max_train_steps": 5}``...)."""
    data = {
        "model": {
            "pretrained_model_name_or_path": str(tiny_sdxl["sdxl"]),
            "image_encoder_path": str(tiny_sdxl["image_encoder"]),
            "face_refiner": {
                "hidden_dim": 32,
                "num_tokens": 4,
                "num_layers": 1,
                "num_heads": 4,
                "id_tokens_per_ref": 2,
                "ff_mult": 2,
            },
            "hifi_net": {"size_ratio": 0.5, "attention_head_dim": 8, "conditioning_embedding_channels": [8, 16]},
        },
        "data": {"resolution": SIZE, "max_refs": 2, "dataloader_num_workers": 0},
        "train": {
            "output_dir": str(output_dir),
            "seed": 0,
            "train_batch_size": 2,
            "max_train_steps": 4,
            "report_to": "none",
        },
        "optim": {"learning_rate": 1e-3, "lr_warmup_steps": 0, "lr_scheduler": "constant"},
        "checkpointing": {"checkpointing_steps": 1000},
        "validation": {"num_validation_samples": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data, source="test")
