#!/usr/bin/env python
"""Fit the data-driven expression basis (``src/hifi_portrait/assets/expression_basis.npz``).

The expression model of a face shape ``S`` is, for each of the 51 blendshapes ``k``, a displacement field
``F_k = H_k(S) + u(S) L_k`` and a monotonic amplitude curve ``g_k``: ``expr(S, s) = sum_k g_k(s_k) F_k``. ``H`` is
the hand-designed basis (:func:`hifi_portrait.landmarks.expression.expression_basis`, adapted to each shape's
eyes), ``L`` a learned ``(51, 478, 3)`` correction in canonical centimetres, ``u`` the shape's eye-corner distance
over the canonical one, ``g_k`` piecewise linear through learned non-negative increments at intensities 0.25,
0.5, 0.75 and 1 (``g_k(0) = 0``). ``L``/``g`` of ``...Right`` shapes are the mirror images of ``...Left`` ones,
and shapes without a side are mirror-symmetric, so a symmetric request on a symmetric face gives a symmetric mesh.

Critic: mediapipe's own blendshape model (:class:`hifi_portrait.face.blendshapes.BlendshapeReader`, run in torch
for gradients). Data: the bundled photos of the people *not* in
:data:`hifi_portrait.landmarks.expression_data.HELD_OUT_PEOPLE` and their mirror images. Loss terms, each over
a random batch per step:

* *expression*: on each fit person's neutral shape (their photos minus their expressions, with the current
  basis), random targets (presets at random intensities, one or a few blendshapes, real photos' scores) at random
  head poses read back by the critic: squared error to the target;
* *neutralization*: each photo minus its own expression, at its own pose, reads all zeros;
* *round trip*: the person's neutral shape plus a photo's expression, at that photo's pose, reads its scores;
* *mesh*: that same mesh is close to the photo's landmarks (the expression explains the real deformation);
* *priors*: smooth fields over the mesh (graph Laplacian), small corrections, no lip or eyelid crossing
  (inner upper lip above the lower, upper lid above the lower, with any target); the learned corrections are
  zero on the skull-fixed points that define head pose (so pose control is unchanged).

Scores the reader never gives on real photos (:data:`~hifi_portrait.landmarks.expression_check.UNREADABLE`:
cheekPuff, cheekSquint, noseSneer) are left out of the read-back losses: their fields stay the hand-designed ones.

Usage: ``python scripts/fit_expression_basis.py [--out PATH]``: the defaults are the settings of the shipped file
(recorded in it, ``settings``); about 6 minutes on one CPU core. A weaker smoothness prior (``--w-smooth 0.3``)
reads back a little better with implausibly jagged meshes (docs/landmarks.md).
"""

from __future__ import annotations

import argparse
import datetime
import math
import time
from pathlib import Path

import numpy as np
import torch

from hifi_portrait.face.blendshapes import LANDMARKS_SUBSET, BlendshapeReader
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.expression import (
    BLENDSHAPE_NAMES,
    FITTED_BASIS_PATH,
    FITTED_BASIS_VERSION,
    PRESETS,
    expression_basis,
    mirror_index,
    preset_scores,
    scores_to_vector,
)
from hifi_portrait.landmarks.expression_check import UNREADABLE
from hifi_portrait.landmarks.expression_data import HELD_OUT_PEOPLE, analyse_photos, bundled_photos, split
from hifi_portrait.landmarks.geometry import rotation_from_pose
from hifi_portrait.landmarks.shape import align_to_canonical, to_model_space

ROOT = Path(__file__).resolve().parents[1]
K = len(BLENDSHAPE_NAMES)
#: Inner-lip point pairs (upper, lower) and eyelid columns (upper, lower) that must not cross.
LIP_PAIRS = ((191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (310, 318), (415, 324))
LID_PAIRS = tuple(zip(M.UPPER_LID_R[1:-1], M.LOWER_LID_R[1:-1], strict=True)) + tuple(
    zip(M.UPPER_LID_L[1:-1], M.LOWER_LID_L[1:-1], strict=True)
)


def unit_of(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[M.EYE_L_OUTER] - points[M.EYE_R_OUTER])) / 8.89


class Corrections(torch.nn.Module):
    """Learned ``L`` and amplitude increments with the left/right mirror structure built in."""

    def __init__(self) -> None:
        super().__init__()
        mirror = mirror_index()
        self.register_buffer("mirror", torch.as_tensor(mirror))
        self.register_buffer("flip", torch.tensor([-1.0, 1.0, 1.0]))
        self.own = [k for k, n in enumerate(BLENDSHAPE_NAMES) if not n.endswith("Right")]
        self.twin = {
            BLENDSHAPE_NAMES.index(n[:-4] + "Right"): BLENDSHAPE_NAMES.index(n)
            for n in BLENDSHAPE_NAMES
            if n.endswith("Left")
        }
        self.sym = [k for k in self.own if not BLENDSHAPE_NAMES[k].endswith("Left")]
        self.lin = torch.nn.Parameter(torch.zeros(len(self.own), M.NUM_LANDMARKS, 3))
        # the skull-fixed points that define head pose (mesh.stable_weights) do not move
        free = np.ones((M.NUM_LANDMARKS, 1), dtype=np.float32)
        free[: M.NUM_MESH][M.stable_weights() > 0] = 0.0
        self.register_buffer("free", torch.as_tensor(free))
        # softplus(raw) = 0.25: g(s) = s at the start
        self.raw_amp = torch.nn.Parameter(torch.full((len(self.own), 4), math.log(math.exp(0.25) - 1)))

    def _mirror(self, f: torch.Tensor) -> torch.Tensor:
        return f[..., self.mirror, :] * self.flip

    def _full(self, own: torch.Tensor, fields: bool = True) -> torch.Tensor:
        out = [None] * K
        for j, k in enumerate(self.own):
            f = own[j]
            out[k] = 0.5 * (f + self._mirror(f)) if k in self.sym and fields else f
        for k, src in self.twin.items():
            out[k] = self._mirror(out[src]) if fields else out[src]
        return torch.stack(out)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(51, 478, 3)`` corrections and ``(51, 4)`` amplitude increments (intensities 0-0.25, ..., 0.75-1)."""
        return self._full(self.lin * self.free), self._full(torch.nn.functional.softplus(self.raw_amp), fields=False)


def amplitude(s: torch.Tensor, inc: torch.Tensor) -> torch.Tensor:
    """``g_k(s_k)`` for ``(B, 51)`` scores (odd in ``s``) and ``(51, 4)`` increments."""
    a = s.abs()[..., None]
    steps = torch.clamp(4 * a - torch.arange(4.0), 0.0, 1.0)
    return torch.sign(s) * (steps * inc).sum(-1)


def laplacian_edges() -> torch.Tensor:
    tri = M.canonical_mesh().triangles
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    # irises: tie each rim point to its centre
    extra = [(c, c + j) for c in (468, 473) for j in range(1, 5)]
    return torch.as_tensor(np.concatenate([edges, np.array(extra)]))


def project(points: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Model-space ``(B, 478, 3)`` posed by ``rot`` ``(B, 3, 3)`` -> the critic's ``(B, 146, 2)`` input
    (orthographic; the critic does not depend on position or scale)."""
    posed = points[:, list(LANDMARKS_SUBSET)] @ rot.transpose(1, 2)
    return torch.stack([posed[..., 0], -posed[..., 1]], dim=-1) * 50.0


def random_targets(rng: np.random.Generator, n: int, photo_scores: np.ndarray) -> np.ndarray:
    out = np.zeros((n, K))
    presets = [p for p in PRESETS if p != "neutral"]
    for i in range(n):
        kind = rng.integers(6)
        if kind <= 1:  # a preset at a random intensity
            out[i] = scores_to_vector(preset_scores(presets[rng.integers(len(presets))], rng.uniform(0.1, 1.0)))
        elif kind == 2:  # one blendshape (and its twin half the time)
            k = rng.integers(K)
            out[i, k] = rng.uniform(0.1, 1.0)
            name = BLENDSHAPE_NAMES[k]
            if name.endswith(("Left", "Right")) and rng.random() < 0.5:
                twin = name[:-4] + "Right" if name.endswith("Left") else name[:-5] + "Left"
                out[i, BLENDSHAPE_NAMES.index(twin)] = out[i, k]
        elif kind == 3:  # a few blendshapes
            ks = rng.choice(K, size=rng.integers(2, 5), replace=False)
            out[i, ks] = rng.uniform(0.1, 0.8, size=len(ks))
        else:  # a real photo's scores
            out[i] = photo_scores[rng.integers(len(photo_scores))]
    return out


def save(model: Corrections, out: Path, args, keys) -> None:
    """Write the ``.npz`` file :func:`hifi_portrait.landmarks.expression.fitted_corrections` reads."""
    lin, inc = (t.detach().numpy() for t in model())
    amp = np.concatenate([np.zeros((K, 1)), np.cumsum(inc, axis=1)], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        version=np.array(FITTED_BASIS_VERSION),
        names=np.array(BLENDSHAPE_NAMES),
        linear=lin.astype(np.float32),
        amplitude=amp.astype(np.float32),
        fit_people=np.array(sorted({k[0] for k in keys})),
        held_out_people=np.array(HELD_OUT_PEOPLE),
        settings=np.array(
            f"steps={args.steps} batch={args.batch} lr={args.lr} seed={args.seed} w_mesh={args.w_mesh} "
            f"w_smooth={args.w_smooth} w_size={args.w_size}; "
            f"fitted {datetime.date.today().isoformat()}"
        ),
    )


def fit(args) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    faces, _ = split(analyse_photos(bundled_photos(ROOT / "tests" / "data")))
    assert not {f.person for f in faces} & set(HELD_OUT_PEOPLE)
    # identities: (person, mirrored); each with its photos aligned to the canonical mesh
    groups: dict[tuple[str, bool], list] = {}
    for f in faces:
        groups.setdefault((f.person, f.mirrored), []).append(f)
    keys = sorted(groups)
    print(f"fit data: {len(faces)} faces, {len(keys)} identities (people x mirror) of {len({k[0] for k in keys})}")
    aligned, rots, scores, owner = [], [], [], []
    for gi, key in enumerate(keys):
        for f in groups[key]:
            pts, _, rot, _ = align_to_canonical(to_model_space(f.landmarks))
            aligned.append(pts)
            rots.append(rot.T)  # head rotation in model space
            scores.append(f.scores)
            owner.append(gi)
    aligned_t = torch.as_tensor(np.stack(aligned), dtype=torch.float32)
    rots_t = torch.as_tensor(np.stack(rots), dtype=torch.float32)
    scores_np = np.stack(scores)
    scores_t = torch.as_tensor(scores_np, dtype=torch.float32)
    owner_t = torch.as_tensor(owner)
    n_id = len(keys)
    # per-identity hand basis on its plain mean shape (constant), and unit
    hand, units = [], []
    for gi in range(n_id):
        mean = np.stack([aligned[i] for i in range(len(aligned)) if owner[i] == gi]).mean(0)
        hand.append(expression_basis(mean))
        units.append(unit_of(mean))
    hand_t = torch.as_tensor(np.stack(hand), dtype=torch.float32)  # (I, K, 478, 3)
    units_t = torch.as_tensor(units, dtype=torch.float32)
    counts = torch.bincount(owner_t, minlength=n_id).float()

    critic = BlendshapeReader().torch_module()
    for p in critic.parameters():
        p.requires_grad_(False)
    model = Corrections()
    edges = laplacian_edges()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    lip = torch.as_tensor(LIP_PAIRS)
    readable = torch.as_tensor([n not in UNREADABLE for n in BLENDSHAPE_NAMES], dtype=torch.float32)
    lid = torch.as_tensor(LID_PAIRS)

    def expr(ids: torch.Tensor, s: torch.Tensor, lin: torch.Tensor, inc: torch.Tensor) -> torch.Tensor:
        u = units_t[ids][:, None, None]
        g = amplitude(s, inc)
        return torch.einsum("bk,bkpc->bpc", g, hand_t[ids]) + u * torch.einsum("bk,kpc->bpc", g, lin)

    def crossing(pts: torch.Tensor) -> torch.Tensor:
        gap_lip = pts[:, lip[:, 0], 1] - pts[:, lip[:, 1], 1]
        gap_lid = pts[:, lid[:, 0], 1] - pts[:, lid[:, 1], 1]
        return torch.relu(0.02 - gap_lip).pow(2).mean() + torch.relu(0.0 - gap_lid).pow(2).mean()

    start = time.time()
    for step in range(args.steps + 1):
        lin, inc = model()
        neutral_all = aligned_t - expr(owner_t, scores_t, lin, inc)
        ident = torch.zeros(n_id, M.NUM_LANDMARKS, 3).index_add_(0, owner_t, neutral_all) / counts[:, None, None]
        # neutralization and round trip, on a batch of photos
        pb = torch.as_tensor(rng.choice(len(aligned), size=min(args.batch // 4, len(aligned)), replace=False))
        neutral_read = critic(project(neutral_all[pb], rots_t[pb]))[:, 1:]
        rt_mesh = ident[owner_t[pb]] + expr(owner_t[pb], scores_t[pb], lin, inc)
        rt_read = critic(project(rt_mesh, rots_t[pb]))[:, 1:]
        multi = (counts[owner_t[pb]] > 1).float()[:, None, None]
        mesh_err = ((rt_mesh - aligned_t[pb]) ** 2).sum(-1).mean(-1, keepdim=True)[..., None] * multi
        # synthetic targets at random poses
        nb = args.batch - 2 * len(pb)
        tgt = torch.as_tensor(random_targets(rng, nb, scores_np), dtype=torch.float32)
        ids = torch.as_tensor(rng.integers(n_id, size=nb))
        yaws = np.where(rng.random(nb) < 0.5, rng.choice([-30.0, 0.0, 30.0], nb), rng.uniform(-40, 40, nb))
        poses = np.stack([yaws, rng.uniform(-15, 15, nb), rng.uniform(-10, 10, nb)], axis=1)
        rot = torch.as_tensor(np.stack([rotation_from_pose(*p) for p in poses]), dtype=torch.float32)
        syn_mesh = ident[ids] + expr(ids, tgt, lin, inc)
        syn_read = critic(project(syn_mesh, rot))[:, 1:]

        loss_syn = (((syn_read - tgt) ** 2) * readable).mean()
        loss_neutral = ((neutral_read**2) * readable).mean()
        loss_rt = (((rt_read - scores_t[pb]) ** 2) * readable).mean()
        loss_mesh = mesh_err.mean()
        fields = lin
        loss_smooth = ((fields[:, edges[:, 0]] - fields[:, edges[:, 1]]) ** 2).sum(-1).mean()
        loss_size = (fields**2).sum(-1).mean()
        loss_cross = crossing(syn_mesh) + crossing(rt_mesh)
        loss = (
            loss_syn
            + loss_neutral
            + loss_rt
            + args.w_mesh * loss_mesh
            + args.w_smooth * loss_smooth
            + args.w_size * loss_size
            + 10.0 * loss_cross
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step and step % 200 == 0 and step < args.steps:
            save(model, Path(args.out).with_suffix(f".step{step}.npz"), args, keys)
        if step % 25 == 0:
            syn_mae, rt_mae = (syn_read - tgt).abs().mean(), (rt_read - scores_t[pb]).abs().mean()
            print(
                f"step {step:4d} ({time.time() - start:5.0f} s): read-back MAE synthetic {syn_mae:.4f}"
                f" neutral {neutral_read.abs().mean():.4f} round trip {rt_mae:.4f}; mesh {loss_mesh:.4f} cm2,"
                f" smooth {loss_smooth:.5f}, size {loss_size:.4f}, crossing {loss_cross:.5f}",
                flush=True,
            )
    save(model, Path(args.out), args, keys)
    out = Path(args.out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) in {time.time() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--w-mesh", type=float, default=0.3)
    parser.add_argument("--w-smooth", type=float, default=20.0)
    parser.add_argument("--w-size", type=float, default=0.01)
    parser.add_argument("--out", default=str(FITTED_BASIS_PATH))
    args = parser.parse_args()
    if not math.isfinite(args.lr) or args.steps < 0:
        parser.error("bad --lr or --steps")
    fit(args)


if __name__ == "__main__":
    main()
