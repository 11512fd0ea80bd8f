"""``fp16=True`` of the folder loaders really loads every weight in float16.

The loaders pass ``dtype=`` to diffusers' and transformers' ``from_pretrained``. Releases before that argument
existed (diffusers < 0.40, transformers < 4.56) do not fail on it: they warn that the keyword is "not expected"
and load float32. These checks are what keeps the dependency floors of pyproject.toml honest on that point
(``scripts/check_floors.sh`` runs them with the floor versions).
"""

from __future__ import annotations

import pytest
import torch

from hifi_portrait.loaders.instantid import convert_instantid_checkpoint, instantid_ip_layers
from hifi_portrait.models.instantid_projection import InstantIDImageProjection
from hifi_portrait.pipelines.model_files import load_instantid_pipeline, load_pipeline
from hifi_portrait.utils.testing import get_dummy_controlnet, write_dummy_model_files

torch.set_num_threads(1)
SDXL_PARTS = ("vae", "text_encoder", "text_encoder_2", "unet")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny SDXL folder as downloaded (model_index.json names SDXL's own parts only), a CLIP vision folder, an
    adapter file, and InstantID's files (converted ip-adapter.safetensors, IdentityNet, an extra ControlNet)."""
    root = tmp_path_factory.mktemp("dtype")
    pipe = write_dummy_model_files(root)
    (root / "InstantID").mkdir()
    torch.manual_seed(0)
    proj = InstantIDImageProjection(num_tokens=4, output_dim=64, hidden_dim=32, num_layers=2, num_heads=2, ff_mult=2)
    modules = dict(pipe.unet.named_modules())
    ip = {}
    for i, layer in instantid_ip_layers(pipe.unet).items():
        shape = (modules[layer].to_k.out_features, modules[layer].to_k.in_features)
        ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = torch.randn(shape), torch.randn(shape)
    torch.save({"image_proj": proj.state_dict(), "ip_adapter": ip}, root / "InstantID" / "ip-adapter.bin")
    convert_instantid_checkpoint(root / "InstantID" / "ip-adapter.bin", root / "InstantID" / "ip-adapter.safetensors")
    get_dummy_controlnet(pipe.unet, seed=3).save_pretrained(root / "InstantID" / "ControlNetModel")
    get_dummy_controlnet(pipe.unet, seed=5).save_pretrained(root / "openpose")
    return root


def _dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


@pytest.mark.parametrize("fp16", [False, True])
def test_hifi_portrait_pipeline_loads_in_the_asked_dtype(folders, fp16):
    dtype = torch.float16 if fp16 else torch.float32
    pipe = load_pipeline(folders / "sdxl", folders / "adapter.safetensors", folders / "clip", fp16=fp16, device="cpu")
    for name in (*SDXL_PARTS, "image_encoder"):
        assert _dtypes(getattr(pipe, name)) == {dtype}, name
    assert pipe.hifi_net.dtype == dtype


def test_instantid_pipeline_loads_in_fp16(folders):
    pipe = load_instantid_pipeline(
        folders / "sdxl",
        folders / "InstantID" / "ip-adapter.safetensors",
        folders / "InstantID" / "ControlNetModel",
        fp16=True,
        device="cpu",
        controlnets=[folders / "openpose"],
    )
    for name in SDXL_PARTS:
        assert _dtypes(getattr(pipe, name)) == {torch.float16}, name
    nets = pipe.controlnet.nets
    assert len(nets) == 2 and all(_dtypes(net) == {torch.float16} for net in nets)
