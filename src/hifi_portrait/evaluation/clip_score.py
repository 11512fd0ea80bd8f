"""CLIP-T (text-image alignment) and CLIP image embeddings from local transformers CLIP weights.

CLIP-T is the cosine similarity between the CLIP embeddings of a generated image and of its prompt
(Radford et al. 2021; used by PhotoMaker and others, usually reported x100). The weights are never downloaded:
the user points to a local ``transformers`` CLIP folder (``config.json``, ``model.safetensors``, tokenizer and
preprocessor files), e.g. a snapshot of ``openai/clip-vit-large-patch14``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from hifi_portrait.errors import ModelFilesMissingError

logger = logging.getLogger(__name__)

CLIP_HINT = (
    "Pass a local transformers CLIP folder (config.json, model.safetensors, tokenizer and preprocessor files), "
    "e.g. `huggingface-cli download openai/clip-vit-large-patch14 --local-dir clip-l` on a machine with internet."
)


class ClipScorer:
    """CLIP image/text embeddings from a local ``transformers`` ``CLIPModel`` folder.

    Args:
        model_dir: the folder.
        device: torch device.

    Raises:
        ModelFilesMissingError: the folder or one of its required files is missing.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ModelFilesMissingError(f"no CLIP model at {path} (config.json missing). {CLIP_HINT}")
        weights = list(path.glob("*.safetensors"))
        if not weights:
            raise ModelFilesMissingError(f"no .safetensors weights in {path}. {CLIP_HINT}")
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(str(path))
            self.processor = CLIPImageProcessor.from_pretrained(str(path))
        except OSError as exc:
            raise ModelFilesMissingError(
                f"CLIP tokenizer/preprocessor files missing in {path}: {exc}. {CLIP_HINT}"
            ) from None
        self.model = CLIPModel.from_pretrained(str(path), use_safetensors=True).to(device).eval()
        self.device = torch.device(device)
        self.name = path.name
        logger.info("loaded CLIP model from %s", path)

    @torch.no_grad()
    def image_embeddings(self, images: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Unit-norm ``(N, D)`` embeddings of RGB uint8 ``(H, W, 3)`` images."""
        out = []
        for start in range(0, len(images), batch_size):
            inputs = self.processor(images=list(images[start : start + batch_size]), return_tensors="pt")
            feats = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            feats = getattr(feats, "pooler_output", feats)  # transformers 5 may return a model output
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim))

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """Unit-norm ``(N, D)`` embeddings of prompts (truncated to CLIP's context length)."""
        inputs = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        feats = self.model.get_text_features(
            input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
        )
        feats = getattr(feats, "pooler_output", feats)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    def clip_t(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        """``(N,)`` CLIP-T: cosine between each image and its prompt (not x100)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return np.sum(self.image_embeddings(images) * self.text_embeddings(prompts), axis=1)
