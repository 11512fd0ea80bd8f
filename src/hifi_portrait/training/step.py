"""One training step's computation: batch -> latents, noise, condition dropout, prediction, losses.

Batch keys (those of ``hifi_portrait.data.PortraitDataset`` items, collated by
:func:`hifi_portrait.training.data.collate_samples`; see :func:`check_batch`):

* ``target`` ``(B, 3, H, W)`` float in ``[-1, 1]``: the target photo;
* ``landmark_map`` ``(B, 3, H, W)`` float in ``[0, 1]``: its conditioning map;
* ``face_mask`` ``(B, 1, H, W)`` float in ``[0, 1]`` (optional): face region of the target;
* ``caption`` list of ``B`` strings;
* ``ref_identity`` ``(B, N, Dg)``: identity vectors of the references (padded);
* ``refs`` ``(B, N, 3, S, S)`` in ``[0, 1]`` for the image encoder, or ``ref_patch_tokens``
  ``(B, N, L, Dl)`` precomputed (optional: without either, the refiner uses identity vectors only);
* ``ref_quality`` ``(B, N)`` in ``[0, 1]`` (optional), ``ref_mask`` ``(B, N)`` bool (True = real reference);
* ``original_size`` / ``crop_top_left`` ``(B, 2)`` (optional): SDXL micro-conditioning.

All randomness comes from a :class:`~hifi_portrait.training.checkpointing.TrainingRNG`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hifi_portrait.errors import DatasetError
from hifi_portrait.training.checkpointing import TrainingRNG
from hifi_portrait.training.config import ConditioningConfig, LossConfig
from hifi_portrait.training.losses import (
    diffusion_loss,
    diffusion_target,
    identity_loss,
    latent_weight_map,
    min_snr_weights,
    predict_x0,
)
from hifi_portrait.training.text import encode_prompts, time_ids

REQUIRED_KEYS = ("target", "landmark_map", "caption", "ref_identity")


def check_batch(batch: dict) -> None:
    """Raise :class:`DatasetError` naming the missing keys of a collated batch."""
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise DatasetError(
            f"training batch lacks {missing} (it has {sorted(batch)}); the dataset must yield the keys of "
            "hifi_portrait.training.step (use hifi_portrait.data's training Dataset and collate function)."
        )


@dataclass
class Frozen:
    """The frozen parts used by a step: VAE, text encoders and tokenizers, noise scheduler, image encoder."""

    vae: nn.Module
    text_encoders: list[nn.Module]
    tokenizers: list
    noise_scheduler: object
    image_encoder: nn.Module | None = None
    id_recognizer: nn.Module | None = None


@dataclass
class Dropout:
    """Per-sample condition dropout decisions ``(B,)`` bool."""

    text: torch.Tensor
    id: torch.Tensor
    landmarks: torch.Tensor


def sample_dropout(rng: TrainingRNG, batch_size: int, cfg: ConditioningConfig) -> Dropout:
    """Independent dropout of text, identity and landmark map, plus dropping all three together."""
    u = rng.rand((batch_size, 4)).cpu()
    drop_all = u[:, 3] < cfg.drop_all_prob
    return Dropout(
        text=(u[:, 0] < cfg.drop_text_prob) | drop_all,
        id=(u[:, 1] < cfg.drop_id_prob) | drop_all,
        landmarks=(u[:, 2] < cfg.drop_landmarks_prob) | drop_all,
    )


def clip_preprocess(images: torch.Tensor, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """``(M, 3, S, S)`` in ``[0, 1]`` -> resized to ``size`` and normalized for a CLIP vision tower."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s


def matte_references(refs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Composite reference crops ``(B, N, 3, S, S)`` in ``[0, 1]`` over the pipeline's gray background with their
    masks ``(B, N, 1, S, S)``, exactly as ``hifi_portrait.pipelines.reference_pixels`` does at inference."""
    from hifi_portrait.pipelines.pipeline_hifi_portrait_sdxl import MATTE_BACKGROUND

    alpha = masks.to(refs.dtype).clamp(0, 1)
    return refs * alpha + (MATTE_BACKGROUND / 255.0) * (1.0 - alpha)


@torch.no_grad()
def encode_ref_images(image_encoder: nn.Module, ref_images: torch.Tensor) -> torch.Tensor:
    """Patch tokens ``(B, N, L, Dl)`` of reference crops ``(B, N, 3, S, S)`` in ``[0, 1]``.

    ``image_encoder`` is either an object with ``encode_patches(images) -> (M, L, Dl)`` (our wrapper around a
    CLIP vision tower) or a transformers ``CLIPVisionModel*`` (penultimate hidden states, as IP-Adapter-Plus).
    """
    b, n = ref_images.shape[:2]
    flat = ref_images.flatten(0, 1)
    if hasattr(image_encoder, "encode_patches"):
        tokens = image_encoder.encode_patches(flat)
    else:
        cfg = image_encoder.config
        size = getattr(cfg, "image_size", 224)
        pixel = clip_preprocess(flat, size, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
        param = next(image_encoder.parameters())
        out = image_encoder(pixel.to(param.device, param.dtype), output_hidden_states=True)
        tokens = out.hidden_states[-2]
    return tokens.view(b, n, *tokens.shape[1:])


def reference_input(batch: dict, matte: bool = True) -> torch.Tensor:
    """The reference crops the image encoder sees: matted with ``ref_masks`` when ``matte`` and masks exist."""
    refs = batch["refs"]
    if matte and batch.get("ref_masks") is not None:
        refs = matte_references(refs, batch["ref_masks"])
    return refs


def sample_latents(latent_dist, rng: TrainingRNG) -> torch.Tensor:
    """``latent_dist.sample()`` with the step's generator (drawn for the global batch, see :class:`TrainingRNG`);
    bit-identical to diffusers' ``DiagonalGaussianDistribution.sample(generator)`` in a single process."""
    if not hasattr(latent_dist, "std"):  # a deterministic "distribution"
        return latent_dist.sample(generator=rng.generator)
    eps = rng.randn(tuple(latent_dist.mean.shape), dtype=latent_dist.parameters.dtype)
    return latent_dist.mean + latent_dist.std * eps.to(latent_dist.mean.device)


@dataclass
class StepOutput:
    loss: torch.Tensor
    diffusion_loss: torch.Tensor
    id_loss: torch.Tensor | None
    timesteps: torch.Tensor


def compute_step(
    batch: dict,
    model: nn.Module,
    frozen: Frozen,
    rng: TrainingRNG,
    loss_cfg: LossConfig,
    cond_cfg: ConditioningConfig,
    weight_dtype: torch.dtype,
    device: torch.device,
    timesteps: int | None = None,
    matte: bool = True,
) -> StepOutput:
    """Forward pass and losses of one (micro-)batch. ``model`` is the (possibly wrapped) training model.

    ``timesteps`` fixes the diffusion timestep of every sample (fixed-noise validation); default random.
    ``matte``: composite the references over gray with their masks (``ref_masks``), as the pipeline does.
    """
    check_batch(batch)
    fixed_t = timesteps
    vae, scheduler = frozen.vae, frozen.noise_scheduler
    pixel_values = batch["target"].to(device)
    bsz = pixel_values.shape[0]

    with torch.no_grad():
        latent_dist = vae.encode(pixel_values.to(vae.dtype)).latent_dist
        latents = sample_latents(latent_dist, rng) * vae.config.scaling_factor
    latents = latents.float()

    noise = rng.randn(tuple(latents.shape))
    if loss_cfg.noise_offset:
        noise = noise + loss_cfg.noise_offset * rng.randn((bsz, latents.shape[1], 1, 1))
    timesteps = rng.randint(scheduler.config.num_train_timesteps, (bsz,)).long()
    if fixed_t is not None:
        timesteps = torch.full_like(timesteps, int(fixed_t))
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)

    drop = sample_dropout(rng, bsz, cond_cfg)
    captions = ["" if d else c for c, d in zip(batch["caption"], drop.text.tolist(), strict=True)]
    prompt_embeds, pooled = encode_prompts(captions, frozen.tokenizers, frozen.text_encoders)
    added = {
        "text_embeds": pooled.to(device),
        "time_ids": time_ids(
            bsz, pixel_values.shape[-1], batch.get("original_size"), batch.get("crop_top_left"), device=device
        ),
    }
    landmark_map = batch["landmark_map"].to(device).float()
    landmark_map = landmark_map * (~drop.landmarks).to(device, landmark_map.dtype)[:, None, None, None]

    id_embeds = batch["ref_identity"].to(device).float()
    ref_mask = batch.get("ref_mask")
    ref_mask = None if ref_mask is None else ref_mask.to(device).bool()
    quality = batch.get("ref_quality")
    patch_tokens = batch.get("ref_patch_tokens")
    if patch_tokens is None and frozen.image_encoder is not None and "refs" in batch:
        patch_tokens = encode_ref_images(frozen.image_encoder, reference_input(batch, matte).to(device))
    if patch_tokens is not None:
        patch_tokens = patch_tokens.to(device).float()

    model_pred = model(
        noisy_latents.to(weight_dtype),
        timesteps,
        prompt_embeds=prompt_embeds.to(device, weight_dtype),
        added_cond_kwargs={k: v.to(weight_dtype) for k, v in added.items()},
        landmark_map=landmark_map.to(weight_dtype),
        id_embeds=id_embeds,
        patch_tokens=patch_tokens,
        quality=None if quality is None else quality.to(device).float(),
        ref_mask=ref_mask,
        drop_id=drop.id.to(device),
    )

    target = diffusion_target(scheduler, latents, noise, timesteps)
    face_mask = batch.get("face_mask")
    face_mask = None if face_mask is None else face_mask.to(device).float()
    weights = latent_weight_map(face_mask, tuple(latents.shape[-2:]), loss_cfg.face_weight)
    snr_w = min_snr_weights(scheduler, timesteps, loss_cfg.snr_gamma) if loss_cfg.snr_gamma else None
    loss, _ = diffusion_loss(model_pred, target, weights, snr_w)
    diff_loss = loss.detach()

    id_loss_value = None
    if loss_cfg.id_loss_weight > 0 and frozen.id_recognizer is not None:
        sel = (timesteps < loss_cfg.id_loss_max_timestep) & (~drop.id.to(device))
        if bool(sel.any()):
            x0 = predict_x0(scheduler, noisy_latents[sel], model_pred[sel], timesteps[sel])
            decoded = vae.decode((x0 / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
            per = identity_loss(
                frozen.id_recognizer,
                decoded.float(),
                pixel_values[sel].float(),
                None if face_mask is None else face_mask[sel],
                loss_cfg.id_recognizer_input_size,
            )
            # averaged over the whole batch so its scale does not depend on how many samples qualified
            id_loss_value = per.sum() / bsz
            loss = loss + loss_cfg.id_loss_weight * id_loss_value
        else:
            id_loss_value = torch.zeros((), device=device)
    return StepOutput(
        loss=loss,
        diffusion_loss=diff_loss,
        id_loss=None if id_loss_value is None else id_loss_value.detach(),
        timesteps=timesteps,
    )
