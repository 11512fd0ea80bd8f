"""Losses: diffusion MSE (epsilon or v-prediction) with face-region weighting, and a PuLID-style identity loss.

Shapes: latents ``(B, C, h, w)``; images ``(B, 3, H, W)`` in ``[-1, 1]``; masks ``(B, 1, H, W)`` or
``(B, H, W)`` in ``[0, 1]`` at image resolution; timesteps ``(B,)`` integer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hifi_portrait.errors import ConfigError


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict: the noise (``epsilon``) or the velocity (``v_prediction``), per the scheduler."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ConfigError(f"unsupported scheduler prediction_type {kind!r}: training supports epsilon and v_prediction.")


def _alphas(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ac = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[timesteps.long()]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return ac.sqrt().view(shape), (1.0 - ac).sqrt().view(shape)


def predict_x0(
    scheduler, noisy_latents: torch.Tensor, model_pred: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """One-step estimate of the clean latent from the model output at ``timesteps`` (differentiable)."""
    sqrt_a, sqrt_1ma = _alphas(scheduler, timesteps, noisy_latents)
    x, pred = noisy_latents.float(), model_pred.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x - sqrt_1ma * pred) / sqrt_a
    if kind == "v_prediction":
        return sqrt_a * x - sqrt_1ma * pred
    raise ConfigError(f"unsupported scheduler prediction_type {kind!r}: training supports epsilon and v_prediction.")


def latent_weight_map(
    mask: torch.Tensor | None, latent_hw: tuple[int, int], face_weight: float
) -> torch.Tensor | None:
    """Per-latent-pixel loss weights ``(B, 1, h, w)``: ``face_weight`` inside the face, 1 outside.

    The image-resolution mask is area-averaged down to the latent grid, so a latent pixel half covered by the
    face gets a weight halfway between. Returns None when weighting is off or no mask is given.
    """
    if mask is None or face_weight == 1.0:
        return None
    if mask.ndim == 3:
        mask = mask[:, None]
    m = F.adaptive_avg_pool2d(mask.float().clamp(0, 1), latent_hw)
    return 1.0 + (face_weight - 1.0) * m


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    weight_map: torch.Tensor | None = None,
    snr_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted MSE. Returns ``(loss, per_sample_loss (B,))``.

    With a weight map, each sample's error is the weighted mean over latent pixels (weights normalized per
    sample, so the loss scale does not depend on the face's size); ``snr_weights`` ``(B,)`` scale samples
    (Min-SNR weighting).
    """
    err = (model_pred.float() - target.float()) ** 2
    if weight_map is None:
        per_sample = err.mean(dim=tuple(range(1, err.ndim)))
    else:
        w = weight_map.to(err.dtype).expand(-1, 1, *err.shape[2:])
        per_sample = (err.mean(dim=1, keepdim=True) * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1e-8)
    if snr_weights is not None:
        per_sample = per_sample * snr_weights.to(per_sample.dtype)
    return per_sample.mean(), per_sample


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights ``(B,)`` (Hang et al. 2023), for epsilon or v-prediction."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def mask_boxes(mask: torch.Tensor | None, size_hw: tuple[int, int], margin: float = 0.1) -> torch.Tensor:
    """Square-ish boxes ``(B, 4)`` ``x1, y1, x2, y2`` in normalized ``[-1, 1]`` coordinates around each mask.

    A sample with an empty (or no) mask gets the whole image. ``margin`` enlarges the box by that fraction.
    """
    h, w = size_hw
    if mask is None:
        return torch.tensor([[-1.0, -1.0, 1.0, 1.0]]).expand(1, 4)
    if mask.ndim == 4:
        mask = mask[:, 0]
    boxes = []
    for m in mask:
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        if len(xs) == 0:
            boxes.append(torch.tensor([-1.0, -1.0, 1.0, 1.0]))
            continue
        x1, x2 = xs.min().float(), xs.max().float() + 1
        y1, y2 = ys.min().float(), ys.max().float() + 1
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half = max(x2 - x1, y2 - y1) * (1 + margin) / 2
        box = torch.stack([(cx - half) / w, (cy - half) / h, (cx + half) / w, (cy + half) / h]) * 2 - 1
        boxes.append(box)
    return torch.stack(boxes).to(mask.device)


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable crop of ``boxes`` (normalized ``[-1, 1]``, ``(B, 4)`` or ``(1, 4)``) resized to ``size²``."""
    b = images.shape[0]
    boxes = boxes.to(images.device, torch.float32).expand(b, 4)
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = (boxes[:, 2] - boxes[:, 0]) / 2
    theta[:, 0, 2] = (boxes[:, 2] + boxes[:, 0]) / 2
    theta[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / 2
    theta[:, 1, 2] = (boxes[:, 3] + boxes[:, 1]) / 2
    grid = F.affine_grid(theta, (b, images.shape[1], size, size), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def identity_loss(
    recognizer: nn.Module,
    pred_images: torch.Tensor,
    target_images: torch.Tensor,
    face_mask: torch.Tensor | None,
    input_size: int,
) -> torch.Tensor:
    """PuLID-style ID loss: ``1 - cos(recognizer(face of predicted image), recognizer(face of target))`` per sample.

    Args:
        recognizer: differentiable face recognizer, ``(B, 3, S, S)`` in ``[-1, 1]`` -> ``(B, D)``.
        pred_images: ``(B, 3, H, W)`` decoded one-step x0 estimates (gradients flow through them).
        target_images: ``(B, 3, H, W)`` the real targets (no gradient).
        face_mask: ``(B, 1, H, W)`` face masks giving the crop box (whole image when None).
        input_size: recognizer input side ``S``.

    Returns:
        ``(B,)`` losses in ``[0, 2]``.
    """
    boxes = mask_boxes(face_mask, pred_images.shape[-2:])
    pred_faces = crop_and_resize(pred_images.clamp(-1, 1), boxes, input_size)
    with torch.no_grad():
        target_emb = recognizer(crop_and_resize(target_images, boxes, input_size)).float()
    pred_emb = recognizer(pred_faces).float()
    return 1.0 - F.cosine_similarity(pred_emb, target_emb, dim=-1)
