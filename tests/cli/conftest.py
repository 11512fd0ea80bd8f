"""Shared fixtures of the CLI tests."""

from __future__ import annotations

import json

import pytest

from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
from hifi_portrait.utils.testing import get_dummy_adapter, get_dummy_components


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """A tiny SDXL folder (diffusers layout), a tiny CLIP vision encoder folder and a tiny adapter file."""
    root = tmp_path_factory.mktemp("weights")
    components = get_dummy_components()
    encoder, processor = components.pop("image_encoder"), components.pop("feature_extractor")
    encoder.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    pipe = StableDiffusionXLHiFiPortraitPipeline(**components, add_watermarker=False)
    pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet))
    pipe.save_hifi_portrait(root / "adapter.safetensors")
    pipe.unload_hifi_portrait()
    pipe.save_pretrained(root / "sdxl")
    # make it look like a downloaded SDXL base: its model_index.json names only SDXL's own components
    index_path = root / "sdxl" / "model_index.json"
    index = json.loads(index_path.read_text())
    keep = (
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
    index = {k: v for k, v in index.items() if k in keep}
    index_path.write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline", **index}))
    return root
