"""The demo's work, as plain functions of plain values (no Gradio here), so that tests call them directly.

Each function takes the engines it needs (face analyzer, landmark backend, generator) as arguments; the Gradio
page in :mod:`hifi_portrait.demo.app` only wires widgets to them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hifi_portrait.errors import HiFiPortraitError, NoUsableReferencesError
from hifi_portrait.face.face_set import FaceSet
from hifi_portrait.face.matting import composite
from hifi_portrait.face.types import FaceAnalysis

logger = logging.getLogger(__name__)

#: The blendshape sliders the page shows (the main groups: smile, jaw, eyes, brows): label -> the mediapipe
#: blendshape names the slider sets. The fitted expression basis reads each back (tests/demo).
BLENDSHAPE_SLIDERS: dict[str, tuple[str, ...]] = {
    "jaw open": ("jawOpen",),
    "smile": ("mouthSmileLeft", "mouthSmileRight"),
    "mouth frown": ("mouthFrownLeft", "mouthFrownRight"),
    "eyes closed": ("eyeBlinkLeft", "eyeBlinkRight"),
    "eyes wide": ("eyeWideLeft", "eyeWideRight"),
    "brows up": ("browInnerUp", "browOuterUpLeft", "browOuterUpRight"),
    "brows down (frown)": ("browDownLeft", "browDownRight"),
    "pucker": ("mouthPucker",),
}


def slider_id(label: str) -> str:
    """The page element id of a blendshape slider (``"brows down (frown)"`` -> ``"bs-brows-down-frown"``)."""
    return "bs-" + "-".join("".join(c if c.isalnum() else " " for c in label).split())


#: Where the target pose and expression come from.
SOURCE_SLIDERS = "sliders"
SOURCE_DRIVER = "driver photo"


class Analyzer(Protocol):
    """What the demo needs of a face analyzer (:class:`hifi_portrait.face.FaceAnalyzer` fits)."""

    def analyze(self, image: Any, policy: Any = "largest", source: str | None = None) -> FaceAnalysis: ...


class LandmarkBackend(Protocol):
    """What the demo needs of the landmark generator (see :mod:`hifi_portrait.demo.engines`)."""

    styles: tuple[str, ...]
    presets: tuple[str, ...]

    def fit(self, analyses: list[FaceAnalysis]) -> Any: ...

    def neutral(self) -> Any: ...

    def render(self, shape: Any, target: TargetSpec, size: tuple[int, int], style: str) -> np.ndarray: ...


@dataclass
class TargetSpec:
    """The target pose and expression the user set on the page.

    Attributes:
        yaw, pitch, roll: head pose in degrees (:mod:`hifi_portrait.face.types` sign convention).
        preset: expression preset name (e.g. ``"smile"``), ``intensity`` in ``[0, 1]`` scales it.
        blendshapes: extra blendshape scores in ``[0, 1]`` set on top of the preset.
        driver: a driver photo's analysis; when set, its pose and expression are used (not its face shape)
            and the sliders are ignored.
    """

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    preset: str = "neutral"
    intensity: float = 1.0
    blendshapes: dict[str, float] = field(default_factory=dict)
    driver: FaceAnalysis | None = None


@dataclass
class ReferenceState:
    """What the page keeps per browser session after analysing the references.

    Attributes:
        face_set: all usable references with their similarity matrix and outliers.
        shape: the identity shape fitted on the references kept for generation.
        skipped: ``(file name, reason)`` of uploads that could not be used.
    """

    face_set: FaceSet | None = None
    shape: Any = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def kept(self) -> list[FaceAnalysis]:
        """The references used for generation: all usable ones minus probable other people."""
        if self.face_set is None:
            return []
        keep = [a for i, a in enumerate(self.face_set.analyses) if i not in self.face_set.outliers]
        return keep or list(self.face_set.analyses)


@dataclass
class AnalysisView:
    """What :func:`analyze_references` shows on the page.

    Attributes:
        gallery: three ``((S, S, 3) uint8, caption)`` per usable reference: its encoder crop, its face/head mask
            and the crop matted on grey (what the image encoder gets).
        table: one row per uploaded file (see :data:`TABLE_HEADERS`).
        warnings: Markdown: identity-consistency warnings, skipped files, advice.
        state: the session state for the later steps.
    """

    gallery: list[tuple[np.ndarray, str]]
    table: list[list[Any]]
    warnings: str
    state: ReferenceState


TABLE_HEADERS = ["photo", "status", "yaw°", "pitch°", "roll°", "quality", "sharpness", "face px", "same-person sim."]


def _name(path: str | Path) -> str:
    return Path(str(path)).name


def analyze_references(
    paths: list[str] | None,
    analyzer: Analyzer,
    landmarks: LandmarkBackend | None = None,
    max_references: int = 8,
) -> AnalysisView:
    """Analyse uploaded reference photos: crops, pose, quality, identity consistency, identity shape.

    Files that cannot be used (no face, unreadable, too blurred) are listed with the reason; they do not stop
    the others. References whose identity differs from the rest (:attr:`FaceSet.outliers`) are flagged and left
    out of the identity shape and generation.

    Args:
        paths: uploaded files (only the first ``max_references`` are used).
        analyzer: the face analyzer.
        landmarks: the landmark backend that fits the identity shape (``None``: no shape).
        max_references: most photos analysed per request (bounds the work one request can cause).
    """
    paths = [str(p) for p in (paths or [])]
    notes: list[str] = []
    if len(paths) > max_references:
        notes.append(
            f"Only the first {max_references} of {len(paths)} photos were analysed (the demo's per-request limit)."
        )
        paths = paths[:max_references]
    analyses: list[FaceAnalysis] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        try:
            analyses.append(analyzer.analyze(path, source=_name(path)))
        except HiFiPortraitError as exc:
            skipped.append((_name(path), str(exc)))
    state = ReferenceState(skipped=skipped)
    if analyses:
        state.face_set = FaceSet.from_analyses(analyses)
        if landmarks is not None:
            state.shape = landmarks.fit(state.kept)
    return AnalysisView(
        gallery=_gallery(state),
        table=_table(state),
        warnings=_warnings_markdown(state, notes, n_uploaded=len(paths)),
        state=state,
    )


def _gallery(state: ReferenceState) -> list[tuple[np.ndarray, str]]:
    fs = state.face_set
    if fs is None:
        return []
    items = []
    for i, a in enumerate(fs.analyses):
        flag = " ⚠ different person?" if i in fs.outliers else ""
        caption = (
            f"{a.source}: yaw {a.pose.yaw:+.0f}°, pitch {a.pose.pitch:+.0f}°, quality {a.quality.total:.2f}{flag}"
        )
        mask = np.asarray(a.mask)
        items.append((np.asarray(a.encoder_crop), caption))
        items.append((np.repeat(mask[..., None], 3, axis=2), f"{a.source}: mask ({a.mask_method})"))
        items.append((composite(a.encoder_crop, mask), f"{a.source}: matted, as the image encoder sees it"))
    return items


def _table(state: ReferenceState) -> list[list[Any]]:
    rows: list[list[Any]] = []
    fs = state.face_set
    if fs is not None:
        for i, a in enumerate(fs.analyses):
            if len(fs.outliers) == len(fs):  # nobody agrees with a majority: no single photo can be blamed
                status = "mixed set: identities disagree"
            else:
                status = "probably a different person" if i in fs.outliers else "ok"
            sim = float(fs.median_similarity[i]) if len(fs) >= 2 else float("nan")
            rows.append(
                [
                    a.source,
                    status,
                    round(a.pose.yaw, 1),
                    round(a.pose.pitch, 1),
                    round(a.pose.roll, 1),
                    round(a.quality.total, 3),
                    round(a.quality.sharpness, 3),
                    round(float(a.quality.raw.get("face_px", math.nan)), 1),
                    None if math.isnan(sim) else round(sim, 3),
                ]
            )
    for name, reason in state.skipped:
        rows.append([name, f"skipped: {reason}", None, None, None, None, None, None, None])
    return rows


def _warnings_markdown(state: ReferenceState, notes: list[str], n_uploaded: int) -> str:
    fs = state.face_set
    lines: list[str] = []
    if n_uploaded == 0:
        return "Upload 2 to 8 photos of one person (different angles and expressions help)."
    if fs is not None:
        lines.append(
            f"**{len(fs)} usable reference(s)**, {len(state.kept)} kept for generation "
            f"(identity model {fs.identity_model}, same-person threshold {fs.threshold:.2f})."
        )
        if fs.outliers and len(fs.outliers) == len(fs):
            lines.append(
                "- ⚠ **No photo agrees with the majority**: every reference's median identity similarity is below "
                f"{fs.threshold:.2f}, so the set mixes several people and none can be singled out. All are kept; "
                "upload photos of one person only."
            )
        for i in fs.outliers if len(fs.outliers) < len(fs) else []:
            a = fs.analyses[i]
            lines.append(
                f"- ⚠ **{a.source}** is probably a different person from the others: median identity similarity "
                f"{float(fs.median_similarity[i]):.2f} < {fs.threshold:.2f}. It is left out of the identity shape "
                "and of generation; remove it or upload photos of one person only."
            )
        if len(fs) == 2 and float(fs.similarity[0, 1]) < fs.threshold:
            lines.append(
                f"- ⚠ The two references look like different people (similarity {float(fs.similarity[0, 1]):.2f} "
                f"< {fs.threshold:.2f}); add a third photo so the odd one out can be told apart."
            )
        if len(fs) == 1:
            lines.append("- Only one usable reference: more photos (other angles) give a better identity shape.")
    else:
        lines.append("**No usable reference.** Upload clear photos where one face is visible.")
    for name, reason in state.skipped:
        lines.append(f"- skipped **{name}**: {reason}")
    lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines)


def blendshapes_from_sliders(values: dict[str, float]) -> dict[str, float]:
    """Slider label -> value (in ``[0, 1]``) to blendshape scores; zero sliders are left out."""
    scores: dict[str, float] = {}
    for label, value in values.items():
        if label not in BLENDSHAPE_SLIDERS:
            raise KeyError(f"unknown blendshape slider {label!r}; known: {', '.join(BLENDSHAPE_SLIDERS)}")
        if value:
            for name in BLENDSHAPE_SLIDERS[label]:
                scores[name] = float(value)
    return scores


def analyze_driver(path: str | None, analyzer: Analyzer) -> tuple[FaceAnalysis | None, str]:
    """Analyse a driver photo: its pose and expression become the target (its face shape is not used).

    Returns the analysis (``None`` when no photo or no usable face) and a Markdown line for the page.
    """
    if not path:
        return None, "No driver photo: the sliders set the target."
    try:
        driver = analyzer.analyze(str(path), source=_name(path))
    except HiFiPortraitError as exc:
        return None, f"⚠ Driver photo not usable: {exc}"
    top = sorted(((v, k) for k, v in driver.blendshapes.items() if k != "_neutral"), reverse=True)[:3]
    expr = ", ".join(f"{k} {v:.2f}" for v, k in top if v >= 0.1) or "neutral"
    return driver, (
        f"Driver **{driver.source}**: yaw {driver.pose.yaw:+.1f}°, pitch {driver.pose.pitch:+.1f}°, "
        f"roll {driver.pose.roll:+.1f}°; expression: {expr}. Only its pose and expression are used."
    )


def render_preview(
    state: ReferenceState | None,
    target: TargetSpec,
    landmarks: LandmarkBackend,
    size: tuple[int, int] = (512, 512),
    style: str | None = None,
) -> np.ndarray:
    """The landmark map of the target, ``(H, W, 3)`` uint8: the references' identity shape when analysed,
    otherwise the neutral canonical face (so the page previews something before any upload).

    Raises:
        LandmarkError: bad pose, preset or blendshape value (the message says which).
    """
    shape = state.shape if state is not None and state.shape is not None else landmarks.neutral()
    return landmarks.render(shape, target, size, style or landmarks.styles[0])


def require_references(state: ReferenceState | None) -> list[FaceAnalysis]:
    """The references kept for generation, or :class:`NoUsableReferencesError` telling the user what to do."""
    kept = state.kept if state is not None else []
    if not kept:
        raise NoUsableReferencesError(
            "no usable reference photo yet: upload photos of one person and wait for the analysis before generating."
        )
    return kept
