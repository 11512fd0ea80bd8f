"""The built-in differentiable recognizer for the identity loss: dlib's ResNet as an nn.Module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_helpers import DATA


@pytest.fixture(scope="module")
def chips():
    from hifi_portrait.face.analyzer import FaceAnalyzer
    from hifi_portrait.face.identity import DlibEmbedder
    from hifi_portrait.utils.image_io import load_image

    analyzer, embedder = FaceAnalyzer(), DlibEmbedder()
    out = {}
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        image = load_image(DATA / name)
        out[name] = embedder.chip(image, analyzer.detect(image)[0])
    return out


def test_dlib_recognizer_matches_dlib_and_is_differentiable(chips):
    from hifi_portrait.face.dlib_resnet import DlibResNetTorch
    from hifi_portrait.face.model_files import dlib_model
    from hifi_portrait.training.recognizers import dlib_recognizer

    rec = dlib_recognizer()
    reference = DlibResNetTorch(dlib_model("dlib_face_recognition_resnet_model_v1.dat"))
    stack = np.stack(list(chips.values()))
    expected = torch.from_numpy(reference(stack))
    images = (torch.from_numpy(stack).permute(0, 3, 1, 2).float() / 127.5 - 1.0).requires_grad_(True)
    got = rec(images)
    assert torch.allclose(got, expected, atol=1e-3), (got - expected).abs().max()
    emb = F.normalize(got, dim=-1)
    same = (emb[0] * emb[1]).sum().item()  # obama, obama2
    other = (emb[0] * emb[2]).sum().item()  # obama, biden
    assert same > other + 0.02, (same, other)
    (1 - (emb[0] * emb[1]).sum()).backward()
    assert images.grad is not None and images.grad.abs().sum().item() > 0
    assert not any(p.requires_grad for p in rec.parameters())
