"""Training data: opening the built dataset, batching with padded references, and the input sizes it implies.

A training *sample* is a dict with the keys of :class:`hifi_portrait.data.PortraitDataset` items:
``target (3, H, W)`` in ``[-1, 1]``, ``landmark_map (3, H, W)`` in ``[0, 1]``, ``caption`` str,
``refs (n, 3, S, S)`` in ``[0, 1]`` (or precomputed ``ref_patch_tokens (n, L, Dl)``), ``ref_identity (n, Dg)``,
``ref_quality (n,)``, optionally ``face_mask (1, H, W)``; ``n`` may differ between samples. Other keys
(``ref_masks``, ``target_identity``, ``pose``, names) are carried along when every sample has them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hifi_portrait.errors import DatasetError
from hifi_portrait.training.config import DataConfig, TrainingConfig
from hifi_portrait.training.sampler import EpochSeededSampler

logger = logging.getLogger(__name__)

#: per-reference tensors, padded to the largest reference count of a batch
REF_KEYS = ("refs", "ref_masks", "ref_identity", "ref_patch_tokens", "ref_quality")
#: per-sample tensors, stacked
STACK_KEYS = ("target", "landmark_map", "face_mask", "target_identity", "pose", "original_size", "crop_top_left")


def load_train_dataset(cfg: DataConfig, seed: int | None = 0) -> Dataset:
    """Open the dataset built by ``hifi-portrait build-dataset`` at ``cfg.train_data_dir``.

    Raises:
        DatasetError: the folder is not set, does not exist, is empty or holds no training samples.
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
    from hifi_portrait.data import PortraitDataset

    dataset = PortraitDataset(
        root,
        resolution=cfg.resolution,
        ref_size=cfg.ref_size,
        min_refs=cfg.min_refs if cfg.random_num_refs else cfg.max_refs,
        max_refs=cfg.max_refs,
        seed=seed or 0,
    )
    if cfg.max_train_samples is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(cfg.max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise DatasetError(f"dataset {root} has no training samples (no identity with a reference and a target).")
    return dataset


def set_dataset_epoch(dataset: Dataset, epoch: int) -> None:
    """Call ``set_epoch`` on the dataset (or the one a ``Subset`` wraps) when it has one."""
    target = getattr(dataset, "dataset", dataset) if not hasattr(dataset, "set_epoch") else dataset
    if hasattr(target, "set_epoch"):
        target.set_epoch(epoch)


def face_mask_from_landmark_map(landmark_map: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """``(1, H, W)`` mask: the convex hull of the drawn pixels of a landmark map ``(3, H, W)``.

    The fallback for samples without a ``face_mask`` (datasets built before the builder stored the target's
    ``photo_mask.png``, or other Datasets): the face mesh drawn on the landmark map outlines the face, so its hull
    is the face region (forehead up to the mesh's top edge, no hair). An empty map gives an empty mask.
    """
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    drawn = (landmark_map.float().amax(dim=0) > threshold).numpy()
    ys, xs = np.nonzero(drawn)
    h, w = drawn.shape
    mask = Image.new("L", (w, h), 0)
    if len(xs) >= 3:
        pts = np.stack([xs, ys], 1).astype(np.float64)
        try:
            hull = pts[ConvexHull(pts).vertices]
            ImageDraw.Draw(mask).polygon([tuple(p) for p in hull], fill=255)
        except QhullError:  # collinear points
            pass
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]


def collate_samples(samples: list[dict]) -> dict:
    """Stack samples into a batch; references padded to the largest count, ``ref_mask`` True for real ones.

    ``face_mask`` is the samples' own (the dataset's matted face/head mask of the target) when every sample has one,
    otherwise the hull of the landmark maps (:func:`face_mask_from_landmark_map`) for all of them.
    """
    n_max = max(s["ref_identity"].shape[0] for s in samples)
    batch: dict = {"caption": [s.get("caption", "") for s in samples]}
    for key in STACK_KEYS:
        if all(key in s for s in samples):
            batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    if "face_mask" not in batch and "landmark_map" in batch:
        batch["face_mask"] = torch.stack([face_mask_from_landmark_map(m) for m in batch["landmark_map"]])
    for key in ("identity", "sample"):
        if all(key in s for s in samples):
            batch[key] = [s[key] for s in samples]
    mask = torch.zeros(len(samples), n_max, dtype=torch.bool)
    for i, s in enumerate(samples):
        mask[i, : s["ref_identity"].shape[0]] = True
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
    return DataLoader(
        dataset,
        batch_size=cfg.train.train_batch_size,
        sampler=EpochSeededSampler(len(dataset), seed=cfg.train.seed),
        collate_fn=collate_samples,
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
    missing = [k for k in ("target", "landmark_map", "ref_identity") if k not in sample]
    if missing:
        raise DatasetError(
            f"training samples lack {missing} (they have {sorted(sample)}); use hifi_portrait.data.PortraitDataset "
            "or a Dataset with the same item keys."
        )
    id_dim = int(sample["ref_identity"].shape[-1])
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
