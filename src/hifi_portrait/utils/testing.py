"""Tiny seeded random SDXL components for tests and benchmarks ONLY (random weights, generate noise).

Built fully offline (no download): the CLIP tokenizers use a byte-level vocabulary without merges.
Shapes follow diffusers' own SDXL ControlNet tests (``get_dummy_components``), so a 2-step 64x64 generation
runs in well under a second on CPU.

Typical use::

    from hifi_portrait.utils.testing import get_dummy_components, get_dummy_adapter
    components = get_dummy_components()
    pipe = StableDiffusionXLHiFiPortraitPipeline(**components)
    pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "SDXL_UNET_CONFIG",
    "DUMMY_ID_DIM",
    "DUMMY_NUM_PATCHES",
    "get_dummy_adapter",
    "get_dummy_components",
    "get_dummy_controlnet",
    "get_dummy_face",
    "get_dummy_unet",
    "make_tiny_clip_tokenizer",
    "randomize_",
]

#: Architecture fields of the SDXL base UNet (stabilityai/stable-diffusion-xl-base-1.0/unet/config.json), for
#: benchmarks that build it with random weights (``UNet2DConditionModel(**SDXL_UNET_CONFIG)``, no download).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

#: identity-vector size of the dummy references (dlib's 128-d).
DUMMY_ID_DIM = 128
#: patch tokens per reference of the dummy CLIP vision tower (32 px / 8 px patches + class token).
DUMMY_NUM_PATCHES = 17


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet (256 printable characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_tiny_clip_tokenizer(model_max_length: int = 77):
    """A CLIP tokenizer over 514 tokens (bytes, bytes + ``</w>``, BOS=512, EOS=PAD=513), built offline."""
    from transformers import CLIPTokenizer

    alphabet = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": i + len(alphabet) for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def get_dummy_unet(seed: int | None = 0, **overrides):
    """Tiny SDXL-style ``UNet2DConditionModel`` (``addition_embed_type="text_time"``, cross-attention dim 64).

    ``overrides`` replace entries of its config (e.g. ``layers_per_block``, the block types); ``seed=None`` leaves
    torch's random state as it is (the caller seeds).
    """
    from diffusers import UNet2DConditionModel

    if seed is not None:
        torch.manual_seed(seed)
    config = dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
    )
    return UNet2DConditionModel(**{**config, **overrides})


def get_dummy_components(seed: int = 0, with_image_encoder: bool = True) -> dict[str, Any]:
    """Components of a tiny SDXL pipeline: ``vae, text_encoder(_2), tokenizer(_2), unet, scheduler`` (+ CLIP
    vision ``image_encoder`` / ``feature_extractor`` when ``with_image_encoder``). Image size 64, latent 32."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    unet = get_dummy_unet(seed)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    tokenizer = make_tiny_clip_tokenizer()
    tokenizer_2 = make_tiny_clip_tokenizer()
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": unet,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }
    if with_image_encoder:
        torch.manual_seed(seed)
        vision_config = CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            intermediate_size=37,
            patch_size=8,
        )
        components["image_encoder"] = CLIPVisionModelWithProjection(vision_config)
        components["feature_extractor"] = CLIPImageProcessor(crop_size=32, size=32)
    return components


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter of ``module`` with seeded noise (in place), e.g. to "train" zero-initialised
    projections so that tests can see their effect. Returns the module."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def get_dummy_adapter(unet, seed: int = 0, num_tokens: int = 4, trained: bool = True, **hifi_kwargs) -> dict[str, Any]:
    """A tiny FaceRefiner + HiFiNet for the dummy UNet (``trained``: all weights random, so nothing is zero)."""
    from hifi_portrait.models import FaceRefiner, HiFiNetModel

    torch.manual_seed(seed)
    refiner = FaceRefiner(
        id_embed_dim=DUMMY_ID_DIM,
        patch_dim=32,
        num_patches=DUMMY_NUM_PATCHES,
        hidden_dim=32,
        num_tokens=num_tokens,
        output_dim=unet.config.cross_attention_dim,
        num_layers=2,
        num_heads=4,
        id_tokens_per_ref=2,
        ff_mult=2,
    )
    kwargs = {"size_ratio": 0.5, "vae_scale_factor": 2, "attention_head_dim": 8}
    kwargs["conditioning_embedding_channels"] = (8, 16)
    kwargs.update(hifi_kwargs)
    hifi_net = HiFiNetModel.from_unet(unet, **kwargs)
    if trained:
        randomize_(hifi_net.zero_convs, seed + 1)
        randomize_(hifi_net.zero_conv_mid, seed + 2)
    return {"face_refiner": refiner, "hifi_net": hifi_net, "num_id_tokens": num_tokens}


def get_dummy_controlnet(unet, seed: int = 0):
    """A diffusers ``ControlNetModel`` for the dummy UNet with non-zero output convs (so it has an effect)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    randomize_(controlnet.controlnet_down_blocks, seed + 1)
    randomize_(controlnet.controlnet_mid_block, seed + 2)
    randomize_(controlnet.controlnet_cond_embedding.conv_out, seed + 3)
    return controlnet


#: The components a downloaded SDXL base's ``model_index.json`` names (no hifi-portrait parts).
SDXL_INDEX_KEYS = (
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "unet",
    "scheduler",
    "_diffusers_version",
    "force_zeros_for_empty_prompt",
)


def write_dummy_model_files(root, seed: int = 0):
    """Tiny random model files as a user supplies them: ``root/sdxl`` (a diffusers SDXL folder whose
    ``model_index.json`` names SDXL's own components only, as downloaded), ``root/clip`` (CLIP vision encoder and
    its processor) and ``root/adapter.safetensors`` (a hifi-portrait adapter for that UNet). Returns the pipeline
    that wrote them, without its adapter."""
    import json
    from pathlib import Path

    from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline

    root = Path(root)
    components = get_dummy_components(seed=seed)
    encoder, processor = components.pop("image_encoder"), components.pop("feature_extractor")
    encoder.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    pipe = StableDiffusionXLHiFiPortraitPipeline(**components, add_watermarker=False)
    pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet))
    pipe.save_hifi_portrait(root / "adapter.safetensors")
    pipe.unload_hifi_portrait()
    pipe.save_pretrained(root / "sdxl")
    index_path = root / "sdxl" / "model_index.json"
    index = {k: v for k, v in json.loads(index_path.read_text()).items() if k in SDXL_INDEX_KEYS}
    index_path.write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline", **index}))
    return pipe


def get_dummy_face(seed: int = 0, size: int = 48, quality: float = 0.9):
    """A synthetic :class:`hifi_portrait.face.types.FaceAnalysis` (random unit identity, noise crop)."""
    from hifi_portrait.face.types import FaceAnalysis, HeadPose, QualityScore

    rng = np.random.default_rng(seed)
    identity = rng.standard_normal(DUMMY_ID_DIM).astype(np.float32)
    identity /= np.linalg.norm(identity)
    return FaceAnalysis(
        source=f"dummy-{seed}",
        image_size=(size, size),
        face_index=0,
        bbox=np.array([0, 0, size, size], dtype=np.float64),
        det_score=1.0,
        keypoints=np.zeros((5, 2)),
        landmarks=np.zeros((478, 3)),
        pose=HeadPose(0.0, 0.0, 0.0),
        transform=np.eye(4),
        blendshapes={},
        identity=identity,
        identity_model="dummy",
        quality=QualityScore(total=quality, size=1.0, sharpness=1.0, frontalness=1.0, confidence=1.0),
        arcface_crop=rng.integers(0, 255, (112, 112, 3), dtype=np.uint8),
        encoder_crop=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        mask=np.full((size, size), 255, dtype=np.uint8),
        mask_method="dummy",
    )
