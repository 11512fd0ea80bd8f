"""Benchmark manifest: which references, prompt and target attributes each generated portrait was made for.

A manifest is a JSON or YAML file (see ``docs/evaluation.md``)::

    name: my-benchmark
    generated_pattern: "{id}_*.png"      # optional; how generated files are named (glob, {id} = entry id)
    entries:
      - id: obama_yaw20_smile
        references: [refs/obama.jpg, refs/obama2.jpg]
        prompt: "a photo of a man in a suit, studio light"
        ground_truth: gt/obama3.jpg      # optional held-out photo of the same person (copy-paste measure)
        target:                          # optional; what was commanded
          pose: {yaw: 20, pitch: 0, roll: 0}
          expression: smile              # a preset of hifi_portrait.landmarks ("smile" or "smile:0.6"), and/or
          blendshapes: {mouthSmileLeft: 0.8, mouthSmileRight: 0.8}
          landmarks: targets/obama_yaw20_smile.npy   # (N, 2|3) pixels; N = 478, 468, 68 or 5
          landmarks_image_size: [1024, 1024]          # the canvas of those pixels (default: generated size)
        generated: [gen/obama_yaw20_smile_0.png]     # optional; else found with generated_pattern

Relative paths of references, ground truths and landmark targets resolve against the manifest's folder;
generated paths resolve against the folder of generated images given to the runner (default: the manifest's
folder). One manifest scores any method: point the runner at each method's output folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hifi_portrait.errors import ConfigError, DatasetError
from hifi_portrait.evaluation.control import AXES

logger = logging.getLogger(__name__)

DEFAULT_PATTERN = "{id}*"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
_TOP_KEYS = {"name", "generated_pattern", "entries", "description"}
_ENTRY_KEYS = {"id", "references", "prompt", "ground_truth", "target", "generated"}
_TARGET_KEYS = {"pose", "expression", "blendshapes", "landmarks", "landmarks_image_size"}


@dataclass
class Target:
    """Commanded attributes of one entry (all optional)."""

    pose: dict[str, float] = field(default_factory=dict)
    expression: str | None = None
    blendshapes: dict[str, float] = field(default_factory=dict)
    landmarks: np.ndarray | None = None
    landmarks_path: Path | None = None
    landmarks_image_size: tuple[int, int] | None = None


@dataclass
class Entry:
    """One benchmark case: a reference set, a prompt, a target, and the generated images to score."""

    id: str
    references: list[Path]
    prompt: str = ""
    ground_truth: Path | None = None
    target: Target = field(default_factory=Target)
    generated: list[str] | None = None


@dataclass
class Manifest:
    name: str
    entries: list[Entry]
    root: Path
    generated_pattern: str = DEFAULT_PATTERN
    path: Path | None = None


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _existing(where: str, root: Path, value: Any) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise ConfigError(f"{where}: expected a file path, got {value!r}")
    path = (root / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}: file {path} does not exist; fix the path in the manifest")
    return path


def resolve_expression_preset(spec: str) -> dict[str, float]:
    """Blendshape scores of an expression preset of :mod:`hifi_portrait.landmarks`: ``"smile"`` or ``"smile:0.6"``."""
    from hifi_portrait.errors import LandmarkError

    try:
        from hifi_portrait.landmarks import parse_expression
    except ImportError:
        raise ConfigError(
            f"expression preset {spec!r} cannot be resolved (hifi_portrait.landmarks is not available); "
            "give the commanded scores explicitly under target.blendshapes"
        ) from None
    try:
        return dict(parse_expression(spec))
    except LandmarkError as exc:
        raise ConfigError(str(exc)) from None


def _parse_target(where: str, root: Path, data: Any) -> Target:
    if data is None:
        return Target()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: target must be a mapping, got {type(data).__name__}")
    _check_keys(where, data, _TARGET_KEYS)
    target = Target()
    pose = data.get("pose") or {}
    if not isinstance(pose, Mapping):
        raise ConfigError(f"{where}.pose: expected a mapping like {{yaw: 20, pitch: 0, roll: 0}}")
    _check_keys(f"{where}.pose", pose, set(AXES))
    for axis, value in pose.items():
        if value is None:
            continue
        try:
            angle = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.pose.{axis}: expected degrees, got {value!r}") from None
        if not -180.0 <= angle <= 180.0:
            raise ConfigError(f"{where}.pose.{axis}: {angle} is outside [-180, 180] degrees")
        target.pose[axis] = angle
    blend = dict(data.get("blendshapes") or {})
    if data.get("expression"):
        target.expression = str(data["expression"])
        blend = {**resolve_expression_preset(target.expression), **blend}
    for key, value in blend.items():
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"{where}.blendshapes.{key}: expected a score in [0, 1], got {value!r}")
    target.blendshapes = {str(k): float(v) for k, v in blend.items()}
    if data.get("landmarks") is not None:
        path = _existing(f"{where}.landmarks", root, data["landmarks"])
        if path.suffix != ".npy":
            raise ConfigError(f"{where}.landmarks: expected a .npy array of shape (N, 2|3), got {path.name}")
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or arr.shape[1] not in (2, 3):
            raise ConfigError(f"{where}.landmarks: {path} has shape {arr.shape}, expected (N, 2) or (N, 3)")
        target.landmarks, target.landmarks_path = arr.astype(np.float64), path
        size = data.get("landmarks_image_size")
        if size is not None:
            if not (isinstance(size, list | tuple) and len(size) == 2 and all(int(v) > 0 for v in size)):
                raise ConfigError(f"{where}.landmarks_image_size: expected [width, height], got {size!r}")
            target.landmarks_image_size = (int(size[0]), int(size[1]))
    return target


def parse_manifest(data: Any, root: str | os.PathLike, path: Path | None = None) -> Manifest:
    """Validate a manifest already read into Python objects (see the module docstring for the format).

    Raises:
        ConfigError: unknown keys, missing ids/references, duplicate ids, missing files, bad values.
    """
    where = str(path or "manifest")
    root = Path(root).resolve()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with an 'entries' list at the top level")
    _check_keys(where, data, _TOP_KEYS)
    entries_data = data.get("entries")
    if not isinstance(entries_data, list) or not entries_data:
        raise ConfigError(f"{where}: 'entries' must be a non-empty list")
    entries, seen = [], set()
    for i, raw in enumerate(entries_data):
        ew = f"{where}: entries[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{ew}: expected a mapping")
        _check_keys(ew, raw, _ENTRY_KEYS)
        entry_id = str(raw.get("id") or "").strip()
        if not entry_id:
            raise ConfigError(f"{ew}: missing 'id'")
        if entry_id in seen:
            raise ConfigError(f"{ew}: duplicate id {entry_id!r}")
        if any(c in entry_id for c in "/\\") or entry_id in (".", ".."):
            raise ConfigError(f"{ew}: id {entry_id!r} must not contain path separators")
        seen.add(entry_id)
        ew = f"{where}: entry {entry_id!r}"
        refs = raw.get("references")
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not refs:
            raise ConfigError(f"{ew}: 'references' must be a non-empty list of photo paths")
        generated = raw.get("generated")
        if generated is not None:
            if isinstance(generated, str):
                generated = [generated]
            if not isinstance(generated, list) or not all(isinstance(g, str) for g in generated):
                raise ConfigError(f"{ew}: 'generated' must be a list of image paths")
        entries.append(
            Entry(
                id=entry_id,
                references=[_existing(f"{ew}.references", root, r) for r in refs],
                prompt=str(raw.get("prompt") or ""),
                ground_truth=_existing(f"{ew}.ground_truth", root, raw["ground_truth"])
                if raw.get("ground_truth")
                else None,
                target=_parse_target(f"{ew}.target", root, raw.get("target")),
                generated=generated,
            )
        )
    pattern = str(data.get("generated_pattern") or DEFAULT_PATTERN)
    if "{id}" not in pattern:
        raise ConfigError(f"{where}: generated_pattern {pattern!r} must contain {{id}}")
    name = str(data.get("name") or (path.stem if path else "benchmark"))
    return Manifest(name=name, entries=entries, root=root, generated_pattern=pattern, path=path)


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a ``.json`` / ``.yaml`` / ``.yml`` manifest (paths relative to its folder)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # any parse error becomes a user error
        raise ConfigError(f"manifest {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
    return parse_manifest(data, path.parent, path)


def manifest_from_folders(references: str | os.PathLike, prompt: str = "", name: str = "folder") -> Manifest:
    """A one-entry manifest: every generated image (any name) is scored against all photos of ``references``."""
    folder = Path(references).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"reference folder {folder} does not exist")
    refs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not refs:
        raise DatasetError(f"reference folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    entry = Entry(id=name, references=refs, prompt=prompt)
    return Manifest(name=name, entries=[entry], root=folder, generated_pattern="*")


def resolve_generated(manifest: Manifest, generated_dir: str | os.PathLike | None) -> dict[str, list[Path]]:
    """Generated image paths of each entry: its ``generated`` list, or the files matching the pattern.

    Raises:
        DatasetError: the folder is missing or empty, or no entry matched any file.
        ConfigError: an explicitly listed generated file does not exist.
    """
    folder = Path(generated_dir).expanduser().resolve() if generated_dir is not None else manifest.root
    if not folder.is_dir():
        raise DatasetError(f"generated-images folder {folder} does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    out: dict[str, list[Path]] = {}
    for entry in manifest.entries:
        if entry.generated is not None:
            paths = [(folder / g).resolve() for g in entry.generated]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise ConfigError(f"entry {entry.id!r}: generated image(s) not found: {', '.join(missing)}")
            out[entry.id] = paths
        else:
            pattern = manifest.generated_pattern.replace("{id}", entry.id)
            out[entry.id] = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images and not any(out.values()):
        raise DatasetError(f"generated-images folder {folder} holds no images")
    if not any(out.values()):
        raise DatasetError(
            f"no generated image in {folder} matches the manifest (pattern {manifest.generated_pattern!r}, "
            f"e.g. {manifest.generated_pattern.replace('{id}', manifest.entries[0].id)!r}); rename the files or "
            "set generated_pattern / generated in the manifest"
        )
    for entry_id, paths in out.items():
        if not paths:
            logger.warning("entry %r: no generated image found; it is reported as missing", entry_id)
    matched = {p for paths in out.values() for p in paths}
    unmatched = [p for p in images if p not in matched]
    if unmatched and manifest.generated_pattern != "*":
        logger.warning(
            "%d image(s) in %s match no manifest entry (e.g. %s)", len(unmatched), folder, unmatched[0].name
        )
    return out


def target_from_generated_landmarks(generated: Any, npy_path: str | os.PathLike, root: str | os.PathLike) -> dict:
    """The manifest ``target`` of a generation made from :func:`hifi_portrait.landmarks.generate_landmarks`.

    Saves ``generated.landmarks`` (``(478, 3)`` pixels of the generation canvas) to ``npy_path`` and returns
    ``{"pose", "blendshapes", "landmarks", "landmarks_image_size"}`` with the path relative to ``root`` (the
    manifest's folder), ready to put under an entry's ``target``.

    Args:
        generated: a ``GeneratedLandmarks`` (anything with ``landmarks``, ``size`` and ``target`` with
            ``yaw``, ``pitch``, ``roll``, ``blendshapes``).
    """
    path = Path(npy_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(generated.landmarks, dtype=np.float64))
    t = generated.target
    try:
        rel = str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        rel = str(path.resolve())
    return {
        "pose": {"yaw": float(t.yaw), "pitch": float(t.pitch), "roll": float(t.roll)},
        "blendshapes": {k: float(v) for k, v in t.blendshapes.items()},
        "landmarks": rel,
        "landmarks_image_size": [int(generated.size[0]), int(generated.size[1])],
    }
