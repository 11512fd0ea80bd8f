"""Configuration of the dataset builder: nested dataclasses, loaded from YAML or JSON with strict key checking.

Every threshold the builder uses lives here so that a user can tune it in one file
(``hifi-portrait build-dataset ... --config builder.yaml``). Unknown keys are an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hifi_portrait.errors import ConfigError

#: Cosine-similarity thresholds that separate "same person" from "different people", by identity model.
#: dlib's 128-d model: same person >= ~0.92 (Euclidean distance <= ~0.4 on unit vectors); ArcFace-like 512-d: ~0.4.
DEFAULT_SAME_PERSON_COSINE = {"dlib": 0.92, "arcface": 0.40, "antelopev2": 0.40, "buffalo": 0.40}


@dataclass
class QualityConfig:
    """Thresholds of the quality filter (a face failing one is recorded in the failures file with the reason)."""

    min_face_size: float = 48.0  # shorter side of the face box, pixels
    min_sharpness: float = 10.0  # variance of the Laplacian of the face crop (raw "sharpness" measure)
    max_abs_yaw: float = 60.0  # degrees
    max_abs_pitch: float = 40.0  # degrees
    max_occlusion: float = 0.15  # max(landmarks outside the photo, face not covered by the matte): cut-off/occluded
    min_det_score: float = 0.5
    min_quality: float = 0.0  # QualityScore.total


@dataclass
class ClusterConfig:
    """Identity clustering (used for images without an identity label) and cluster purification."""

    method: str = "average"  # "average" (average linkage on the k-NN graph) or "components" (previous method)
    threshold: float | None = None  # "average": mean cosine joining two groups; None = calibrated per identity model
    edge_threshold: float | None = None  # cosine of a candidate k-NN edge ("average" only); None = threshold
    k: int = 10  # neighbours per image in the k-NN graph
    mutual: bool = False  # keep only mutual k-NN edges (more precise, slightly lower recall)
    outlier_threshold: float | None = None  # drop members whose cosine to their centroid is below; None = auto
    merge_threshold: float | None = None  # "components" only: merge clusters with closer centroids; None = auto
    duplicate_hash_distance: int = 6  # near-duplicate images: Hamming distance of 64-bit dHash of aligned crops
    duplicate_cosine: float = 0.97  # ... and identity cosine at least this
    index: str = "auto"  # "flat" (exact), "blocked", "ivf", "hnsw" or "auto" (flat below 20k vectors, else blocked)
    purify_labeled: bool = True  # also drop identity outliers from user-labeled identities


@dataclass
class SelectionConfig:
    """Choice of references and targets per identity."""

    min_images: int = 2  # identities with fewer usable images are dropped
    max_refs: int = 4  # references per identity (at least 1)
    max_targets: int = 4  # held-out targets per identity (at least 1)
    pose_scale: float = 30.0  # degrees counted as one unit of the pose/expression distance
    expression_weight: float = 1.0  # weight of the 51 blendshape scores in the diversity distance


@dataclass
class OutputConfig:
    """How the dataset is written."""

    format: str = "webdataset"  # "webdataset" (tar shards) or "parquet" (parquet tables + image files)
    identities_per_shard: int = 500
    max_side: int = 1024  # longest side of the stored photo, pixels (the photo is only ever shrunk)
    jpeg_quality: int = 92
    plots: bool = True


@dataclass
class BuilderConfig:
    """Everything the dataset builder needs besides its inputs and output folder."""

    labels: str = "auto"  # "auto" (folders if every input is a folder with sub-folders), "folders", "column", "none"
    multi_face: str = "largest"  # "largest": keep the largest face; "skip": record photos with several faces as failed
    shard_size: int = 64  # images per analysis shard (the unit of work, resumption and parallelism)
    workers: int = 0  # analysis processes for the local engine; 0 = number of CPU cores
    max_image_pixels: int = 40_000_000  # larger photos are refused (decompression bombs)
    captioner: str | None = None  # "package.module:callable" returning a caption for (image, record); None = template
    seed: int = 0
    quality: QualityConfig = field(default_factory=QualityConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        _check_choice("labels", self.labels, ("auto", "folders", "column", "none"))
        _check_choice("multi_face", self.multi_face, ("largest", "skip"))
        _check_choice("output.format", self.output.format, ("webdataset", "parquet"))
        _check_choice("cluster.index", self.cluster.index, ("auto", "flat", "blocked", "ivf", "hnsw"))
        for name, value, low in (
            ("shard_size", self.shard_size, 1),
            ("workers", self.workers, 0),
            ("selection.max_refs", self.selection.max_refs, 1),
            ("selection.max_targets", self.selection.max_targets, 1),
            ("selection.min_images", self.selection.min_images, 2),
            ("cluster.k", self.cluster.k, 1),
            ("output.identities_per_shard", self.output.identities_per_shard, 1),
            ("output.max_side", self.output.max_side, 64),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"config: {name} must be an integer >= {low}, got {value!r}")

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def analysis_fingerprint(self) -> str:
        """Hash of the settings that change the per-image analysis (a change invalidates cached shards)."""
        key = json.dumps({"multi_face": self.multi_face, "max_px": self.max_image_pixels})
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> BuilderConfig:
        return _build(cls, data, where)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config: {name} must be one of {', '.join(choices)}; got {value!r}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(fields)} (see docs/dataset.md)"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> BuilderConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file; ``None`` gives the defaults.

    Raises:
        ConfigError: the file is missing, unreadable, or has unknown keys / bad values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML or JSON file to --config")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
            raise ConfigError(f"config file {path} could not be parsed: {exc}") from None
    if overrides:
        data = {**data, **overrides}
    return BuilderConfig.from_dict(data, where=str(path) if path else "config")


def same_person_threshold(config: ClusterConfig, identity_model: str) -> float:
    """The k-NN edge threshold: the configured one, or the default for ``identity_model``."""
    if config.threshold is not None:
        return float(config.threshold)
    from hifi_portrait.face.face_set import same_person_threshold as face_default

    try:
        return float(face_default(identity_model))
    except ConfigError:
        pass
    for key, value in DEFAULT_SAME_PERSON_COSINE.items():
        if key in identity_model.lower():
            return value
    raise ConfigError(
        f"no default clustering threshold for identity model {identity_model!r}; set cluster.threshold in the config"
    )
