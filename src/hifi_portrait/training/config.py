"""Training configuration: nested strict models, loaded from YAML with strict keys, types and ranges.

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

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, model_validator

from hifi_portrait.utils.config import ConfigModel, Float, ImportSpec, load_model
from hifi_portrait.utils.config import apply_overrides as _apply_overrides

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
REPORT_TO = ("tensorboard", "wandb", "none")

#: Largest step / count a field takes (fits int32 consumers) and the seed range.
INT32_MAX = 2**31 - 1
#: Longest path or name a string field takes.
MAX_TEXT = 4096
DOCS = "docs/training.md#3-a-full-config"


def _multiple_of_8(value: int | None) -> int | None:
    if value is not None and value % 8:
        raise ValueError("must be a positive multiple of 8 (the VAE downsamples by 8)")
    return value


#: A square image side in pixels: a multiple of 8 in [8, 8192] (tiny test models use 32).
Side = Annotated[int, Field(ge=8, le=8192), AfterValidator(_multiple_of_8)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class ModelConfig(ConfigModel):
    """Base model, image encoder and the trainable modules' hyper-parameters.

    Attributes:
        pretrained_model_name_or_path: local diffusers SDXL folder (``model_index.json``, ``unet/``, ``vae/``,
            ``text_encoder``/``_2``, ``tokenizer``/``_2``, ``scheduler/``).
        vae_model_name_or_path: optional separate VAE folder (e.g. the fp16-safe SDXL VAE).
        image_encoder_path: local CLIP vision folder (transformers ``CLIPVisionModelWithProjection``); ``null``
            means the dataset must provide precomputed patch tokens (``ref_patch_tokens``).
        adapter_init: optional ``.safetensors`` adapter to start from (fine-tuning / continued training).
        face_refiner: keyword arguments of ``FaceRefiner`` (its config; names checked when it is built).
        hifi_net: keyword arguments of ``HiFiNetModel.from_unet``.
        ip_attn: keyword arguments of the ID attention processors' installer.
        revision, variant: passed to ``from_pretrained`` of the base model parts (e.g. ``variant: fp16``).
    """

    _docs = DOCS

    pretrained_model_name_or_path: Text = Field("", description="local diffusers SDXL folder")
    vae_model_name_or_path: Text | None = Field(None, description="separate VAE folder")
    image_encoder_path: Text | None = Field(None, description="local CLIP vision folder")
    adapter_init: Text | None = Field(None, description=".safetensors adapter to start from")
    face_refiner: dict[str, Any] = Field(default_factory=dict, description="FaceRefiner keyword arguments")
    hifi_net: dict[str, Any] = Field(default_factory=dict, description="HiFiNetModel.from_unet keyword arguments")
    ip_attn: dict[str, Any] = Field(default_factory=dict, description="ID attention installer keyword arguments")
    revision: Text | None = Field(None, description="revision of the base model parts")
    variant: Text | None = Field(None, description="variant of the base model parts, e.g. fp16")


class DataConfig(ConfigModel):
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

    _docs = DOCS

    train_data_dir: Text = Field("", description="dataset folder (build-dataset output)")
    resolution: Side = Field(1024, description="training image side, a multiple of 8")
    max_refs: int = Field(4, ge=1, le=64, description="most reference photos per sample")
    min_refs: int = Field(1, ge=1, le=64, description="fewest reference photos per sample, <= max_refs")
    random_num_refs: bool = Field(True, description="draw the number of references per sample")
    matte_references: bool = Field(True, description="composite the references over gray with their masks")
    ref_size: int | None = Field(224, ge=8, le=4096, description="side of the reference crops; null = as stored")
    dataloader_num_workers: int = Field(4, ge=0, le=256, description="DataLoader worker processes")
    max_train_samples: int | None = Field(None, ge=1, le=INT32_MAX, description="use only the first N samples")

    @model_validator(mode="after")
    def _refs_in_order(self) -> DataConfig:
        if self.min_refs > self.max_refs:
            raise ValueError(
                f"min_refs ({self.min_refs}) must be <= max_refs ({self.max_refs}): 1 <= min_refs <= max_refs"
            )
        return self


class TrainLoopConfig(ConfigModel):
    """The loop itself: output, seed, batch, steps, precision, memory savers, EMA, logging.

    Attention runs through PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU),
    so there is no xformers option: diffusers' xformers switch would also replace the ID attention processors.
    """

    _docs = DOCS

    output_dir: Text = Field("runs/hifi-portrait", min_length=1, description="run folder")
    seed: int | None = Field(42, ge=0, le=INT32_MAX, description="random seed; null = unseeded")
    train_batch_size: int = Field(4, ge=1, le=4096, description="samples per process and step")
    num_train_epochs: int = Field(1, ge=1, le=INT32_MAX, description="epochs (unless max_train_steps)")
    max_train_steps: int | None = Field(None, ge=1, le=INT32_MAX, description="optimizer steps; null = by epochs")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="micro-batches per optimizer step")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    mixed_precision: Literal[MIXED_PRECISION] = Field("no", description="no, fp16 or bf16")
    allow_tf32: bool = Field(False, description="TF32 matmuls on Ampere+ GPUs")
    use_ema: bool = Field(False, description="keep an exponential moving average of the weights")
    ema_decay: Float = Field(0.9999, gt=0, lt=1, description="EMA decay")
    report_to: Literal[REPORT_TO] = Field("tensorboard", description="tracker")
    logging_dir: Text = Field("logs", description="tracker folder under output_dir")
    tracker_project_name: Text = Field("hifi-portrait", description="tracker project name")
    log_every_steps: int = Field(1, ge=1, le=INT32_MAX, description="steps between logged losses")


class OptimConfig(ConfigModel):
    """Optimizer and learning-rate schedule (AdamW, optionally bitsandbytes' 8-bit AdamW)."""

    _docs = DOCS

    learning_rate: Float = Field(1e-4, gt=0, le=1, description="AdamW learning rate")
    scale_lr: bool = Field(False, description="multiply the learning rate by the global batch size")
    lr_scheduler: Literal[LR_SCHEDULERS] = Field("constant_with_warmup", description="diffusers scheduler name")
    lr_warmup_steps: int = Field(500, ge=0, le=INT32_MAX, description="warm-up steps")
    lr_num_cycles: int = Field(1, ge=1, le=100_000, description="cycles of cosine_with_restarts")
    lr_power: Float = Field(1.0, gt=0, le=100, description="power of the polynomial schedule")
    use_8bit_adam: bool = Field(False, description="bitsandbytes 8-bit AdamW")
    adam_beta1: Float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    adam_beta2: Float = Field(0.999, ge=0, lt=1, description="AdamW beta2")
    adam_weight_decay: Float = Field(1e-2, ge=0, le=10, description="AdamW weight decay")
    adam_epsilon: Float = Field(1e-8, gt=0, le=1, description="AdamW epsilon")
    max_grad_norm: Float = Field(1.0, ge=0, le=1e6, description="gradient clipping norm; 0 = no clipping")
    set_grads_to_none: bool = Field(True, description="zero_grad(set_to_none=...)")


class LossConfig(ConfigModel):
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
            also accepts a module directly. This imports and runs user code.
        id_recognizer_kwargs: keyword arguments of that factory (e.g. a weights path).
        id_recognizer_input_size: side ``S`` of the square face crop the recognizer takes (ArcFace: 112).
    """

    _docs = DOCS

    face_weight: Float = Field(1.0, gt=0, le=1000, description="loss weight inside the face mask")
    noise_offset: Float = Field(0.0, ge=0, le=1, description="offset noise strength")
    snr_gamma: Float | None = Field(None, gt=0, le=1000, description="Min-SNR gamma; null = off")
    id_loss_weight: Float = Field(0.0, ge=0, le=1000, description="identity loss weight; 0 = off")
    id_loss_max_timestep: int = Field(400, ge=0, le=10_000, description="timesteps below get the identity loss")
    id_recognizer: ImportSpec | None = Field(None, description="'package.module:factory' (user code)")
    id_recognizer_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    id_recognizer_input_size: int = Field(112, ge=8, le=4096, description="side of the recognizer's face crop")


class ConditioningConfig(ConfigModel):
    """Random dropout of the conditions so that classifier-free guidance works at inference.

    Each probability is per sample and independent; ``drop_all_prob`` additionally drops all three together
    (IP-Adapter uses 0.05 / 0.05 / 0.05 for image, text and both).
    """

    _docs = DOCS

    drop_id_prob: Float = Field(0.05, ge=0, le=1, description="a probability")
    drop_landmarks_prob: Float = Field(0.05, ge=0, le=1, description="a probability")
    drop_text_prob: Float = Field(0.05, ge=0, le=1, description="a probability")
    drop_all_prob: Float = Field(0.05, ge=0, le=1, description="a probability")


class CheckpointingConfig(ConfigModel):
    """``checkpoint-{step}`` folders of the full training state (``accelerator.save_state``)."""

    _docs = DOCS

    checkpointing_steps: int = Field(1000, ge=1, le=INT32_MAX, description="steps between checkpoints")
    checkpoints_total_limit: int | None = Field(None, ge=1, le=100_000, description="checkpoints kept; null = all")
    resume_from_checkpoint: Text | None = Field(None, description="'latest' or a checkpoint folder")


class ValidationConfig(ConfigModel):
    """Validation at intervals (every ``validation_steps``, and at the start and end of a run).

    Attributes:
        num_validation_samples: images generated from the first samples of the dataset, logged to TensorBoard
            and saved as PNG (0 disables).
        loss_samples: fixed-noise diffusion loss on the first samples (0 disables), logged as ``val_loss``.
        loss_timesteps: evenly spread timesteps at which that loss is measured.
        prompts: prompts for the images instead of the samples' captions.
    """

    _docs = DOCS

    validation_steps: int = Field(1000, ge=1, le=INT32_MAX, description="steps between validations")
    num_validation_samples: int = Field(2, ge=0, le=1000, description="validation images; 0 = off")
    loss_samples: int = Field(4, ge=0, le=10_000, description="samples of the validation loss; 0 = off")
    loss_timesteps: int = Field(5, ge=1, le=1000, description="timesteps of the validation loss")
    prompts: list[Annotated[str, Field(max_length=MAX_TEXT)]] = Field(
        default_factory=list, max_length=1000, description="prompts instead of the captions"
    )
    num_inference_steps: int = Field(30, ge=1, le=1000, description="sampling steps of the validation images")
    guidance_scale: Float = Field(5.0, ge=0, le=100, description="classifier-free guidance scale")
    resolution: Side | None = Field(None, description="image side, a multiple of 8; null = data.resolution")


class TrainingConfig(ConfigModel):
    """The whole training configuration (one attribute per YAML section)."""

    _docs = DOCS
    _sections = True

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    conditioning: ConditioningConfig = Field(default_factory=ConditioningConfig)
    checkpointing: CheckpointingConfig = Field(default_factory=CheckpointingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

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
        """Check every value again (also values mutated in place, e.g. in a dict); returns ``self``.

        Raises:
            ConfigError: naming the key.
        """
        type(self).from_dict(self.to_dict(), source="config")
        return self


def config_from_dict(data: dict[str, Any] | None, source: str = "<config>") -> TrainingConfig:
    """Build and validate a :class:`TrainingConfig` from a nested dict; ``source`` names it in errors."""
    return TrainingConfig.from_dict(data, source=source)


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, source: str = "--set") -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML, safely) to a nested dict, in place; returns it."""
    return _apply_overrides(data, overrides, min_parts=2)


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    options: Iterable[tuple[tuple[str, ...], Any, str]] = (),
) -> TrainingConfig:
    """Read a YAML (or ``.json``) training config (only defaults when ``path`` is None), apply overrides, validate.

    Args:
        path: the config file, or ``None``.
        overrides: ``section.key=value`` strings (``--set``), values read as YAML.
        options: ``(key path, value, option)`` from dedicated command-line options (e.g. ``--resume``), applied
            after the file and before ``overrides``; errors name the option.

    Raises:
        ConfigError: the file is missing, too large, not safe YAML (aliases, tags, duplicate keys), or has an
            unknown section/key or a bad value (the message names the file, line and key).
    """
    return load_model(TrainingConfig, path, overrides=options, set_overrides=overrides, min_parts=2)
