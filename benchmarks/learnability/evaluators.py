"""Evaluators trained on the world: an identity classifier (its penultimate layer is an embedding) over the held-out
identities and a head-pose regressor, both small CNNs on 64x64 renders.

They are trained on renders of the *held-out* identities that are not in the evaluation dataset (image indices from
``EVAL_IMAGE_OFFSET`` on), with light augmentation (blur, noise, colour jitter) so that they read imperfect
generated images too; their own accuracy is measured on further unseen renders and reported with the benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from benchmarks.learnability import world as W

#: evaluator renders use image indices from here on (the evaluation dataset uses the first few indices)
EVAL_IMAGE_OFFSET = 1000
POSE_SCALE = 30.0  # degrees per unit of the regressor's output


class SmallCNN(nn.Module):
    """64x64 RGB in [0, 1] -> ``(B, out_dim)``; ``features`` gives the ``(B, 128)`` penultimate embedding."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.GroupNorm(8, o), nn.SiLU(), nn.Conv2d(o, o, 3, 1, 1))

        self.body = nn.Sequential(block(3, 32), nn.SiLU(), block(32, 64), nn.SiLU(), block(64, 96), nn.SiLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(96 * 8 * 8, 128), nn.SiLU())
        self.out = nn.Linear(128, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x * 2 - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


@dataclass
class RenderSet:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) position of the identity in the identity list
    poses: np.ndarray  # (N, 3) yaw, pitch, roll in degrees


def render_set(seed: int, identities: list[int], images: range, size: int = 64) -> RenderSet:
    """Renders of ``identities`` (world ``seed``) at image indices ``images``."""
    imgs, labels, poses = [], [], []
    for k, i in enumerate(identities):
        ident = W.make_identity(seed, i)
        for j in images:
            view = W.make_view(seed, i, j)
            imgs.append(W.render_identity(ident, view, size)[0])
            labels.append(k)
            poses.append((view.yaw, view.pitch, view.roll))
    return RenderSet(np.stack(imgs), np.array(labels), np.array(poses, dtype=np.float32))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    gain = 1 + 0.1 * torch.randn(b, 3, 1, 1, generator=gen)
    x = x * gain + 0.05 * torch.randn(b, 1, 1, 1, generator=gen)
    blur = torch.rand(b, generator=gen) < 0.3
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (k[:, None] * k[None]).expand(3, 1, 3, 3)
        x[blur] = nn.functional.conv2d(x[blur], kernel, padding=1, groups=3)
    return (x + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _fit(model: nn.Module, x: torch.Tensor, loss_fn, targets: torch.Tensor, epochs: int, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * max(1, len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(max(1, len(x) // 64)):
            idx = perm[s * 64 : (s + 1) * 64]
            loss = loss_fn(model(_augment(x[idx], gen)), targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    model.eval()
    return losses


@dataclass
class Evaluators:
    identity: SmallCNN
    pose: SmallCNN
    identities: list[int]
    report: dict


def train_evaluators(
    seed: int, identities: list[int], train_images: int, test_images: int, epochs: int, torch_seed: int = 0
) -> Evaluators:
    """Train the identity classifier (over ``identities``) and the pose regressor on their renders; measure both on
    ``test_images`` further renders per identity. Returns the models and a report of their accuracy."""
    t0 = time.perf_counter()
    train = render_set(seed, identities, range(EVAL_IMAGE_OFFSET, EVAL_IMAGE_OFFSET + train_images))
    test_start = EVAL_IMAGE_OFFSET + train_images
    test = render_set(seed, identities, range(test_start, test_start + test_images))
    t_render = time.perf_counter() - t0
    x, xt = to_tensor(train.images), to_tensor(test.images)
    torch.manual_seed(torch_seed)
    ident = SmallCNN(len(identities))
    id_losses = _fit(ident, x, nn.functional.cross_entropy, torch.from_numpy(train.labels), epochs, torch_seed)
    torch.manual_seed(torch_seed + 1)
    pose = SmallCNN(3)
    pose_t = torch.from_numpy(train.poses / POSE_SCALE)
    pose_losses = _fit(pose, x, nn.functional.smooth_l1_loss, pose_t, epochs, torch_seed + 1)
    with torch.no_grad():
        top1 = float((ident(xt).argmax(1).numpy() == test.labels).mean())
        err = np.abs(pose(xt).numpy() * POSE_SCALE - test.poses)
    report = {
        "identities": len(identities),
        "train_images_per_identity": train_images,
        "test_images_per_identity": test_images,
        "identity_top1": top1,
        "identity_chance": 1.0 / len(identities),
        "pose_mae_deg": {
            "yaw": float(err[:, 0].mean()),
            "pitch": float(err[:, 1].mean()),
            "roll": float(err[:, 2].mean()),
        },
        "pose_std_deg": {k: float(v) for k, v in zip(("yaw", "pitch", "roll"), test.poses.std(0), strict=True)},
        "final_loss": {"identity": float(np.mean(id_losses[-10:])), "pose": float(np.mean(pose_losses[-10:]))},
        "seconds": {"render": t_render, "total": time.perf_counter() - t0},
    }
    return Evaluators(ident, pose, list(identities), report)


@torch.no_grad()
def identity_scores(ev: Evaluators, images: np.ndarray) -> np.ndarray:
    """``(N, K)`` class probabilities over the evaluator's identities."""
    return torch.softmax(ev.identity(to_tensor(images)), 1).numpy()


@torch.no_grad()
def predict_pose(ev: Evaluators, images: np.ndarray) -> np.ndarray:
    """``(N, 3)`` yaw, pitch, roll in degrees."""
    return ev.pose(to_tensor(images)).numpy() * POSE_SCALE
