"""HiFi-Net: a light ControlNet-style branch of the SDXL UNet, conditioned on a landmark map and on ID tokens.

Two parts, split by what they depend on:

1. **Condition part** (:meth:`HiFiNetModel.prepare_condition`, once per generation; T2I-Adapter style): a
   convolutional pyramid encodes the landmark map ``(B, 3, H, W)`` (values in ``[0, 1]``, ``H, W`` = image size)
   into one feature map per UNet resolution level; at the levels listed in ``align_levels`` the landmark
   features cross-attend to the ID tokens ``(B, T, D)`` ("which identity goes where"). The key/value
   projections of the ID tokens for every per-step attention are computed here too. The result is a
   :class:`HiFiNetCondition` that does not depend on the noisy latent and is reused at every step.
2. **Per-step part** (:meth:`HiFiNetModel.forward`): a reduced-width copy of the UNet encoder (``size_ratio`` of
   its channels, ``branch_layers_per_block`` resnets per level) reads the noisy latent and the time/text-time
   embedding (copied from the UNet), adds the cached condition features at each level, cross-attends to the ID
   tokens at the levels in ``attention_levels``, and emits one residual per UNet skip connection (and the mid
   block) through zero-initialised 1x1 convolutions. An untrained model therefore returns exact zeros.

Interface (same as diffusers' ``ControlNetModel``, so it fits the SDXL ControlNet denoising loop)::

    down, mid = hifi_net(latent_model_input, t, encoder_hidden_states=prompt_embeds,
                         controlnet_cond=landmark_map, id_tokens=id_tokens,   # or condition=cached
                         conditioning_scale=1.0, added_cond_kwargs={"text_embeds": ..., "time_ids": ...},
                         return_dict=False)
    unet(latent_model_input, t, ..., down_block_additional_residuals=down, mid_block_additional_residual=mid)

``encoder_hidden_states`` (the text) is accepted for compatibility and not used: the branch reads identity, not
text. ``size_ratio=1.0`` with ``branch_layers_per_block = layers_per_block`` and ``copy_unet_weights=True`` is the
full-size ControlNet-copy variant (UNet encoder resnets copied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from hifi_portrait.models.id_attention import RegionalIDTokens, region_masks_at

__all__ = ["HiFiNetCondition", "HiFiNetModel", "HiFiNetOutput"]


@dataclass
class HiFiNetOutput(BaseOutput):
    """Residuals for the UNet.

    Attributes:
        down_block_res_samples: one tensor per UNet skip connection, ``(B, C_k, h_k, w_k)`` (9 for SDXL).
        mid_block_res_sample: ``(B, C_last, h_last, w_last)``.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


@dataclass
class HiFiNetCondition:
    """Latent-independent part of HiFi-Net, computed once per generation.

    A plain dataclass with a ``.to()`` (not a ``BaseOutput`` mapping), so that accelerate's offload hooks move
    it between devices like a tensor.

    Attributes:
        features: per resolution level, ``(B, c_i, h_i, w_i)`` landmark features aligned with the ID tokens
            (``c_i``: the branch's width where it enters level i).
        id_kv: per per-step attention layer (in execution order), ``(key, value)`` each ``(B, heads, T, d)``;
            ``(B, P, heads, T, d)`` for a group portrait (P people).
        regions: ``(B or 1, P, h, w)`` region masks at latent resolution for a group portrait, else None.
    """

    features: tuple[torch.Tensor, ...]
    id_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    regions: torch.Tensor | None = None

    def to(self, *args, **kwargs) -> HiFiNetCondition:
        """Same condition with every tensor passed through ``Tensor.to(*args, **kwargs)``."""
        return HiFiNetCondition(
            features=tuple(f.to(*args, **kwargs) for f in self.features),
            id_kv=tuple((k.to(*args, **kwargs), v.to(*args, **kwargs)) for k, v in self.id_kv),
            regions=None if self.regions is None else self.regions.to(*args, **kwargs),
        )

    def select(self, index: slice) -> HiFiNetCondition:
        """The condition of the batch items ``index`` (e.g. the conditional half of a CFG batch)."""
        return HiFiNetCondition(
            features=tuple(f[index] for f in self.features),
            id_kv=tuple((k[index], v[index]) for k, v in self.id_kv),
            regions=self.regions if self.regions is None or self.regions.shape[0] == 1 else self.regions[index],
        )

    def repeat_to(self, batch: int) -> HiFiNetCondition:
        """Broadcast a batch-1 condition to ``batch`` (other sizes must already match)."""
        cur = self.features[0].shape[0]
        if cur == batch:
            return self
        if cur != 1:
            raise ValueError(f"HiFi-Net condition has batch {cur}, the latent has {batch}")
        return HiFiNetCondition(
            features=tuple(f.expand(batch, -1, -1, -1) for f in self.features),
            id_kv=tuple((k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])) for k, v in self.id_kv),
            regions=self.regions,
        )


class _IDCrossAttention(nn.Module):
    """Spatial features (queries) attend to ID tokens; key/value projections can be computed ahead of time."""

    def __init__(self, channels: int, token_dim: int, head_dim: int, groups: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(token_dim, channels, bias=False)
        self.to_v = nn.Linear(token_dim, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)

    def kv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, D)`` -> key, value ``(B, heads, T, d)``."""
        b, t, _ = tokens.shape
        tokens = tokens.to(self.to_k.weight.dtype)
        k = self.to_k(tokens).view(b, t, self.heads, -1).transpose(1, 2)
        v = self.to_v(tokens).view(b, t, self.heads, -1).transpose(1, 2)
        return k, v

    def regional_kv(self, tokens: list[torch.Tensor], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``(B, T, D)`` tensor per person -> key, value ``(B, P, heads, T, d)``."""
        kvs = [self.kv(t.expand(batch, -1, -1)) for t in tokens]
        return torch.stack([k for k, _ in kvs], 1), torch.stack([v for _, v in kvs], 1)

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], regions: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.to_q(self.norm(x).flatten(2).transpose(1, 2)).view(b, h * w, self.heads, -1).transpose(1, 2)
        k, v = kv
        if k.ndim == 5:  # group portrait: each person's tokens act only inside its region, nothing outside
            masks = region_masks_at(regions.to(device=x.device, dtype=torch.float32), (h, w)).flatten(2)
            masks = masks.to(x.dtype)
            total = None
            for p in range(k.shape[1]):
                if not bool((masks[:, p] > 0).any()):
                    continue
                out = F.scaled_dot_product_attention(q, k[:, p].to(q.dtype), v[:, p].to(q.dtype))
                term = self.to_out(out.transpose(1, 2).reshape(b, h * w, c)) * masks[:, p, :, None]
                total = term if total is None else total + term
            return x if total is None else x + total.transpose(1, 2).reshape(b, c, h, w)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        out = self.to_out(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def branch_channels(block_out_channels: tuple[int, ...], size_ratio: float, groups: int) -> list[int]:
    """Per-level widths of the branch: ``size_ratio`` of the UNet's, rounded to a multiple of ``groups``."""
    return [max(groups, int(round(c * size_ratio / groups)) * groups) for c in block_out_channels]


class HiFiNetModel(ModelMixin, ConfigMixin):
    """Landmark- and identity-conditioned ControlNet-style branch producing SDXL UNet residuals.

    Args (UNet-derived; :meth:`from_unet` fills them):
        in_channels: latent channels (4).
        block_out_channels: the UNet's per-level widths (``(320, 640, 1280)`` for SDXL).
        layers_per_block: the UNet's resnets per down level (2 for SDXL); sets the number of residuals.
        cross_attention_dim: ``D``, channels of the ID tokens.
        flip_sin_to_cos, freq_shift: the UNet's timestep projection settings.
        addition_embed_type: ``"text_time"`` (SDXL) or None.
        addition_time_embed_dim, projection_class_embeddings_input_dim: SDXL micro-conditioning sizes.
        vae_scale_factor: image pixels per latent pixel (8 for SDXL).
    Args (branch design):
        size_ratio: branch width relative to the UNet (0.1 light, 1.0 full copy).
        branch_layers_per_block: resnets per level in the branch (depth).
        attention_levels: per level, whether the per-step branch cross-attends to the ID tokens.
        align_levels: per level, whether the cached landmark features cross-attend to the ID tokens.
        attention_head_dim: channels per head in the branch's ID attentions.
        norm_num_groups: group-norm groups of the branch.
        conditioning_channels: channels of the landmark map (3).
        conditioning_embedding_channels: widths of the landmark encoder before the per-level projections.
        use_mid_block: emit a mid-block residual computed by a branch resnet (else zeros-conv of last level).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280),
        layers_per_block: int = 2,
        cross_attention_dim: int = 2048,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        addition_embed_type: str | None = "text_time",
        addition_time_embed_dim: int | None = 256,
        projection_class_embeddings_input_dim: int | None = 2816,
        vae_scale_factor: int = 8,
        size_ratio: float = 0.1,
        branch_layers_per_block: int = 1,
        attention_levels: tuple[bool, ...] = (False, True, True),
        align_levels: tuple[bool, ...] = (True, True, True),
        attention_head_dim: int = 32,
        norm_num_groups: int = 8,
        conditioning_channels: int = 3,
        conditioning_embedding_channels: tuple[int, ...] = (16, 32, 96),
        use_mid_block: bool = True,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False  # set by ModelMixin.enable_gradient_checkpointing()
        levels = len(block_out_channels)
        if len(attention_levels) != levels or len(align_levels) != levels:
            raise ValueError("attention_levels and align_levels need one entry per UNet level")
        widths = branch_channels(tuple(block_out_channels), size_ratio, norm_num_groups)
        temb_dim = block_out_channels[0] * 4
        groups = norm_num_groups

        # --- time and SDXL text-time embeddings (copied from the UNet by from_unet) ---
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb_dim)
        if addition_embed_type == "text_time":
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, temb_dim)
        elif addition_embed_type is not None:
            raise ValueError(f"addition_embed_type {addition_embed_type!r} is not supported (use 'text_time' or None)")

        # --- condition part: landmark encoder, per-level projections, ID alignment ---
        n_down = int(round(math.log2(vae_scale_factor)))
        if 2**n_down != vae_scale_factor:
            raise ValueError(f"vae_scale_factor must be a power of 2, got {vae_scale_factor}")
        chs = list(conditioning_embedding_channels)
        enc: list[nn.Module] = [nn.Conv2d(conditioning_channels, chs[0], 3, padding=1), nn.SiLU()]
        for i in range(n_down):
            cin, cout = chs[min(i, len(chs) - 1)], chs[min(i + 1, len(chs) - 1)]
            enc += [nn.Conv2d(cin, cout, 3, padding=1, stride=2), nn.SiLU()]
        self.cond_encoder = nn.Sequential(*enc)
        c_enc = chs[min(n_down, len(chs) - 1)]
        # features are injected where the branch enters level i: widths[0] after conv_in, else the previous
        # level's width after its downsampler
        in_widths = [widths[0]] + widths[:-1]
        self.cond_levels = nn.ModuleList()
        for i, w in enumerate(in_widths):
            cin = c_enc if i == 0 else in_widths[i - 1]
            stride = 1 if i == 0 else 2
            self.cond_levels.append(
                nn.Sequential(nn.Conv2d(cin, w, 3, padding=1, stride=stride), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1))
            )
        self.cond_align = nn.ModuleList(
            [
                _IDCrossAttention(w, cross_attention_dim, attention_head_dim, groups)
                if align_levels[i]
                else nn.Identity()
                for i, w in enumerate(in_widths)
            ]
        )

        # --- per-step part ---
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, w in enumerate(widths):
            cin = widths[i - 1] if i > 0 else widths[0]
            res_level = nn.ModuleList()
            attn_level = nn.ModuleList()
            for j in range(branch_layers_per_block):
                res_level.append(
                    ResnetBlock2D(
                        in_channels=cin if j == 0 else w,
                        out_channels=w,
                        temb_channels=temb_dim,
                        groups=groups,
                        eps=1e-5,
                    )
                )
                attn_level.append(
                    _IDCrossAttention(w, cross_attention_dim, attention_head_dim, groups)
                    if attention_levels[i]
                    else nn.Identity()
                )
            self.resnets.append(res_level)
            self.attentions.append(attn_level)
            if i < levels - 1:
                self.downsamplers.append(Downsample2D(w, use_conv=True, out_channels=w, padding=1, name="op"))
        self.mid_resnet = (
            ResnetBlock2D(in_channels=widths[-1], out_channels=widths[-1], temb_channels=temb_dim, groups=groups)
            if use_mid_block
            else None
        )

        # --- zero-initialised output projections, one per UNet skip connection + mid ---
        zero = [_zero_conv(widths[0], block_out_channels[0])]
        for i, w in enumerate(widths):
            for _ in range(layers_per_block):
                zero.append(_zero_conv(w, block_out_channels[i]))
            if i < levels - 1:
                zero.append(_zero_conv(w, block_out_channels[i]))
        self.zero_convs = nn.ModuleList(zero)
        self.zero_conv_mid = _zero_conv(widths[-1], block_out_channels[-1])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        size_ratio: float = 0.1,
        branch_layers_per_block: int = 1,
        attention_levels: tuple[bool, ...] | None = None,
        align_levels: tuple[bool, ...] | None = None,
        vae_scale_factor: int = 8,
        norm_num_groups: int | None = None,
        copy_unet_weights: bool | None = None,
        **kwargs,
    ) -> HiFiNetModel:
        """Build a branch matching ``unet`` (a diffusers ``UNet2DConditionModel``).

        The time / text-time embeddings are always copied from the UNet. With ``size_ratio == 1`` and
        ``branch_layers_per_block == unet.config.layers_per_block`` (the full-size ControlNet variant),
        ``copy_unet_weights`` (default True there) also copies ``conv_in``, the down-block resnets, the
        downsamplers and the first mid-block resnet, as ``ControlNetModel.from_unet`` does.

        Args:
            size_ratio: branch width relative to the UNet.
            branch_layers_per_block: branch depth per level.
            attention_levels: per level, per-step ID attention; default: the UNet's cross-attention levels.
            align_levels: per level, landmark/ID alignment in the cached part; default all True.
            vae_scale_factor: the pipeline's ``vae_scale_factor`` (8 for SDXL).
            norm_num_groups: defaults to 8 for reduced widths, the UNet's for the full-size variant.
            kwargs: other config entries (``attention_head_dim``, ``conditioning_embedding_channels``...).
        """
        cfg = unet.config
        levels = len(cfg.block_out_channels)
        full = size_ratio == 1.0 and branch_layers_per_block == cfg.layers_per_block
        if norm_num_groups is None:
            norm_num_groups = cfg.norm_num_groups if size_ratio == 1.0 else 8
        if attention_levels is None:
            attention_levels = tuple("CrossAttn" in t for t in cfg.down_block_types)
        if align_levels is None:
            align_levels = (True,) * levels
        cross_dim = cfg.cross_attention_dim
        if isinstance(cross_dim, (list, tuple)):
            cross_dim = cross_dim[0]
        if not isinstance(cfg.layers_per_block, int):
            raise ValueError("UNets with per-level layers_per_block are not supported")
        model = cls(
            in_channels=cfg.in_channels,
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            cross_attention_dim=cross_dim,
            flip_sin_to_cos=cfg.flip_sin_to_cos,
            freq_shift=cfg.freq_shift,
            addition_embed_type=cfg.addition_embed_type,
            addition_time_embed_dim=cfg.addition_time_embed_dim,
            projection_class_embeddings_input_dim=cfg.projection_class_embeddings_input_dim,
            vae_scale_factor=vae_scale_factor,
            size_ratio=size_ratio,
            branch_layers_per_block=branch_layers_per_block,
            attention_levels=tuple(attention_levels),
            align_levels=tuple(align_levels),
            norm_num_groups=norm_num_groups,
            **kwargs,
        )
        model.time_proj.load_state_dict(unet.time_proj.state_dict())
        model.time_embedding.load_state_dict(unet.time_embedding.state_dict())
        if cfg.addition_embed_type == "text_time":
            model.add_time_proj.load_state_dict(unet.add_time_proj.state_dict())
            model.add_embedding.load_state_dict(unet.add_embedding.state_dict())
        if copy_unet_weights is None:
            copy_unet_weights = full
        if copy_unet_weights:
            if not full:
                raise ValueError("copy_unet_weights needs size_ratio=1.0 and branch_layers_per_block=layers_per_block")
            model.conv_in.load_state_dict(unet.conv_in.state_dict())
            for i, block in enumerate(unet.down_blocks):
                for j, resnet in enumerate(block.resnets):
                    model.resnets[i][j].load_state_dict(resnet.state_dict())
                if block.downsamplers is not None and i < levels - 1:
                    model.downsamplers[i].load_state_dict(block.downsamplers[0].state_dict())
            if model.mid_resnet is not None:
                model.mid_resnet.load_state_dict(unet.mid_block.resnets[0].state_dict())
        model = model.to(unet.device)
        if unet.dtype != model.dtype:
            model = model.to(unet.dtype)
        return model

    # ------------------------------------------------------------------ condition part (once per generation)
    @apply_forward_hook  # onloads the model under enable_model_cpu_offload, like the VAE's encode/decode
    def prepare_condition(
        self, controlnet_cond: torch.Tensor, id_tokens: torch.Tensor | None = None
    ) -> HiFiNetCondition:
        """Encode the landmark map and align it with the ID tokens (independent of the noisy latent).

        Args:
            controlnet_cond: ``(B, 3, H, W)`` landmark map in ``[0, 1]``, ``H = vae_scale_factor * h_latent``.
            id_tokens: ``(B, T, D)`` or ``(1, T, D)``; None means "no identity" (a single zero token). A
                :class:`~hifi_portrait.models.id_attention.RegionalIDTokens` for a group portrait: the ID
                alignment is then masked like the UNet's ID attention (each person's tokens act only inside its
                region, resized to each level; outside every region the landmark features are left as they are).

        Returns:
            A :class:`HiFiNetCondition` to pass as ``condition=`` to :meth:`forward` at every step.
        """
        dtype = self.conv_in.weight.dtype
        b = controlnet_cond.shape[0]
        if isinstance(id_tokens, RegionalIDTokens):
            return self._prepare_regional(controlnet_cond, id_tokens)
        if id_tokens is None:
            id_tokens = torch.zeros(b, 1, self.config.cross_attention_dim, device=controlnet_cond.device, dtype=dtype)
        if id_tokens.shape[0] == 1 and b > 1:
            id_tokens = id_tokens.expand(b, -1, -1)
        elif id_tokens.shape[0] != b:
            raise ValueError(f"id_tokens batch {id_tokens.shape[0]} does not match the landmark map batch {b}")
        x = self.cond_encoder(controlnet_cond.to(dtype))
        feats = []
        for level, align in zip(self.cond_levels, self.cond_align, strict=True):
            x = level(x)
            f = align(x, align.kv(id_tokens)) if isinstance(align, _IDCrossAttention) else x
            feats.append(f)
        id_kv = tuple(
            attn.kv(id_tokens) for level in self.attentions for attn in level if isinstance(attn, _IDCrossAttention)
        )
        return HiFiNetCondition(features=tuple(feats), id_kv=id_kv)

    def _prepare_regional(self, controlnet_cond: torch.Tensor, regional: RegionalIDTokens) -> HiFiNetCondition:
        dtype = self.conv_in.weight.dtype
        b = controlnet_cond.shape[0]
        tokens = [t.to(dtype) for t in regional.tokens]
        for t in tokens:
            if t.shape[0] not in (1, b):
                raise ValueError(f"id_tokens batch {t.shape[0]} does not match the landmark map batch {b}")
        regions = regional.masks
        x = self.cond_encoder(controlnet_cond.to(dtype))
        feats = []
        for level, align in zip(self.cond_levels, self.cond_align, strict=True):
            x = level(x)
            if isinstance(align, _IDCrossAttention):
                f = align(x, align.regional_kv(tokens, b), regions)
            else:
                f = x
            feats.append(f)
        id_kv = tuple(
            attn.regional_kv(tokens, b)
            for level in self.attentions
            for attn in level
            if isinstance(attn, _IDCrossAttention)
        )
        return HiFiNetCondition(features=tuple(feats), id_kv=id_kv, regions=regions)

    # ------------------------------------------------------------------ per-step part
    def _embed_time(self, sample: torch.Tensor, timestep, added_cond_kwargs: dict | None) -> torch.Tensor:
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.float32, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))
        if self.config.addition_embed_type == "text_time":
            if not added_cond_kwargs or "text_embeds" not in added_cond_kwargs or "time_ids" not in added_cond_kwargs:
                raise ValueError("HiFi-Net for SDXL needs added_cond_kwargs with 'text_embeds' and 'time_ids'")
            text_embeds = added_cond_kwargs["text_embeds"]
            time_embeds = self.add_time_proj(added_cond_kwargs["time_ids"].flatten())
            time_embeds = time_embeds.reshape((text_embeds.shape[0], -1))
            add = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
            emb = emb + self.add_embedding(add)
        return emb

    def _checkpointed(self, module: nn.Module, *args):
        """``module(*args)``, recomputed in the backward pass under gradient checkpointing (as diffusers' blocks)."""
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        controlnet_cond: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        id_tokens: torch.Tensor | None = None,
        condition: HiFiNetCondition | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> HiFiNetOutput | tuple:
        """Residuals for one denoising step.

        Args:
            sample: ``(B, 4, h, w)`` noisy latent (already scaled by the scheduler).
            timestep: scalar or ``(B,)``.
            encoder_hidden_states: text embeddings; accepted for ControlNet compatibility, unused.
            controlnet_cond: ``(B, 3, H, W)`` landmark map, used when ``condition`` is None.
            conditioning_scale: multiplies every residual.
            added_cond_kwargs: SDXL ``{"text_embeds": (B, 1280), "time_ids": (B, 6)}``.
            id_tokens: ``(B, T, D)``, used when ``condition`` is None.
            condition: the cached output of :meth:`prepare_condition` (preferred inside a denoising loop).
            kwargs: other ControlNet arguments (``guess_mode``...), ignored.

        Returns:
            :class:`HiFiNetOutput` or ``(down_block_res_samples, mid_block_res_sample)``.
        """
        if condition is None:
            if controlnet_cond is None:
                raise ValueError("HiFi-Net needs controlnet_cond (the landmark map) or a prepared condition")
            condition = self.prepare_condition(controlnet_cond, id_tokens)
        condition = condition.repeat_to(sample.shape[0])
        feats = condition.features
        if feats[0].shape[-2:] != sample.shape[-2:]:
            raise ValueError(
                f"landmark features are {tuple(feats[0].shape[-2:])}, the latent is {tuple(sample.shape[-2:])}: "
                "the landmark map must have the image size (latent size x vae_scale_factor)"
            )
        sample = sample.to(self.conv_in.weight.dtype)
        emb = self._embed_time(sample, timestep, added_cond_kwargs)
        lpb = self.config.layers_per_block
        bl = self.config.branch_layers_per_block
        zero = iter(self.zero_convs)
        kv_iter = iter(condition.id_kv)

        h = self.conv_in(sample) + feats[0]
        down = [next(zero)(h)]
        for i, (res_level, attn_level) in enumerate(zip(self.resnets, self.attentions, strict=True)):
            outs = []
            for resnet, attn in zip(res_level, attn_level, strict=True):
                h = self._checkpointed(resnet, h, emb)
                if isinstance(attn, _IDCrossAttention):
                    if condition.regions is None:
                        h = self._checkpointed(attn, h, next(kv_iter))
                    else:
                        h = self._checkpointed(attn, h, next(kv_iter), condition.regions)
                outs.append(h)
            for s in range(lpb):
                down.append(next(zero)(outs[min(s, bl - 1)]))
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h) + feats[i + 1]
                down.append(next(zero)(h))
        if self.mid_resnet is not None:
            h = self._checkpointed(self.mid_resnet, h, emb)
        mid = self.zero_conv_mid(h)
        if conditioning_scale != 1.0:
            down = [d * conditioning_scale for d in down]
            mid = mid * conditioning_scale
        if not return_dict:
            return tuple(down), mid
        return HiFiNetOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)
