"""Input enumeration: folders (recursive), tar / WebDataset shards, CSV or Parquet lists of paths.

Every input image becomes an :class:`InputItem` with a stable, unique ``key`` (the order of items is the sorted
order of keys, so that a re-run plans exactly the same analysis shards), an optional identity ``label`` and a way
to read its bytes (:func:`read_item_bytes`).
"""

from __future__ import annotations

import csv
import logging
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from hifi_portrait.errors import DatasetError, ImageLoadError
from hifi_portrait.utils.files import not_a_regular_file

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class InputItem:
    """One input image.

    Attributes:
        key: unique, stable name of the image (its path, or ``tar path::member``).
        path: file to read (the image itself, or the tar archive that holds it).
        member: name of the image inside the tar archive, or ``""`` for a plain file.
        label: identity label given by the user (folder name or list column), or ``""`` when unknown.
        occurrence: which of the archive's members of that name (0 = the first): a tar may hold one name twice,
            and each copy is an input of its own (key ``tar::name#2`` for the second).
    """

    key: str
    path: str
    member: str = ""
    label: str = ""
    occurrence: int = 0

    def to_dict(self) -> dict[str, str | int]:
        data = asdict(self)
        if not self.occurrence:  # the common case keeps the key set (and the shard digests) of earlier versions
            del data["occurrence"]
        return data


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _from_folder(root: Path, use_labels: bool) -> list[InputItem]:
    """Images under ``root`` (recursive); the label is the first sub-folder (``""`` for top-level images).

    Every entry with an image name that is not a folder is an input, also when it is a FIFO, a dangling link or a
    link loop: reading it fails (without blocking) and ``failures.jsonl`` says why.
    """
    items = []
    for path in sorted(p for p in root.rglob("*") if _is_image(p.name) and not p.is_dir()):
        rel = path.relative_to(root)
        label = rel.parts[0] if use_labels and len(rel.parts) > 1 else ""
        items.append(InputItem(key=str(path), path=str(path), label=label))
    return items


def _from_tar(path: Path, use_labels: bool) -> list[InputItem]:
    """Image members of a tar archive; a name stored twice gives two inputs (``name``, ``name#2``)."""
    try:
        with tarfile.open(path) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile() and _is_image(m.name)]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot read tar archive {path}: {exc}; check that the file is a complete tar") from None
    items = []
    for name, count in sorted(Counter(names).items()):
        if count > 1:
            logger.warning("%s holds %d members named %s; each is an input of its own", path, count, name)
        parts = Path(name).parts
        label = parts[0] if use_labels and len(parts) > 1 else ""
        for n in range(count):
            key = f"{path}::{name}" + (f"#{n + 1}" if n else "")
            items.append(InputItem(key=key, path=str(path), member=name, label=label, occurrence=n))
    return items


def _from_table(path: Path) -> list[InputItem]:
    """CSV / Parquet with a ``path`` column and an optional ``label`` (or ``identity``) column."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = table.to_pylist()
    else:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    if not rows:
        return []
    if "path" not in rows[0]:
        raise DatasetError(f"{path} has no 'path' column (columns: {', '.join(rows[0])}); add one with image paths")
    label_col = "label" if "label" in rows[0] else "identity" if "identity" in rows[0] else None
    items = []
    for row in rows:
        img = Path(str(row["path"]))
        if not img.is_absolute():
            img = path.parent / img
        label = str(row[label_col]) if label_col and row[label_col] not in (None, "") else ""
        items.append(InputItem(key=str(img), path=str(img), label=label))
    return items


def enumerate_inputs(inputs: list[str | Path], labels: str = "auto") -> tuple[list[InputItem], bool]:
    """List every image of ``inputs`` (folders, tar archives, CSV/Parquet lists, single image files).

    Args:
        inputs: paths given by the user.
        labels: ``"folders"`` (first sub-folder under each input folder or tar is the identity), ``"column"``
            (label column of CSV/Parquet lists), ``"none"``, or ``"auto"`` (labels from a list's label column;
            from sub-folders for each input folder or tar whose images all sit in sub-folders).

    Returns:
        ``(items sorted by key, labelled)`` where ``labelled`` says whether identity labels are in use.

    Raises:
        DatasetError: an input does not exist, or nothing was found, or a key appears twice.
    """
    auto = labels == "auto"
    use_column = labels in ("auto", "column")
    items: list[InputItem] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise DatasetError(
                f"input {path} does not exist; pass folders, .tar shards, .csv/.parquet lists or images"
            )
        reason = None if path.is_dir() or _is_image(path.name) else not_a_regular_file(path)
        if reason is not None:  # a FIFO given as a tar or a list would block the reader (an image one is a failure)
            raise DatasetError(f"input {path} is {reason}; pass folders, .tar shards, .csv/.parquet lists or images")
        if path.is_dir():
            found = _from_folder(path, True)
            # auto: labels when every image of the folder sits in a sub-folder (one sub-folder per person)
            use = labels == "folders" or (auto and all(i.label for i in found))
            items.extend(found if use else [InputItem(i.key, i.path) for i in found])
        elif path.suffix.lower() == ".tar" or path.name.lower().endswith((".tar.gz", ".tgz")):
            found = _from_tar(path, True)
            use = labels == "folders" or (auto and all(i.label for i in found))
            items.extend(found if use else [InputItem(i.key, i.path, i.member, "", i.occurrence) for i in found])
        elif path.suffix.lower() in (".csv", ".parquet"):
            found = _from_table(path)
            items.extend(found if use_column else [InputItem(i.key, i.path) for i in found])
        elif _is_image(path.name):
            items.append(InputItem(key=str(path), path=str(path)))
        else:
            raise DatasetError(f"input {path} is not a folder, tar archive, csv/parquet list or image file")
    if not items:
        raise DatasetError(
            f"no images found in {', '.join(map(str, inputs))} (extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    items.sort(key=lambda i: i.key)
    keys = [i.key for i in items]
    dupes = sorted({k for a, k in zip(keys, keys[1:], strict=False) if a == k})
    if dupes:
        logger.warning("%d image(s) listed twice; keeping one of each (e.g. %s)", len(dupes), dupes[0])
        items = [i for n, i in enumerate(items) if n == 0 or i.key != items[n - 1].key]
    labelled = any(i.label for i in items)
    if labels in ("folders", "column") and not labelled:
        raise DatasetError(f"labels={labels!r} was asked for but no input carries identity labels")
    return items, labelled


def open_regular(path: str | Path, key: str):
    """Open a plain input file for binary reading, refusing FIFOs, devices and links to nothing without blocking.

    Raises:
        ImageLoadError: the path is not a regular file, or cannot be opened (the message names ``key``).
    """
    reason = not_a_regular_file(path)
    if reason is not None:
        raise ImageLoadError(f"{key}: {reason}")
    return open(path, "rb")


class TarMembers:
    """An open tar archive with its members indexed by name (a name may be stored more than once)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.by_name: dict[str, list[tarfile.TarInfo]] = {}
        for member in tar.getmembers():
            self.by_name.setdefault(member.name, []).append(member)

    def read(self, item: InputItem) -> bytes:
        """The bytes of ``item``: its ``occurrence``-th member of that name."""
        matches = self.by_name.get(item.member, [])
        if len(matches) <= item.occurrence:
            raise ImageLoadError(f"{item.key}: no such member in the archive")
        handle = self.tar.extractfile(matches[item.occurrence])
        if handle is None:
            raise ImageLoadError(f"{item.key}: not a regular file in the archive")
        return handle.read()


def read_item_bytes(item: InputItem) -> bytes:
    """The raw bytes of an input image.

    Raises:
        ImageLoadError: the file or tar member is missing or unreadable, or not a regular file (FIFO...).
    """
    try:
        if not item.member:
            with open_regular(item.path, item.key) as handle:
                return handle.read()
        with tarfile.open(item.path) as tar:
            return TarMembers(tar).read(item)
    except (OSError, tarfile.TarError, KeyError, EOFError) as exc:
        raise ImageLoadError(f"{item.key}: cannot read ({exc}); check the file exists and is readable") from None
