"""Several ControlNets whose cross-attentions read different token sequences (InstantID + a public ControlNet).

InstantID's IdentityNet cross-attends to the ID tokens, while public ControlNets (OpenPose, depth, canny, ...)
cross-attend to the text, as in InstantID's own multi-ControlNet pipeline (``pipeline_stable_diffusion_xl_instantid
_full.py``: the first net gets the image embeddings, the others the prompt embeddings). diffusers'
``MultiControlNetModel`` passes one ``encoder_hidden_states`` to every net; :class:`MultiContextControlNetModel`
also takes one per net. The pipeline picks them by ``pipe.controlnet_context`` (a list such as
``["id_tokens", "text"]``).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models import MultiControlNetModel


class MultiContextControlNetModel(MultiControlNetModel):
    """A ``MultiControlNetModel`` whose ``encoder_hidden_states`` may be a list, one tensor per net.

    With a single tensor it is exactly diffusers' ``MultiControlNetModel``. With a list, net ``i`` reads
    ``encoder_hidden_states[i]``; the residuals are summed in net order, as diffusers sums them, and returned as
    ``(down_block_res_samples, mid_block_res_sample)`` like diffusers' class.
    """

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | list[torch.Tensor],
        controlnet_cond: list[torch.Tensor],
        conditioning_scale: list[float],
        return_dict: bool = True,
        **kwargs: Any,
    ):
        if not isinstance(encoder_hidden_states, (list, tuple)):
            return super().forward(
                sample,
                timestep,
                encoder_hidden_states,
                controlnet_cond,
                conditioning_scale,
                return_dict=return_dict,
                **kwargs,
            )
        if not len(encoder_hidden_states) == len(controlnet_cond) == len(conditioning_scale) == len(self.nets):
            raise ValueError(
                f"{len(self.nets)} ControlNets need as many encoder_hidden_states, images and scales (got "
                f"{len(encoder_hidden_states)}, {len(controlnet_cond)}, {len(conditioning_scale)})"
            )
        down, mid = None, None
        for net, states, image, scale in zip(
            self.nets, encoder_hidden_states, controlnet_cond, conditioning_scale, strict=True
        ):
            d, m = net(sample, timestep, states, image, scale, return_dict=False, **kwargs)
            down = d if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        return down, mid  # a tuple, as diffusers' MultiControlNetModel returns whatever return_dict says
