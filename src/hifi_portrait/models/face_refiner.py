"""Face refiner: fuses N references' identity vectors and image-encoder patch tokens into T ID tokens.

Design (a Perceiver-style resampler over a *set* of references):

* each reference contributes a memory of ``id_tokens_per_ref`` tokens made from its global identity vector
  (``(Dg,) -> (k, H)``) followed by its ``L`` image-encoder patch tokens projected to ``H`` (plus a learned
  position embedding *within* the patch grid, shared by all references, and a learned type embedding);
* ``T`` learned latent queries, shifted by a projection of the quality-weighted mean identity vector, attend
  over the concatenated memories of all references (and over themselves) for ``num_layers`` layers;
* each reference's tokens get the attention bias ``log(quality)``; padded references (``ref_mask == False``)
  get ``-inf`` and their inputs are zeroed, so they have exactly zero weight.

No positional information is attached *across* references, so the output is invariant to their order
(up to floating-point summation order), and the cost after fusion does not depend on N.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from hifi_portrait.errors import NoUsableReferencesError

__all__ = ["FaceRefiner"]


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult)
        self.fc2 = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class _SetCrossAttention(nn.Module):
    """Latent queries attend over ``[memory, latents]`` with an additive per-memory-token bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {heads}")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_m = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, latents: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """latents ``(B, T, H)``, memory ``(B, M, H)``, bias ``(B, M)`` -> ``(B, T, H)``."""
        b, t, h = latents.shape
        lat = self.norm_q(latents)
        kv_in = torch.cat([self.norm_m(memory), lat], dim=1)
        q = self.to_q(lat).view(b, t, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        k = k.view(b, kv_in.shape[1], self.heads, -1).transpose(1, 2)
        v = v.view(b, kv_in.shape[1], self.heads, -1).transpose(1, 2)
        full_bias = torch.cat([bias, bias.new_zeros(b, t)], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=full_bias.to(q.dtype))
        return self.to_out(out.transpose(1, 2).reshape(b, t, h))


class FaceRefiner(ModelMixin, ConfigMixin):
    """Multi-reference identity fusion into a fixed number of ID tokens.

    Args:
        id_embed_dim: ``Dg``, size of the global identity vectors (512 for ArcFace, 128 for dlib).
        patch_dim: ``Dl``, channels of the image-encoder patch tokens (1280 for CLIP ViT-H/14's penultimate layer).
        num_patches: ``L``, number of patch tokens per reference (257 for ViT-H/14 at 224 px, class token included).
        hidden_dim: ``H``, width of the resampler.
        num_tokens: ``T``, number of output ID tokens.
        output_dim: ``D``, channels of the ID tokens (the UNet's ``cross_attention_dim``: 2048 for SDXL).
        num_layers: number of (cross-attention, feed-forward) layers.
        num_heads: attention heads (``hidden_dim`` must be divisible by it).
        id_tokens_per_ref: ``k``, memory tokens made from each identity vector.
        ff_mult: feed-forward expansion.
        quality_eps: quality weights are clamped to ``>= quality_eps`` before ``log``.
    """

    @register_to_config
    def __init__(
        self,
        id_embed_dim: int = 512,
        patch_dim: int = 1280,
        num_patches: int = 257,
        hidden_dim: int = 768,
        num_tokens: int = 16,
        output_dim: int = 2048,
        num_layers: int = 4,
        num_heads: int = 12,
        id_tokens_per_ref: int = 4,
        ff_mult: int = 4,
        quality_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.id_proj = nn.Sequential(
            nn.Linear(id_embed_dim, hidden_dim * 2),
            nn.GELU(),
            nn.Linear(hidden_dim * 2, hidden_dim * id_tokens_per_ref),
        )
        self.patch_proj = nn.Linear(patch_dim, hidden_dim)
        self.patch_pos = nn.Parameter(torch.randn(num_patches, hidden_dim) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(2, hidden_dim) * 0.02)
        self.latents = nn.Parameter(torch.randn(num_tokens, hidden_dim) / math.sqrt(hidden_dim))
        self.query_cond = nn.Linear(id_embed_dim, hidden_dim)
        self.attn_layers = nn.ModuleList([_SetCrossAttention(hidden_dim, num_heads) for _ in range(num_layers)])
        self.ff_layers = nn.ModuleList([_FeedForward(hidden_dim, ff_mult) for _ in range(num_layers)])
        self.proj_out = nn.Linear(hidden_dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)

    def forward(
        self,
        id_embeds: torch.Tensor,
        patch_tokens: torch.Tensor | None = None,
        quality: torch.Tensor | None = None,
        ref_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse references into ID tokens.

        Args:
            id_embeds: ``(B, N, Dg)`` global identity vectors (unit norm is expected, not enforced).
            patch_tokens: ``(B, N, L, Dl)`` image-encoder patch tokens, or None to use identity vectors only.
            quality: ``(B, N)`` weights in ``(0, 1]`` (1 = best); None = all 1.
            ref_mask: ``(B, N)`` bool, True for real references, False for padding; None = all real.

        Returns:
            ``(B, T, D)`` ID tokens.

        Raises:
            NoUsableReferencesError: a batch item has no real reference.
        """
        cfg = self.config
        if id_embeds.ndim != 3:
            raise ValueError(f"id_embeds must be (B, N, Dg), got {tuple(id_embeds.shape)}")
        b, n, _ = id_embeds.shape
        dtype = self.latents.dtype
        device = id_embeds.device
        valid = torch.ones(b, n, dtype=torch.bool, device=device) if ref_mask is None else ref_mask.to(device).bool()
        if valid.shape != (b, n):
            raise ValueError(f"ref_mask must be (B, N) = {(b, n)}, got {tuple(valid.shape)}")
        if not bool(valid.any(dim=1).all()):
            raise NoUsableReferencesError(
                "FaceRefiner got a batch item whose references are all padding (ref_mask all False); "
                "give at least one usable reference per item."
            )
        q = torch.ones(b, n, device=device) if quality is None else quality.to(device=device, dtype=torch.float32)
        log_q = torch.log(q.clamp(min=cfg.quality_eps))
        bias = log_q.masked_fill(~valid, float("-inf"))  # (B, N)

        vmask = valid[..., None].to(dtype)
        # padded inputs replaced by zeros (not multiplied: 0 * inf would be NaN)
        ids = torch.where(valid[..., None], id_embeds.to(dtype), 0.0)
        mem = self.id_proj(ids).view(b, n, cfg.id_tokens_per_ref, cfg.hidden_dim) + self.type_embed[0]
        if patch_tokens is not None:
            if patch_tokens.ndim != 4 or patch_tokens.shape[:2] != (b, n):
                raise ValueError(f"patch_tokens must be (B, N, L, Dl) with B, N = {(b, n)}, got {patch_tokens.shape}")
            length = patch_tokens.shape[2]
            if length > cfg.num_patches:
                raise ValueError(f"got {length} patch tokens per reference, the model knows {cfg.num_patches}")
            patches = torch.where(valid[..., None, None], patch_tokens.to(dtype), 0.0)
            patches = self.patch_proj(patches) + self.patch_pos[:length] + self.type_embed[1]
            mem = torch.cat([mem, patches], dim=2)
        m = mem.shape[2]
        memory = (mem * vmask[..., None]).reshape(b, n * m, cfg.hidden_dim)
        mem_bias = bias[:, :, None].expand(b, n, m).reshape(b, n * m)

        weights = torch.softmax(bias, dim=1).to(dtype)  # quality-weighted, padding excluded
        pooled = (weights[..., None] * ids).sum(dim=1)
        latents = self.latents[None].expand(b, -1, -1) + self.query_cond(pooled)[:, None]
        for attn, ff in zip(self.attn_layers, self.ff_layers, strict=True):
            latents = latents + attn(latents, memory, mem_bias)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))
