"""Output dataclass of the HiFi-Portrait SDXL pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class HiFiPortraitPipelineOutput(BaseOutput):
    """Result of :class:`StableDiffusionXLHiFiPortraitPipeline`.

    Attributes:
        images: generated images (list of PIL images, ``(B, H, W, 3)`` float array in ``[0, 1]`` for
            ``output_type="np"``, a tensor for ``"pt"``, latents for ``"latent"``).
        landmark_images: the landmark map(s) used, one PIL image per prompt (None when no landmark map was used).
        id_tokens: ``(1, T, D)`` ID tokens of the references (None when no identity was given), e.g. to reuse
            with ``id_tokens=`` in later calls without encoding the references again.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    landmark_images: list[PIL.Image.Image] | None = None
    id_tokens: torch.Tensor | None = None
