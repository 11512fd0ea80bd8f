#!/usr/bin/env python
"""Fit the data-driven expression model (``src/hifi_portrait/assets/expression_basis.npz``, version 3).

The fitted expression model of a face shape ``S`` at head pose ``p`` is ``expr(S, s, p) = sum_k a_k(s, p) F_k``:

* fields ``F_k = H_k(S) + u(S) L_k``: ``H`` the hand-designed basis
  (:func:`hifi_portrait.landmarks.expression.expression_basis`, adapted to each shape's eyes), ``L`` a learned
  ``(51, 478, 3)`` correction in canonical centimetres, ``u`` the shape's eye-corner distance over the canonical
  one. ``L`` of ``...Right`` shapes are the mirror images of ``...Left`` ones, unsided ones are mirror-symmetric,
  and ``L`` is zero on the skull-fixed points that define head pose;
* amplitudes ``a(s, p) = s + h(s, p)``: ``h`` a small MLP (51 scores + yaw, pitch, roll in radians -> 51),
  averaged with its mirror image so that a symmetric request at a frontal pose gives symmetric amplitudes
  (:class:`hifi_portrait.landmarks.expression.AmplitudeNet`). The scores interact and the reader sees the same
  mesh differently at different poses: a fixed curve per blendshape (version 1) cannot follow that;
* irises (:class:`hifi_portrait.landmarks.expression.IrisPlacement`, 10 learned numbers): placed from the lid
  contour of the neutral shape and the gaze amplitudes (``eyeLookIn/Out/Up/Down``), with mediapipe's own iris
  radius and a depth behind the lids bounded to the range of real eyes, not carried over from the references,
  whose gaze is wherever they looked. Without this (version 2) the reader's gaze scores were the largest errors
  left on the held-out people (``eyeLookUp/Out/In`` read 0.2-0.3 where 0 is asked).

Critic: mediapipe's own blendshape model (:class:`hifi_portrait.face.blendshapes.BlendshapeReader`, run in torch
for gradients) on the 146 points it reads, projected with the pinhole camera of
:func:`hifi_portrait.landmarks.generate.generate_landmarks` (30 degree field of view, face half the canvas high).
Data: the bundled photos of ``tests/data``, ``tests/data/ids`` and ``tests/data/calib`` of the people *not* in
:data:`hifi_portrait.landmarks.expression_data.HELD_OUT_PEOPLE`, and their mirror images (each analysed by
mediapipe). Loss terms, each over a random batch per step:

* *expression*: on each fit identity's neutral shape (their photos minus their expressions, with the current model;
  for ``--mix`` of the targets, a random blend of two fit identities), random targets (neutral; presets at 0.5, 1
  or a random intensity; one or a few blendshapes; real photos' scores, also scaled) at random head poses read back
  by the critic: squared error plus a heavier penalty on errors above 0.04 (the acceptance is on the worst score);
* *neutralization*: each photo minus its own expression, at its own pose, reads all zeros (this pins the
  identity shape to a neutral face: without it a constant offset in ``a`` moves into the identity);
* *round trip*: the person's neutral shape plus a photo's expression, at that photo's pose, reads its scores;
  *mesh*: that same mesh is close to the photo's landmarks (the expression explains the real deformation);
* *priors*: amplitudes close to the scores, smooth and small corrections ``L`` (graph Laplacian), no lip or
  eyelid crossing, every mesh (expressed, round trip, neutral identity) no rougher than the median real photo's
  (mean distance of each point to the mean of its mesh neighbours: the benchmark's plausibility measure), and no
  farther from the space of the first ``--pca-components`` principal components of the fit photos' own meshes than
  the median photo is (a global shape prior: the local roughness measure alone let outlines turn wavy and eyes
  triangular).

Scores the reader never gives on real photos (:data:`~hifi_portrait.landmarks.expression_check.UNREADABLE`:
cheekPuff, cheekSquint, noseSneer) are left out of the read-back losses.

Usage: ``python scripts/fit_expression_basis.py [--out PATH]``: the defaults are the settings of the shipped file
(recorded in it, ``settings``); about 27 minutes on one CPU core (the critic, an MLP-Mixer, dominates).
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
    IRIS_PARAMS,
    IRIS_RADIUS,
    PRESETS,
    expression_basis,
    mirror_index,
    mirror_permutation,
    preset_scores,
    scores_to_vector,
)
from hifi_portrait.landmarks.expression_check import UNREADABLE
from hifi_portrait.landmarks.expression_data import HELD_OUT_PEOPLE, analyse_photos, bundled_photos
from hifi_portrait.landmarks.geometry import pose_from_rotation, rotation_from_pose
from hifi_portrait.landmarks.shape import align_to_canonical, to_model_space

ROOT = Path(__file__).resolve().parents[1]
K = len(BLENDSHAPE_NAMES)
#: Inner-lip point pairs (upper, lower) and eyelid columns (upper, lower) that must not cross.
LIP_PAIRS = ((191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (310, 318), (415, 324))
LID_PAIRS = tuple(zip(M.UPPER_LID_R[1:-1], M.LOWER_LID_R[1:-1], strict=True)) + tuple(
    zip(M.UPPER_LID_L[1:-1], M.LOWER_LID_L[1:-1], strict=True)
)


class Corrections(torch.nn.Module):
    """Learned ``L`` with the left/right mirror structure built in."""

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

    def _mirror(self, f: torch.Tensor) -> torch.Tensor:
        return f[..., self.mirror, :] * self.flip

    def forward(self) -> torch.Tensor:
        """``(51, 478, 3)`` corrections: ``...Right`` ones mirror their ``...Left`` twins, unsided ones symmetric."""
        own = self.lin * self.free
        out = [None] * K
        for j, k in enumerate(self.own):
            out[k] = 0.5 * (own[j] + self._mirror(own[j])) if k in self.sym else own[j]
        for k, src in self.twin.items():
            out[k] = self._mirror(out[src])
        return torch.stack(out)


def laplacian_edges() -> torch.Tensor:
    tri = M.canonical_mesh().triangles
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    # irises: tie each rim point to its centre
    extra = [(c, c + j) for c in (468, 473) for j in range(1, 5)]
    return torch.as_tensor(np.concatenate([edges, np.array(extra)]))


class AmplitudeMLP(torch.nn.Module):
    """``a(s, pose) = s + h(s, pose)``, made mirror-symmetric (torch twin of ``expression.AmplitudeNet``)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(K + 3, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.l3 = torch.nn.Linear(hidden, K)
        torch.nn.init.zeros_(self.l3.weight)  # a = s at the start
        torch.nn.init.zeros_(self.l3.bias)
        self.register_buffer("perm", torch.as_tensor(mirror_permutation()))
        self.register_buffer("flip_pose", torch.tensor([-1.0, 1.0, -1.0]))

    def _h(self, s: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.silu(self.l1(torch.cat([s, pose], -1)))
        return self.l3(torch.nn.functional.silu(self.l2(x)))

    def forward(self, s: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """``(B, 51)`` scores, ``(B, 3)`` pose in radians -> ``(B, 51)`` amplitudes."""
        mirrored = self._h(s[:, self.perm], pose * self.flip_pose)[:, self.perm]
        return s + 0.5 * (self._h(s, pose) + mirrored)


#: Starting iris placement (IRIS_PARAMS): centred, the hand basis' gaze gains, iris centre 0.3 cm behind the
#: lids' frontmost point (mediapipe's own irises on the bundled photos: median 0.30).
IRIS_START = (0.0, 0.0, -0.3, 0.35, 0.35, 0.25, 0.25, 0.0, 0.0, 0.0)


class Irises(torch.nn.Module):
    """Torch twin of ``expression.IrisPlacement`` with learnable parameters (batched). The depth stays within
    0.1-0.5 cm behind the lids' frontmost point and the share of the lids' motion the iris follows within 0-1
    (what real eyes do), whatever the reader would prefer; the shift of both irises the same way (``cx``, which
    cancels the reader's own left/right asymmetry) within 0.1 cm."""

    def __init__(self, start) -> None:
        super().__init__()
        self.params = torch.nn.Parameter(torch.as_tensor(np.asarray(start, dtype=np.float32)))
        self.eyes = [
            (
                -1.0,
                [BLENDSHAPE_NAMES.index(f"eyeLook{k}Right") for k in ("Out", "In", "Up", "Down")],
                M.RIGHT_IRIS,
                list(M.UPPER_LID_R + M.LOWER_LID_R),
            ),
            (
                1.0,
                [BLENDSHAPE_NAMES.index(f"eyeLook{k}Left") for k in ("Out", "In", "Up", "Down")],
                M.LEFT_IRIS,
                list(M.UPPER_LID_L + M.LOWER_LID_L),
            ),
        ]

    def bounded(self) -> torch.Tensor:
        p = self.params
        return torch.cat([p[:2], p[2:3].clamp(-0.5, -0.1), p[3:7], p[7:9].clamp(0.0, 1.0), p[9:10].clamp(-0.1, 0.1)])

    def forward(self, pts: torch.Tensor, neutral: torch.Tensor, amp: torch.Tensor) -> torch.Tensor:
        bx, by, bz, gin, gout, gup, gdown, lx, ly, cx = self.bounded()
        unit = torch.linalg.norm(pts[:, M.EYE_L_OUTER] - pts[:, M.EYE_R_OUTER], dim=-1) / M.CANONICAL_EYE_CORNERS_CM
        cols = [pts[:, i] for i in range(M.NUM_LANDMARKS)]
        for sign, (k_out, k_in, k_up, k_down), iris, idx in self.eyes:
            cn, ce = neutral[:, idx].mean(1), pts[:, idx].mean(1)
            x = cn[:, 0] + lx * (ce[:, 0] - cn[:, 0])
            y = cn[:, 1] + ly * (ce[:, 1] - cn[:, 1])
            z = pts[:, idx, 2].max(1).values + bz * unit
            x = x + unit * (sign * (bx + gout * amp[:, k_out] - gin * amp[:, k_in]) + cx)
            y = y + unit * (by + gup * amp[:, k_up] - gdown * amp[:, k_down])
            centre = torch.stack([x, y, z], -1)
            r = (IRIS_RADIUS * unit)[:, None]
            zero = torch.zeros_like(r)
            rim = [torch.cat(v, -1) for v in ((r, zero, zero), (zero, r, zero), (-r, zero, zero), (zero, -r, zero))]
            cols[iris[0]] = centre
            for j, off in zip(iris[1:], rim, strict=True):
                cols[j] = centre + off
        return torch.stack(cols, 1)


TAN_HALF_FOV = math.tan(math.radians(15.0))  # generate_landmarks' default 30 degree field of view


def project(points: torch.Tensor, rot: torch.Tensor, pivot: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    """Model-space ``(B, 478, 3)`` posed by ``rot`` ``(B, 3, 3)`` about ``pivot`` ``(B, 3)`` and seen by the pinhole
    camera of ``generate_landmarks`` (face ``height`` ``(B,)`` cm = half the canvas) -> the critic's ``(B, 146, 2)``
    input (up to position and scale, which the critic normalizes away)."""
    posed = (points[:, list(LANDMARKS_SUBSET)] - pivot[:, None]) @ rot.transpose(1, 2)
    depth = (height / TAN_HALF_FOV)[:, None] - posed[..., 2]
    return torch.stack([posed[..., 0] / depth, -posed[..., 1] / depth], dim=-1) * 500.0


def random_targets(rng: np.random.Generator, n: int, photo_scores: np.ndarray) -> np.ndarray:
    out = np.zeros((n, K))
    presets = [p for p in PRESETS if p != "neutral"]
    perm = mirror_permutation()
    for i in range(n):
        kind = rng.integers(10)
        if kind == 0:  # neutral
            continue
        if kind <= 3:  # a preset at 0.5, 1 or a random intensity
            t = rng.choice([0.5, 1.0]) if rng.random() < 0.5 else rng.uniform(0.05, 1.0)
            out[i] = scores_to_vector(preset_scores(presets[rng.integers(len(presets))], t))
        elif kind == 4:  # one blendshape (and its twin half the time)
            k = rng.integers(K)
            out[i, k] = rng.uniform(0.05, 1.0)
            if rng.random() < 0.5:
                out[i, perm[k]] = out[i, k]
        elif kind == 5:  # a few blendshapes
            ks = rng.choice(K, size=rng.integers(2, 5), replace=False)
            out[i, ks] = rng.uniform(0.05, 0.8, size=len(ks))
        else:  # a real photo's scores (scaled, for kind 9)
            out[i] = photo_scores[rng.integers(len(photo_scores))] * (rng.uniform(0.3, 1.5) if kind == 9 else 1.0)
    return np.clip(out, 0.0, 1.0)


def fit_photos() -> dict[str, list[Path]]:
    """``person -> photos`` of the bundled photos (``tests/data``, ``ids``, ``calib``) minus the held-out people."""
    data = ROOT / "tests" / "data"
    photos = bundled_photos(data)
    for folder in sorted(p for p in (data / "calib").iterdir() if p.is_dir()):
        found = sorted(p for p in folder.glob("*.*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        photos.setdefault(folder.name, []).extend(found)
    return {p: v for p, v in photos.items() if p not in HELD_OUT_PEOPLE}


def save(corr: Corrections, net: AmplitudeMLP, irises: Irises, out: Path, args, keys) -> None:
    """Write the ``.npz`` file :func:`hifi_portrait.landmarks.expression.fitted_model` reads."""
    lin = corr()
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items() if k.startswith("l")}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        version=np.array(FITTED_BASIS_VERSION),
        names=np.array(BLENDSHAPE_NAMES),
        linear=lin.detach().numpy().astype(np.float32),
        iris=irises.bounded().detach().numpy().astype(np.float32),
        **{k.replace(".", "_"): v for k, v in weights.items()},
        fit_people=np.array(sorted({k[0] for k in keys})),
        held_out_people=np.array(HELD_OUT_PEOPLE),
        settings=np.array(
            " ".join(f"{k}={v}" for k, v in sorted(vars(args).items()) if k != "out")
            + f"; fitted {datetime.date.today().isoformat()}"
        ),
    )


def fit(args) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    faces = analyse_photos(fit_photos())
    assert not {f.person for f in faces} & set(HELD_OUT_PEOPLE)
    groups: dict[tuple[str, bool], list] = {}  # identities: (person, mirrored)
    for f in faces:
        groups.setdefault((f.person, f.mirrored), []).append(f)
    keys = sorted(groups)
    print(f"fit data: {len(faces)} faces, {len(keys)} identities (people x mirror) of {len({k[0] for k in keys})}")
    aligned, rots, poses, scores, owner = [], [], [], [], []
    for gi, key in enumerate(keys):
        for f in groups[key]:
            pts, _, rot, _ = align_to_canonical(to_model_space(f.landmarks))
            aligned.append(pts)
            rots.append(rot.T)  # head rotation in model space
            poses.append(np.radians(pose_from_rotation(rot.T)))
            scores.append(f.scores)
            owner.append(gi)
    f32 = torch.float32
    aligned_t = torch.as_tensor(np.stack(aligned), dtype=f32)
    rots_t = torch.as_tensor(np.stack(rots), dtype=f32)
    poses_t = torch.as_tensor(np.stack(poses), dtype=f32)
    scores_np = np.stack(scores)
    scores_t = torch.as_tensor(scores_np, dtype=f32)
    owner_t = torch.as_tensor(owner)
    n_id = len(keys)
    hand, units, heights = [], [], []  # per identity, on its plain mean shape (constant)
    for gi in range(n_id):
        mean = np.stack([aligned[i] for i in range(len(aligned)) if owner[i] == gi]).mean(0)
        hand.append(expression_basis(mean).reshape(K, -1))
        units.append(M.eye_corner_scale(mean))
        heights.append(np.linalg.norm(mean[M.FOREHEAD_TOP] - mean[M.CHIN]))
    hand_t = torch.as_tensor(np.stack(hand), dtype=f32)  # (I, K, 478 * 3)
    hand_photo = hand_t[owner_t]
    units_t, heights_t = torch.as_tensor(units, dtype=f32), torch.as_tensor(heights, dtype=f32)
    counts = torch.bincount(owner_t, minlength=n_id).float()

    critic = BlendshapeReader().torch_module()
    for p in critic.parameters():
        p.requires_grad_(False)
    corr = Corrections()
    net = AmplitudeMLP(args.hidden)
    irises = Irises(np.load(args.iris_start) if args.iris_start else IRIS_START)
    opt = torch.optim.Adam(
        [
            {"params": net.parameters(), "lr": args.lr},
            {"params": corr.parameters(), "lr": args.lr},
            {"params": irises.parameters(), "lr": args.lr},
        ]
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps + 1, pct_start=0.1)
    edges = laplacian_edges()
    lip, lid = torch.as_tensor(LIP_PAIRS), torch.as_tensor(LID_PAIRS)
    readable = torch.as_tensor([n not in UNREADABLE for n in BLENDSHAPE_NAMES], dtype=f32)

    def expr(ids, a: torch.Tensor, lin: torch.Tensor, hand_rows: torch.Tensor, units=None) -> torch.Tensor:
        units = units_t[ids] if units is None else units
        out = torch.bmm(a[:, None, :], hand_rows)[:, 0] + units[:, None] * (a @ lin.reshape(K, -1))
        return out.reshape(len(a), M.NUM_LANDMARKS, 3)

    def crossing(pts: torch.Tensor) -> torch.Tensor:
        gap_lip = pts[:, lip[:, 0], 1] - pts[:, lip[:, 1], 1]
        gap_lid = pts[:, lid[:, 0], 1] - pts[:, lid[:, 1], 1]
        return torch.relu(0.02 - gap_lip).pow(2).mean() + torch.relu(0.0 - gap_lid).pow(2).mean()

    def read_loss(read: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        err = (read - target).abs() * readable
        return (err**2).mean() + args.w_max * (torch.relu(err - 0.04) ** 2).mean(), err

    tess = M.mediapipe_connections()["tesselation"]
    adj = np.zeros((M.NUM_MESH, M.NUM_MESH), dtype=np.float32)
    adj[tess[:, 0], tess[:, 1]] = adj[tess[:, 1], tess[:, 0]] = 1.0
    smoother = torch.as_tensor(np.eye(M.NUM_MESH, dtype=np.float32) - adj / adj.sum(1, keepdims=True))

    def roughness(pts: torch.Tensor) -> torch.Tensor:
        """``(B,)`` mean distance (cm) of each mesh point to the mean of its neighbours (the benchmark's measure)."""
        return torch.linalg.norm(smoother @ pts[:, : M.NUM_MESH], dim=-1).mean(-1)

    # plausibility bound: the median roughness of the real photos' meshes
    rough_photos = float(roughness(aligned_t).median())
    print(f"mesh roughness of the fit photos (median): {rough_photos:.4f} cm")

    # global shape prior: real faces (the fit photos, expressions included) span a low-dimensional space; the part
    # of a mesh outside the top principal components of theirs is kept as small as the photos' own
    flat = aligned_t[:, : M.NUM_MESH].reshape(len(aligned_t), -1)
    mean_face = flat.mean(0)
    _, _, vt = torch.linalg.svd(flat - mean_face, full_matrices=False)
    basis_pca = vt[: args.pca_components].T

    def off_space(pts: torch.Tensor) -> torch.Tensor:
        """``(B,)`` RMS distance (cm) of each mesh point to the real faces' principal subspace."""
        d = pts[:, : M.NUM_MESH].reshape(len(pts), -1) - mean_face
        res = d - (d @ basis_pca) @ basis_pca.T
        return (res.pow(2).mean(-1) * 3).sqrt()

    off_photos = float(off_space(aligned_t).median())
    print(f"distance of the fit photos to their {args.pca_components}-component face space (median): {off_photos:.4f}")

    def random_poses(n: int) -> np.ndarray:
        yaws = np.where(rng.random(n) < 0.4, rng.choice([-30.0, 0.0, 30.0], n), rng.uniform(-50, 50, n))
        pitch = rng.uniform(-25, 25, n) * (rng.random(n) < 0.6)
        roll = rng.uniform(-20, 20, n) * (rng.random(n) < 0.6)
        return np.stack([yaws, pitch, roll], axis=1)

    if args.init:
        with np.load(args.init) as data, torch.no_grad():
            corr.lin.copy_(torch.as_tensor(data["linear"][corr.own]))
    start = time.time()
    for step in range(args.steps + 1):
        lin = corr()
        neutral_all = aligned_t - expr(owner_t, net(scores_t, poses_t), lin, hand_photo)
        neutral_all = irises(neutral_all, neutral_all, torch.zeros(len(neutral_all), K))
        ident = torch.zeros(n_id, M.NUM_LANDMARKS, 3).index_add_(0, owner_t, neutral_all) / counts[:, None, None]
        pivots = ident[:, : M.NUM_MESH].mean(1)
        # neutralization, round trip and mesh, on a batch of photos
        pb = torch.as_tensor(rng.choice(len(aligned), size=min(args.photo_batch, len(aligned)), replace=False))
        who = owner_t[pb]
        neutral_read = critic(project(neutral_all[pb], rots_t[pb], pivots[who], heights_t[who]))[:, 1:]
        rt_amp = net(scores_t[pb], poses_t[pb])
        rt_mesh = irises(ident[who] + expr(who, rt_amp, lin, hand_photo[pb]), ident[who], rt_amp)
        rt_read = critic(project(rt_mesh, rots_t[pb], pivots[who], heights_t[who]))[:, 1:]
        multi = (counts[who] > 1).float()
        loss_mesh = (((rt_mesh - aligned_t[pb]) ** 2).sum(-1).mean(-1) * multi).mean()
        # synthetic targets at random poses
        nb = args.batch
        target = torch.as_tensor(random_targets(rng, nb, scores_np), dtype=f32)
        ids = torch.as_tensor(rng.integers(n_id, size=nb))
        # identities between two fit identities (--mix of the batch): more faces than the 78 the photos give
        other = torch.as_tensor(rng.integers(n_id, size=nb))
        w = torch.as_tensor(np.where(rng.random(nb) < args.mix, rng.uniform(0.0, 1.0, nb), 1.0), dtype=f32)

        def blend(t: torch.Tensor, w=w, ids=ids, other=other) -> torch.Tensor:
            ww = w.reshape(-1, *([1] * (t.dim() - 1)))
            return ww * t[ids] + (1 - ww) * t[other]

        syn_ident = blend(ident)
        pose = random_poses(nb)
        rot = torch.as_tensor(np.stack([rotation_from_pose(*p) for p in pose]), dtype=f32)
        amp = net(target, torch.as_tensor(np.radians(pose), dtype=f32))
        syn_mesh = irises(syn_ident + expr(None, amp, lin, blend(hand_t), blend(units_t)), syn_ident, amp)
        syn_read = critic(project(syn_mesh, rot, blend(pivots), blend(heights_t)))[:, 1:]

        loss_syn, err_syn = read_loss(syn_read, target)
        loss_neutral, _ = read_loss(neutral_read, torch.zeros_like(neutral_read))
        loss_rt, err_rt = read_loss(rt_read, scores_t[pb])
        loss_smooth = ((lin[:, edges[:, 0]] - lin[:, edges[:, 1]]) ** 2).sum(-1).mean()
        loss_size = (lin**2).sum(-1).mean()
        loss_cross = crossing(syn_mesh) + crossing(rt_mesh)
        loss_amp = ((amp - target) ** 2).mean()
        loss_space = sum((torch.relu(off_space(m) - off_photos) ** 2).mean() for m in (syn_mesh, rt_mesh, ident))
        loss_rough = sum((torch.relu(roughness(m) - rough_photos) ** 2).mean() for m in (syn_mesh, rt_mesh, ident))
        loss = (
            loss_syn
            + loss_rt
            + args.w_neutral * loss_neutral
            + args.w_mesh * loss_mesh
            + args.w_smooth * loss_smooth
            + args.w_size * loss_size
            + args.w_amp * loss_amp
            + args.w_rough * loss_rough
            + args.w_space * loss_space
            + 10.0 * loss_cross
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            n_read = float(readable.sum())
            print(
                f"step {step:4d} ({time.time() - start:5.0f} s): read-back MAE synthetic "
                f"{err_syn.sum() / (n_read * nb):.4f} (worst {err_syn.max():.3f}), round trip "
                f"{err_rt.sum() / (n_read * len(pb)):.4f}, neutral {neutral_read.abs().mean():.4f}; "
                f"mesh {loss_mesh:.4f} cm2, rough {roughness(syn_mesh).mean():.4f} cm, "
                f"off-space {off_space(syn_mesh).mean():.4f}, smooth {loss_smooth:.5f}, "
                f"crossing {loss_cross:.5f}",
                flush=True,
            )
    save(corr, net, irises, Path(args.out), args, keys)
    print(
        "iris placement:", dict(zip(IRIS_PARAMS, np.round(irises.bounded().detach().numpy(), 3).tolist(), strict=True))
    )
    out = Path(args.out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) in {time.time() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=96, help="synthetic targets per step")
    parser.add_argument("--photo-batch", type=int, default=32, help="photos per step (neutralization, round trip)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--w-max", type=float, default=30.0)
    parser.add_argument("--w-neutral", type=float, default=1.0)
    parser.add_argument("--w-mesh", type=float, default=0.1)
    parser.add_argument("--w-smooth", type=float, default=20.0)
    parser.add_argument("--w-size", type=float, default=0.01)
    parser.add_argument("--w-amp", type=float, default=0.01)
    parser.add_argument("--w-rough", type=float, default=100.0, help="meshes no rougher than the real photos'")
    parser.add_argument("--w-space", type=float, default=1000.0, help="meshes within the real faces' PCA space")
    parser.add_argument("--pca-components", type=int, default=40)
    parser.add_argument("--mix", type=float, default=0.8, help="share of synthetic targets on blended identities")
    parser.add_argument("--iris-start", help="starting iris placement (.npy of IRIS_PARAMS)")
    parser.add_argument("--init", help="start the field corrections from this earlier fitted file")
    parser.add_argument("--out", default=str(FITTED_BASIS_PATH))
    args = parser.parse_args()
    if not math.isfinite(args.lr) or args.steps < 0:
        parser.error("bad --lr or --steps")
    fit(args)


if __name__ == "__main__":
    main()
