"""Decoupled (IP-Adapter-style) cross-attention of the SDXL UNet to identity tokens.

The UNet's text cross-attention layers (``attn2``) get a :class:`IDAttnProcessor` that keeps the original text
attention untouched and adds a second attention over the ``T`` identity tokens, with its own key/value
projections (``to_k_ip``, ``to_v_ip``) and a ``scale``::

    out = to_out(softmax(q k_text^T) v_text + scale * softmax(q k_id^T) v_id [+ IP-Adapter terms])

How the tokens reach the processor: diffusers' tuple route for extra attention tokens, the one IP-Adapter uses.
The UNet is called with ``encoder_hidden_states=(prompt_embeds, [id_tokens])`` (see :func:`with_id_tokens`); a
plain tensor means "no ID tokens" and the processor is then operation for operation diffusers'
``AttnProcessor2_0`` (bit-identical output), so a UNet shared with a plain SDXL pipeline (``from_pipe``) is
unchanged for that pipeline. Zero ID tokens contribute exactly nothing (``to_k_ip``/``to_v_ip`` have no bias):
the "no identity" half of classifier-free guidance.

One processor serves several token sets, each with its own scale: when diffusers' IP-Adapter is loaded next to
ours, the UNet wraps the text and ID tokens once more, ``((prompt_embeds, [id_tokens]), [ip_tokens, ...])``;
:func:`split_token_sets` flattens that to ``[id_tokens, ip_tokens, ...]``, and the IP-Adapter's own projections
and scales (diffusers' ``IPAdapterAttnProcessor2_0``, kept as ``processor.ip_adapter``) are applied exactly as
diffusers applies them.

diffusers calls that replace processors (``enable_attention_slicing``, ``set_attn_processor``,
``load_ip_adapter``...) are reconciled by :func:`sync_id_attention` (the pipeline calls it before every
generation): the UNet remembers its ID processors, slicing and IP-Adapter are composed into them, and
processors they cannot be combined with raise :class:`~hifi_portrait.errors.AttentionProcessorError`.
The pipeline's own methods (``enable_attention_slicing``, ``load_ip_adapter``) compose for good; a reset made on
the UNet itself (``unet.set_attn_processor``, ``unet.set_default_attn_processor``) is composed for the duration
of each generation only, so a UNet shared with another pipeline keeps the processors its user set.

Group portraits (several people, each routed to a region): the ID token set is then a
:class:`RegionalIDTokens` (one token tensor per person and one region mask per person at latent resolution;
:func:`with_id_tokens` builds it from a list of token tensors and ``regions=``). Each person's tokens are attended
separately, and the result is weighted by that person's mask, resized to the layer's resolution
(:func:`region_masks_at`), so a person's tokens act only inside its region and no ID tokens act outside every
region. One person whose region is the whole canvas gives exactly today's one-person output.

All state (weights, scales) lives in the processor objects: no globals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    SlicedAttnProcessor,
)
from torch import nn

from hifi_portrait.errors import AttentionProcessorError, ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "IDAttnProcessor",
    "RegionalIDTokens",
    "get_id_attn_processors",
    "id_attention_layer_names",
    "install_id_attention",
    "remove_id_attention",
    "region_masks_at",
    "restore_processors",
    "set_id_scale",
    "split_token_sets",
    "sync_id_attention",
    "with_id_tokens",
]

#: attribute of the UNet holding ``{layer_name: IDAttnProcessor}``, what :func:`sync_id_attention` restores
REGISTRY_ATTR = "_hifi_portrait_id_processors"


def split_token_sets(encoder_hidden_states):
    """``encoder_hidden_states`` as the UNet passes it -> ``(text, [token set, ...])``.

    A tensor is text alone. A tuple ``(states, [sets])`` (diffusers' route for IP-Adapter tokens) may be nested
    when the UNet wraps ours: ``((text, [id]), [ip_1, ip_2])`` gives ``(text, [id, ip_1, ip_2])``.
    """
    sets: list[torch.Tensor] = []
    while isinstance(encoder_hidden_states, tuple):
        encoder_hidden_states, extra = encoder_hidden_states
        sets = (list(extra) if isinstance(extra, (list, tuple)) else [extra]) + sets
    return encoder_hidden_states, sets


def region_sizes(height: int, width: int, n: int) -> tuple[int, int]:
    """``(h, w)`` of a UNet feature map with ``n = h * w`` positions, from the latent's ``height x width``.

    Every SDXL/SD downsampler (3x3 convolution, stride 2, padding 1) maps ``s`` to ``ceil(s / 2)``, so the
    resolutions a UNet uses are the chain ``(H, W) -> (ceil(H/2), ceil(W/2)) -> ...``; the query length picks its
    member (exact for any aspect ratio and odd sizes).
    """
    h, w = int(height), int(width)
    while h * w > n and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != n:
        raise ConfigError(
            f"region masks of {height}x{width} (latent size) do not match an attention layer with {n} positions: "
            "give the masks at the latent resolution of this generation (image size / 8)."
        )
    return h, w


def region_masks_at(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, P, H, W)`` region masks at latent resolution -> ``(B, P, h, w)`` at a UNet resolution ``size``.

    Repeated 2x2 average pooling with ``ceil_mode`` (a partial window at an odd edge averages its valid cells),
    the same ``s -> ceil(s / 2)`` chain as the UNet's downsamplers: a cell's weight is the fraction of the latent
    cells under it that belong to the region. Disjoint masks stay disjoint in the sense that their sum is <= 1;
    a cell with no latent cell of the region in it is exactly 0.
    """
    h, w = masks.shape[-2:]
    while (h, w) != tuple(size):
        if h * w <= size[0] * size[1]:
            raise ConfigError(f"region masks of {tuple(masks.shape[-2:])} cannot be resized to {tuple(size)}")
        masks = F.avg_pool2d(masks, kernel_size=2, stride=2, ceil_mode=True)
        h, w = masks.shape[-2:]
    return masks


class RegionalIDTokens:
    """ID tokens of several people, each acting only inside its region (group portraits).

    Args:
        tokens: one ``(B or 1, T, D)`` tensor per person.
        masks: ``(B or 1, P, h, w)`` region masks in ``[0, 1]`` at the latent resolution (P = number of people);
            0 = the person's tokens do not act there. Regions of different people should not overlap.

    The processor attends to each person's tokens separately and weights the result by the person's mask resized
    to the layer's resolution (:func:`region_masks_at`; cached per resolution, with which people have an empty
    region there, whose attention is then skipped).
    """

    def __init__(self, tokens: Sequence[torch.Tensor], masks: torch.Tensor) -> None:
        tokens = list(tokens)
        if not tokens:
            raise ConfigError("regional ID tokens need at least one person")
        if masks.ndim == 3:
            masks = masks[None]
        if masks.ndim != 4 or masks.shape[1] != len(tokens):
            raise ConfigError(
                f"region masks of shape {tuple(masks.shape)} for {len(tokens)} people: give (B, P, h, w) or "
                "(P, h, w) masks, one per person, at the latent resolution"
            )
        self.tokens = tokens
        self.masks = masks
        self._cache: dict[tuple, tuple[torch.Tensor, list[bool]]] = {}

    @property
    def num_people(self) -> int:
        return len(self.tokens)

    @property
    def shape(self) -> torch.Size:
        """Shape of the first person's tokens (batch, T, D): what code checking token shapes reads."""
        return self.tokens[0].shape

    def to(self, *args: Any, **kwargs: Any) -> RegionalIDTokens:
        return RegionalIDTokens([t.to(*args, **kwargs) for t in self.tokens], self.masks.to(*args, **kwargs))

    def select(self, index: slice) -> RegionalIDTokens:
        """The batch items ``index`` (batch-1 tensors are kept whole)."""

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if t.shape[0] == 1 else t[index]

        return RegionalIDTokens([pick(t) for t in self.tokens], pick(self.masks))

    def masks_at(self, size: tuple[int, int], device: torch.device, dtype: torch.dtype):
        """``((B or 1, P, h*w) masks, [person p's region is non-empty there])`` at a UNet resolution."""
        key = (tuple(size), device, dtype)
        hit = self._cache.get(key)
        if hit is None:
            m = region_masks_at(self.masks.to(device=device, dtype=torch.float32), size)
            nonempty = [bool(x) for x in (m.flatten(2) > 0).any(dim=2).any(dim=0).tolist()]
            hit = (m.flatten(2).to(dtype), nonempty)
            self._cache[key] = hit
        return hit

    def masks_for_length(self, n: int, device: torch.device, dtype: torch.dtype):
        """As :meth:`masks_at`, the resolution told by a query of ``n`` positions."""
        return self.masks_at(region_sizes(*self.masks.shape[-2:], n), device, dtype)


def with_id_tokens(
    prompt_embeds: torch.Tensor,
    id_tokens: torch.Tensor | Sequence[torch.Tensor] | RegionalIDTokens | None,
    regions: torch.Tensor | None = None,
):
    """UNet ``encoder_hidden_states`` carrying ``(B, T, D)`` ID tokens next to ``(B, S, D)`` text embeddings:
    ``(prompt_embeds, [id_tokens])``; ``prompt_embeds`` alone when ``id_tokens`` is None.

    Several people: ``id_tokens`` a list of ``(B, T, D)`` tensors (one per person) and ``regions`` their
    ``(P, h, w)`` or ``(B, P, h, w)`` masks at latent resolution (or a ready :class:`RegionalIDTokens`).
    """
    if id_tokens is None:
        return prompt_embeds
    if isinstance(id_tokens, (list, tuple)):
        if regions is None:
            raise ConfigError("ID tokens of several people need their regions (regions=, one mask per person)")
        id_tokens = RegionalIDTokens(id_tokens, regions)
    elif regions is not None and not isinstance(id_tokens, RegionalIDTokens):
        id_tokens = RegionalIDTokens([id_tokens], regions)
    people = id_tokens.tokens if isinstance(id_tokens, RegionalIDTokens) else [id_tokens]
    for t in people:
        if t.shape[0] not in (1, prompt_embeds.shape[0]) or t.shape[-1] != prompt_embeds.shape[-1]:
            raise ValueError(
                f"ID tokens of shape {tuple(t.shape)} do not match text embeddings {tuple(prompt_embeds.shape)} "
                "(batch and channel dimensions must agree)."
            )
    if isinstance(id_tokens, RegionalIDTokens):
        n = prompt_embeds.shape[0]
        if all(t.shape[0] == n and t.dtype == prompt_embeds.dtype for t in people):
            return (prompt_embeds, [id_tokens])  # the same object at every step: its resized masks stay cached
        return (
            prompt_embeds,
            [RegionalIDTokens([t.to(prompt_embeds.dtype).expand(n, -1, -1) for t in people], id_tokens.masks)],
        )
    if id_tokens.shape[0] != prompt_embeds.shape[0]:
        raise ValueError(
            f"ID tokens of shape {tuple(id_tokens.shape)} do not match text embeddings {tuple(prompt_embeds.shape)} "
            "(batch and channel dimensions must agree)."
        )
    return (prompt_embeds, [id_tokens.to(prompt_embeds.dtype)])


class IDAttnProcessor(nn.Module):
    """Text cross-attention plus a decoupled, scaled cross-attention to ``num_tokens`` identity tokens.

    Args:
        hidden_size: channels of the attention layer (``attn.to_k.out_features``).
        cross_attention_dim: channels of the ID tokens (``D``, = the UNet's ``cross_attention_dim``).
        num_tokens: number ``T`` of ID tokens the face refiner makes (metadata of the adapter file; any number
            of tokens is accepted at run time).
        scale: weight of the ID attention; 0 gives exactly the plain UNet.
        device, dtype: where to create the projections.

    Attributes beyond the weights:
        slice_size: text attention computed in slices of ``slice_size`` (batch x heads) rows
            (``enable_attention_slicing``); None for one call.
        ip_adapter: diffusers' ``IPAdapterAttnProcessor2_0`` of IP-Adapter(s) loaded next to ours (its weights
            and per-adapter ``scale`` list), or None.

    Built without ``hidden_size`` (``IDAttnProcessor()``: diffusers' ``unload_ip_adapter`` resets every layer it
    does not recognise with ``type(processor)()``), it is a placeholder: plain attention with no ID weights
    (:attr:`is_placeholder`). A pipeline with ID attention puts its own processors back before its next generation
    (:func:`sync_id_attention`).
    """

    def __init__(
        self,
        hidden_size: int | None = None,
        cross_attention_dim: int | None = None,
        num_tokens: int = 16,
        scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        placeholder = hidden_size is None or cross_attention_dim is None
        self.hidden_size = None if placeholder else int(hidden_size)
        self.cross_attention_dim = None if placeholder else int(cross_attention_dim)
        self.num_tokens = int(num_tokens)
        self.scale = 0.0 if placeholder else float(scale)
        self.slice_size: int | None = None
        self.ip_adapter: IPAdapterAttnProcessor2_0 | None = None
        if placeholder:
            self.to_k_ip = self.to_v_ip = None
            return
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False, device=device, dtype=dtype)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False, device=device, dtype=dtype)

    @property
    def is_placeholder(self) -> bool:
        """True for a processor built without sizes (no ID weights): plain attention."""
        return self.to_k_ip is None

    @property
    def num_ip_adapters(self) -> int:
        return 0 if self.ip_adapter is None else len(self.ip_adapter.scale)

    def route(self, token_sets: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """``[id?, ip_1, ..., ip_n]`` -> ``(id_tokens or None, IP-Adapter sets)``, by the IP-Adapters loaded."""
        n_ip = self.num_ip_adapters
        if len(token_sets) == n_ip + 1:
            return token_sets[0], list(token_sets[1:])
        if len(token_sets) == n_ip:
            return None, list(token_sets)
        raise ValueError(
            f"IDAttnProcessor got {len(token_sets)} extra token sets but serves {n_ip} IP-Adapter(s) and "
            "optionally the ID tokens: call the UNet with encoder_hidden_states=(prompt_embeds, [id_tokens]) "
            "(hifi_portrait.models.with_id_tokens), or prompt_embeds alone for no identity."
        )

    def id_key_value(
        self, id_tokens: torch.Tensor, dtype: torch.dtype | None = None, slot: int = 0
    ) -> tuple[torch.Tensor, ...]:
        """``to_k_ip`` and ``to_v_ip`` of the ``(B, T, D)`` ID tokens (cast to ``dtype``, the compute dtype).

        The ID tokens are the same at every denoising step of a generation, so at inference (no autograd) the
        projections are computed once and reused while the tokens and weights are unchanged (checked by value: a
        comparison of ``B*T*D`` numbers instead of two ``D x hidden`` matrix products per step and layer).
        The compute dtype is the query's, never the weights' storage dtype (fp8 with layerwise casting).
        ``slot``: one cache entry per person of a group portrait (slot 0 is the one-person cache).
        """
        id_tokens = id_tokens.to(dtype=dtype if dtype is not None else self.to_k_ip.weight.dtype)
        if torch.is_grad_enabled():
            self._kv_cache = None
            self._kv_slots = {}
            return self.to_k_ip(id_tokens), self.to_v_ip(id_tokens)
        slots = getattr(self, "_kv_slots", None)
        if slots is None:
            slots = self._kv_slots = {}
        cache = getattr(self, "_kv_cache", None) if slot == 0 else slots.get(slot)
        versions = (self.to_k_ip.weight._version, self.to_v_ip.weight._version)
        ptrs = (self.to_k_ip.weight.data_ptr(), self.to_v_ip.weight.data_ptr())
        if (
            cache is not None
            and cache[0].shape == id_tokens.shape
            and cache[0].device == id_tokens.device
            and cache[0].dtype == id_tokens.dtype
            and cache[3] == versions
            and cache[4] == ptrs
            and torch.equal(cache[0], id_tokens)
        ):
            return cache[1], cache[2]
        key, value = self.to_k_ip(id_tokens), self.to_v_ip(id_tokens)
        # read again: layerwise-casting hooks swap the weights during the call
        versions = (self.to_k_ip.weight._version, self.to_v_ip.weight._version)
        ptrs = (self.to_k_ip.weight.data_ptr(), self.to_v_ip.weight.data_ptr())
        entry = (id_tokens.clone(), key, value, versions, ptrs)
        if slot == 0:
            self._kv_cache = entry
        else:
            slots[slot] = entry
        return key, value

    def _attention(self, query, key, value, attention_mask=None) -> torch.Tensor:
        if not self.slice_size:
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        # sliced over batch x heads, as diffusers' SlicedAttnProcessor (same result, less peak memory)
        b, h = query.shape[:2]
        q, k, v = query.flatten(0, 1), key.flatten(0, 1), value.flatten(0, 1)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.expand(b, h, *attention_mask.shape[2:]).flatten(0, 1)
        step = int(self.slice_size)
        outs = [
            F.scaled_dot_product_attention(
                q[i : i + step],
                k[i : i + step],
                v[i : i + step],
                attn_mask=None if mask is None else mask[i : i + step],
                dropout_p=0.0,
                is_causal=False,
            )
            for i in range(0, b * h, step)
        ]
        return torch.cat(outs).unflatten(0, (b, h))

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float | None = None,  # noqa: ARG002 - LoRA scale, handled by peft; accepted to stay silent
        ip_adapter_masks: torch.Tensor | list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # Mirrors diffusers.models.attention_processor.AttnProcessor2_0 operation for operation.
        encoder_hidden_states, token_sets = split_token_sets(encoder_hidden_states)
        id_tokens, ip_hidden_states = self.route(token_sets)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)

        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = self._attention(query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        if isinstance(id_tokens, RegionalIDTokens):
            if self.scale != 0.0 and not self.is_placeholder:
                regional = self._regional_id_attention(attn, query, id_tokens, batch_size, head_dim)
                if regional is not None:
                    hidden_states = hidden_states + self.scale * regional
        elif id_tokens is not None and self.scale != 0.0 and not self.is_placeholder:
            ip_key, ip_value = self.id_key_value(id_tokens, query.dtype)
            ip_key = ip_key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = ip_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                ip_key = attn.norm_k(ip_key)
            ip_hidden = self._attention(query, ip_key, ip_value)
            ip_hidden = ip_hidden.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            hidden_states = hidden_states + self.scale * ip_hidden

        if ip_hidden_states:
            hidden_states = self._ip_adapter_attention(
                attn, hidden_states, query, ip_hidden_states, ip_adapter_masks, batch_size, head_dim
            )

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

    def _regional_id_attention(
        self, attn, query: torch.Tensor, regional: RegionalIDTokens, batch_size: int, head_dim: int
    ) -> torch.Tensor | None:
        """``sum_p mask_p * attention(query, person p's tokens)`` (``(B, N, C)``), None where every region is empty.

        Each person is attended on its own (the one-person computation, so one person with a full mask is
        bit-identical to it) and people with an empty region at this resolution are skipped.
        """
        masks, nonempty = regional.masks_for_length(query.shape[2], query.device, query.dtype)
        out = None
        for p, tokens in enumerate(regional.tokens):
            if not nonempty[p]:
                continue
            ip_key, ip_value = self.id_key_value(tokens, query.dtype, slot=p)
            ip_key = ip_key.view(ip_key.shape[0], -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = ip_value.view(ip_value.shape[0], -1, attn.heads, head_dim).transpose(1, 2)
            if ip_key.shape[0] != batch_size:
                ip_key = ip_key.expand(batch_size, -1, -1, -1)
                ip_value = ip_value.expand(batch_size, -1, -1, -1)
            if attn.norm_k is not None:
                ip_key = attn.norm_k(ip_key)
            ip_hidden = self._attention(query, ip_key, ip_value)
            ip_hidden = ip_hidden.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            term = ip_hidden * masks[:, p, :, None]
            out = term if out is None else out + term
        return out

    def _ip_adapter_attention(
        self, attn, hidden_states, query, ip_hidden_states, ip_adapter_masks, batch_size, head_dim
    ) -> torch.Tensor:
        """The IP-Adapter terms, as in diffusers' ``IPAdapterAttnProcessor2_0.__call__`` (v0.42, masks included)."""
        ip = self.ip_adapter
        if ip_adapter_masks is not None:
            ip_adapter_masks = check_ip_adapter_masks(ip_adapter_masks, ip.scale, ip_hidden_states)
        else:
            ip_adapter_masks = [None] * len(ip.scale)

        def attend(states: torch.Tensor, to_k_ip, to_v_ip) -> torch.Tensor:
            """``(B, N, C)`` attention of ``query`` to one adapter's image tokens ``states``."""
            ip_key = to_k_ip(states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = to_v_ip(states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            current = F.scaled_dot_product_attention(
                query, ip_key, ip_value, attn_mask=None, dropout_p=0.0, is_causal=False
            )
            return current.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        for current_ip_hidden_states, scale, to_k_ip, to_v_ip, mask in zip(
            ip_hidden_states, ip.scale, ip.to_k_ip, ip.to_v_ip, ip_adapter_masks, strict=True
        ):
            skip = all(s == 0 for s in scale) if isinstance(scale, list) else scale == 0
            if skip:
                continue
            current_ip_hidden_states = current_ip_hidden_states.to(query.dtype)
            if mask is not None:
                if not isinstance(scale, list):
                    scale = [scale] * mask.shape[1]
                for i in range(mask.shape[1]):
                    current = attend(current_ip_hidden_states[:, i, :, :], to_k_ip, to_v_ip)
                    mask_downsample = IPAdapterMaskProcessor.downsample(
                        mask[:, i, :, :], batch_size, current.shape[1], current.shape[2]
                    )
                    mask_downsample = mask_downsample.to(dtype=query.dtype, device=query.device)
                    hidden_states = hidden_states + scale[i] * (current * mask_downsample)
            else:
                hidden_states = hidden_states + scale * attend(current_ip_hidden_states, to_k_ip, to_v_ip)
        return hidden_states

    def extra_repr(self) -> str:
        extra = f", ip_adapters={self.num_ip_adapters}" if self.ip_adapter is not None else ""
        sliced = f", slice_size={self.slice_size}" if self.slice_size else ""
        return f"hidden_size={self.hidden_size}, num_tokens={self.num_tokens}, scale={self.scale}{sliced}{extra}"


def check_ip_adapter_masks(
    masks: torch.Tensor | list[torch.Tensor | None], scales: list, ip_hidden_states: Sequence[torch.Tensor]
) -> list[torch.Tensor | None]:
    """``ip_adapter_masks`` as a list of one ``(1, num_images, H, W)`` mask (or None) per IP-Adapter, checked
    against the adapters' ``scales`` and image embeddings with diffusers' ``IPAdapterAttnProcessor2_0`` rules and
    messages (v0.42): masks that do not fit are refused, never used in part.

    Raises:
        ValueError: a different number of mask sets, scales and image embeddings; a mask that is not 4-D; or a
            mask set whose number of masks differs from its adapter's images or per-image scales.
    """
    if not isinstance(masks, list):
        masks = list(masks.unsqueeze(1))  # diffusers' older form: a (num_ip_adapters, 1, H, W) tensor
    if not (len(masks) == len(scales) == len(ip_hidden_states)):
        raise ValueError(
            f"Length of ip_adapter_masks array ({len(masks)}) must match length of self.scale array "
            f"({len(scales)}) and number of ip_hidden_states ({len(ip_hidden_states)})"
        )
    for index, (mask, scale, state) in enumerate(zip(masks, scales, ip_hidden_states, strict=True)):
        if mask is None:
            continue
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
            raise ValueError(
                "Each element of the ip_adapter_masks array should be a tensor with shape "
                "[1, num_images_for_ip_adapter, height, width]. Please use `IPAdapterMaskProcessor` to preprocess "
                "your mask"
            )
        if mask.shape[1] != state.shape[1]:
            raise ValueError(
                f"Number of masks ({mask.shape[1]}) does not match number of ip images ({state.shape[1]}) at "
                f"index {index}"
            )
        if isinstance(scale, list) and len(scale) != mask.shape[1]:
            raise ValueError(
                f"Number of masks ({mask.shape[1]}) does not match number of scales ({len(scale)}) at index {index}"
            )
    return masks


def id_attention_layer_names(unet: nn.Module) -> list[str]:
    """Names (``"down_blocks.1.attentions.0.transformer_blocks.0.attn2"``) of the UNet's text cross-attentions."""
    names = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and name.endswith("attn2") and module.is_cross_attention:
            names.append(name)
    return names


def _registry(unet: nn.Module) -> dict[str, IDAttnProcessor]:
    reg = getattr(unet, REGISTRY_ATTR, None)
    if reg is None:
        reg = {}
        object.__setattr__(unet, REGISTRY_ATTR, reg)
    return reg


def install_id_attention(
    unet: nn.Module,
    num_tokens: int,
    scale: float = 1.0,
    layer_names: Iterable[str] | None = None,
    init_from_text: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, IDAttnProcessor]:
    """Put an :class:`IDAttnProcessor` on each text cross-attention of ``unet`` (all ``attn2`` by default).

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (SDXL or SD).
        num_tokens: ``T``, number of ID tokens made by the face refiner.
        scale: initial ID scale.
        layer_names: restrict to these ``attn2`` layers (as returned by :func:`id_attention_layer_names`).
        init_from_text: start ``to_k_ip``/``to_v_ip`` as copies of the layer's ``to_k``/``to_v`` (IP-Adapter's
            initialisation); otherwise PyTorch's default init.
        device, dtype: default to the UNet's.

    Returns:
        ``{layer_name: processor}``. Other attention layers keep their processors; an IP-Adapter or attention
        slicing already on a layer is kept inside the new processor.
    """
    names = list(layer_names) if layer_names is not None else id_attention_layer_names(unet)
    modules = dict(unet.named_modules())
    param = next(unet.parameters())
    device = device if device is not None else param.device
    dtype = dtype if dtype is not None else param.dtype
    installed: dict[str, IDAttnProcessor] = {}
    for name in names:
        attn = modules.get(name)
        if not isinstance(attn, Attention):
            raise ValueError(f"{name!r} is not an attention layer of this UNet")
        proc = IDAttnProcessor(
            hidden_size=attn.to_k.out_features,
            cross_attention_dim=attn.to_k.in_features,
            num_tokens=num_tokens,
            scale=scale,
            device=device,
            dtype=dtype,
        )
        if init_from_text:
            with torch.no_grad():
                proc.to_k_ip.weight.copy_(_base_weight(attn.to_k))
                proc.to_v_ip.weight.copy_(_base_weight(attn.to_v))
        current = attn.processor
        if isinstance(current, IDAttnProcessor):
            proc.ip_adapter, proc.slice_size = current.ip_adapter, current.slice_size
        elif isinstance(current, (IPAdapterAttnProcessor2_0, IPAdapterAttnProcessor)):
            proc.ip_adapter = current
        elif isinstance(current, SlicedAttnProcessor):
            proc.slice_size = current.slice_size
        attn.set_processor(proc)
        installed[name] = proc
    _registry(unet).update(installed)
    logger.debug("installed ID attention on %d layers (T=%d)", len(installed), num_tokens)
    return installed


def _base_weight(linear: nn.Module) -> torch.Tensor:
    """Weight of a Linear, also when peft wrapped it in a LoRA layer."""
    base = getattr(linear, "base_layer", linear)
    return base.weight


def get_id_attn_processors(unet: nn.Module) -> dict[str, IDAttnProcessor]:
    """``{layer_name: processor}`` of the installed ID processors (empty if none; placeholders left out)."""
    return {
        name: module.processor
        for name, module in unet.named_modules()
        if isinstance(module, Attention)
        and isinstance(module.processor, IDAttnProcessor)
        and not module.processor.is_placeholder
    }


def sync_id_attention(unet: nn.Module, replaced: dict[str, Any] | None = None) -> dict[str, IDAttnProcessor]:
    """Put back the UNet's ID processors where a diffusers call replaced them, composing what it installed.

    diffusers replaces processors wholesale: ``enable_attention_slicing`` (``SlicedAttnProcessor``),
    ``disable_attention_slicing`` / ``set_default_attn_processor`` (``AttnProcessor2_0``), IP-Adapter loading
    (``IPAdapterAttnProcessor2_0``). Each is composed into the remembered ID processor (slicing, IP-Adapter weights
    and scales) and the ID processor is set back.

    Args:
        unet: the UNet.
        replaced: if given, receives ``{layer: processor found there}`` for every layer changed, so that the
            caller can put them back (:func:`restore_processors`): the pipeline composes for one generation
            only and leaves a UNet shared with other pipelines as it found it.

    Returns:
        The ID processors now installed.

    Raises:
        AttentionProcessorError: a layer got a processor the ID attention cannot be combined with (xformers,
            fused QKV, a custom processor); the message names the layer and the processor and what to do.
    """
    registry = _registry(unet)
    if not registry:
        return {}
    if getattr(unet.config, "encoder_hid_dim_type", None) != "ip_image_proj":
        # the IP-Adapter's image projection is gone (diffusers' unload_ip_adapter, from any pipeline sharing this
        # UNet): its attention weights go with it
        for proc in registry.values():
            proc.ip_adapter = None
    modules = dict(unet.named_modules())
    restored = 0
    for name, proc in list(registry.items()):
        attn = modules.get(name)
        if not isinstance(attn, Attention):
            continue
        current = attn.processor
        if current is proc:
            continue
        placeholder = isinstance(current, IDAttnProcessor) and current.is_placeholder
        if isinstance(current, IDAttnProcessor) and not placeholder:  # a new adapter installed on the layer
            registry[name] = current
            continue
        if isinstance(current, (IPAdapterAttnProcessor2_0, IPAdapterAttnProcessor)):
            proc.ip_adapter = current
        elif isinstance(current, SlicedAttnProcessor):
            proc.slice_size = current.slice_size
        elif placeholder or type(current) in (AttnProcessor2_0, AttnProcessor):
            proc.slice_size = None
        else:
            raise AttentionProcessorError(
                f"the UNet's ID attention on {name} was replaced by {type(current).__name__}, which the identity "
                "attention cannot be combined with (supported: default SDPA attention, attention slicing, "
                "IP-Adapter). Use pipe.enable_attention_slicing() or the default processors, or remove the "
                "identity attention first with pipe.unload_hifi_portrait()."
            )
        ref = attn.to_k.weight if hasattr(attn.to_k, "weight") else _base_weight(attn.to_k)
        proc.to(device=ref.device)
        if proc.ip_adapter is not None and proc.ip_adapter is not current:
            proc.ip_adapter.to(device=ref.device)
        if replaced is not None:
            replaced[name] = current
        attn.set_processor(proc)
        restored += 1
    if restored and replaced is None:
        logger.info("kept the identity attention on %d layers whose processors were replaced", restored)
    return get_id_attn_processors(unet)


def restore_processors(unet: nn.Module, replaced: dict[str, Any]) -> None:
    """Undo a :func:`sync_id_attention` that recorded what it ``replaced``."""
    modules = dict(unet.named_modules())
    for name, processor in replaced.items():
        modules[name].set_processor(processor)


def set_id_scale(unet: nn.Module, scale: float | dict[str, float]) -> None:
    """Set the ID attention scale of every installed processor (or per layer name with a dict)."""
    procs = get_id_attn_processors(unet) or dict(_registry(unet))
    if not procs:
        raise ValueError("the UNet has no ID attention processors; load an adapter or call install_id_attention")
    for name, proc in procs.items():
        proc.scale = float(scale[name] if isinstance(scale, dict) else scale)


def remove_id_attention(unet: nn.Module) -> int:
    """Remove the ID processors (an IP-Adapter or slicing composed into them stays); returns how many."""
    count = 0
    for _, module in unet.named_modules():
        if isinstance(module, Attention) and isinstance(module.processor, IDAttnProcessor):
            proc = module.processor
            if proc.ip_adapter is not None:
                module.set_processor(proc.ip_adapter)
            elif proc.slice_size:
                module.set_processor(SlicedAttnProcessor(proc.slice_size))
            else:
                module.set_processor(AttnProcessor2_0())
            count += not proc.is_placeholder
    _registry(unet).clear()
    return count


def _accept_in_default_reset() -> None:
    """List :class:`IDAttnProcessor` among diffusers' ``CROSS_ATTENTION_PROCESSORS``.

    ``UNet2DConditionModel.set_default_attn_processor`` refuses with a ``ValueError`` unless every processor is of
    a listed class; listing ours lets it reset a UNet carrying ID attention to diffusers' reference processor (as
    diffusers' own tests and users do). The pipeline then composes the ID attention back before its next
    generation (:func:`sync_id_attention`). Nothing else reads the tuple for UNets.
    """
    from diffusers.models import attention_processor
    from diffusers.models.unets import unet_2d_condition

    for module in (attention_processor, unet_2d_condition):
        listed = getattr(module, "CROSS_ATTENTION_PROCESSORS", None)
        if listed is not None and IDAttnProcessor not in listed:
            module.CROSS_ATTENTION_PROCESSORS = (*listed, IDAttnProcessor)


_accept_in_default_reset()
