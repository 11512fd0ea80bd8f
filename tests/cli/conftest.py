"""Shared fixtures of the CLI tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hifi_portrait.utils.testing import write_dummy_model_files


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """A tiny SDXL folder (diffusers layout), a tiny CLIP vision encoder folder and a tiny adapter file."""
    root = tmp_path_factory.mktemp("weights")
    write_dummy_model_files(root)
    return root


@pytest.fixture(scope="session")
def instantid_files(tmp_path_factory):
    """Tiny random InstantID files in the published layout: ``InstantID/ip-adapter.bin`` (a torch pickle of
    tensors), its conversion ``InstantID/ip-adapter.safetensors``, ``InstantID/ControlNetModel/`` (IdentityNet),
    an OpenPose-style ControlNet folder ``openpose/`` and an (empty) ``antelopev2/`` folder."""
    from hifi_portrait.loaders.instantid import convert_instantid_checkpoint, instantid_ip_layers
    from hifi_portrait.models.instantid_projection import InstantIDImageProjection
    from hifi_portrait.utils.testing import get_dummy_controlnet, get_dummy_unet

    root = tmp_path_factory.mktemp("instantid")
    (root / "InstantID").mkdir()
    torch.manual_seed(0)
    proj = InstantIDImageProjection(num_tokens=4, output_dim=64, hidden_dim=32, num_layers=2, num_heads=2, ff_mult=2)
    unet = get_dummy_unet()
    modules = dict(unet.named_modules())
    ip = {}
    for i, layer in instantid_ip_layers(unet).items():
        shape = (modules[layer].to_k.out_features, modules[layer].to_k.in_features)
        ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = torch.randn(shape) * 0.2, torch.randn(shape) * 0.2
    torch.save({"image_proj": proj.state_dict(), "ip_adapter": ip}, root / "InstantID" / "ip-adapter.bin")
    convert_instantid_checkpoint(root / "InstantID" / "ip-adapter.bin", root / "InstantID" / "ip-adapter.safetensors")
    get_dummy_controlnet(unet, seed=3).save_pretrained(root / "InstantID" / "ControlNetModel")
    get_dummy_controlnet(unet, seed=5).save_pretrained(root / "openpose")
    (root / "antelopev2").mkdir()
    return root


class FakeArcFace:
    """Stand-in for insightface's 512-d ArcFace ONNX (no antelopev2 offline): a seeded random projection of the
    aligned 112x112 crop, with the onnxruntime session interface that hifi_portrait uses."""

    def __init__(self, model_dir, num_threads: int = 2) -> None:
        self.name, self.dim, self.same_person_threshold = "insightface-fake", 512, 0.35
        self.w = np.random.default_rng(0).standard_normal((3 * 14 * 14, 512)).astype(np.float32)

    def _get_session(self):
        return self

    def get_inputs(self):
        from types import SimpleNamespace

        return [SimpleNamespace(name="data")]

    def run(self, _names, feeds):
        return [feeds["data"].reshape(1, 3, 14, 8, 14, 8).mean(axis=(3, 5)).reshape(1, -1) @ self.w]

    def embed(self, image, detection):
        from hifi_portrait.face.alignment import ARCFACE_SIZE, alignment_affine, warp
        from hifi_portrait.face.identity import l2_normalize

        crop = warp(image, alignment_affine(detection.keypoints, ARCFACE_SIZE), ARCFACE_SIZE)
        x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        return l2_normalize(self.run(None, {"data": x})[0][0])


@pytest.fixture
def fake_arcface(monkeypatch):
    """Analyses use :class:`FakeArcFace` where ``--insightface-dir`` would load antelopev2's ArcFace."""
    monkeypatch.setattr("hifi_portrait.face.analyzer.InsightFaceEmbedder", FakeArcFace)
