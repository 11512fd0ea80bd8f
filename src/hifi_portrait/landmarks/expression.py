"""Expressions: mediapipe's blendshape names, named presets, and expression models on any face shape.

Two models (:func:`expression_fields`): ``"hand"`` (default) and ``"fitted"``. The hand-designed basis
(:func:`expression_basis`): for each of mediapipe's 51 ARKit blendshapes (its 52 categories minus
``_neutral``), a displacement field of the 478 landmarks built from anatomical regions of the face mesh (jaw
rotation about a hinge behind the cheeks, mouth corners pulled out/up/down, eyelids closing onto the opposite
lid, brows raised or lowered, iris shifts). The fields are computed on the shape they will deform (eyelid
closure uses that shape's own eye aperture), and sizes are scaled by the shape's eye-corner distance, so they
transfer to any identity. An expression with scores ``s`` (51 values in ``[0, 1]``) moves a neutral shape ``S``
to ``S + sum_k s_k B_k(S)``.

"Left"/"Right" in blendshape names are the *subject's* sides (ARKit's convention): ``eyeBlinkLeft`` closes the
eye on the image's right in a frontal photo (model-space ``x > 0``).

The fitted model (version 3) adds to each hand field a learned correction and sets the fields' amplitudes with a
small learned network of the scores and the head pose the face will be seen at (:class:`AmplitudeNet`); then lips
and eyelids that would cross meet instead (:func:`resolve_contacts`), and the irises are placed from the lids and
the gaze amplitudes (:class:`IrisPlacement`). It is fitted so that mediapipe's own blendshape model reads back what
is asked (``scripts/fit_expression_basis.py``, file :data:`FITTED_BASIS_PATH`).

Limits (see docs/landmarks.md): the hand fields are linear with hand-set amplitudes; the fitted model reads back
closer to the request but not yet within issue 14's bounds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hifi_portrait.errors import LandmarkError, ModelFilesMissingError
from hifi_portrait.landmarks import mesh as M

#: The fitted basis (``scripts/fit_expression_basis.py``; how it was made: docs/landmarks.md).
FITTED_BASIS_PATH = Path(__file__).parents[1] / "assets" / "expression_basis.npz"
#: Format/fit version written into the file; bump it when the model or the fit changes.
FITTED_BASIS_VERSION = "3"
#: Expression models :func:`expression_fields` knows: the hand-designed ``hand`` and the data-driven ``fitted``.
EXPRESSION_MODELS = ("hand", "fitted")
#: The model used when none is named. Still the hand-designed one: the fitted model reads back closer to what is
#: asked (benchmarks/results/expression.md) but does not yet reach issue 14's acceptance and changes the geometry
#: the landmark tests check (eyes fully closed at eyeBlink 1, pose of the raw geometry); opt in with "fitted".
DEFAULT_EXPRESSION_MODEL = "hand"

#: The blendshape names mediapipe's model scores, in its order: its 52 categories are ``_neutral`` (ignored here)
#: and these 51 ARKit shapes (ARKit's 52nd, ``tongueOut``, is not among them).
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
)
BLENDSHAPE_INDEX = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}


def _both(name: str, value: float) -> dict[str, float]:
    return {f"{name}Left": value, f"{name}Right": value}


#: Named expressions at intensity 1 (blendshape scores); intensity scales them linearly.
PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {**_both("mouthSmile", 0.8), **_both("cheekSquint", 0.3), **_both("eyeSquint", 0.15)},
    "laugh": {
        **_both("mouthSmile", 1.0),
        "jawOpen": 0.35,
        **_both("mouthUpperUp", 0.3),
        **_both("mouthLowerDown", 0.3),
        **_both("cheekSquint", 0.5),
        **_both("eyeSquint", 0.4),
    },
    "surprise": {
        "browInnerUp": 0.9,
        **_both("browOuterUp", 0.8),
        **_both("eyeWide", 0.8),
        "jawOpen": 0.35,
        "mouthFunnel": 0.2,
    },
    "angry": {
        **_both("browDown", 0.9),
        **_both("eyeSquint", 0.4),
        **_both("mouthPress", 0.5),
        **_both("mouthFrown", 0.3),
        **_both("noseSneer", 0.3),
    },
    "sad": {"browInnerUp": 0.7, **_both("mouthFrown", 0.8), "mouthShrugLower": 0.3, **_both("eyeLookDown", 0.3)},
    "eyes_closed": {**_both("eyeBlink", 1.0)},
    "mouth_open": {"jawOpen": 0.6, **_both("mouthLowerDown", 0.2)},
}


def scores_to_vector(scores: Mapping[str, float]) -> np.ndarray:
    """``(51,)`` float vector from a name -> score mapping; unknown names raise, ``_neutral`` is ignored."""
    vec = np.zeros(len(BLENDSHAPE_NAMES))
    for name, value in scores.items():
        if name == "_neutral":
            continue
        if name not in BLENDSHAPE_INDEX:
            close = [n for n in BLENDSHAPE_NAMES if n.lower() == name.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else " (names are mediapipe's ARKit blendshapes)"
            raise LandmarkError(f"unknown blendshape {name!r}{hint}; known: {', '.join(BLENDSHAPE_NAMES)}.")
        value = float(value)
        if not math.isfinite(value) or not -1e-6 <= value <= 1 + 1e-6:
            raise LandmarkError(f"blendshape {name}={value} must be a number in [0, 1].")
        vec[BLENDSHAPE_INDEX[name]] = min(max(value, 0.0), 1.0)
    return vec


def preset_scores(name: str, intensity: float = 1.0) -> dict[str, float]:
    """Blendshape scores of a named preset at ``intensity`` in ``[0, 1]``."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key not in PRESETS:
        raise LandmarkError(f"unknown expression preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    intensity = float(intensity)
    if not math.isfinite(intensity) or not 0.0 <= intensity <= 1.0:
        raise LandmarkError(f"expression intensity {intensity} must be in [0, 1].")
    return {k: v * intensity for k, v in PRESETS[key].items()}


def parse_expression(spec: str) -> dict[str, float]:
    """An expression written as text -> blendshape scores.

    Comma-separated items, each a preset ``NAME`` or ``NAME:INTENSITY`` (see :func:`preset_scores`) or a
    blendshape ``NAME=SCORE`` (any of the 51 in :data:`BLENDSHAPE_NAMES`, score in ``[0, 1]``), e.g. ``"smile"``,
    ``"smile:0.6"``, ``"jawOpen=0.4,mouthSmileLeft=0.7"`` or ``"smile:0.5,jawOpen=0.3"``. Presets are applied
    first (a later preset replaces the scores it sets), blendshapes are set on top.
    """
    presets: dict[str, float] = {}
    single: dict[str, float] = {}
    items = [item.strip() for item in spec.split(",")]
    if not any(items):
        raise LandmarkError("empty expression: write a preset NAME[:INTENSITY] or blendshapes NAME=SCORE,...")
    for item in items:
        if not item:
            continue
        if "=" in item:
            name, _, value = item.partition("=")
            try:
                single[name.strip()] = float(value)
            except ValueError:
                raise LandmarkError(f"bad blendshape {item!r}: write NAME=SCORE with SCORE in [0, 1].") from None
            continue
        name, _, value = item.partition(":")
        try:
            intensity = float(value) if value else 1.0
        except ValueError:
            raise LandmarkError(
                f"bad expression {item!r}: write NAME or NAME:INTENSITY, INTENSITY in [0, 1]."
            ) from None
        presets.update(preset_scores(name, intensity))
    scores_to_vector(single)  # validates names and values
    return {**presets, **single}


# --------------------------------------------------------------------------- basis construction
def _soft_region(points: np.ndarray, indices: tuple[int, ...], sigma: float) -> np.ndarray:
    """``(N,)`` weights: 1 on ``indices``, Gaussian fall-off (``sigma``) with the distance to the nearest of them."""
    d2 = ((points[:, None, :] - points[None, list(indices), :]) ** 2).sum(-1).min(axis=1)
    return np.exp(-d2 / (2 * sigma**2))


def _gauss(points: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-((points - centre) ** 2).sum(-1) / (2 * sigma**2))


def _side(points: np.ndarray, sign: float, width: float) -> np.ndarray:
    """Smooth mask of one side of the face (``sign`` +1 = subject's left, model ``x > 0``)."""
    return 1.0 / (1.0 + np.exp(-sign * points[:, 0] / width))


def _jaw_weight(p: np.ndarray, unit: float) -> np.ndarray:
    """Weight of each point in the lower jaw (1 on the lower lip and chin, 0 on the upper lip and above)."""
    mouth_y = 0.5 * (p[M.INNER_LIP_TOP, 1] + p[M.INNER_LIP_BOTTOM, 1])
    t = np.clip((mouth_y + 0.4 * unit - p[:, 1]) / (1.4 * unit), 0.0, 1.0)
    w = t * t * (3 - 2 * t)
    w[list(M.UPPER_LIP)] = 0.0
    w[list(M.LOWER_LIP)] = 1.0
    return w


def expression_basis(shape: np.ndarray) -> np.ndarray:
    """``(51, 478, 3)`` displacement fields of the blendshapes at score 1 on ``shape`` (model space).

    Args:
        shape: ``(478, 3)`` neutral face in model space (any scale; amplitudes follow its eye-corner distance).
    """
    p = np.asarray(shape, dtype=np.float64)
    if p.shape != (M.NUM_LANDMARKS, 3):
        raise LandmarkError(f"expression_basis needs a (478, 3) shape, got {p.shape}.")
    unit = M.eye_corner_scale(p)  # shape units per canonical cm
    n = len(p)
    basis = np.zeros((len(BLENDSHAPE_NAMES), n, 3))

    def put(name: str, delta: np.ndarray) -> None:
        basis[BLENDSHAPE_INDEX[name]] += delta

    def vec(x: float, y: float, z: float) -> np.ndarray:
        return np.array([x, y, z]) * unit

    mouth_centre = 0.5 * (p[M.INNER_LIP_TOP] + p[M.INNER_LIP_BOTTOM])
    mouth_region = _gauss(p, mouth_centre, 2.0 * unit)
    upper_lip = np.zeros(n)
    upper_lip[list(M.UPPER_LIP)] = 1.0
    lower_lip = np.zeros(n)
    lower_lip[list(M.LOWER_LIP)] = 1.0

    # --- jaw: rotation about a hinge below the ears
    jaw = _jaw_weight(p, unit)
    hinge = np.array([0.0, p[M.NOSE_TIP, 1] + 1.0 * unit, p[M.NOSE_TIP, 2] - 13.5 * unit])
    angle = math.radians(14.0)
    rot = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
    rel = p - hinge
    jaw_open = jaw[:, None] * (rel @ rot.T - rel)
    put("jawOpen", jaw_open)
    put("mouthClose", -jaw_open * lower_lip[:, None])
    put("jawForward", jaw[:, None] * vec(0, 0, 0.5))
    put("jawLeft", jaw[:, None] * vec(0.5, 0, 0))
    put("jawRight", jaw[:, None] * vec(-0.5, 0, 0))

    # --- mouth
    put("mouthPucker", mouth_region[:, None] * vec(0, 0, 0.5))
    put("mouthFunnel", mouth_region[:, None] * vec(0, 0, 0.4))
    put("mouthFunnel", upper_lip[:, None] * vec(0, 0.2, 0) + lower_lip[:, None] * vec(0, -0.2, 0))
    put("mouthLeft", mouth_region[:, None] * vec(0.6, 0, 0))
    put("mouthRight", mouth_region[:, None] * vec(-0.6, 0, 0))
    put("mouthRollLower", lower_lip[:, None] * vec(0, 0.25, -0.2))
    put("mouthRollUpper", upper_lip[:, None] * vec(0, -0.25, -0.2))
    put("mouthShrugLower", np.maximum(lower_lip, jaw * _gauss(p, p[M.CHIN], 3.0 * unit))[:, None] * vec(0, 0.3, 0))
    put("mouthShrugUpper", upper_lip[:, None] * vec(0, 0.2, 0))
    for side, sign, corner in (("Left", 1.0, M.MOUTH_CORNER_L), ("Right", -1.0, M.MOUTH_CORNER_R)):
        half = _side(p, sign, 0.3 * unit)
        soft_half = _side(p, sign, 0.8 * unit)
        around_corner = _gauss(p, p[corner], 1.0 * unit) * half
        cheek = _gauss(p, p[corner] + vec(sign * 1.8, 3.0, -1.0), 1.6 * unit) * half
        smile = around_corner[:, None] * vec(sign * 0.55, 0.55, -0.35) + cheek[:, None] * vec(0, 0.3, 0.1)
        put(f"mouthSmile{side}", smile)
        put(f"mouthFrown{side}", around_corner[:, None] * vec(-sign * 0.1, -0.45, 0))
        put(f"mouthStretch{side}", around_corner[:, None] * vec(sign * 0.5, -0.25, -0.1))
        put(f"mouthDimple{side}", around_corner[:, None] * vec(sign * 0.25, 0, -0.25))
        put("mouthPucker", around_corner[:, None] * vec(-sign * 0.7, 0, 0))
        put("mouthFunnel", around_corner[:, None] * vec(-sign * 0.4, 0, 0))
        put(f"mouthUpperUp{side}", (upper_lip * soft_half)[:, None] * vec(0, 0.4, 0))
        put(f"mouthLowerDown{side}", (lower_lip * soft_half)[:, None] * vec(0, -0.4, 0))
        put(f"mouthPress{side}", ((upper_lip - lower_lip) * soft_half)[:, None] * vec(0, -0.12, 0))
        cheek_puff = _gauss(p, p[corner] + vec(sign * 2.0, 1.0, -1.5), 1.8 * unit) * half
        put("cheekPuff", cheek_puff[:, None] * vec(sign * 0.5, 0, 0.2))
        cheek_raise = _gauss(p, p[corner] + vec(sign * 1.6, 3.8, -1.0), 1.5 * unit)
        put(f"cheekSquint{side}", cheek_raise[:, None] * vec(0, 0.3, 0))
        nose_wing = _gauss(p, p[M.NOSE_TIP] + vec(sign * 1.3, -0.6, -1.5), 0.7 * unit)
        put(f"noseSneer{side}", nose_wing[:, None] * vec(0, 0.25, 0))

    # --- eyes and brows
    eyes = (
        (
            "Left",
            1.0,
            M.UPPER_LID_L,
            M.LOWER_LID_L,
            M.UPPER_LID_RING_L,
            M.LOWER_LID_RING_L,
            M.LEFT_IRIS,
            M.BROW_L,
            M.BROW_INNER_L,
            M.BROW_OUTER_L,
        ),
        (
            "Right",
            -1.0,
            M.UPPER_LID_R,
            M.LOWER_LID_R,
            M.UPPER_LID_RING_R,
            M.LOWER_LID_RING_R,
            M.RIGHT_IRIS,
            M.BROW_R,
            M.BROW_INNER_R,
            M.BROW_OUTER_R,
        ),
    )
    for side, sign, upper, lower, upper_ring, lower_ring, iris, brow, brow_inner, brow_outer in eyes:
        upper, lower, upper_ring, lower_ring = (np.array(x[1:-1]) for x in (upper, lower, upper_ring, lower_ring))
        gap = p[upper, 1] - p[lower, 1]  # per-column aperture of this shape's eye (>= 0 when open)
        gap = np.maximum(gap, 0.05 * unit)
        ring_gap = np.maximum(p[upper_ring, 1] - p[lower_ring, 1], gap)

        def lids(
            up: float,
            low: float,
            ring: float = 0.5,
            upper=upper,
            lower=lower,
            upper_ring=upper_ring,
            lower_ring=lower_ring,
            gap=gap,
        ) -> np.ndarray:
            d = np.zeros((n, 3))
            d[upper, 1] += up * gap
            d[lower, 1] += low * gap
            d[upper_ring, 1] += ring * up * gap
            d[lower_ring, 1] += ring * low * gap
            return d

        put(f"eyeBlink{side}", lids(-0.95, 0.05, ring=0.45 * float(np.mean(gap / ring_gap)) + 0.2))
        put(f"eyeWide{side}", lids(0.35, -0.05))
        put(f"eyeSquint{side}", lids(-0.1, 0.3))
        iris_idx = list(iris)
        basis[BLENDSHAPE_INDEX[f"eyeLookOut{side}"], iris_idx] += vec(sign * 0.35, 0, 0)
        basis[BLENDSHAPE_INDEX[f"eyeLookIn{side}"], iris_idx] += vec(-sign * 0.35, 0, 0)
        basis[BLENDSHAPE_INDEX[f"eyeLookUp{side}"], iris_idx] += vec(0, 0.25, 0)
        basis[BLENDSHAPE_INDEX[f"eyeLookDown{side}"], iris_idx] += vec(0, -0.25, 0)
        put(f"eyeLookUp{side}", lids(0.1, 0.05))
        put(f"eyeLookDown{side}", lids(-0.2, -0.05))

        brow_w = _soft_region(p, brow, 0.6 * unit) * _side(p, sign, 0.3 * unit)
        inner_w = _soft_region(p, brow_inner, 1.2 * unit) * _side(p, sign, 0.3 * unit)
        outer_w = _soft_region(p, brow_outer, 1.2 * unit) * _side(p, sign, 0.3 * unit)
        put(f"browDown{side}", brow_w[:, None] * vec(-sign * 0.12, -0.45, 0) + inner_w[:, None] * vec(0, -0.1, 0))
        put("browInnerUp", inner_w[:, None] * vec(0, 0.6, 0))
        put(f"browOuterUp{side}", outer_w[:, None] * vec(0, 0.5, 0))
    return basis


@functools.lru_cache(maxsize=1)
def mirror_index() -> np.ndarray:
    """``(478,)`` index of each landmark's mirror image (``x -> -x``) on the canonical face."""
    pts = M.canonical_landmarks()
    flipped = pts * np.array([-1.0, 1.0, 1.0])
    return np.argmin(((flipped[:, None, :] - pts[None, :, :]) ** 2).sum(-1), axis=1)


#: Head-pose range (degrees: yaw, pitch, roll) the fitted amplitude network was trained on; poses beyond it use
#: the amplitudes at its edge.
NET_POSE_RANGE = np.array([50.0, 25.0, 20.0])


@functools.lru_cache(maxsize=1)
def mirror_permutation() -> np.ndarray:
    """``(51,)`` index of each blendshape's left/right twin (itself for the shapes without a side)."""
    out = []
    for i, name in enumerate(BLENDSHAPE_NAMES):
        if name.endswith("Left"):
            out.append(BLENDSHAPE_INDEX[name[:-4] + "Right"])
        elif name.endswith("Right"):
            out.append(BLENDSHAPE_INDEX[name[:-5] + "Left"])
        else:
            out.append(i)
    return np.array(out)


@dataclass(frozen=True)
class AmplitudeNet:
    """The fitted model's amplitudes: ``a = s + h(s, pose)``, ``h`` a small MLP (SiLU) of the scores and the head
    pose, made mirror-symmetric (``h`` averaged with its mirror image: left/right scores swapped, yaw and roll
    negated), so a symmetric request at a frontal pose gives symmetric amplitudes."""

    weights: tuple[np.ndarray, ...]  # W1, b1, W2, b2, W3, b3 (torch Linear layout: (out, in))

    def _h(self, x: np.ndarray) -> np.ndarray:
        w1, b1, w2, b2, w3, b3 = self.weights
        for w, b in ((w1, b1), (w2, b2)):
            x = x @ w.T + b
            x = x / (1.0 + np.exp(-x))
        return x @ w3.T + b3

    def __call__(self, scores: np.ndarray, pose_deg: np.ndarray) -> np.ndarray:
        """``(51,)`` scores in ``[0, 1]`` and ``(3,)`` head pose in degrees -> ``(51,)`` amplitudes."""
        s = np.asarray(scores, dtype=np.float64)
        pose = np.radians(np.clip(np.asarray(pose_deg, dtype=np.float64), -NET_POSE_RANGE, NET_POSE_RANGE))
        perm = mirror_permutation()
        x = np.concatenate([s, pose])
        xm = np.concatenate([s[perm], pose * np.array([-1.0, 1.0, -1.0])])
        return s + 0.5 * (self._h(x) + self._h(xm)[perm])


#: Names of :class:`IrisPlacement`'s parameters, in the order of the ``iris`` array of :data:`FITTED_BASIS_PATH`.
IRIS_PARAMS = ("bx", "by", "bz", "gin", "gout", "gup", "gdown", "lx", "ly", "cx")
_EYES = (  # (model-space x direction of "outwards", side, iris points, lid contour)
    (-1.0, "Right", M.RIGHT_IRIS, M.UPPER_LID_R + M.LOWER_LID_R),
    (1.0, "Left", M.LEFT_IRIS, M.UPPER_LID_L + M.LOWER_LID_L),
)
#: Iris radius (canonical cm): mediapipe's own irises on the bundled photos, median 0.59 (10-90 %: 0.54-0.62).
IRIS_RADIUS = 0.59


@dataclass(frozen=True)
class IrisPlacement:
    """Where the fitted model puts the irises: set from the eyelids and the gaze amplitudes, not carried over
    from the references (whose gaze is wherever they looked).

    Each iris centre starts at the mean of its eye's lid contour on the neutral shape, moved by ``(lx, ly)`` times
    the contour's own displacement by the expression (0-1: the iris follows the lids less than they move). Its
    depth is ``bz`` from the contour's frontmost point (-0.5 to -0.1: behind it, as in real eyes). It is shifted by
    ``(bx, by)`` (the resting gaze the reader calls straight) plus the gaze amplitudes (``eyeLookOut/In`` sideways
    with gains ``gout/gin``, ``eyeLookUp/Down`` vertically with ``gup/gdown``). The 4 rim points are
    :data:`IRIS_RADIUS` around it. Lengths are canonical centimetres scaled by the shape's eye-corner distance.

    ``x`` offsets point outwards on each eye, except ``cx``: a shift of both irises the same way (towards
    model-space ``+x``, at most 0.1). mediapipe's blendshape model is not mirror-symmetric: on an exactly symmetric
    face it reads a sideways gaze (``eyeLookInRight`` 0.13 and ``eyeLookOutLeft`` 0.14 against 0.03 for their
    mirror twins, on the canonical face), which only such a conjugate shift can cancel.
    """

    params: np.ndarray  # (10,): IRIS_PARAMS

    def __call__(self, points: np.ndarray, neutral: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
        """``(478, 3)`` expressed ``points`` with the irises placed (``neutral``: the shape before the
        expression; ``amplitudes``: the ``(51,)`` amplitudes of the expression)."""
        p = dict(zip(IRIS_PARAMS, self.params, strict=True))
        out = points.copy()
        unit = M.eye_corner_scale(points)
        for sign, side, iris, contour in _EYES:
            idx = list(contour)
            rest = neutral[idx].mean(0)
            centre = rest + np.array([p["lx"], p["ly"], 0.0]) * (points[idx].mean(0) - rest)
            centre[2] = points[idx, 2].max() + p["bz"] * unit

            def a(kind: str, side: str = side) -> float:
                return float(amplitudes[BLENDSHAPE_INDEX[f"eyeLook{kind}{side}"]])

            dx = sign * (p["bx"] + p["gout"] * a("Out") - p["gin"] * a("In")) + p["cx"]
            dy = p["by"] + p["gup"] * a("Up") - p["gdown"] * a("Down")
            centre = centre + unit * np.array([dx, dy, 0.0])
            r = IRIS_RADIUS * unit
            out[iris[0]] = centre
            out[list(iris[1:])] = centre + np.array([[r, 0, 0], [0, r, 0], [-r, 0, 0], [0, -r, 0]])
        return out


@dataclass(frozen=True)
class ExpressionFields:
    """The expression model of one shape: ``(51, 478, 3)`` displacement fields ``F`` and how scores become their
    amplitudes. Scores ``s`` at head pose ``p`` move the shape by ``sum_k a_k(s, p) F_k``: ``a = s`` for the
    hand-designed model, :class:`AmplitudeNet` for the fitted one (the blendshape reader sees the same mesh
    differently at different poses, and the scores interact). The fitted model then places the irises
    (:class:`IrisPlacement`, ``iris``). Non-positive scores ``-s`` undo the expression ``s`` (``a(-s) = -a(s)``):
    the neutralization of a reference."""

    linear: np.ndarray
    net: AmplitudeNet | None = None
    iris: IrisPlacement | None = None

    def amplitudes(self, scores: np.ndarray, pose: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0)):
        """``(51,)`` amplitudes for scores in ``[-1, 1]`` (all of one sign) at ``pose`` (yaw, pitch, roll, deg)."""
        s = np.asarray(scores, dtype=np.float64)
        if self.net is None:
            return s
        sign = -1.0 if (s <= 0).all() and (s < 0).any() else 1.0
        return sign * self.net(np.clip(sign * s, 0.0, 1.0), np.asarray(pose, dtype=np.float64))


@functools.lru_cache(maxsize=1)
def fitted_model() -> tuple[np.ndarray, AmplitudeNet, IrisPlacement]:
    """``(linear, net, iris)``: the learned ``(51, 478, 3)`` field corrections (canonical cm), the amplitude
    network and the iris placement of the fitted model, read from :data:`FITTED_BASIS_PATH`."""
    p = FITTED_BASIS_PATH
    if not p.is_file():
        raise ModelFilesMissingError(
            f"the fitted expression basis {p} is missing; reinstall hifi-portrait (it ships in hifi_portrait/assets/)"
            " or refit it with scripts/fit_expression_basis.py."
        )
    with np.load(p, allow_pickle=False) as data:
        version = str(data["version"])
        if version != FITTED_BASIS_VERSION or tuple(str(n) for n in data["names"]) != BLENDSHAPE_NAMES:
            raise ModelFilesMissingError(
                f"{p} is expression basis version {version}, this code reads version {FITTED_BASIS_VERSION}: "
                "refit it with scripts/fit_expression_basis.py."
            )
        lin = data["linear"].astype(np.float64)
        weights = tuple(data[k].astype(np.float64) for k in NET_KEYS)
        iris = data["iris"].astype(np.float64)
    k, hidden = len(BLENDSHAPE_NAMES), weights[0].shape[0]
    shapes = [(hidden, k + 3), (hidden,), (hidden, hidden), (hidden,), (k, hidden), (k,)]
    fits = lin.shape == (k, M.NUM_LANDMARKS, 3) and [w.shape for w in weights] == shapes
    if not fits or iris.shape != (len(IRIS_PARAMS),):
        raise ModelFilesMissingError(f"{p}: unexpected array shapes; refit it with scripts/fit_expression_basis.py.")
    return lin, AmplitudeNet(weights), IrisPlacement(iris)


#: Array names of :class:`AmplitudeNet`'s weights in :data:`FITTED_BASIS_PATH`.
NET_KEYS = ("l1_weight", "l1_bias", "l2_weight", "l2_bias", "l3_weight", "l3_bias")


def expression_fields(shape: np.ndarray, model: str = DEFAULT_EXPRESSION_MODEL) -> ExpressionFields:
    """The expression model on ``shape`` (model space): see :class:`ExpressionFields`.

    ``model="fitted"``: the hand-designed fields (:func:`expression_basis`) plus the learned corrections (scaled by
    the shape's eye-corner distance), with the learned amplitude network and iris placement; ``"hand"``: the
    hand-designed fields alone, linear in the scores (irises moved by the gaze fields like any other point).
    """
    if model not in EXPRESSION_MODELS:
        raise LandmarkError(f"unknown expression model {model!r}; choose one of {', '.join(EXPRESSION_MODELS)}.")
    hand = expression_basis(shape)
    if model == "hand":
        return ExpressionFields(hand)
    lin, net, iris = fitted_model()
    unit = M.eye_corner_scale(shape)
    return ExpressionFields(hand + unit * lin, net, iris)


#: Point pairs (upper, lower) that must not pass each other: the inner lip contour and the eyelid margins.
CONTACT_PAIRS = np.array(
    [(191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (310, 318), (415, 324)]
    + list(zip(M.UPPER_LID_R[1:-1], M.LOWER_LID_R[1:-1], strict=True))
    + list(zip(M.UPPER_LID_L[1:-1], M.LOWER_LID_L[1:-1], strict=True))
)


def resolve_contacts(points: np.ndarray) -> np.ndarray:
    """Lips and eyelids that would pass each other (upper point below its lower partner, model space) meet at the
    middle instead: closed, not crossed. Other points are unchanged."""
    up, low = CONTACT_PAIRS[:, 0], CONTACT_PAIRS[:, 1]
    crossed = points[up, 1] < points[low, 1]
    if not crossed.any():
        return points
    out = points.copy()
    mid = 0.5 * (points[up[crossed], 1] + points[low[crossed], 1])
    out[up[crossed], 1] = mid
    out[low[crossed], 1] = mid
    return out


def apply_expression(
    shape: np.ndarray,
    basis: np.ndarray | ExpressionFields,
    scores: np.ndarray,
    pose: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Expressed shape: ``(478, 3)`` shape, ``(51,)`` scores, and either a ``(51, 478, 3)`` linear basis
    (``shape + sum_k s_k B_k``) or :class:`ExpressionFields` (``shape + sum_k a_k(s, pose) F_k``, then
    :func:`resolve_contacts` when all scores are >= 0; ``pose``: the head pose (yaw, pitch, roll in degrees) the
    face will be seen at). Negative scores undo an expression (the neutralization of a reference seen at ``pose``:
    its exact inverse, no contact resolution)."""
    scores = np.asarray(scores, dtype=np.float64)
    if isinstance(basis, ExpressionFields):
        amplitudes = basis.amplitudes(scores, pose)
        out = shape + np.tensordot(amplitudes, basis.linear, axes=1)
        if not (scores >= 0).all():
            return out
        out = resolve_contacts(out)
        return out if basis.iris is None else basis.iris(out, shape, amplitudes)
    return shape + np.tensordot(scores, basis, axes=1)
