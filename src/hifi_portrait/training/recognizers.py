"""Differentiable face recognizers for the identity loss (``loss.id_recognizer``).

``dlib_recognizer`` needs nothing beyond the default install: dlib's ResNet face descriptor (public-domain/CC0
weights from the ``face_recognition_models`` package), as an ``nn.Module`` whose forward is differentiable with
respect to the input image. It is weaker than an ArcFace, and the identity loss crops the face by its mask box
rather than by dlib's 5-point chip alignment (the same crop for the prediction and the target, so the comparison
is consistent); plug a stronger recognizer with ``loss.id_recognizer: "your.module:factory"`` when you have one.

Use: ``loss: {id_loss_weight: 0.5, id_recognizer: "hifi_portrait.training.recognizers:dlib_recognizer",
id_recognizer_input_size: 150}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DlibRecognizer(nn.Module):
    """dlib's face-recognition ResNet (128-d) in PyTorch, frozen, differentiable w.r.t. its input.

    Input ``(B, 3, S, S)`` RGB in ``[-1, 1]`` (resized to 150 px, dlib's chip size); output ``(B, 128)``
    descriptors (not normalized, as dlib returns them).
    """

    chip_size = 150

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        from hifi_portrait.face.dlib_resnet import DlibResNetTorch, _stages
        from hifi_portrait.face.model_files import dlib_model

        net = DlibResNetTorch(path or dlib_model("dlib_face_recognition_resnet_model_v1.dat"))
        self.register_buffer("mean", net.mean.clone())
        self.register_buffer("fc", net.fc.clone())
        self._meta = [(stride, pad) for _, _, stride, pad in net.convs]
        for i, (w, b, _, _) in enumerate(net.convs):
            self.register_buffer(f"w{i}", w.clone())
            self.register_buffer(f"b{i}", b.clone())
        for i, (g, beta) in enumerate(net.affines):
            self.register_buffer(f"g{i}", g.clone())
            self.register_buffer(f"beta{i}", beta.clone())
        self._stages = _stages()

    def _conv_affine(self, x: torch.Tensor, i: int) -> torch.Tensor:
        stride, pad = self._meta[i]
        x = F.conv2d(x, getattr(self, f"w{i}"), getattr(self, f"b{i}"), stride=stride, padding=pad)
        return x * getattr(self, f"g{i}") + getattr(self, f"beta{i}")

    @staticmethod
    def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shape = [max(sa, sb) for sa, sb in zip(a.shape, b.shape, strict=True)]

        def pad(t):
            return F.pad(t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]))

        return pad(a) + pad(b)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().clamp(-1, 1) + 1.0) * 127.5  # dlib works on 0..255 pixels
        if x.shape[-1] != self.chip_size or x.shape[-2] != self.chip_size:
            x = F.interpolate(x, size=(self.chip_size, self.chip_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / 256.0
        x = F.relu(self._conv_affine(x, 0))
        x = F.max_pool2d(x, 3, 2)
        i = 1
        for _channels, down in self._stages:
            y = F.relu(self._conv_affine(x, i))
            y = self._conv_affine(y, i + 1)
            i += 2
            shortcut = F.avg_pool2d(x, 2, 2) if down else x
            x = F.relu(self._add_padded(y, shortcut))
        return x.mean(dim=(2, 3)) @ self.fc


def dlib_recognizer(path: str | None = None) -> DlibRecognizer:
    """Factory for ``loss.id_recognizer: "hifi_portrait.training.recognizers:dlib_recognizer"``."""
    return DlibRecognizer(path).eval().requires_grad_(False)
