"""Reading a built dataset for training: a ``torch.utils.data.Dataset`` of (references, target, landmark map, caption).

One item per *target* sample of the dataset. Its references are a random subset (size between ``min_refs`` and
``max_refs``, never the target itself) of the other images of the same identity (``ref`` role first, then ``extra``),
drawn from a generator seeded by ``(seed, epoch, index)``: reproducible, different each epoch
(:meth:`PortraitDataset.set_epoch`). :func:`collate_portraits` pads the variable number of references of a batch and
returns a mask.

Landmark map: drawn from the target's stored (detected) 478-point mesh in the 3D-aware ``"hifi"`` style with
:func:`hifi_portrait.landmarks.render.render_detected`, the style the pipeline gets at inference from
:func:`hifi_portrait.landmarks.generate_landmarks`; pass ``landmark_map=`` to use another renderer (e.g. one of
:func:`draw_landmark_points` or the mediapipe style, to train for the maps of public face ControlNets).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hifi_portrait.errors import DatasetError

LandmarkMapFn = Callable[[np.ndarray, int], np.ndarray]


def draw_landmark_points(landmarks: np.ndarray, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8 black canvas with each of the ``(478, 2+)`` pixel landmarks as a white 2x2 dot."""
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    px = np.floor(np.asarray(landmarks)[:, :2]).astype(np.int64)
    inside = (px[:, 0] >= 0) & (px[:, 0] < size - 1) & (px[:, 1] >= 0) & (px[:, 1] < size - 1)
    for dx in (0, 1):
        for dy in (0, 1):
            canvas[px[inside, 1] + dy, px[inside, 0] + dx] = 255
    return canvas


def default_landmark_map(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The landmark map of the training condition: the 3D-aware ``"hifi"`` style used at inference."""
    from hifi_portrait.landmarks.render import render_detected

    return render_detected(np.asarray(landmarks, dtype=np.float64), (size, size), "hifi")


class _Store:
    """Byte access to the files of a dataset (tar members or Parquet side files), safe across fork."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.format = manifest["format"]
        self.members: dict[str, tuple[str, int, int]] = {}  # "sample.ext" -> (shard path, offset, size)
        self.meta: dict[str, dict[str, Any]] = {}
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()
        shards = sorted({p for p in manifest["files"] if p.startswith("shards/") and p.count("/") == 1})
        for rel in shards:
            path = root / rel
            if self.format == "webdataset":
                with tarfile.open(path) as tar:
                    for m in tar.getmembers():
                        self.members[m.name] = (str(path), m.offset_data, m.size)
                        if m.name.endswith(".json"):
                            handle = tar.extractfile(m)
                            assert handle is not None
                            meta = json.loads(handle.read())
                            self.meta[meta["sample"]] = meta
            else:
                import pyarrow.parquet as pq

                for row in pq.read_table(path).to_pylist():
                    self.meta[row["sample"]] = json.loads(row["meta"])
                    for rel_file in row["files"]:
                        full = (path.parent / rel_file).resolve()
                        self.members[full.name] = (str(full), 0, -1)

    def has(self, sample: str, ext: str) -> bool:
        return f"{sample}.{ext}" in self.members

    def read(self, sample: str, ext: str) -> bytes:
        name = f"{sample}.{ext}"
        if name not in self.members:
            raise DatasetError(f"{self.root}: file {name} is missing from the dataset; rebuild it")
        path, offset, size = self.members[name]
        if size < 0:
            return Path(path).read_bytes()
        if os.getpid() != self._pid:  # a DataLoader worker: never share file offsets with the parent
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = open(path, "rb")  # noqa: SIM115 (kept open for the reader's life)
        handle.seek(offset)
        return handle.read(size)


def _image(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` in ``[0, 1]``."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0)


def face_square(bbox: np.ndarray, expand: float) -> tuple[float, float, float]:
    """``(cx, cy, side)`` of the square around a face box, ``expand`` times its larger side."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * expand


class PortraitDataset(torch.utils.data.Dataset):
    """Training items from a dataset folder written by :func:`hifi_portrait.data.build_dataset`.

    Each item is a dict:

    * ``refs``: ``(N, 3, ref_size, ref_size)`` float in ``[0, 1]``, aligned encoder crops of N references;
    * ``ref_masks``: ``(N, 1, ref_size, ref_size)`` float face masks of those crops;
    * ``ref_identity``: ``(N, D)`` float32 identity vectors; ``ref_quality``: ``(N,)`` quality in ``[0, 1]``;
    * ``target``: ``(3, resolution, resolution)`` float in ``[-1, 1]`` (diffusers convention), the square crop
      of the target photo around its face (``crop_expand`` times the face box);
    * ``landmark_map``: ``(3, resolution, resolution)`` float in ``[0, 1]``, the target's landmarks drawn in the
      same crop; ``target_identity``: ``(D,)``; ``pose``: ``(3,)`` yaw, pitch, roll in degrees;
    * ``face_mask``: ``(1, resolution, resolution)`` float in ``[0, 1]``, the target's face/head mask (the dataset's
      ``photo_mask.png``, made by the builder's matting: face and hair) in the same crop; absent for datasets built
      without it (training then falls back to the hull of the landmark map);
    * ``caption``: str; ``identity``: str; ``sample``: the target's sample name.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int = 512,
        ref_size: int | None = None,
        min_refs: int = 1,
        max_refs: int = 4,
        crop_expand: float = 2.2,
        seed: int = 0,
        landmark_map: LandmarkMapFn | None = None,
    ) -> None:
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise DatasetError(
                f"{self.root} has no manifest.json: not a dataset, or its build did not finish; run "
                "`hifi-portrait build-dataset ... --out` on it again"
            )
        if not 1 <= min_refs <= max_refs:
            raise DatasetError(f"need 1 <= min_refs <= max_refs, got min_refs={min_refs}, max_refs={max_refs}")
        self.manifest = json.loads(manifest_path.read_text())
        self.store = _Store(self.root, self.manifest)
        self.resolution, self.ref_size = int(resolution), ref_size
        self.min_refs, self.max_refs, self.crop_expand = min_refs, max_refs, crop_expand
        self.seed, self.epoch = seed, 0
        self.landmark_map = landmark_map or default_landmark_map
        self.identities: dict[str, list[str]] = {}
        self.targets: list[str] = []
        with open(self.root / "identities.jsonl") as handle:
            for line in handle:
                entry = json.loads(line)
                samples = entry["samples"]
                order = {"ref": 0, "extra": 1, "target": 2}
                self.identities[entry["identity"]] = [
                    s["sample"] for s in sorted(samples, key=lambda s: (order[s["role"]], s["sample"]))
                ]
                self.targets += [s["sample"] for s in samples if s["role"] == "target"]
        if not self.targets:
            raise DatasetError(f"{self.root} has no target samples")

    def __len__(self) -> int:
        return len(self.targets)

    def set_epoch(self, epoch: int) -> None:
        """Draw other reference subsets in the next epoch (call it before each epoch, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def _ref_candidates(self, target: str) -> list[str]:
        ident = self.store.meta[target]["identity"]
        return [s for s in self.identities[ident] if s != target]

    def __getitem__(self, index: int) -> dict[str, Any]:
        target = self.targets[index]
        meta = self.store.meta[target]
        candidates = self._ref_candidates(target)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        high = min(self.max_refs, len(candidates))
        n = int(rng.integers(min(self.min_refs, high), high + 1))
        chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=n, replace=False))]

        crops, masks, ids, qual = [], [], [], []
        for s in chosen:
            crop = _image(self.store.read(s, "crop.jpg"))
            mask = _image(self.store.read(s, "mask.png"), "L")
            if self.ref_size and crop.shape[0] != self.ref_size:
                crop = np.asarray(Image.fromarray(crop).resize((self.ref_size,) * 2, Image.BICUBIC))
                mask = np.asarray(Image.fromarray(mask).resize((self.ref_size,) * 2, Image.BILINEAR))
            crops.append(_to_tensor(crop))
            masks.append(torch.from_numpy(mask.copy()).float().div(255.0)[None])
            ids.append(np.load(io.BytesIO(self.store.read(s, "id.npy")), allow_pickle=False))
            qual.append(float(self.store.meta[s]["quality"]))

        photo = Image.open(io.BytesIO(self.store.read(target, "jpg"))).convert("RGB")
        cx, cy, side = face_square(np.asarray(meta["bbox"]), self.crop_expand)
        box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
        r = self.resolution
        crop = np.asarray(photo.crop(box).resize((r, r), Image.BICUBIC))
        landmarks = np.load(io.BytesIO(self.store.read(target, "lmk.npy")), allow_pickle=False).astype(np.float64)
        scale = r / (box[2] - box[0])
        pts = np.stack(
            [(landmarks[:, 0] - box[0]) * scale, (landmarks[:, 1] - box[1]) * scale, landmarks[:, 2] * scale], 1
        )
        lmap = self.landmark_map(pts, r)
        pose = meta["pose"]
        extra = {}
        if self.store.has(target, "photo_mask.png"):
            mask = Image.open(io.BytesIO(self.store.read(target, "photo_mask.png"))).convert("L")
            mask = np.asarray(mask.crop(box).resize((r, r), Image.BILINEAR), dtype=np.float32)
            extra["face_mask"] = torch.from_numpy(mask / np.float32(255.0))[None]
        return {
            **extra,
            "refs": torch.stack(crops),
            "ref_masks": torch.stack(masks),
            "ref_identity": torch.from_numpy(np.stack(ids).astype(np.float32)),
            "ref_quality": torch.tensor(qual, dtype=torch.float32),
            "target": _to_tensor(crop) * 2.0 - 1.0,
            "landmark_map": _to_tensor(lmap),
            "target_identity": torch.from_numpy(
                np.load(io.BytesIO(self.store.read(target, "id.npy")), allow_pickle=False).astype(np.float32)
            ),
            "pose": torch.tensor([pose["yaw"], pose["pitch"], pose["roll"]], dtype=torch.float32),
            "caption": meta["caption"],
            "identity": meta["identity"],
            "sample": target,
        }


def collate_portraits(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items with different numbers of references: pad to the largest N and add ``ref_mask``.

    Returns ``refs (B, Nmax, 3, S, S)``, ``ref_masks (B, Nmax, 1, S, S)``, ``ref_identity (B, Nmax, D)``,
    ``ref_quality (B, Nmax)`` (padding is zero), ``ref_mask (B, Nmax)`` bool (True = a real reference), the other
    tensors stacked, ``caption`` / ``identity`` / ``sample`` as lists.
    """
    n_max = max(item["refs"].shape[0] for item in batch)
    out: dict[str, Any] = {}
    for key in ("refs", "ref_masks", "ref_identity", "ref_quality"):
        first = batch[0][key]
        padded = first.new_zeros((len(batch), n_max, *first.shape[1:]))
        for b, item in enumerate(batch):
            padded[b, : item[key].shape[0]] = item[key]
        out[key] = padded
    out["ref_mask"] = torch.zeros((len(batch), n_max), dtype=torch.bool)
    for b, item in enumerate(batch):
        out["ref_mask"][b, : item["refs"].shape[0]] = True
    for key in ("target", "landmark_map", "target_identity", "pose"):
        out[key] = torch.stack([item[key] for item in batch])
    if all("face_mask" in item for item in batch):
        out["face_mask"] = torch.stack([item["face_mask"] for item in batch])
    for key in ("caption", "identity", "sample"):
        out[key] = [item[key] for item in batch]
    return out
