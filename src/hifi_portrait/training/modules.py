"""The module that accelerate prepares: trainable face refiner, HiFi-Net and ID attention around the frozen UNet.

As in IP-Adapter's training script, the frozen UNet sits *inside* the prepared module, so that under DDP one
``forward`` covers the whole computation (DDP only synchronizes gradients of parameters used inside the wrapped
forward). Frozen parameters are ignored by the optimizer and by DDP; only the trainable parts are saved.
"""

from __future__ import annotations

import torch
from torch import nn

from hifi_portrait.models.id_attention import IDAttnProcessor, with_id_tokens


class HiFiPortraitTrainingModel(nn.Module):
    """Face refiner -> ID tokens; HiFi-Net(landmark map, ID tokens) -> residuals; UNet(+ID attention) -> prediction.

    Args:
        unet: the frozen SDXL UNet with :class:`IDAttnProcessor` installed on its cross-attentions.
        face_refiner: trainable ``FaceRefiner``.
        hifi_net: trainable ``HiFiNetModel`` (ControlNet-style residuals).
        id_processors: ``{layer_name: IDAttnProcessor}`` installed in ``unet`` (trainable).
    """

    def __init__(
        self, unet: nn.Module, face_refiner: nn.Module, hifi_net: nn.Module, id_processors: dict[str, IDAttnProcessor]
    ) -> None:
        super().__init__()
        self.unet = unet
        self.face_refiner = face_refiner
        self.hifi_net = hifi_net
        self.id_layer_names = list(id_processors)
        self.ip_attn = nn.ModuleList([id_processors[n] for n in self.id_layer_names])

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"face_refiner": self.face_refiner, "hifi_net": self.hifi_net, "ip_attn": self.ip_attn}

    def trainable_parameters(self) -> list[nn.Parameter]:
        seen: set[int] = set()
        out = []
        for module in self.trainable_modules().values():
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def id_tokens(
        self,
        id_embeds: torch.Tensor,
        patch_tokens: torch.Tensor | None,
        quality: torch.Tensor | None,
        ref_mask: torch.Tensor | None,
        drop_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, T, D)`` ID tokens; rows where ``drop_id`` is True are zeros (the pipeline's "no identity")."""
        tokens = self.face_refiner(id_embeds, patch_tokens=patch_tokens, quality=quality, ref_mask=ref_mask)
        if drop_id is not None:
            tokens = tokens * (~drop_id.bool()).to(tokens.dtype)[:, None, None]
        return tokens

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
        landmark_map: torch.Tensor,
        id_embeds: torch.Tensor,
        patch_tokens: torch.Tensor | None = None,
        quality: torch.Tensor | None = None,
        ref_mask: torch.Tensor | None = None,
        drop_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet's prediction ``(B, 4, h, w)`` (noise or velocity, per the scheduler).

        Args:
            noisy_latents: ``(B, 4, h, w)``; timesteps ``(B,)``.
            prompt_embeds: ``(B, 77, 2048)`` text embeddings; added_cond_kwargs: SDXL ``text_embeds``/``time_ids``.
            landmark_map: ``(B, 3, H, W)`` in ``[0, 1]`` (zeros where dropped).
            id_embeds, patch_tokens, quality, ref_mask: the references (see ``FaceRefiner.forward``).
            drop_id: ``(B,)`` bool, True to train that sample without identity (classifier-free guidance).
        """
        unet_dtype = self.unet.dtype
        tokens = self.id_tokens(id_embeds, patch_tokens, quality, ref_mask, drop_id)
        down_res, mid_res = self.hifi_net(
            noisy_latents,
            timesteps,
            encoder_hidden_states=prompt_embeds,
            controlnet_cond=landmark_map,
            id_tokens=tokens,
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )
        encoder_hidden_states = with_id_tokens(prompt_embeds.to(unet_dtype), tokens.to(unet_dtype))
        return self.unet(
            noisy_latents.to(unet_dtype),
            timesteps,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs={k: v.to(unet_dtype) for k, v in added_cond_kwargs.items()},
            down_block_additional_residuals=[r.to(unet_dtype) for r in down_res],
            mid_block_additional_residual=mid_res.to(unet_dtype),
            return_dict=False,
        )[0]
