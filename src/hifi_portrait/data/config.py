"""Configuration of the dataset builder: nested strict models, loaded from YAML or JSON.

Every threshold the builder uses lives here so that a user can tune it in one file
(``hifi-portrait build-dataset ... --config builder.yaml``). Unknown keys are an error with a suggestion, every field
has a type and a range (see :mod:`hifi_portrait.utils.config` for the rules and the safe file reader).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from hifi_portrait.errors import ConfigError
from hifi_portrait.utils.config import ConfigModel, Float, ImportSpec, load_model

#: Cosine-similarity thresholds that separate "same person" from "different people", by identity model.
#: dlib's 128-d model: same person >= ~0.92 (Euclidean distance <= ~0.4 on unit vectors); ArcFace-like 512-d: ~0.4.
DEFAULT_SAME_PERSON_COSINE = {"dlib": 0.92, "arcface": 0.40, "antelopev2": 0.40, "buffalo": 0.40}

#: Largest int a count/size field takes (also the seed range): fits every int32 consumer.
INT32_MAX = 2**31 - 1


class QualityConfig(ConfigModel):
    """Thresholds of the quality filter (a face failing one is recorded in the failures file with the reason)."""

    _docs = "docs/dataset.md#configuration"

    min_face_size: Float = Field(48.0, ge=1, le=20_000, description="shorter side of the face box, pixels")
    min_sharpness: Float = Field(10.0, ge=0, le=1e6, description="variance of the Laplacian of the face crop")
    max_abs_yaw: Float = Field(60.0, ge=0, le=180, description="degrees")
    max_abs_pitch: Float = Field(40.0, ge=0, le=90, description="degrees")
    max_occlusion: Float = Field(0.15, ge=0, le=1, description="fraction of the face cut off or occluded")
    min_det_score: Float = Field(0.5, ge=0, le=1, description="face detector score")
    min_quality: Float = Field(0.0, ge=0, le=1, description="QualityScore.total, in [0, 1]")


class ClusterConfig(ConfigModel):
    """Identity clustering (used for images without an identity label) and cluster purification."""

    _docs = "docs/dataset.md#configuration"

    method: Literal["average", "components"] = Field(
        "average", description="average linkage on the k-NN graph, or components (the previous method)"
    )
    threshold: Float | None = Field(None, gt=0, lt=1, description="same-person cosine; null = by identity model")
    edge_threshold: Float | None = Field(
        None, gt=0, lt=1, description="cosine of a candidate k-NN edge (average only); null = threshold"
    )
    k: int = Field(10, ge=1, le=1000, description="neighbours per image in the k-NN graph")
    mutual: bool = Field(False, description="keep only mutual k-NN edges")
    outlier_threshold: Float | None = Field(None, ge=0, lt=1, description="cosine to the centroid; null = auto")
    merge_threshold: Float | None = Field(
        None, gt=0, le=1, description="components only: centroid cosine to merge; null = auto"
    )
    duplicate_hash_distance: int = Field(6, ge=-1, le=64, description="dHash Hamming distance; -1 = keep duplicates")
    duplicate_cosine: Float = Field(0.97, gt=0, le=1, description="identity cosine of near-duplicates")
    index: Literal["auto", "flat", "blocked", "ivf", "hnsw"] = Field("auto", description="k-NN search")
    purify_labeled: bool = Field(True, description="also drop identity outliers from labeled identities")


class SelectionConfig(ConfigModel):
    """Choice of references and targets per identity."""

    _docs = "docs/dataset.md#configuration"

    min_images: int = Field(2, ge=2, le=100_000, description="identities with fewer usable images are dropped")
    max_refs: int = Field(4, ge=1, le=1000, description="references per identity")
    max_targets: int = Field(4, ge=1, le=1000, description="held-out targets per identity")
    pose_scale: Float = Field(30.0, gt=0, le=360, description="degrees counted as one unit of pose distance")
    expression_weight: Float = Field(1.0, ge=0, le=1000, description="weight of the blendshape scores")


class OutputConfig(ConfigModel):
    """How the dataset is written."""

    _docs = "docs/dataset.md#configuration"

    format: Literal["webdataset", "parquet"] = Field("webdataset", description="tar shards or parquet tables")
    identities_per_shard: int = Field(500, ge=1, le=1_000_000, description="identities per output shard")
    max_side: int = Field(1024, ge=64, le=16_384, description="longest side of the stored photo, pixels")
    jpeg_quality: int = Field(92, ge=1, le=100, description="JPEG quality of the stored photos")
    plots: bool = Field(True, description="write the statistics plots")


class BuilderConfig(ConfigModel):
    """Everything the dataset builder needs besides its inputs and output folder."""

    _docs = "docs/dataset.md#configuration"

    labels: Literal["auto", "folders", "column", "none"] = Field("auto", description="where identity labels come from")
    multi_face: Literal["largest", "skip"] = Field("largest", description="policy for photos with several faces")
    shard_size: int = Field(64, ge=1, le=100_000, description="images per analysis shard")
    workers: int = Field(0, ge=0, le=4096, description="analysis processes; 0 = number of CPU cores")
    max_image_pixels: int = Field(40_000_000, ge=4096, le=1_000_000_000, description="larger photos are refused")
    captioner: ImportSpec | None = Field(None, description="'package.module:function' (user code); null = template")
    seed: int = Field(0, ge=0, le=INT32_MAX, description="random seed")
    quality: QualityConfig = Field(default_factory=QualityConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def analysis_fingerprint(self) -> str:
        """Hash of the settings that change the per-image analysis (a change invalidates cached shards)."""
        key = json.dumps({"multi_face": self.multi_face, "max_px": self.max_image_pixels})
        return hashlib.sha256(key.encode()).hexdigest()[:12]


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> BuilderConfig:
    """Read a YAML or JSON (``.json``) config file; ``None`` gives the defaults.

    Args:
        path: the config file, or ``None``.
        overrides: ``{"dotted.key": value}`` applied on top of the file (e.g. ``{"output.format": "parquet"}``),
            validated like the file's values.

    Raises:
        ConfigError: the file is missing, unreadable, too large, not safe YAML/JSON, or has unknown keys or bad
            values (the message names the file, line and key).
    """
    items = [(tuple(key.split(".")), value, f"override {key}={value!r}") for key, value in (overrides or {}).items()]
    return load_model(BuilderConfig, path, overrides=items)


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
