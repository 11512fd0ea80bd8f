"""InstantID's image projection (a Perceiver resampler over one ArcFace embedding), as a face refiner.

InstantID (Wang et al., 2024) turns one 512-d antelopev2 ArcFace embedding into 16 ID tokens with the IP-Adapter
"Resampler" (``dim=1280, depth=4, dim_head=64, heads=20, num_queries=16, embedding_dim=512, output_dim=2048,
ff_mult=4``). :class:`InstantIDImageProjection` reproduces that module with the *same* state-dict keys and
shapes, so the ``image_proj`` part of InstantID's ``ip-adapter.bin`` loads into it unchanged::

    latents                    (1, T, dim)
    proj_in.{weight,bias}      (dim, Dg), (dim,)
    proj_out.{weight,bias}     (D, dim), (D,)
    norm_out.{weight,bias}     (D,)
    layers.i.0.norm1/norm2.{weight,bias}, layers.i.0.to_q.weight (heads*dim_head, dim),
    layers.i.0.to_kv.weight (2*heads*dim_head, dim), layers.i.0.to_out.weight (dim, heads*dim_head)
    layers.i.1.0.{weight,bias} (LayerNorm), layers.i.1.1.weight (ff_mult*dim, dim), layers.i.1.3.weight

It also has the face-refiner interface of :class:`~hifi_portrait.models.FaceRefiner` (``forward(id_embeds
(B, N, Dg), patch_tokens=None, quality=None, ref_mask=None) -> (B, T, D)``, config ``id_embed_dim``,
``num_tokens``, ``output_dim``), so the HiFi-Portrait pipeline can use it as its ``face_refiner``: N references
are fused *before* the resampler (quality-weighted mean direction of the embeddings times their weighted mean
norm; N = 1 gives the embedding itself), which keeps InstantID's single-embedding input distribution.
:meth:`unconditional_tokens` gives InstantID's classifier-free-guidance "no identity" tokens (the projection of a
zero embedding), which the pipeline uses for the unconditional half.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from hifi_portrait.errors import NoUsableReferencesError

__all__ = ["InstantIDImageProjection", "fuse_embeddings"]


class _PerceiverAttention(nn.Module):
    """Latents attend over ``[x, latents]`` (keys ``norm1, norm2, to_q, to_kv, to_out`` as in IP-Adapter)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x ``(B, n1, dim)``, latents ``(B, n2, dim)`` -> ``(B, n2, dim)``."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, n2, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.view(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        # same arithmetic as the reference (scale split over q and k, softmax in float32: stable in fp16)
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).permute(0, 2, 1, 3).reshape(b, n2, -1)
        return self.to_out(out)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = int(dim * mult)
    # keys 0 (LayerNorm), 1 and 3 (Linear), as IP-Adapter's FeedForward
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)
    )


def fuse_embeddings(
    id_embeds: torch.Tensor, quality: torch.Tensor | None = None, ref_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fuse N raw identity embeddings per item into one: weighted mean direction times weighted mean norm.

    Args:
        id_embeds: ``(B, N, Dg)`` embeddings (raw ArcFace vectors keep their norm, unit vectors stay unit).
        quality: ``(B, N)`` weights ``> 0`` (None = equal); ref_mask: ``(B, N)`` bool, False = padding.

    Returns:
        ``(B, 1, Dg)``; exactly ``id_embeds[:, :1]`` when N = 1; zero embeddings stay zero.
    """
    b, n, _ = id_embeds.shape
    x = id_embeds.float()
    w = torch.ones(b, n, device=x.device) if quality is None else quality.to(x.device, torch.float32).clamp(min=1e-6)
    if ref_mask is not None:
        w = w * ref_mask.to(x.device).float()
    if not bool((w.sum(dim=1) > 0).all()):
        raise NoUsableReferencesError("a batch item has no usable reference embedding (all padding)")
    w = w / w.sum(dim=1, keepdim=True)
    if n == 1:
        return id_embeds[:, :1]
    norms = x.norm(dim=-1, keepdim=True)
    direction = (w[..., None] * x / norms.clamp(min=1e-12)).sum(dim=1)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    norm = (w[..., None] * norms).sum(dim=1)
    return (direction * norm)[:, None].to(id_embeds.dtype)


class InstantIDImageProjection(ModelMixin, ConfigMixin):
    """InstantID's Resampler (state-dict compatible) with the face-refiner interface.

    Args:
        id_embed_dim: ``Dg`` (InstantID's ``embedding_dim``, 512 for antelopev2 ArcFace).
        num_tokens: ``T`` (``num_queries``, 16).
        output_dim: ``D`` (the UNet's cross-attention dim, 2048 for SDXL).
        hidden_dim: resampler width (``dim``, 1280).
        num_layers: ``depth`` (4).
        head_dim: ``dim_head`` (64).
        num_heads: ``heads`` (20).
        ff_mult: feed-forward expansion (4).
    """

    @register_to_config
    def __init__(
        self,
        id_embed_dim: int = 512,
        num_tokens: int = 16,
        output_dim: int = 2048,
        hidden_dim: int = 1280,
        num_layers: int = 4,
        head_dim: int = 64,
        num_heads: int = 20,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_tokens, hidden_dim) / hidden_dim**0.5)
        self.proj_in = nn.Linear(id_embed_dim, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [_PerceiverAttention(hidden_dim, head_dim, num_heads), _feed_forward(hidden_dim, ff_mult)]
                )
                for _ in range(num_layers)
            ]
        )

    def project(self, embeds: torch.Tensor) -> torch.Tensor:
        """InstantID's ``image_proj_model``: ``(B, n, Dg)`` embeddings -> ``(B, T, D)`` tokens."""
        x = embeds.to(self.proj_in.weight.dtype)
        latents = self.latents.to(x.dtype).repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))

    def forward(
        self,
        id_embeds: torch.Tensor,
        patch_tokens: torch.Tensor | None = None,
        quality: torch.Tensor | None = None,
        ref_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """References of one person per item -> ID tokens.

        Args:
            id_embeds: ``(B, N, Dg)`` (or ``(B, Dg)``) ArcFace embeddings, ideally raw (InstantID was trained on
                insightface's unnormalised ``face.embedding``), see :func:`fuse_embeddings`.
            patch_tokens: ignored (InstantID uses no image-encoder tokens); accepted for the refiner interface.
            quality, ref_mask: ``(B, N)`` fusion weights and padding mask.

        Returns:
            ``(B, T, D)`` ID tokens.
        """
        if id_embeds.ndim == 2:
            id_embeds = id_embeds[:, None]
        if id_embeds.ndim != 3 or id_embeds.shape[-1] != self.config.id_embed_dim:
            raise ValueError(
                f"id_embeds must be (B, N, {self.config.id_embed_dim}), got {tuple(id_embeds.shape)}: InstantID's "
                "projection reads 512-d antelopev2 ArcFace embeddings"
            )
        return self.project(fuse_embeddings(id_embeds, quality, ref_mask))

    def unconditional_tokens(self, like: torch.Tensor) -> torch.Tensor:
        """InstantID's "no identity" tokens (projection of a zero embedding), shaped and typed like ``like``."""
        zeros = torch.zeros(1, 1, self.config.id_embed_dim, device=like.device, dtype=self.proj_in.weight.dtype)
        return self(zeros).to(like).expand(like.shape[0], -1, -1)
