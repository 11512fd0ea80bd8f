"""Writing the dataset: WebDataset tar shards or Parquet tables + image files, each file atomic and byte-stable.

One *sample* per kept image, named ``<identity index:06d>_<image index:03d>``; the samples of one identity are
consecutive and never split across shards (a streaming reader sees a whole identity at once). Per sample:

* ``jpg``: the photo (upright, longest side at most ``output.max_side``);
* ``crop.jpg`` / ``mask.png``: the aligned encoder crop of the face and its face/head mask;
* ``photo_mask.png``: the same mask in pixels of ``jpg`` (0 outside the crop), for the target's face-weighted loss;
* ``id.npy``: ``(D,)`` float32 identity vector; ``lmk.npy``: ``(478, 3)`` float32 face mesh in pixels of ``jpg``;
* ``json``: identity, role (``ref``/``target``/``extra``), caption, pose, blendshapes, quality, bbox, keypoints
  (in pixels of ``jpg``), source key.

Byte stability: tar members have fixed mtime/owner/mode, arrays go through ``np.save``, JSON is written with sorted
keys; a re-run with the same inputs and config writes identical bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hifi_portrait.utils.files import atomic_file


@dataclass
class Sample:
    """One image of the output dataset."""

    name: str
    meta: dict[str, Any]
    photo: bytes
    crop: bytes
    mask: bytes
    identity: np.ndarray
    landmarks: np.ndarray
    photo_mask: bytes | None = None

    def files(self) -> list[tuple[str, bytes]]:
        """``(extension, bytes)`` of every file of the sample, in a fixed order."""
        files = [("jpg", self.photo), ("crop.jpg", self.crop), ("mask.png", self.mask)]
        if self.photo_mask is not None:
            files.append(("photo_mask.png", self.photo_mask))
        return [
            *files,
            ("id.npy", npy_bytes(self.identity.astype(np.float32))),
            ("lmk.npy", npy_bytes(self.landmarks.astype(np.float32))),
            ("json", json.dumps(self.meta, sort_keys=True, indent=1).encode()),
        ]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_photo(image: np.ndarray, max_side: int, quality: int) -> tuple[bytes, float]:
    """JPEG of ``image`` shrunk so its longest side is at most ``max_side``; returns ``(bytes, scale)``."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    pil = Image.fromarray(image)
    if scale < 1.0:
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), scale


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (never a half-written file)."""
    with atomic_file(path) as handle:
        handle.write(data)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_webdataset_shard(path: Path, samples: Iterable[Sample]) -> int:
    """Write one tar shard of samples atomically; returns the number of samples."""
    count = 0
    with (
        atomic_file(path, ".tar") as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for sample in samples:
            for ext, data in sample.files():
                info = tarfile.TarInfo(f"{sample.name}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def write_parquet_shard(path: Path, image_dir: Path, samples: Iterable[Sample]) -> tuple[int, list[Path]]:
    """Write one Parquet table (one row per sample) plus its files under ``image_dir``; returns (count, files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: dict[str, list] = {"sample": [], "identity": [], "role": [], "caption": [], "meta": [], "files": []}
    written: list[Path] = []
    for sample in samples:
        names = []
        for ext, data in sample.files():
            if ext == "json":
                continue
            target = image_dir / f"{sample.name}.{ext}"
            atomic_write(target, data)
            written.append(target)
            names.append(os.path.relpath(target, path.parent))
        rows["sample"].append(sample.name)
        rows["identity"].append(sample.meta["identity"])
        rows["role"].append(sample.meta["role"])
        rows["caption"].append(sample.meta["caption"])
        rows["meta"].append(json.dumps(sample.meta, sort_keys=True))
        rows["files"].append(names)
    buf = io.BytesIO()
    pq.write_table(pa.table(rows), buf, compression="zstd")
    atomic_write(path, buf.getvalue())
    return len(rows["sample"]), written
