"""Training configuration: nested dataclasses, loaded from YAML with strict keys and checked values.

A config file has one mapping per section (``model``, ``data``, ``train``, ``optim``, ``loss``,
``conditioning``, ``checkpointing``, ``validation``); every key is optional and defaults to the values below.
Unknown sections or keys are an error (:class:`~hifi_portrait.errors.ConfigError`) that names the file, the key
and the closest known key, so that a typo never silently trains with a default.

Example (see ``docs/training.md`` for a full one)::

    model:
      pretrained_model_name_or_path: /models/stable-diffusion-xl-base-1.0
      image_encoder_path: /models/CLIP-ViT-H-14
    data:
      train_data_dir: /data/hifi-portrait-dataset
      resolution: 1024
    train:
      output_dir: runs/hifi-portrait
      max_train_steps: 100000
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hifi_portrait.errors import ConfigError

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
REPORT_TO = ("tensorboard", "wandb", "none")


@dataclass
class ModelConfig:
    """Base model, image encoder and the trainable modules' hyper-parameters.

    Attributes:
        pretrained_model_name_or_path: local diffusers SDXL folder (``model_index.json``, ``unet/``, ``vae/``,
            ``text_encoder``/``_2``, ``tokenizer``/``_2``, ``scheduler/``).
        vae_model_name_or_path: optional separate VAE folder (e.g. the fp16-safe SDXL VAE).
        image_encoder_path: local CLIP vision folder (transformers ``CLIPVisionModelWithProjection``); ``null``
            means the dataset must provide precomputed patch tokens (``ref_patch_tokens``).
        adapter_init: optional ``.safetensors`` adapter to start from (fine-tuning / continued training).
        face_refiner: keyword arguments of ``FaceRefiner`` (its config).
        hifi_net: keyword arguments of ``HiFiNetModel.from_unet``.
        ip_attn: keyword arguments of the ID attention processors' installer.
        revision, variant: passed to ``from_pretrained`` of the base model parts (e.g. ``variant: fp16``).
    """

    pretrained_model_name_or_path: str = ""
    vae_model_name_or_path: str | None = None
    image_encoder_path: str | None = None
    adapter_init: str | None = None
    face_refiner: dict[str, Any] = field(default_factory=dict)
    hifi_net: dict[str, Any] = field(default_factory=dict)
    ip_attn: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None
    variant: str | None = None


@dataclass
class DataConfig:
    """Training data (the output folder of ``hifi-portrait build-dataset``).

    Attributes:
        train_data_dir: dataset folder.
        resolution: training image side in pixels (square); SDXL: 1024.
        max_refs: most reference photos per sample (fewer are padded and masked).
        min_refs: fewest reference photos per sample; with ``random_num_refs`` the dataset draws a count in
            ``[min_refs, max_refs]`` per sample and epoch, so the model learns to fuse any number of references.
        random_num_refs: draw the number of references per sample (else as many as available, up to max_refs).
        matte_references: composite the reference crops over gray with their face masks before the image
            encoder, as the pipeline does (``reference_pixels``); keep it equal to the pipeline's setting.
        ref_size: side of the reference crops given to the image encoder (None: as stored, 512; the encoder's
            preprocessing resizes them to its input size anyway).
        dataloader_num_workers: DataLoader worker processes.
        max_train_samples: use only the first N samples (debugging).
    """

    train_data_dir: str = ""
    resolution: int = 1024
    max_refs: int = 4
    min_refs: int = 1
    random_num_refs: bool = True
    matte_references: bool = True
    ref_size: int | None = 224
    dataloader_num_workers: int = 4
    max_train_samples: int | None = None


@dataclass
class TrainLoopConfig:
    """The loop itself: output, seed, batch, steps, precision, memory savers, EMA, logging.

    Attention runs through PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU),
    so there is no xformers option: diffusers' xformers switch would also replace the ID attention processors.
    """

    output_dir: str = "runs/hifi-portrait"
    seed: int | None = 42
    train_batch_size: int = 4
    num_train_epochs: int = 1
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    allow_tf32: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    report_to: str = "tensorboard"
    logging_dir: str = "logs"
    tracker_project_name: str = "hifi-portrait"
    log_every_steps: int = 1


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (AdamW, optionally bitsandbytes' 8-bit AdamW)."""

    learning_rate: float = 1e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 500
    lr_num_cycles: int = 1
    lr_power: float = 1.0
    use_8bit_adam: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    set_grads_to_none: bool = True


@dataclass
class LossConfig:
    """Diffusion loss, face-region weighting and the optional identity loss.

    Attributes:
        face_weight: loss weight inside the face mask (1 outside); 1 disables the weighting.
        noise_offset: offset noise strength (0 disables).
        snr_gamma: Min-SNR weighting gamma (``null`` disables; 5 is the paper's value).
        id_loss_weight: weight of the identity loss (0 disables; PuLID's is 1.0 with their 4-step branch).
        id_loss_max_timestep: only timesteps below this get the identity loss (the one-step x0 estimate of a
            very noisy latent is a blur without a face).
        id_recognizer: ``"package.module:factory"`` returning a differentiable ``torch.nn.Module`` mapping images
            ``(B, 3, S, S)`` in ``[-1, 1]`` to embeddings ``(B, D)`` (e.g. an ArcFace in PyTorch); the Python API
            also accepts a module directly.
        id_recognizer_kwargs: keyword arguments of that factory (e.g. a weights path).
        id_recognizer_input_size: side ``S`` of the square face crop the recognizer takes (ArcFace: 112).
    """

    face_weight: float = 1.0
    noise_offset: float = 0.0
    snr_gamma: float | None = None
    id_loss_weight: float = 0.0
    id_loss_max_timestep: int = 400
    id_recognizer: str | None = None
    id_recognizer_kwargs: dict[str, Any] = field(default_factory=dict)
    id_recognizer_input_size: int = 112


@dataclass
class ConditioningConfig:
    """Random dropout of the conditions so that classifier-free guidance works at inference.

    Each probability is per sample and independent; ``drop_all_prob`` additionally drops all three together
    (IP-Adapter uses 0.05 / 0.05 / 0.05 for image, text and both).
    """

    drop_id_prob: float = 0.05
    drop_landmarks_prob: float = 0.05
    drop_text_prob: float = 0.05
    drop_all_prob: float = 0.05


@dataclass
class CheckpointingConfig:
    """``checkpoint-{step}`` folders of the full training state (``accelerator.save_state``)."""

    checkpointing_steps: int = 1000
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None


@dataclass
class ValidationConfig:
    """Validation at intervals (every ``validation_steps``, and at the start and end of a run).

    Attributes:
        num_validation_samples: images generated from the first samples of the dataset, logged to TensorBoard
            and saved as PNG (0 disables).
        loss_samples: fixed-noise diffusion loss on the first samples (0 disables), logged as ``val_loss``.
        loss_timesteps: evenly spread timesteps at which that loss is measured.
        prompts: prompts for the images instead of the samples' captions.
    """

    validation_steps: int = 1000
    num_validation_samples: int = 2
    loss_samples: int = 4
    loss_timesteps: int = 5
    prompts: list[str] = field(default_factory=list)
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    resolution: int | None = None


@dataclass
class TrainingConfig:
    """The whole training configuration (one attribute per YAML section)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serializable) of every value, defaults included."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the full config (defaults included) as YAML; the run can be reproduced from this file alone."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` with scalars only (lists/dicts as strings), for tracker hparams."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                if value is None or isinstance(value, (list, dict)):
                    value = str(value)
                out[f"{section}.{key}"] = value
        return out

    def validate(self) -> TrainingConfig:
        """Check value ranges; raise :class:`ConfigError` naming the key. Returns ``self``."""
        _check_values(self)
        return self


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    return True


def _is_float_hint(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build_section(cls: type, values: Any, section: str, source: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section {section!r} must be a mapping of keys to values, got {values!r}.")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {key!r} in section {section!r}.{_suggest(str(key), known)} "
                f"Known keys: {', '.join(known)}."
            )
        if isinstance(value, str) and _is_float_hint(hints[key]):
            # PyYAML reads 1e-4 (no dot) as a string; accept what is clearly a number
            try:
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, hints[key]):
            raise ConfigError(
                f"{source}: {section}.{key} must be {_type_name(hints[key])}, got {value!r} ({type(value).__name__})."
            )
        if hints[key] is float or hints[key] == (float | None):
            value = float(value) if value is not None else None
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None, source: str = "<config>") -> TrainingConfig:
    """Build and validate a :class:`TrainingConfig` from a nested dict; ``source`` names it in errors."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}.")
    sections = {f.name: typing.get_type_hints(TrainingConfig)[f.name] for f in dataclasses.fields(TrainingConfig)}
    kwargs = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(
                f"{source}: unknown section {name!r}.{_suggest(str(name), list(sections))} "
                f"Known sections: {', '.join(sections)}."
            )
        kwargs[name] = _build_section(sections[name], values, name, source)
    return TrainingConfig(**kwargs).validate()


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, source: str = "--set") -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(
                f"{source}: override {item!r} must look like section.key=value (e.g. optim.learning_rate=1e-4)."
            )
        dotted, raw = item.split("=", 1)
        section, key = dotted.strip().split(".", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{source}: section {section!r} is not a mapping.")
        data[section][key] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainingConfig:
    """Read a YAML training config (or only defaults when ``path`` is None), apply overrides, validate.

    Raises:
        ConfigError: the file is missing, is not YAML, or has an unknown section/key or a bad value.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}.")
    apply_overrides(data, overrides)
    return config_from_dict(data, source=source)


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _check_values(cfg: TrainingConfig) -> None:
    t, o, d, c, lo, ck, v = (
        cfg.train,
        cfg.optim,
        cfg.data,
        cfg.conditioning,
        cfg.loss,
        cfg.checkpointing,
        cfg.validation,
    )
    _require(t.mixed_precision in MIXED_PRECISION, "train.mixed_precision", f"must be one of {MIXED_PRECISION}")
    _require(t.report_to in REPORT_TO, "train.report_to", f"must be one of {REPORT_TO}")
    _require(t.train_batch_size >= 1, "train.train_batch_size", "must be >= 1")
    _require(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps", "must be >= 1")
    _require(t.num_train_epochs >= 1, "train.num_train_epochs", "must be >= 1")
    _require(t.max_train_steps is None or t.max_train_steps >= 1, "train.max_train_steps", "must be >= 1 or null")
    _require(0.0 < t.ema_decay < 1.0, "train.ema_decay", "must be in (0, 1)")
    _require(t.log_every_steps >= 1, "train.log_every_steps", "must be >= 1")
    _require(o.lr_scheduler in LR_SCHEDULERS, "optim.lr_scheduler", f"must be one of {LR_SCHEDULERS}")
    _require(o.learning_rate > 0, "optim.learning_rate", "must be > 0")
    _require(o.lr_warmup_steps >= 0, "optim.lr_warmup_steps", "must be >= 0")
    _require(d.resolution >= 8 and d.resolution % 8 == 0, "data.resolution", "must be a positive multiple of 8")
    _require(1 <= d.min_refs <= d.max_refs, "data.min_refs", "must satisfy 1 <= min_refs <= max_refs")
    _require(d.dataloader_num_workers >= 0, "data.dataloader_num_workers", "must be >= 0")
    for name in ("drop_id_prob", "drop_landmarks_prob", "drop_text_prob", "drop_all_prob"):
        p = getattr(c, name)
        _require(0.0 <= p <= 1.0, f"conditioning.{name}", f"is a probability, must be in [0, 1], got {p}")
    _require(lo.face_weight > 0, "loss.face_weight", "must be > 0 (1 = no face weighting)")
    _require(lo.id_loss_weight >= 0, "loss.id_loss_weight", "must be >= 0")
    _require(lo.snr_gamma is None or lo.snr_gamma > 0, "loss.snr_gamma", "must be > 0 or null")
    _require(lo.id_recognizer_input_size >= 8, "loss.id_recognizer_input_size", "must be >= 8")
    _require(ck.checkpointing_steps >= 1, "checkpointing.checkpointing_steps", "must be >= 1")
    _require(
        ck.checkpoints_total_limit is None or ck.checkpoints_total_limit >= 1,
        "checkpointing.checkpoints_total_limit",
        "must be >= 1 or null",
    )
    _require(v.validation_steps >= 1, "validation.validation_steps", "must be >= 1")
    _require(v.num_validation_samples >= 0, "validation.num_validation_samples", "must be >= 0")
    _require(v.loss_samples >= 0, "validation.loss_samples", "must be >= 0")
    _require(v.loss_timesteps >= 1, "validation.loss_timesteps", "must be >= 1")
