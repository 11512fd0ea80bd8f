"""SDXL prompt encoding for training (both frozen text encoders) and the SDXL micro-conditioning time ids."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def encode_prompts(
    captions: Sequence[str], tokenizers: Sequence, text_encoders: Sequence[torch.nn.Module]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode captions as the SDXL pipeline does (penultimate hidden states of both encoders, concatenated).

    Returns:
        ``prompt_embeds`` ``(B, 77, D1 + D2)`` and ``pooled_prompt_embeds`` ``(B, D2)`` (second encoder's
        projection), in the encoders' dtype.
    """
    embeds = []
    pooled = None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            list(captions),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        pooled = out[0]
        embeds.append(out.hidden_states[-2])
    prompt_embeds = torch.cat(embeds, dim=-1)
    return prompt_embeds, pooled.view(prompt_embeds.shape[0], -1)


def time_ids(
    batch_size: int,
    resolution: int,
    original_sizes: torch.Tensor | None = None,
    crop_top_left: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """SDXL ``add_time_ids`` ``(B, 6)``: original size (h, w), crop top-left (y, x), target size (h, w).

    ``original_sizes`` / ``crop_top_left`` are ``(B, 2)`` when the dataset knows them; otherwise the square
    ``resolution`` and ``(0, 0)``, as diffusers' SDXL training examples use.
    """
    if original_sizes is None:
        original_sizes = torch.tensor([[resolution, resolution]]).expand(batch_size, 2)
    if crop_top_left is None:
        crop_top_left = torch.zeros(batch_size, 2)
    target = torch.tensor([[resolution, resolution]]).expand(batch_size, 2)
    ids = torch.cat([original_sizes.float().cpu(), crop_top_left.float().cpu(), target.float()], dim=1)
    return ids.to(device=device, dtype=dtype)
