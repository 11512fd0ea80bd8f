"""Loading the frozen base model (SDXL folder), the optional image encoder and identity recognizer, and building
the trainable modules (face refiner, HiFi-Net, ID attention) around the UNet.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hifi_portrait.errors import ConfigError, ModelFilesMissingError
from hifi_portrait.training.config import LossConfig, ModelConfig

logger = logging.getLogger(__name__)

#: Sub-folders of a diffusers SDXL folder that training reads.
SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
SDXL_HINT = (
    "Download the SDXL base model in diffusers format, e.g. `hf download stabilityai/stable-diffusion-xl-base-1.0 "
    "--local-dir models/sdxl-base` (about 7 GB in fp16 with `--include '*.fp16.safetensors' '*.json' '*.txt'`), "
    "and set model.pretrained_model_name_or_path to that folder."
)


def check_base_model(path: str | Path) -> Path:
    """Check that ``path`` is a local diffusers SDXL folder, else raise :class:`ModelFilesMissingError`."""
    if not path:
        raise ModelFilesMissingError(f"model.pretrained_model_name_or_path is not set. {SDXL_HINT}")
    root = Path(path)
    if not root.is_dir():
        raise ModelFilesMissingError(f"base model folder {root} does not exist. {SDXL_HINT}")
    missing = [] if (root / "model_index.json").is_file() else ["model_index.json"]
    for part in SDXL_PARTS:
        folder = root / part
        if not folder.is_dir() or not any(folder.iterdir()):
            missing.append(f"{part}/")
    if missing:
        raise ModelFilesMissingError(f"base model folder {root} lacks {', '.join(missing)}. {SDXL_HINT}")
    return root


@dataclass
class BaseModel:
    """The frozen SDXL parts."""

    unet: nn.Module
    vae: nn.Module
    text_encoders: list[nn.Module]
    tokenizers: list
    noise_scheduler: object
    path: Path


def load_base_model(cfg: ModelConfig) -> BaseModel:
    """Load the SDXL UNet, VAE, both text encoders/tokenizers and a DDPM noise scheduler from a local folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    root = check_base_model(cfg.pretrained_model_name_or_path)
    kw = {"revision": cfg.revision, "variant": cfg.variant}
    try:
        tokenizers = [AutoTokenizer.from_pretrained(root, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
        text_encoders = [
            CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw),
            CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2", **kw),
        ]
        if cfg.vae_model_name_or_path:
            vae = AutoencoderKL.from_pretrained(cfg.vae_model_name_or_path)
        else:
            vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw)
        scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    except OSError as exc:
        raise ModelFilesMissingError(f"could not load the base model from {root}: {exc}. {SDXL_HINT}") from None
    return BaseModel(unet, vae, text_encoders, tokenizers, scheduler, root)


def load_image_encoder(path: str | None) -> nn.Module | None:
    """A transformers CLIP vision tower from a local folder (frozen), or None when not configured."""
    if not path:
        return None
    from transformers import CLIPVisionModelWithProjection

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelFilesMissingError(
            f"image encoder folder {folder} lacks config.json. Download a CLIP vision tower, e.g. "
            "`hf download h94/IP-Adapter --include 'models/image_encoder/*' --local-dir models/ip-adapter` "
            "(OpenCLIP ViT-H/14), and set model.image_encoder_path to its image_encoder folder."
        )
    return CLIPVisionModelWithProjection.from_pretrained(folder)


def load_id_recognizer(cfg: LossConfig) -> nn.Module | None:
    """The identity-loss recognizer from ``"package.module:factory"`` (None when the ID loss is off)."""
    if cfg.id_loss_weight <= 0:
        return None
    if not cfg.id_recognizer:
        raise ConfigError(
            "loss.id_loss_weight > 0 needs loss.id_recognizer: 'package.module:factory' returning a differentiable "
            "face recognizer (torch.nn.Module, images (B,3,S,S) in [-1,1] -> embeddings (B,D)); "
            "or pass id_recognizer= to hifi_portrait.training.train()."
        )
    module_name, _, attr = cfg.id_recognizer.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "build")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"loss.id_recognizer {cfg.id_recognizer!r} cannot be imported: {exc}") from None
    model = factory(**cfg.id_recognizer_kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"loss.id_recognizer {cfg.id_recognizer!r} returned {type(model).__name__}, not a Module")
    return model


def build_trainable(unet: nn.Module, cfg: ModelConfig, id_embed_dim: int, patch_dim: int | None, num_patches: int):
    """Create the face refiner, HiFi-Net and ID attention processors for ``unet``.

    ``cfg.face_refiner`` / ``cfg.hifi_net`` / ``cfg.ip_attn`` override the defaults; the refiner's input sizes
    come from the data (``id_embed_dim``) and the image encoder (``patch_dim``, ``num_patches``) unless given.

    Returns:
        ``(face_refiner, hifi_net, id_processors)``.
    """
    from hifi_portrait.models.face_refiner import FaceRefiner
    from hifi_portrait.models.hifi_net import HiFiNetModel
    from hifi_portrait.models.id_attention import install_id_attention

    cross_dim = unet.config.cross_attention_dim
    cross_dim = cross_dim[0] if isinstance(cross_dim, (list, tuple)) else cross_dim
    refiner_kw = {"id_embed_dim": id_embed_dim, "output_dim": cross_dim, "num_patches": num_patches}
    if patch_dim is not None:
        refiner_kw["patch_dim"] = patch_dim
    refiner_kw.update(cfg.face_refiner)
    try:
        face_refiner = FaceRefiner(**refiner_kw)
        hifi_kw = dict(cfg.hifi_net)
        for key in ("attention_levels", "align_levels", "conditioning_embedding_channels"):
            if isinstance(hifi_kw.get(key), list):
                hifi_kw[key] = tuple(hifi_kw[key])
        hifi_net = HiFiNetModel.from_unet(unet, **hifi_kw)
        ip_kw = {"num_tokens": face_refiner.config.num_tokens, **cfg.ip_attn}
        if ip_kw["num_tokens"] != face_refiner.config.num_tokens:
            raise ConfigError("model.ip_attn.num_tokens must equal model.face_refiner.num_tokens")
        processors = install_id_attention(unet, **ip_kw)
    except TypeError as exc:
        raise ConfigError(f"bad model.face_refiner / model.hifi_net / model.ip_attn option: {exc}") from None
    return face_refiner, hifi_net.float(), processors


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        m.requires_grad_(flag)


def weight_dtype_of(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
