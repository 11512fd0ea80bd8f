"""Training data: opening the built dataset, batching with padded references, and the input sizes it implies.

A training *sample* is a dict (see :mod:`hifi_portrait.training.step` for the batch it collates into):
``pixel_values (3, H, W)`` in ``[-1, 1]``, ``landmark_map (3, H, W)`` in ``[0, 1]``, ``face_mask (1, H, W)``,
``caption`` str, ``ref_id_embeds (n, Dg)``, ``ref_images (n, 3, S, S)`` in ``[0, 1]`` (or ``ref_patch_tokens
(n, L, Dl)``), ``ref_quality (n,)``; ``n`` may differ between samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from hifi_portrait.errors import DatasetError
from hifi_portrait.training.config import DataConfig, TrainingConfig
from hifi_portrait.training.sampler import EpochSeededSampler

logger = logging.getLogger(__name__)

REF_KEYS = ("ref_id_embeds", "ref_images", "ref_patch_tokens", "ref_quality")


def load_train_dataset(cfg: DataConfig) -> Dataset:
    """Open the dataset built by ``hifi-portrait build-dataset`` at ``cfg.train_data_dir``.

    Raises:
        DatasetError: the folder is not set, does not exist, or holds no training samples.
    """
    if not cfg.train_data_dir:
        raise DatasetError(
            "data.train_data_dir is not set: build a dataset with `hifi-portrait build-dataset PHOTOS... --out DIR` "
            "and point data.train_data_dir to DIR."
        )
    root = Path(cfg.train_data_dir)
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist; build one with `hifi-portrait build-dataset PHOTOS --out {root}`."
        )
    if not any(root.iterdir()):
        raise DatasetError(
            f"dataset folder {root} is empty; build one with `hifi-portrait build-dataset ... --out {root}`."
        )
    from hifi_portrait.data import training_dataset

    dataset = training_dataset(root, resolution=cfg.resolution, max_refs=cfg.max_refs)
    if cfg.max_train_samples is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(cfg.max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise DatasetError(f"dataset {root} has no training samples (no identity with a reference and a target).")
    return dataset


def collate_samples(samples: list[dict]) -> dict:
    """Stack samples into a batch, padding the references to the largest count with ``ref_mask`` False."""
    n_max = max(s["ref_id_embeds"].shape[0] for s in samples)
    batch: dict = {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]).float(),
        "landmark_map": torch.stack([s["landmark_map"] for s in samples]).float(),
        "captions": [s.get("caption", "") for s in samples],
    }
    if all("face_mask" in s for s in samples):
        batch["face_mask"] = torch.stack([s["face_mask"] for s in samples]).float()
    for key in ("original_size", "crop_top_left"):
        if all(key in s for s in samples):
            batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    mask = torch.zeros(len(samples), n_max, dtype=torch.bool)
    for i, s in enumerate(samples):
        mask[i, : s["ref_id_embeds"].shape[0]] = True
    batch["ref_mask"] = mask
    for key in REF_KEYS:
        if not all(key in s for s in samples):
            continue
        first = samples[0][key]
        padded = first.new_zeros((len(samples), n_max, *first.shape[1:]))
        if key == "ref_quality":
            padded.fill_(1.0)
        for i, s in enumerate(samples):
            padded[i, : s[key].shape[0]] = s[key]
        batch[key] = padded
    return batch


def make_dataloader(dataset: Dataset, cfg: TrainingConfig) -> DataLoader:
    """DataLoader with an :class:`EpochSeededSampler` (order = f(seed, epoch); resumable) and our collate."""
    collate = getattr(dataset, "collate_fn", None) or collate_samples
    return DataLoader(
        dataset,
        batch_size=cfg.train.train_batch_size,
        sampler=EpochSeededSampler(len(dataset), seed=cfg.train.seed),
        collate_fn=collate,
        num_workers=cfg.data.dataloader_num_workers,
        drop_last=False,
        persistent_workers=False,
    )


@dataclass
class InputDims:
    """Input sizes of the face refiner implied by the data and the image encoder."""

    id_embed_dim: int
    patch_dim: int | None
    num_patches: int


def infer_input_dims(dataset: Dataset, image_encoder=None) -> InputDims:
    """Read ``Dg`` from the first sample; ``Dl`` and ``L`` from the image encoder (or precomputed tokens)."""
    sample = dataset[0]
    if "ref_id_embeds" not in sample:
        raise DatasetError(f"training samples lack 'ref_id_embeds' (they have {sorted(sample)}).")
    id_dim = int(sample["ref_id_embeds"].shape[-1])
    if "ref_patch_tokens" in sample:
        tokens = sample["ref_patch_tokens"]
        return InputDims(id_dim, int(tokens.shape[-1]), int(tokens.shape[-2]))
    if image_encoder is not None:
        if hasattr(image_encoder, "patch_dim"):
            return InputDims(id_dim, int(image_encoder.patch_dim), int(image_encoder.num_patches))
        vc = image_encoder.config
        num = (vc.image_size // vc.patch_size) ** 2 + 1
        return InputDims(id_dim, int(vc.hidden_size), int(num))
    return InputDims(id_dim, None, 257)
