"""Analysis shards: the unit of work, of parallelism and of resumption of the dataset builder.

The sorted input items are cut into shards of ``shard_size`` images. A shard's result (one record per image: the
analysis of its face, or the reason it failed) is written to ONE file, ``work/analysis/shard-<i>-<hash>.npz``,
through a temporary file and ``os.replace``: the file either exists complete or not at all, so a builder killed at
any moment (even by SIGKILL) finds on restart exactly the shards it had finished and recomputes only the others.
The ``hash`` covers the shard's item list and the analysis settings, so a changed input or setting never reuses a
stale result.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hifi_portrait.data.inputs import InputItem
from hifi_portrait.utils.files import atomic_file

#: Per-image arrays stored in a shard file, stacked over the shard's successfully analysed images.
SHARD_ARRAYS = ("identity", "landmarks", "keypoints", "bbox", "blendshapes", "pose")


@dataclass(frozen=True)
class ShardSpec:
    """One planned analysis shard: its index and its items (picklable: it travels to worker processes)."""

    index: int
    items: tuple[InputItem, ...]
    fingerprint: str  # analysis settings that change the result

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.fingerprint.encode())
        for item in self.items:
            h.update(json.dumps(item.to_dict(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    def filename(self) -> str:
        return f"shard-{self.index:06d}-{self.digest}.npz"


@dataclass
class ShardResult:
    """What the analysis of a shard produced.

    Attributes:
        records: one dict per input image, in input order. Every record has ``key``, ``label``, ``ok``; failed
            ones have ``stage`` and ``reason``; successful ones have scalar analysis fields and ``row``, their
            row in the arrays.
        arrays: ``identity (n, D) float32``, ``landmarks (n, 478, 3) float32``, ``keypoints (n, 5, 2)``,
            ``bbox (n, 4)``, ``blendshapes (n, 51) float32``, ``pose (n, 3)`` (yaw, pitch, roll in degrees).
        blobs: per successful image, encoded bytes by name (``crop`` JPEG of the encoder crop, ``mask`` PNG).
    """

    records: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]
    blobs: list[dict[str, bytes]] = field(default_factory=list)


def plan_shards(items: list[InputItem], shard_size: int, fingerprint: str) -> list[ShardSpec]:
    """Cut the (sorted) items into consecutive shards of ``shard_size``."""
    return [
        ShardSpec(index=n, items=tuple(items[start : start + shard_size]), fingerprint=fingerprint)
        for n, start in enumerate(range(0, len(items), shard_size))
    ]


def _pack_blobs(blobs: list[dict[str, bytes]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = sorted({name for blob in blobs for name in blob})
    offsets = np.zeros((len(blobs), len(names), 2), dtype=np.int64)
    chunks: list[bytes] = []
    pos = 0
    for i, blob in enumerate(blobs):
        for j, name in enumerate(names):
            data = blob.get(name, b"")
            offsets[i, j] = (pos, len(data))
            chunks.append(data)
            pos += len(data)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), offsets, names


def write_shard(path: Path, result: ShardResult) -> None:
    """Write ``result`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    data, offsets, names = _pack_blobs(result.blobs)
    meta = json.dumps({"records": result.records, "blob_names": names}, sort_keys=True).encode()
    with atomic_file(path, ".npz", fsync=True) as handle:
        np.savez(
            handle,
            meta=np.frombuffer(meta, dtype=np.uint8),
            blob_data=data,
            blob_offsets=offsets,
            **{name: result.arrays[name] for name in SHARD_ARRAYS},
        )


def read_shard(path: Path) -> ShardResult:
    """Read a shard file written by :func:`write_shard`."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        arrays = {name: npz[name] for name in SHARD_ARRAYS}
        data = npz["blob_data"].tobytes()
        offsets = npz["blob_offsets"]
    names = meta["blob_names"]
    blobs = [
        {name: data[int(offsets[i, j, 0]) : int(offsets[i, j, 0] + offsets[i, j, 1])] for j, name in enumerate(names)}
        for i in range(offsets.shape[0])
    ]
    return ShardResult(records=meta["records"], arrays=arrays, blobs=blobs)


#: Arrays read eagerly by :func:`read_shard_summary` (the large ones are read row by row through :class:`ShardView`).
SUMMARY_ARRAYS = ("identity", "keypoints", "bbox", "blendshapes", "pose")


def read_shard_summary(path: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The records and the small per-image arrays of a shard, without its landmarks and encoded crops."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        arrays = {name: npz[name] for name in SUMMARY_ARRAYS}
    return meta["records"], arrays


def _member_memmap(path: Path, member: str) -> np.ndarray:
    """Memory-map an array stored (uncompressed, as ``np.savez`` does) in an ``.npz`` file, without reading it."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path, allow_pickle=False) as npz:
            return npz[member]
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(handle)
        offset = handle.tell()
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class ShardView:
    """Row-by-row access to the large parts of a shard file (landmarks, encoded crops) through memory maps."""

    def __init__(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as npz:
            self.names = json.loads(npz["meta"].tobytes().decode())["blob_names"]
            self.offsets = npz["blob_offsets"]
        self._landmarks = _member_memmap(path, "landmarks")
        self._data = _member_memmap(path, "blob_data")

    def landmarks(self, row: int) -> np.ndarray:
        return np.array(self._landmarks[row])

    def blobs(self, row: int) -> dict[str, bytes]:
        return {
            name: self._data[int(start) : int(start + size)].tobytes()
            for name, (start, size) in zip(self.names, self.offsets[row], strict=True)
        }


def finished_shards(work_dir: Path, specs: list[ShardSpec]) -> set[int]:
    """Indices of the shards whose result file already exists (complete, thanks to the atomic write)."""
    return {spec.index for spec in specs if (work_dir / spec.filename()).is_file()}


def remove_stale(work_dir: Path, specs: list[ShardSpec]) -> int:
    """Delete shard files (and leftover temporary files) that the current plan does not use; return how many."""
    if not work_dir.is_dir():
        return 0
    keep = {spec.filename() for spec in specs}
    removed = 0
    for path in work_dir.iterdir():
        if path.name.startswith(".tmp-") or (path.name.startswith("shard-") and path.name not in keep):
            path.unlink()
            removed += 1
    return removed
