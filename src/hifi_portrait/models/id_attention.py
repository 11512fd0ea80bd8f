"""Decoupled (IP-Adapter-style) cross-attention of the SDXL UNet to identity tokens.

The UNet's text cross-attention layers (``attn2``) get a :class:`IDAttnProcessor` that keeps the original text
attention untouched and adds a second attention over the ``T`` identity tokens, with its own key/value
projections (``to_k_ip``, ``to_v_ip``) and a ``scale``::

    out = to_out(softmax(q k_text^T) v_text + scale * softmax(q k_id^T) v_id)

How the tokens reach the processor: like the original IP-Adapter (and InstantID), the ID tokens are appended to
the text embeddings, ``encoder_hidden_states = cat([prompt_embeds, id_tokens], dim=1)``
(see :func:`append_id_tokens`); the processor splits the last ``num_tokens`` tokens off. Once processors are
installed, every UNet call must therefore carry exactly ``num_tokens`` ID tokens at the end (zeros mean "no
identity": they contribute exactly nothing since ``to_k_ip``/``to_v_ip`` have no bias).

With ``scale == 0`` the ID branch is skipped and the computation is operation-for-operation that of diffusers'
``AttnProcessor2_0``, so the output is bit-identical to the plain UNet.

All state (weights, scale, number of tokens) lives in the processor objects: no globals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "IDAttnProcessor",
    "append_id_tokens",
    "get_id_attn_processors",
    "id_attention_layer_names",
    "install_id_attention",
    "remove_id_attention",
    "set_id_scale",
]


class IDAttnProcessor(nn.Module):
    """Text cross-attention plus a decoupled, scaled cross-attention to ``num_tokens`` identity tokens.

    Args:
        hidden_size: channels of the attention layer (``attn.to_k.out_features``).
        cross_attention_dim: channels of the ID tokens (``D``, = the UNet's ``cross_attention_dim``).
        num_tokens: number ``T`` of ID tokens appended at the end of ``encoder_hidden_states``.
        scale: weight of the ID attention; 0 gives exactly the plain UNet.
        device, dtype: where to create the projections.
    """

    def __init__(
        self,
        hidden_size: int,
        cross_attention_dim: int,
        num_tokens: int = 16,
        scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.cross_attention_dim = int(cross_attention_dim)
        self.num_tokens = int(num_tokens)
        self.scale = float(scale)
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False, device=device, dtype=dtype)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False, device=device, dtype=dtype)

    def split(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S + T, D)`` -> text ``(B, S, D)`` and ID tokens ``(B, T, D)``."""
        if encoder_hidden_states.shape[1] <= self.num_tokens:
            raise ValueError(
                f"IDAttnProcessor expects text tokens followed by {self.num_tokens} ID tokens, got a sequence of "
                f"{encoder_hidden_states.shape[1]}; append ID tokens with hifi_portrait.models.append_id_tokens "
                "or remove the processors with remove_id_attention(unet)."
            )
        end = encoder_hidden_states.shape[1] - self.num_tokens
        return encoder_hidden_states[:, :end], encoder_hidden_states[:, end:]

    def id_key_value(self, id_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``to_k_ip`` and ``to_v_ip`` of the ``(B, T, D)`` ID tokens.

        The ID tokens are the same at every denoising step of a generation, so at inference (no autograd) the
        projections are computed once and reused while the tokens and weights are unchanged (checked by value: a
        comparison of ``B*T*D`` numbers instead of two ``D x hidden`` matrix products per step and layer).
        """
        id_tokens = id_tokens.to(dtype=self.to_k_ip.weight.dtype)
        if torch.is_grad_enabled():
            self._kv_cache = None
            return self.to_k_ip(id_tokens), self.to_v_ip(id_tokens)
        cache = getattr(self, "_kv_cache", None)
        versions = (self.to_k_ip.weight._version, self.to_v_ip.weight._version)
        if (
            cache is not None
            and cache[0].shape == id_tokens.shape
            and cache[0].device == id_tokens.device
            and cache[3] == versions
            and cache[4] == (self.to_k_ip.weight.data_ptr(), self.to_v_ip.weight.data_ptr())
            and torch.equal(cache[0], id_tokens)
        ):
            return cache[1], cache[2]
        key, value = self.to_k_ip(id_tokens), self.to_v_ip(id_tokens)
        ptrs = (self.to_k_ip.weight.data_ptr(), self.to_v_ip.weight.data_ptr())
        self._kv_cache = (id_tokens.clone(), key, value, versions, ptrs)
        return key, value

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float | None = None,  # noqa: ARG002 - LoRA scale, handled by peft; accepted to stay silent
    ) -> torch.Tensor:
        # Mirrors diffusers.models.attention_processor.AttnProcessor2_0 operation for operation.
        id_tokens = None
        if encoder_hidden_states is not None:
            encoder_hidden_states, id_tokens = self.split(encoder_hidden_states)

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

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        if id_tokens is not None and self.scale != 0.0:
            ip_key, ip_value = self.id_key_value(id_tokens)
            ip_key = ip_key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = ip_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                ip_key = attn.norm_k(ip_key)
            ip_hidden = F.scaled_dot_product_attention(query, ip_key, ip_value, dropout_p=0.0, is_causal=False)
            ip_hidden = ip_hidden.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            hidden_states = hidden_states + self.scale * ip_hidden

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_tokens={self.num_tokens}, scale={self.scale}"


def append_id_tokens(prompt_embeds: torch.Tensor, id_tokens: torch.Tensor) -> torch.Tensor:
    """Concatenate ``(B, S, D)`` text embeddings and ``(B, T, D)`` ID tokens into ``(B, S + T, D)``."""
    if id_tokens.shape[0] != prompt_embeds.shape[0] or id_tokens.shape[-1] != prompt_embeds.shape[-1]:
        raise ValueError(
            f"ID tokens of shape {tuple(id_tokens.shape)} do not match text embeddings {tuple(prompt_embeds.shape)} "
            "(batch and channel dimensions must agree)."
        )
    return torch.cat([prompt_embeds, id_tokens.to(prompt_embeds.dtype)], dim=1)


def id_attention_layer_names(unet: nn.Module) -> list[str]:
    """Names (``"down_blocks.1.attentions.0.transformer_blocks.0.attn2"``) of the UNet's text cross-attentions."""
    names = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and name.endswith("attn2") and module.is_cross_attention:
            names.append(name)
    return names


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
        num_tokens: ``T``, number of ID tokens appended to the text embeddings.
        scale: initial ID scale.
        layer_names: restrict to these ``attn2`` layers (as returned by :func:`id_attention_layer_names`).
        init_from_text: start ``to_k_ip``/``to_v_ip`` as copies of the layer's ``to_k``/``to_v`` (IP-Adapter's
            initialisation); otherwise PyTorch's default init.
        device, dtype: default to the UNet's.

    Returns:
        ``{layer_name: processor}``. Other attention layers keep their processors.
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
        attn.set_processor(proc)
        installed[name] = proc
    logger.debug("installed ID attention on %d layers (T=%d)", len(installed), num_tokens)
    return installed


def _base_weight(linear: nn.Module) -> torch.Tensor:
    """Weight of a Linear, also when peft wrapped it in a LoRA layer."""
    base = getattr(linear, "base_layer", linear)
    return base.weight


def get_id_attn_processors(unet: nn.Module) -> dict[str, IDAttnProcessor]:
    """``{layer_name: processor}`` of the installed ID processors (empty if none)."""
    return {
        name: module.processor
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and isinstance(module.processor, IDAttnProcessor)
    }


def set_id_scale(unet: nn.Module, scale: float | dict[str, float]) -> None:
    """Set the ID attention scale of every installed processor (or per layer name with a dict)."""
    procs = get_id_attn_processors(unet)
    if not procs:
        raise ValueError("the UNet has no ID attention processors; load an adapter or call install_id_attention")
    for name, proc in procs.items():
        proc.scale = float(scale[name] if isinstance(scale, dict) else scale)


def remove_id_attention(unet: nn.Module) -> int:
    """Restore diffusers' default processor on the layers that had an ID processor; returns how many."""
    count = 0
    for _, module in unet.named_modules():
        if isinstance(module, Attention) and isinstance(module.processor, IDAttnProcessor):
            module.set_processor(AttnProcessor2_0())
            count += 1
    return count
