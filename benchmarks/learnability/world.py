"""A procedurally generated identity world, rendered with our landmark generator, written as a `build-dataset` set.

Each *identity* is:

* a face shape: mediapipe's canonical mesh deformed by a random smooth field (a few Gaussian radial-basis
  displacements over the face plus per-axis scaling of face width, face height and depth; spread wider than real
  faces so that shape alone is visible at 64 px);
* skin, eye, lip and hair colours, a hair cap size, and a per-identity texture pattern (a sum of two low-frequency
  sinusoids over the canonical vertex positions that modulates the skin colour: stripes/spots that are stable
  under pose);

each *image* is that identity at a random pose (yaw within +-40, pitch +-15, roll +-10 degrees), expression (one of
our presets at a random intensity), light direction and background colour, rendered as a shaded mesh with
per-vertex colour (Lambert shading of the posed mesh's normals; front-facing triangles drawn back to front,
supersampled 2x) by :func:`render_identity`, 64x64 by default.

The identity vector ``id.npy`` of each image simulates a face recognizer: a fixed random linear map of the
identity's latent parameters (shape + colours + pattern), plus per-image noise whose size grows as the image's
``quality`` falls, L2-normalized (128-d, like dlib's). Measured on 50 identities of world 0: same-identity cosine
0.94 / 0.85 / 0.73 at quality 1.0 / 0.7 / 0.4, different identities 0.09 +- 0.19. This is a stand-in for
dlib/ArcFace computed from the identity's *parameters*, not from the image; no recognizer is trained here.

The identity shapes are NOT fitted from real analyses (the issue's wish): they are random smooth deformations of
the canonical mesh, for lack of time.

Everything is a deterministic function of ``(seed, identity index, image index)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hifi_portrait.data.writer import Sample, atomic_write, sha256_file, write_webdataset_shard
from hifi_portrait.landmarks import IdentityShape, Placement, generate_landmarks, make_target
from hifi_portrait.landmarks import mesh as M
from hifi_portrait.landmarks.expression import PRESETS

ID_DIM = 128
LATENT_DIM = 48  # identity parameters fed to the simulated recognizer
EXPRESSIONS = ("neutral", "smile", "surprise", "angry", "sad", "mouth_open")
CAPTION = "a photo of a person"
#: face box side as a fraction of the image side (the reader crops 2.2 x the face box: the whole image)
FACE_FRACTION = 1.0 / 2.2
FORMAT = "hifi-portrait-dataset/1"


@dataclass
class Identity:
    """One person of the world."""

    index: int
    shape: IdentityShape
    skin: np.ndarray  # (3,) RGB in [0, 1]
    eyes: np.ndarray
    lips: np.ndarray
    hair: np.ndarray
    hair_size: float  # hair cap radius as a fraction of the face height
    pattern: np.ndarray  # (2, 5): per sinusoid (fx, fy, fz, phase, amplitude)
    latent: np.ndarray  # (LATENT_DIM,) parameters seen by the simulated recognizer


@dataclass
class View:
    """One image of an identity: commanded pose/expression, lighting, background, quality."""

    yaw: float
    pitch: float
    roll: float
    expression: str
    intensity: float
    light: np.ndarray  # (3,) unit vector, camera frame (x right, y up, z towards the camera)
    background: np.ndarray  # (3,) RGB in [0, 1]
    quality: float


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def make_identity(seed: int, index: int) -> Identity:
    """The identity ``index`` of the world ``seed``."""
    rng = _rng(seed, 1, index)
    base = M.canonical_landmarks().copy()
    centre = base[: M.NUM_MESH].mean(0)
    extent = np.ptp(base[: M.NUM_MESH], axis=0)
    rel = (base - centre) / extent  # about [-0.5, 0.5]
    scale = 1.0 + rng.normal(0, 1, 3) * np.array([0.08, 0.07, 0.10])
    pts = centre + (base - centre) * scale
    rbf = rng.normal(0, 1, (6, 7))  # 6 bumps: centre (3), displacement (3), width (1)
    for c in rbf:
        mu = np.clip(c[:3] * 0.25, -0.45, 0.45)
        width = 0.15 + 0.1 * abs(c[6])
        w = np.exp(-((rel - mu) ** 2).sum(1) / (2 * width**2))
        pts = pts + w[:, None] * (c[3:6] * 0.06 * extent)
    hue = rng.uniform(0, 1)
    skin = np.array(_hsv(0.02 + 0.08 * hue, rng.uniform(0.2, 0.7), rng.uniform(0.35, 0.95)))
    eyes = np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.5, 1.0), rng.uniform(0.3, 0.9)))
    lips = np.array(_hsv(rng.uniform(0.9, 1.05) % 1, rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.8)))
    hair = np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.9), rng.uniform(0.05, 0.95)))
    hair_size = float(rng.uniform(0.0, 0.75))
    pattern = np.concatenate(
        [rng.normal(0, 1, (2, 3)) * 6.0, rng.uniform(0, 2 * math.pi, (2, 1)), rng.uniform(0.0, 0.35, (2, 1))], 1
    )
    latent = np.concatenate(
        [(scale - 1) * 10, rbf[:, 3:6].ravel(), (np.concatenate([skin, eyes, lips, hair]) - 0.5) * 4]
        + [[(hair_size - 0.375) * 8], (pattern[:, 4] - 0.175) * 10]
    )  # every part centred and of unit order, so that different identities are about orthogonal
    latent = np.pad(latent, (0, LATENT_DIM - len(latent)))[:LATENT_DIM]
    return Identity(index, IdentityShape(points=pts), skin, eyes, lips, hair, hair_size, pattern, latent)


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def make_view(seed: int, identity: int, image: int) -> View:
    """The random pose, expression, lighting, background and quality of one image."""
    rng = _rng(seed, 2, identity, image)
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.3, 0.7), 1.0])
    return View(
        yaw=float(rng.uniform(-40, 40)),
        pitch=float(rng.uniform(-15, 15)),
        roll=float(rng.uniform(-10, 10)),
        expression=EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))],
        intensity=float(rng.uniform(0.4, 1.0)),
        light=light / np.linalg.norm(light),
        background=rng.uniform(0.1, 0.9, 3),
        quality=float(rng.uniform(0.4, 1.0)),
    )


def _pattern_value(ident: Identity) -> np.ndarray:
    """``(478,)`` texture modulation of the skin in [-0.7, 0.7] (identity-fixed, on the canonical vertices)."""
    base = M.canonical_landmarks()
    rel = (base - base.mean(0)) / np.ptp(base, axis=0)
    out = np.zeros(len(base))
    for fx, fy, fz, phase, amp in ident.pattern:
        out += amp * np.sin(rel @ np.array([fx, fy, fz]) + phase)
    return out


def _vertex_colors(ident: Identity) -> np.ndarray:
    colors = np.clip(ident.skin[None] * (1.0 + _pattern_value(ident))[:, None], 0, 1)
    colors[list(M.UPPER_LIP + M.LOWER_LIP)] = ident.lips
    colors[list(M.BROW_R + M.BROW_L)] = ident.hair
    return colors


def render_identity(ident: Identity, view: View, size: int = 64, supersample: int = 2):
    """Render one image: ``(image (size, size, 3) uint8, landmarks (478, 3) in pixels, mask (size, size) uint8)``."""
    big = size * supersample
    target = make_target(
        yaw=view.yaw,
        pitch=view.pitch,
        roll=view.roll,
        blendshapes={k: v * view.intensity for k, v in PRESETS[view.expression].items()},
    )
    placement = Placement(center=(0.5, 0.52), face_height=FACE_FRACTION * 1.05)
    gen = generate_landmarks(ident.shape, target, size=(big, big), placement=placement)
    canvas = np.empty((big, big, 3), np.float32)
    canvas[:] = view.background
    mask = np.zeros((big, big), np.uint8)
    face_h = float(np.ptp(gen.points2d[: M.NUM_MESH, 1]))
    # hair cap: a disc centred above the forehead (drawn first, the face covers its lower part)
    if ident.hair_size > 0.05:
        top, chin = gen.points2d[M.FOREHEAD_TOP], gen.points2d[M.CHIN]
        centre = top + (top - chin) * 0.05
        radius = int(round(face_h * (0.35 + ident.hair_size * 0.4)))
        c = (int(round(centre[0])), int(round(centre[1])))
        cv2.circle(canvas, c, radius, ident.hair.tolist(), -1, cv2.LINE_AA)
        cv2.circle(mask, c, radius, 255, -1)
    tri = M.canonical_mesh().triangles
    p = gen.points_cam
    a, b, cc = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    n = np.cross(b - a, cc - a)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    mid = (a + b + cc) / 3
    front = (n * mid).sum(1) < 0
    order = np.argsort(-mid[front, 2])
    tri, n = tri[front][order], n[front][order]
    view_n = np.stack([n[:, 0], -n[:, 1], -n[:, 2]], 1)  # y up, z towards the camera
    shade = 0.45 + 0.65 * np.clip(view_n @ view.light, 0, 1)
    colors = _vertex_colors(ident)[tri].mean(1) * shade[:, None]
    colors = np.clip(colors, 0, 1)
    corners = np.round(gen.points2d * 16).astype(np.int32)[tri]
    for k in range(len(tri)):
        cv2.fillConvexPoly(canvas, corners[k], colors[k].tolist(), cv2.LINE_8, 4)
        cv2.fillConvexPoly(mask, corners[k], 255, cv2.LINE_8, 4)
    visible = np.zeros(M.NUM_LANDMARKS, bool)
    visible[tri.ravel()] = True
    for iris, top_i, bottom_i in (
        (M.RIGHT_IRIS, M.EYE_R_TOP, M.EYE_R_BOTTOM),
        (M.LEFT_IRIS, M.EYE_L_TOP, M.EYE_L_BOTTOM),
    ):
        aperture = np.linalg.norm(gen.points2d[top_i] - gen.points2d[bottom_i])
        if visible[top_i] and aperture > 1.5:
            ctr = gen.points2d[iris[0]]
            radius = max(
                1, int(round(min(np.linalg.norm(gen.points2d[list(iris[1:])] - ctr, axis=1).mean(), aperture / 2)))
            )
            cv2.circle(canvas, (int(round(ctr[0])), int(round(ctr[1]))), radius, ident.eyes.tolist(), -1, cv2.LINE_AA)
    image = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    image = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    if view.quality < 0.7:  # low-quality photos are blurred (and their identity vectors noisier)
        sigma = (0.7 - view.quality) * 3.0
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
    lmk = gen.landmarks.copy()
    lmk /= supersample
    return image, lmk, mask


def recognizer_matrix(seed: int) -> np.ndarray:
    """The simulated recognizer's fixed ``(LATENT_DIM, ID_DIM)`` projection (a property of the world)."""
    return _rng(seed, 3).normal(0, 1, (LATENT_DIM, ID_DIM)) / math.sqrt(LATENT_DIM)


def identity_vector(seed: int, ident: Identity, image: int, quality: float) -> np.ndarray:
    """``(ID_DIM,)`` float32 unit identity vector of one image (simulated recognizer, see the module docstring)."""
    z = ident.latent / np.linalg.norm(ident.latent)
    clean = z @ recognizer_matrix(seed)
    clean /= np.linalg.norm(clean)
    noise = _rng(seed, 4, ident.index, image).normal(0, 1, ID_DIM) / math.sqrt(ID_DIM)
    v = clean + noise * (0.25 + 0.6 * (1.0 - quality))
    return (v / np.linalg.norm(v)).astype(np.float32)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def view_record(view: View) -> dict:
    return {
        "yaw": view.yaw,
        "pitch": view.pitch,
        "roll": view.roll,
        "expression": view.expression,
        "intensity": view.intensity,
        "quality": view.quality,
    }


def make_sample(seed: int, ident: Identity, image: int, role: str, size: int) -> Sample:
    """One dataset sample of the world, with the files and metadata ``build-dataset`` writes."""
    view = make_view(seed, ident.index, image)
    photo, lmk, mask = render_identity(ident, view, size)
    ys, xs = np.nonzero(mask > 127)
    face = lmk[: M.NUM_MESH, :2]
    x1, y1 = face.min(0)
    x2, y2 = face.max(0)
    name = f"{ident.index:06d}_{image:03d}"
    photo_mask = _png(mask)
    meta = {
        "sample": name,
        "identity": f"id{ident.index:05d}",
        "role": role,
        "caption": CAPTION,
        "pose": {"yaw": view.yaw, "pitch": view.pitch, "roll": view.roll},
        "blendshapes": {k: v * view.intensity for k, v in PRESETS[view.expression].items()},
        "quality": view.quality,
        "bbox": [float(x1), float(y1), float(x2), float(y2)],
        "keypoints": lmk[list(M.FIVE_POINTS), :2].tolist(),
        "source": f"world:{seed}:{ident.index}:{image}",
        "mask_method": "render",
        "face_coverage": float(len(xs)) / mask.size,
        "world": view_record(view),
    }
    return Sample(
        name=name,
        meta=meta,
        photo=_jpeg(photo),
        crop=_jpeg(photo),
        mask=photo_mask,
        identity=identity_vector(seed, ident, image, view.quality),
        landmarks=lmk.astype(np.float32),
        photo_mask=photo_mask if role == "target" else None,
    )


def roles(images: int, targets: int) -> list[str]:
    """Roles of an identity's images: the last ``targets`` are targets, the rest references."""
    return ["ref"] * (images - targets) + ["target"] * targets


def write_world(
    out: str | Path,
    seed: int,
    identities: range,
    images_per_identity: int = 6,
    targets_per_identity: int = 2,
    size: int = 64,
    identities_per_shard: int = 100,
    progress: bool = False,
) -> Path:
    """Write identities ``identities`` of world ``seed`` as a dataset folder (``PortraitDataset`` reads it).

    Same files as ``build-dataset`` (manifest last, with every file's sha256), byte-reproducible from the seed.
    """
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    ids = list(identities)
    entries, files = [], []
    shard_lists = [ids[i : i + identities_per_shard] for i in range(0, len(ids), identities_per_shard)]
    iterator = enumerate(shard_lists)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(shard_lists), desc=f"world -> {out.name}")
    role_list = roles(images_per_identity, targets_per_identity)
    for s, shard_ids in iterator:
        rel = f"shards/shard-{s:06d}.tar"
        samples = []
        for i in shard_ids:
            ident = make_identity(seed, i)
            mine = [make_sample(seed, ident, j, role_list[j], size) for j in range(images_per_identity)]
            samples += mine
            entries.append(
                {
                    "identity": f"id{i:05d}",
                    "shard": rel,
                    "samples": [{"sample": x.name, "role": x.meta["role"]} for x in mine],
                }
            )
        write_webdataset_shard(out / rel, samples)
        files.append(rel)
    atomic_write(out / "identities.jsonl", "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode())
    atomic_write(out / "failures.jsonl", b"")
    files += ["identities.jsonl", "failures.jsonl"]
    config = {
        "world_seed": seed,
        "identities": [ids[0], ids[-1] + 1] if ids else [],
        "images_per_identity": images_per_identity,
        "targets_per_identity": targets_per_identity,
        "size": size,
    }
    manifest = {
        "format": "webdataset",
        "version": FORMAT,
        "config": config,
        "counts": {"identities": len(ids), "samples": len(ids) * images_per_identity},
        "mask_methods": ["render"],
        "files": {f: sha256_file(out / f) for f in files},
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, sort_keys=True, indent=1).encode())
    return out


def folder_digest(root: str | Path) -> str:
    """sha256 over every file's relative path and bytes (for the same-seed-same-bytes check)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
