"""The training loop (accelerate), after diffusers' ``examples/controlnet/train_controlnet_sdxl.py``.

Run it as ``hifi-portrait train --config FILE`` or, for several GPUs,
``accelerate launch -m hifi_portrait.training.train --config FILE``.

What it does: loads the frozen SDXL parts from a local folder, builds the trainable face refiner, HiFi-Net and ID
attention, reads the dataset, and optimizes the diffusion loss (+ optional identity loss) with mixed precision,
gradient accumulation and checkpointing, optional EMA and 8-bit Adam. ``checkpoint-{step}`` folders hold the whole
training state (resume with ``checkpointing.resume_from_checkpoint: latest``); the full config is saved beside
them as ``config.yaml``; validation images go to TensorBoard; the final adapter is one ``.safetensors`` file.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from hifi_portrait.errors import ConfigError, DatasetError
from hifi_portrait.training import adapter_io
from hifi_portrait.training.checkpointing import (
    TrainingRNG,
    checkpoint_step,
    resolve_resume,
    rotate_checkpoints,
)
from hifi_portrait.training.components import (
    build_trainable,
    load_base_model,
    load_id_recognizer,
    load_image_encoder,
    weight_dtype_of,
)
from hifi_portrait.training.config import TrainingConfig, load_config
from hifi_portrait.training.data import infer_input_dims, load_train_dataset, make_dataloader, set_dataset_epoch
from hifi_portrait.training.modules import HiFiPortraitTrainingModel
from hifi_portrait.training.optim import make_lr_scheduler, make_optimizer
from hifi_portrait.training.step import Frozen, compute_step

logger = logging.getLogger(__name__)

ADAPTER_NAME = "hifi_portrait_adapter.safetensors"
CONFIG_NAME = "config.yaml"


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        global_step: optimizer steps done (including those before a resume).
        losses: mean loss of each optimizer step of *this* run, in order.
        adapter_path: the exported adapter (None when the run stopped early with ``stop_after_steps``).
        output_dir: the run folder.
        resumed_from: the checkpoint this run resumed from, if any.
        seconds: wall time of the run.
        val_losses: ``{step: fixed-noise validation loss}`` (see ``validation.loss_samples``).
    """

    global_step: int
    losses: list[float] = field(default_factory=list)
    adapter_path: Path | None = None
    output_dir: Path | None = None
    resumed_from: Path | None = None
    seconds: float = 0.0
    val_losses: dict[int, float] = field(default_factory=dict)
    model: nn.Module | None = None


def _make_accelerator(cfg: TrainingConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    out = Path(cfg.train.output_dir)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / cfg.train.logging_dir))
    log_with = None if cfg.train.report_to == "none" else cfg.train.report_to
    if log_with == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "train.report_to is tensorboard but tensorboard is not installed: "
                "`pip install 'hifi-portrait[train]'`, or set train.report_to: none."
            ) from None
    _reset_accelerate_state()
    return Accelerator(
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        mixed_precision=cfg.train.mixed_precision,
        log_with=log_with,
        project_config=project,
        cpu=_distributed_without_accelerator(),
    )


def _distributed_without_accelerator() -> bool:
    """Several processes (``accelerate launch --multi_gpu --num_processes N``) on a machine without a GPU.

    accelerate only sets up CPU processes (gloo) when told ``cpu=True`` (or ``ACCELERATE_USE_CPU``); otherwise
    each process silently trains alone. So a multi-process launch on a machine without an accelerator runs on CPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    available = getattr(getattr(torch, "accelerator", None), "is_available", None)
    return not (available() if available is not None else torch.cuda.is_available())


def _reset_accelerate_state() -> None:
    """Let a second ``train()`` in the same single process use other precision/accumulation settings.

    accelerate keeps process-wide singletons (``AcceleratorState``, ``GradientState``) that refuse a new
    ``mixed_precision``; in a single-process run nothing else depends on them between runs, so they are cleared
    (the distributed ``PartialState`` is kept).
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().num_processes > 1:
        return
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def train(
    cfg: TrainingConfig,
    *,
    dataset=None,
    id_recognizer: nn.Module | None = None,
    image_encoder: nn.Module | None = None,
    stop_after_steps: int | None = None,
    return_model: bool = False,
) -> TrainResult:
    """Train (or resume) a HiFi-Portrait adapter as configured.

    Args:
        cfg: the training configuration (see :mod:`hifi_portrait.training.config`).
        dataset: a map-style Dataset yielding training samples; default: read ``cfg.data.train_data_dir``.
        id_recognizer: differentiable face recognizer for the identity loss (overrides ``loss.id_recognizer``).
        image_encoder: CLIP vision tower for the references (overrides ``model.image_encoder_path``).
        stop_after_steps: stop (after saving a checkpoint) once the global step reaches this value, without
            exporting: for time-limited jobs that are resumed later, and for tests of resumption.
        return_model: keep the unwrapped training model in the result (tests).

    Raises:
        DatasetError: the dataset is missing or empty. ModelFilesMissingError: base model files missing.
        ConfigError: an invalid option.
    """
    t0 = time.perf_counter()
    cfg.validate()
    out_dir = Path(cfg.train.output_dir)
    # cheap checks first, before loading gigabytes
    if dataset is None:
        dataset = load_train_dataset(cfg.data, seed=cfg.train.seed)
    if len(dataset) == 0:
        raise DatasetError(f"the training dataset {cfg.data.train_data_dir or '(given)'} is empty: no samples.")
    from hifi_portrait.training.components import check_base_model

    check_base_model(cfg.model.pretrained_model_name_or_path)

    accelerator = _make_accelerator(cfg)
    logger.info(
        "accelerate: %d process(es), device %s, mixed precision %s, distributed %s",
        accelerator.num_processes,
        accelerator.device,
        accelerator.mixed_precision,
        accelerator.distributed_type,
    )
    from accelerate.utils import set_seed

    if cfg.train.seed is not None:
        set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / CONFIG_NAME)

    # ---- models
    base = load_base_model(cfg.model)
    if image_encoder is None:
        image_encoder = load_image_encoder(cfg.model.image_encoder_path)
    if id_recognizer is None:
        id_recognizer = load_id_recognizer(cfg.loss)
    dims = infer_input_dims(dataset, image_encoder)
    vae_scale = 2 ** (len(base.vae.config.block_out_channels) - 1)
    cfg.model.hifi_net.setdefault("vae_scale_factor", vae_scale)
    face_refiner, hifi_net, processors = build_trainable(
        base.unet, cfg.model, dims.id_embed_dim, dims.patch_dim, dims.num_patches
    )
    model = HiFiPortraitTrainingModel(base.unet, face_refiner, hifi_net, processors)
    model.identity_model = getattr(dataset, "manifest", {}).get("identity_model")  # recorded in the adapter file
    if cfg.model.adapter_init:
        adapter_io.load_adapter_into(model, cfg.model.adapter_init)

    frozen_modules = [base.unet, base.vae, *base.text_encoders] + [m for m in (image_encoder, id_recognizer) if m]
    for m in frozen_modules:
        m.requires_grad_(False)
        m.eval()
    for m in model.trainable_modules().values():
        m.requires_grad_(True)
        m.train()

    if cfg.train.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if getattr(hifi_net, "_supports_gradient_checkpointing", False):
            hifi_net.enable_gradient_checkpointing()
    if cfg.train.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    # frozen parts in the compute dtype, trainable ones in fp32 (the ID processors live inside the UNet)
    weight_dtype = weight_dtype_of(accelerator.mixed_precision)
    device = accelerator.device
    vae_dtype = torch.float32 if not cfg.model.vae_model_name_or_path else weight_dtype
    for module, dtype in [(base.unet, weight_dtype), (base.vae, vae_dtype), (image_encoder, weight_dtype)] + [
        (enc, weight_dtype) for enc in base.text_encoders
    ]:
        _move(module, device, dtype)
    if id_recognizer is not None:
        id_recognizer.to(device)
    for m in model.trainable_modules().values():
        _move(m, device, torch.float32)

    # ---- optimizer, data, schedule
    lr = cfg.optim.learning_rate
    if cfg.optim.scale_lr:
        lr *= cfg.train.gradient_accumulation_steps * cfg.train.train_batch_size * accelerator.num_processes
    params = model.trainable_parameters()
    optimizer = make_optimizer(params, cfg.optim, learning_rate=lr)
    dataloader = make_dataloader(dataset, cfg)
    num_update_steps_per_epoch = math.ceil(
        math.ceil(len(dataloader) / accelerator.num_processes) / cfg.train.gradient_accumulation_steps
    )
    max_train_steps = cfg.train.max_train_steps or cfg.train.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = make_lr_scheduler(optimizer, cfg.optim, max_train_steps, accelerator.num_processes)

    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    num_update_steps_per_epoch = math.ceil(len(dataloader) / cfg.train.gradient_accumulation_steps)
    num_epochs = math.ceil(max_train_steps / num_update_steps_per_epoch)
    inner: HiFiPortraitTrainingModel = accelerator.unwrap_model(model)

    ema = None
    if cfg.train.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(inner.trainable_parameters(), decay=cfg.train.ema_decay)
        ema.to(device)
    rng = TrainingRNG(cfg.train.seed, device, accelerator.process_index, accelerator.num_processes)

    # checkpoints: our modules as one adapter file, EMA and the step RNG as safetensors; no pickle of ours
    def save_model_hook(models, weights, output_dir):
        # runs on every process (save_state is called on all of them): weights are written by the main process
        for i in reversed(range(len(models))):
            unwrapped = accelerator.unwrap_model(models[i])
            if isinstance(unwrapped, HiFiPortraitTrainingModel):
                if accelerator.is_main_process:
                    adapter_io.save_adapter(unwrapped, Path(output_dir) / ADAPTER_NAME)
                if weights:
                    weights.pop(i)
        if ema is not None and accelerator.is_main_process:
            adapter_io.save_ema(ema, Path(output_dir))
        adapter_io.save_rng(rng, Path(output_dir), accelerator.process_index)

    def load_model_hook(models, input_dir):
        for i in reversed(range(len(models))):
            if isinstance(accelerator.unwrap_model(models[i]), HiFiPortraitTrainingModel):
                adapter_io.load_adapter_into(accelerator.unwrap_model(models[i]), Path(input_dir) / ADAPTER_NAME)
                models.pop(i)
        if ema is not None:
            adapter_io.load_ema(ema, Path(input_dir))
        adapter_io.load_rng(rng, Path(input_dir), accelerator.process_index)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    if accelerator.is_main_process:
        accelerator.init_trackers(cfg.train.tracker_project_name, config=cfg.flat())

    frozen = Frozen(base.vae, base.text_encoders, base.tokenizers, base.noise_scheduler, image_encoder, id_recognizer)
    total_batch = cfg.train.train_batch_size * accelerator.num_processes * cfg.train.gradient_accumulation_steps
    logger.info(
        "training: %d samples, %d batches/epoch, %d epochs, batch %d (total %d), %d optimizer steps, %d trainable "
        "parameters",
        len(dataset),
        len(dataloader),
        num_epochs,
        cfg.train.train_batch_size,
        total_batch,
        max_train_steps,
        sum(p.numel() for p in params),
    )

    # ---- resume
    global_step, first_epoch, resume_batches = 0, 0, 0
    resumed_from = resolve_resume(out_dir, cfg.checkpointing.resume_from_checkpoint)
    if resumed_from is not None:
        logger.info("resuming from %s", resumed_from)
        accelerator.load_state(str(resumed_from))
        global_step = checkpoint_step(resumed_from)
        first_epoch = global_step // num_update_steps_per_epoch
        resume_batches = (global_step % num_update_steps_per_epoch) * cfg.train.gradient_accumulation_steps

    from hifi_portrait.training.validation import fixed_noise_loss, run_validation

    val_losses: dict[int, float] = {}

    def validate_loss(step: int) -> None:
        if cfg.validation.loss_samples > 0 and accelerator.is_main_process:
            val = fixed_noise_loss(
                inner,
                frozen,
                dataset,
                cfg,
                weight_dtype,
                device,
                cfg.validation.loss_samples,
                cfg.validation.loss_timesteps,
            )
            val_losses[step] = val
            accelerator.log({"val_loss": val}, step=step)
            logger.info("step %d: fixed-noise validation loss %.5f", step, val)

    if global_step == 0:
        validate_loss(0)

    progress = tqdm(
        range(max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    losses: list[float] = []
    step_loss, step_id_loss, micro = 0.0, 0.0, 0
    stopped = False
    for epoch in range(first_epoch, num_epochs):
        dataloader.set_epoch(epoch)
        set_dataset_epoch(dataset, epoch)  # reference subsets drawn per (seed, epoch, index)
        loader = dataloader
        if epoch == first_epoch and resume_batches:
            loader = accelerator.skip_first_batches(dataloader, resume_batches)
            loader.set_epoch(epoch)
        for batch in loader:
            with accelerator.accumulate(model):
                out = compute_step(
                    batch,
                    model,
                    frozen,
                    rng,
                    cfg.loss,
                    cfg.conditioning,
                    weight_dtype,
                    device,
                    matte=cfg.data.matte_references,
                )
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(
                        f"non-finite loss at step {global_step}: lower optim.learning_rate, use bf16 instead of "
                        "fp16, or set model.vae_model_name_or_path to an fp16-safe VAE."
                    )
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=cfg.optim.set_grads_to_none)
            step_loss += out.loss.detach().item()
            step_id_loss += 0.0 if out.id_loss is None else out.id_loss.item()
            micro += 1

            if accelerator.sync_gradients:
                if ema is not None:
                    ema.step(inner.trainable_parameters())
                global_step += 1
                progress.update(1)
                logs = {"loss": step_loss / micro, "lr": lr_scheduler.get_last_lr()[0]}
                if out.id_loss is not None:
                    logs["id_loss"] = step_id_loss / micro
                losses.append(logs["loss"])
                step_loss, step_id_loss, micro = 0.0, 0.0, 0
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                if global_step % cfg.train.log_every_steps == 0:
                    accelerator.log(logs, step=global_step)

                stopping = stop_after_steps is not None and global_step >= stop_after_steps
                if global_step % cfg.checkpointing.checkpointing_steps == 0 or stopping:
                    _save_checkpoint(accelerator, out_dir, global_step, cfg.checkpointing.checkpoints_total_limit)
                if global_step % cfg.validation.validation_steps == 0 and global_step < max_train_steps:
                    validate_loss(global_step)
                    if accelerator.is_main_process and cfg.validation.num_validation_samples > 0:
                        run_validation(accelerator, inner, base, frozen, dataset, cfg, global_step, weight_dtype, ema)
                if stopping:
                    stopped = True
                    break
            if global_step >= max_train_steps:
                break
        if stopped or global_step >= max_train_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    adapter_path = None
    if not stopped and accelerator.is_main_process:
        adapter_path = out_dir / ADAPTER_NAME
        if ema is not None:
            ema.store(inner.trainable_parameters())
            ema.copy_to(inner.trainable_parameters())
        adapter_io.save_adapter(inner, adapter_path, extra_metadata={"training_step": str(global_step)})
        logger.info("exported the adapter to %s", adapter_path)
        validate_loss(global_step)
        if cfg.validation.num_validation_samples > 0:
            run_validation(accelerator, inner, base, frozen, dataset, cfg, global_step, weight_dtype, None, final=True)
        if ema is not None:
            ema.restore(inner.trainable_parameters())
    accelerator.end_training()
    return TrainResult(
        global_step=global_step,
        losses=losses,
        adapter_path=adapter_path,
        output_dir=out_dir,
        resumed_from=resumed_from,
        seconds=time.perf_counter() - t0,
        val_losses=val_losses,
        model=inner if return_model else None,
    )


def _move(module: nn.Module | None, device: torch.device, dtype: torch.dtype) -> None:
    """Move a module, casting only when its dtype differs (diffusers warns on every dtype cast)."""
    if module is None:
        return
    current = next(module.parameters()).dtype
    module.to(device) if current == dtype else module.to(device, dtype=dtype)


def _save_checkpoint(accelerator, out_dir: Path, step: int, total_limit: int | None) -> None:
    """Write ``checkpoint-{step}`` whole or not at all, with every process's state in it.

    Every process saves into ``.tmp-checkpoint-{step}`` (each writes its own RNG states); once all are done the
    main process renames it. A run killed while saving (one rank killed, a node lost) leaves only the temporary
    folder, which ``--resume latest`` ignores and the next save removes.
    """
    final, tmp = out_dir / f"checkpoint-{step}", out_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        for leftover in out_dir.glob(".tmp-checkpoint-*"):
            shutil.rmtree(leftover)
        rotate_checkpoints(out_dir, total_limit)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again by a resumed run
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    logger.info("saved state to %s", final)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``accelerate launch -m hifi_portrait.training.train --config FILE`` (exit codes as the CLI)."""
    from hifi_portrait.errors import HiFiPortraitError, ModelFilesMissingError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config (see docs/training.md)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--output-dir", default=None, help="run folder (overrides train.output_dir)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a value")
    parser.add_argument("--stop-after-steps", type=int, default=None, help="checkpoint and stop at this step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("HIFI_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    try:
        options = []
        if args.resume:
            options.append((("checkpointing", "resume_from_checkpoint"), args.resume, f"--resume {args.resume}"))
        if args.output_dir:
            options.append((("train", "output_dir"), args.output_dir, f"--output-dir {args.output_dir}"))
        cfg = load_config(args.config, args.set, options)
        result = train(cfg, stop_after_steps=args.stop_after_steps)
    except ModelFilesMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except HiFiPortraitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done: {result.global_step} steps; adapter: {result.adapter_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
