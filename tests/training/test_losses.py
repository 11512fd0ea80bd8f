"""Losses: targets and x0 for epsilon / v-prediction, face weighting, identity loss with a tiny recognizer."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from hifi_portrait.training.losses import (
    crop_and_resize,
    diffusion_loss,
    diffusion_target,
    identity_loss,
    latent_weight_map,
    mask_boxes,
    predict_x0,
)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_perfect_prediction_recovers_clean_latent(kind):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    noisy = sched.add_noise(latents, noise, t)
    target = diffusion_target(sched, latents, noise, t)
    assert torch.allclose(predict_x0(sched, noisy, target, t), latents, atol=1e-3)
    loss, per = diffusion_loss(target, target)
    assert loss.item() == 0.0 and per.shape == (3,)


def test_face_weighting_counts_face_errors_more():
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1.0
    w = latent_weight_map(mask, (8, 8), face_weight=3.0)
    assert w.shape == (2, 1, 8, 8) and w.max().item() == 3.0 and w.min().item() == 1.0
    assert latent_weight_map(mask, (8, 8), face_weight=1.0) is None
    target = torch.zeros(2, 4, 8, 8)
    err_face, err_bg = target.clone(), target.clone()
    err_face[:, :, 3:5, 3:5] = 1.0  # error inside the face
    err_bg[:, :, 0:2, 0:2] = 1.0  # same-size error in the background
    lf, _ = diffusion_loss(err_face, target, w)
    lb, _ = diffusion_loss(err_bg, target, w)
    unweighted_f, _ = diffusion_loss(err_face, target)
    unweighted_b, _ = diffusion_loss(err_bg, target)
    assert unweighted_f.item() == pytest.approx(unweighted_b.item())
    assert lf.item() == pytest.approx(3.0 * lb.item(), rel=1e-5)


def test_mask_boxes_and_crop():
    mask = torch.zeros(2, 1, 40, 40)
    mask[0, :, 10:30, 5:25] = 1.0  # 20x20 face
    boxes = mask_boxes(mask, (40, 40), margin=0.0)
    # pixel box [5, 25) x [10, 30) -> normalized
    assert torch.allclose(boxes[0], torch.tensor([5, 10, 25, 30]) / 40 * 2 - 1)
    assert torch.allclose(boxes[1], torch.tensor([-1.0, -1.0, 1.0, 1.0]))  # empty mask: whole image
    img = torch.zeros(1, 3, 40, 40)
    img[:, :, 10:30, 5:25] = 1.0
    crop = crop_and_resize(img, boxes[:1], 16)
    assert crop.shape == (1, 3, 16, 16) and crop[:, :, 2:-2, 2:-2].min().item() > 0.99


class TinyRecognizer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def test_identity_loss_zero_for_same_face_and_differentiable():
    rec = TinyRecognizer()
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.ones(2, 1, 32, 32)
    same = identity_loss(rec, target.clone(), target, mask, 16)
    assert same.shape == (2,) and same.abs().max().item() < 1e-5
    pred = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1).requires_grad_(True)
    other = identity_loss(rec, pred, target, mask, 16)
    assert other.min().item() > 1e-3
    other.sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum().item() > 0
