"""Validation images during training: generate from the first dataset samples' references and landmark maps.

Sampling runs the *training* model (the same forward as the loss) in a short Euler loop with classifier-free
guidance (unconditional branch: empty prompt and no identity; the landmark map is used in both branches, as in
ControlNet pipelines), so it needs nothing beyond what training loaded. Each logged row is
``landmark map | generated | target``; rows go to TensorBoard (``validation`` images) and, as PNG, to
``output_dir/validation/step-{N}.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hifi_portrait.training.text import encode_prompts, time_ids

logger = logging.getLogger(__name__)


@torch.no_grad()
def sample_images(
    model,
    base,
    frozen,
    batch: dict,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    weight_dtype: torch.dtype,
    device: torch.device,
    prompts: list[str] | None = None,
    matte: bool = True,
) -> torch.Tensor:
    """Generate images ``(B, 3, H, W)`` in ``[0, 1]`` for a collated batch (its refs, landmark maps, captions)."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(base.noise_scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    lmk = batch["landmark_map"].to(device).float()
    bsz, _, h, w = lmk.shape
    vae_scale = 2 ** (len(base.vae.config.block_out_channels) - 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    latents = torch.randn((bsz, base.unet.config.in_channels, h // vae_scale, w // vae_scale), generator=gen)
    latents = latents.to(device) * scheduler.init_noise_sigma

    captions = prompts if prompts else batch["caption"]
    captions = [captions[i % len(captions)] for i in range(bsz)]
    cond, pooled = encode_prompts(captions, frozen.tokenizers, frozen.text_encoders)
    uncond, pooled_u = encode_prompts([""] * bsz, frozen.tokenizers, frozen.text_encoders)
    prompt_embeds = torch.cat([uncond, cond]).to(device, weight_dtype)
    added = {
        "text_embeds": torch.cat([pooled_u, pooled]).to(device, weight_dtype),
        "time_ids": time_ids(2 * bsz, h, device=device, dtype=weight_dtype),
    }
    refs = {
        "id_embeds": batch["ref_identity"].to(device).float().repeat(2, 1, 1),
        "quality": None if batch.get("ref_quality") is None else batch["ref_quality"].to(device).repeat(2, 1),
        "ref_mask": None if batch.get("ref_mask") is None else batch["ref_mask"].to(device).repeat(2, 1),
    }
    patch_tokens = batch.get("ref_patch_tokens")
    if patch_tokens is None and frozen.image_encoder is not None and "refs" in batch:
        from hifi_portrait.training.step import encode_ref_images, reference_input

        patch_tokens = encode_ref_images(frozen.image_encoder, reference_input(batch, matte).to(device))
    if patch_tokens is not None:
        patch_tokens = patch_tokens.to(device).float().repeat(2, 1, 1, 1)
    drop_id = torch.cat([torch.ones(bsz, dtype=torch.bool), torch.zeros(bsz, dtype=torch.bool)]).to(device)
    lmk2 = torch.cat([lmk, lmk]).to(weight_dtype)

    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        pred = model(
            inp.to(weight_dtype),
            t.expand(2 * bsz).to(device),
            prompt_embeds=prompt_embeds,
            added_cond_kwargs=added,
            landmark_map=lmk2,
            patch_tokens=patch_tokens,
            drop_id=drop_id,
            **refs,
        ).float()
        pu, pc = pred.chunk(2)
        latents = scheduler.step(pu + guidance_scale * (pc - pu), t, latents).prev_sample
    images = base.vae.decode((latents / base.vae.config.scaling_factor).to(base.vae.dtype), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def run_validation(accelerator, model, base, frozen, dataset, cfg, step: int, weight_dtype, ema=None, final=False):
    """Generate for the first ``validation.num_validation_samples`` samples, log a grid; returns it ``(H, W, 3)``."""
    from hifi_portrait.training.data import collate_samples

    v = cfg.validation
    n = min(v.num_validation_samples, len(dataset))
    if n == 0:
        return None
    batch = collate_samples([dataset[i] for i in range(n)])
    params = model.trainable_parameters()
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    was_training = model.training
    model.eval()
    try:
        images = sample_images(
            model,
            base,
            frozen,
            batch,
            v.num_inference_steps,
            v.guidance_scale,
            cfg.train.seed or 0,
            weight_dtype,
            accelerator.device,
            v.prompts or None,
        )
    finally:
        model.train(was_training)
        if ema is not None:
            ema.restore(params)
    rows = []
    for i in range(n):
        target = (batch["target"][i].float() / 2 + 0.5).clamp(0, 1)
        rows.append(
            np.concatenate(
                [_to_uint8(batch["landmark_map"][i].float().clamp(0, 1)), _to_uint8(images[i]), _to_uint8(target)],
                axis=1,
            )
        )
    grid = np.concatenate(rows, axis=0)
    out = Path(cfg.train.output_dir) / "validation"
    out.mkdir(parents=True, exist_ok=True)
    name = "final" if final else f"step-{step}"
    Image.fromarray(grid).save(out / f"{name}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation/final" if final else "validation", grid, step, dataformats="HWC")
    logger.info("validation images at step %d -> %s", step, out / f"{name}.png")
    return grid


@torch.no_grad()
def fixed_noise_loss(model, frozen, dataset, cfg, weight_dtype, device, num_samples: int, num_timesteps: int) -> float:
    """Diffusion loss on the first ``num_samples`` samples with fixed noise at ``num_timesteps`` evenly spread
    timesteps, no condition dropout, all references: a deterministic, comparable-over-time validation loss
    (the training loss itself is dominated by the random timestep and noise of each step)."""
    from hifi_portrait.training.checkpointing import TrainingRNG
    from hifi_portrait.training.config import ConditioningConfig
    from hifi_portrait.training.data import collate_samples
    from hifi_portrait.training.step import compute_step

    n = min(num_samples, len(dataset))
    batch = collate_samples([dataset[i] for i in range(n)])
    steps = frozen.noise_scheduler.config.num_train_timesteps
    no_drop = ConditioningConfig(drop_id_prob=0.0, drop_landmarks_prob=0.0, drop_text_prob=0.0, drop_all_prob=0.0)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for k in range(num_timesteps):
            t = int((k + 0.5) * steps / num_timesteps)
            rng = TrainingRNG(1234 + k, device=device)
            out = compute_step(
                batch,
                model,
                frozen,
                rng,
                cfg.loss,
                no_drop,
                weight_dtype,
                device,
                timesteps=t,
                matte=cfg.data.matte_references,
            )
            total += float(out.diffusion_loss)
    finally:
        model.train(was_training)
    return total / num_timesteps
