"""Protocol runner: score a folder of generated portraits (of any method) against a benchmark manifest.

For each generated image: detect and analyse the face (failures are counted, never fatal), compare its identity
vectors with the references and the held-out ground truth (every recognizer), compare its re-estimated pose,
expression and landmarks with what the manifest commanded, measure pose and expression a second time with an
independent landmark model (dlib's 68 points + PnP, :mod:`hifi_portrait.evaluation.dlib68`), and (when the user
supplied the models) score CLIP-T.
Per set: detection rate, means, CLIP diversity per entry, FID/KID against a folder of real photos.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hifi_portrait.errors import FaceNotFoundError, ImageLoadError, ModelFilesMissingError, UnusableFaceError
from hifi_portrait.evaluation.control import (
    AXES,
    EYE_INDICES,
    angle_diff,
    expression_error,
    landmark_nme,
    pose_error,
)
from hifi_portrait.evaluation.distribution import fid_from_features, kid_from_features, mean_pairwise_dissimilarity
from hifi_portrait.evaluation.identity import copy_paste_over_references, cosine_similarity
from hifi_portrait.evaluation.manifest import IMAGE_EXTENSIONS, Entry, Manifest, resolve_generated

logger = logging.getLogger(__name__)


@dataclass
class AnalyzedImage:
    """An image with its analysed face (``face`` is None when no usable face was found; ``failure`` says why)."""

    path: Path
    image: np.ndarray | None
    face: Any | None  # hifi_portrait.face.FaceAnalysis
    failure: str | None = None
    identity: dict[str, np.ndarray] = field(default_factory=dict)
    dlib68: Any | None = None  # evaluation.dlib68.Dlib68Measurement, measured on first use (a str: why it failed)


@dataclass
class EvaluationResult:
    """Everything one run measured.

    Attributes:
        method: label of the scored method (folder).
        manifest: the manifest's name.
        rows: one flat dict per generated image (the CSV rows).
        entries: one dict per manifest entry (counts, diversity, reference self-similarity).
        summary: set-level numbers (detection rate, means over detected faces, FID/KID).
        notices: metrics skipped and why, and other things the reader must know.
        recognizers: names of the identity models used, first = primary.
    """

    method: str
    manifest: str
    rows: list[dict[str, Any]]
    entries: list[dict[str, Any]]
    summary: dict[str, Any]
    notices: list[str]
    recognizers: list[str]


def _detection_of(face) -> Any:
    from hifi_portrait.face import Detection

    return Detection(bbox=np.asarray(face.bbox), score=float(face.det_score), keypoints=np.asarray(face.keypoints))


class Evaluator:
    """Scores generated portraits with the face analyzer and the optional models the user supplied.

    Args:
        analyzer: a :class:`hifi_portrait.face.FaceAnalyzer` (default: offline backends, unusable faces kept
            with a warning rather than rejected, since generated faces are measured, not filtered).
        recognizers: identity models (:class:`hifi_portrait.face.IdentityEmbedder`) to report, first = primary;
            default: the analyzer's embedder (dlib 128-d offline). Add
            ``InsightFaceEmbedder(dir)`` to also report ArcFace similarity, as InstantID/PhotoMaker/PuLID do.
        clip: a :class:`~hifi_portrait.evaluation.clip_score.ClipScorer` for CLIP-T and diversity, or None.
        inception: a loaded :class:`~hifi_portrait.evaluation.inception.FIDInceptionV3`, or None.
        fid_reference_dir: folder of real photos that FID/KID compare the generated set with.
        kid_subsets, kid_subset_size: KID's subset sampling (capped by the set sizes).
        progress: show tqdm progress bars.
        dlib68: the independent pose/expression measurement: ``"auto"`` (default: dlib's 68-point model from the
            ``face_recognition_models`` package, skipped with a notice when that file is missing), a
            :class:`~hifi_portrait.evaluation.dlib68.Dlib68Estimator`, or None (not measured).
    """

    #: Per-image columns that are measurements or labels, not scores: kept out of the summary means.
    _NOT_AVERAGED = frozenset(
        {"entry", "image", "face_detected", "failure", "dlib68_box", "dlib68_failure"}
        | {f"{prefix}{axis}" for prefix in ("cmd_", "", "dlib68_") for axis in AXES}
    )

    def __init__(
        self,
        analyzer=None,
        recognizers: Sequence[Any] | None = None,
        clip=None,
        inception=None,
        fid_reference_dir: str | os.PathLike | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        progress: bool = True,
        dlib68: Any = "auto",
    ) -> None:
        if analyzer is None:
            from hifi_portrait.face import FaceAnalyzer, QualityConfig

            analyzer = FaceAnalyzer(quality=QualityConfig(on_unusable="warn"))
        self.analyzer = analyzer
        self.recognizers = list(recognizers) if recognizers else [analyzer.embedder]
        self.clip = clip
        self.inception = inception
        self.fid_reference_dir = Path(fid_reference_dir) if fid_reference_dir else None
        self.kid_subsets, self.kid_subset_size = int(kid_subsets), int(kid_subset_size)
        self.progress = progress
        self._cache: dict[Path, AnalyzedImage] = {}
        self.dlib68, self._dlib68_notice = self._make_dlib68(dlib68)

    @staticmethod
    def _make_dlib68(dlib68: Any) -> tuple[Any | None, str | None]:
        if dlib68 is None:
            return None, "dlib68 pose/expression skipped: disabled (--no-dlib68)"
        if not isinstance(dlib68, str):
            return dlib68, None
        if dlib68 != "auto":
            raise ValueError(f"dlib68 must be 'auto', None or a Dlib68Estimator, not {dlib68!r}")
        from hifi_portrait.evaluation.dlib68 import Dlib68Estimator

        try:
            return Dlib68Estimator(), None
        except ModelFilesMissingError as exc:
            logger.warning("%s", exc)
            return None, f"dlib68 pose/expression skipped: {exc}"

    # ------------------------------------------------------------------ analysis
    def analyze(self, path: str | os.PathLike) -> AnalyzedImage:
        """Load and analyse one image (cached by path); failures are recorded, not raised."""
        from hifi_portrait.face import load_image

        path = Path(path).resolve()
        if path in self._cache:
            return self._cache[path]
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            logger.warning("%s", exc)
            result = AnalyzedImage(path, None, None, failure=f"unreadable: {exc}")
        else:
            try:
                face = self.analyzer.analyze(image, source=str(path))
                result = AnalyzedImage(path, image, face)
            except (FaceNotFoundError, UnusableFaceError) as exc:
                result = AnalyzedImage(path, image, None, failure=f"no usable face: {exc}")
            if result.face is not None:
                for rec in self.recognizers:
                    if rec.name == result.face.identity_model:
                        result.identity[rec.name] = np.asarray(result.face.identity, dtype=np.float64)
                    else:
                        result.identity[rec.name] = np.asarray(
                            rec.embed(image, _detection_of(result.face)), dtype=np.float64
                        )
        self._cache[path] = result
        return result

    # ------------------------------------------------------------------ per image
    def _score_image(self, entry: Entry, gen: AnalyzedImage, refs: list[AnalyzedImage], gt: AnalyzedImage | None):
        row: dict[str, Any] = {
            "entry": entry.id,
            "image": str(gen.path),
            "face_detected": gen.face is not None,
            "failure": gen.failure or "",
        }
        pose = entry.target.pose
        for axis in ("yaw", "pitch", "roll"):
            row[f"cmd_{axis}"] = pose.get(axis, np.nan)
        if gen.face is None:
            return row
        face = gen.face
        row["det_score"] = float(face.det_score)
        for rec in self.recognizers:
            name, vec = rec.name, gen.identity[rec.name]
            ref_vecs = [r.identity[name] for r in refs if r.face is not None]
            if ref_vecs:
                row[f"id_sim[{name}]"] = float(cosine_similarity(vec, np.stack(ref_vecs)).mean())
            if gt is not None and gt.face is not None:
                row[f"id_sim_gt[{name}]"] = float(cosine_similarity(vec, gt.identity[name])[0, 0])
                if ref_vecs:
                    mean, worst = copy_paste_over_references(vec, gt.identity[name], np.stack(ref_vecs))
                    row[f"copy_paste[{name}]"], row[f"copy_paste_max[{name}]"] = mean, worst
        measured = {"yaw": face.pose.yaw, "pitch": face.pose.pitch, "roll": face.pose.roll}
        row.update(measured)
        if pose:
            err = pose_error(pose, measured)
            row.update({k: err[k] for k in ("yaw_error", "pitch_error", "roll_error") if k in err})
            row["pose_error"] = err["mean_abs_error"]
        if entry.target.blendshapes:
            row["expression_error"] = expression_error(entry.target.blendshapes, face.blendshapes)
        if entry.target.landmarks is not None:
            row["landmark_nme"] = self._landmark_nme(entry, face)
        if self.dlib68 is not None:
            row.update(self._dlib68_columns(gen, pose))
        return row

    def _dlib68_columns(self, gen: AnalyzedImage, pose: dict) -> dict[str, Any]:
        """The independent measurement beside mediapipe's: dlib68 pose (and its error when a pose was commanded),
        the absolute mediapipe-vs-dlib68 difference per axis, the expression ratios and mediapipe's comparable
        blendshape groups."""
        import cv2

        from hifi_portrait.evaluation.dlib68 import blendshape_groups

        if gen.dlib68 is None:
            try:
                gen.dlib68 = self.dlib68.measure(gen.image, np.asarray(gen.face.bbox), np.asarray(gen.face.keypoints))
            except (ValueError, cv2.error) as exc:  # degenerate points: counted, never fatal
                logger.warning("dlib68 failed on %s: %s", gen.path.name, exc)
                gen.dlib68 = str(exc)
        if isinstance(gen.dlib68, str):
            return {"dlib68_failure": gen.dlib68}
        m, face = gen.dlib68, gen.face
        measured = {"yaw": m.yaw, "pitch": m.pitch, "roll": m.roll}
        out: dict[str, Any] = {f"dlib68_{k}": v for k, v in measured.items()}
        out["dlib68_box"] = m.box_source
        out["dlib68_reprojection_px"] = m.reprojection_px
        for axis in AXES:
            out[f"{axis}_mp_vs_dlib68"] = abs(angle_diff(getattr(face.pose, axis), measured[axis]))
        if pose:
            err = pose_error(pose, measured)
            out.update({f"dlib68_{k}": err[k] for k in ("yaw_error", "pitch_error", "roll_error") if k in err})
            out["dlib68_pose_error"] = err["mean_abs_error"]
        out.update(m.ratios)
        out.update({f"bs_{k}": v for k, v in blendshape_groups(face.blendshapes).items()})
        return out

    @staticmethod
    def _landmark_nme(entry: Entry, face) -> float:
        target = entry.target.landmarks.copy()
        if entry.target.landmarks_image_size is not None:
            (tw, th), (w, h) = entry.target.landmarks_image_size, face.image_size
            target[:, 0] *= w / tw
            target[:, 1] *= h / th
        n = len(target)
        if n == 5:
            measured = np.asarray(face.keypoints)
        elif n in (468, 478):
            measured = np.asarray(face.landmarks)[:n]
        else:
            raise ValueError(f"entry {entry.id!r}: target landmarks have {n} points; use 478/468 (mesh) or 5")
        return landmark_nme(measured, target, EYE_INDICES[n])

    # ------------------------------------------------------------------ run
    def evaluate(
        self, manifest: Manifest, generated_dir: str | os.PathLike | None = None, method: str = "method"
    ) -> EvaluationResult:
        """Score the generated images of every manifest entry; see :class:`EvaluationResult`."""
        generated = resolve_generated(manifest, generated_dir)
        notices: list[str] = []
        rows: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        total = sum(len(v) for v in generated.values())
        bar = tqdm(total=total, desc=f"eval {method}", unit="img", disable=not self.progress)
        for entry in manifest.entries:
            refs = [self.analyze(p) for p in entry.references]
            bad_refs = [r for r in refs if r.face is None]
            for r in bad_refs:
                notices.append(f"entry {entry.id}: reference {r.path.name} has no usable face ({r.failure})")
            if len(bad_refs) == len(refs):
                notices.append(f"entry {entry.id}: no usable reference face; identity metrics skipped")
            if entry.target.expression and not entry.target.blendshapes:
                notices.append(
                    f"entry {entry.id}: expression {entry.target.expression!r} commands no blendshape score; "
                    "expression error not scored (give target.blendshapes to score it)"
                )
            gt = self.analyze(entry.ground_truth) if entry.ground_truth else None
            if gt is not None and gt.face is None:
                notices.append(f"entry {entry.id}: ground truth has no usable face; copy-paste skipped")
            entry_rows = []
            for path in generated[entry.id]:
                entry_rows.append(self._score_image(entry, self.analyze(path), refs, gt))
                bar.update(1)
            rows.extend(entry_rows)
            entries.append(self._entry_summary(entry, refs, entry_rows, generated[entry.id]))
        bar.close()
        self._add_clip(manifest, generated, rows, entries, notices)
        self._dlib68_notices(rows, notices)
        summary = self._summarize(rows, entries)
        summary.update(self._fid_kid(generated, notices))
        if not self.recognizers[1:]:
            notices.append(
                "identity: only the offline recognizer "
                f"{self.recognizers[0].name} was used; pass --insightface DIR to also report ArcFace similarity"
            )
        return EvaluationResult(
            method=method,
            manifest=manifest.name,
            rows=rows,
            entries=entries,
            summary=summary,
            notices=notices,
            recognizers=[r.name for r in self.recognizers],
        )

    def _entry_summary(self, entry: Entry, refs: list[AnalyzedImage], rows: list[dict], paths: list[Path]) -> dict:
        out: dict[str, Any] = {
            "entry": entry.id,
            "n_images": len(paths),
            "n_detected": sum(bool(r["face_detected"]) for r in rows),
            "n_references": len(refs),
            "n_references_usable": sum(r.face is not None for r in refs),
        }
        usable = [r for r in refs if r.face is not None]
        for rec in self.recognizers:
            if len(usable) >= 2:
                sims = cosine_similarity(
                    np.stack([r.identity[rec.name] for r in usable]), np.stack([r.identity[rec.name] for r in usable])
                )
                out[f"ref_self_sim[{rec.name}]"] = float(sims[np.triu_indices(len(usable), 1)].mean())
        return out

    def _add_clip(self, manifest, generated, rows, entries, notices) -> None:
        if self.clip is None:
            notices.append("CLIP-T and diversity skipped: no CLIP model given (--clip DIR, transformers CLIP folder)")
            return
        prompts = {e.id: e.prompt for e in manifest.entries}
        by_entry: dict[str, list[int]] = {}
        images, idx = [], []
        for i, row in enumerate(rows):
            analyzed = self._cache.get(Path(row["image"]))
            if analyzed is None or analyzed.image is None:
                continue
            images.append(analyzed.image)
            idx.append(i)
            by_entry.setdefault(row["entry"], []).append(len(images) - 1)
        if not images:
            return
        emb = self.clip.image_embeddings(images)
        texts = [prompts[rows[i]["entry"]] for i in idx]
        if any(texts):
            txt = self.clip.text_embeddings([t or " " for t in texts])
            for j, i in enumerate(idx):
                if texts[j]:
                    rows[i]["clip_t"] = float(np.dot(emb[j], txt[j]))
        else:
            notices.append("CLIP-T skipped: the manifest has no prompts")
        for entry in entries:
            members = by_entry.get(entry["entry"], [])
            if len(members) >= 2:
                entry["diversity_clip"] = mean_pairwise_dissimilarity(emb[members])
        if not any("diversity_clip" in e for e in entries):
            notices.append("diversity skipped: no entry has 2 or more readable generated images")

    def _dlib68_notices(self, rows: list[dict], notices: list[str]) -> None:
        if self._dlib68_notice:
            notices.append(self._dlib68_notice)
            return
        failed = [Path(r["image"]).name for r in rows if "dlib68_failure" in r]
        if failed:
            notices.append(
                f"dlib68: no measurement in {len(failed)} image(s) ({', '.join(failed)}): dlib's 68 points were "
                "degenerate (column dlib68_failure says why); mediapipe's columns are kept"
            )
        fallback = [Path(r["image"]).name for r in rows if r.get("dlib68_box") == "ours"]
        if fallback:
            notices.append(
                f"dlib68: dlib's HOG detector found no face in {len(fallback)} image(s) ({', '.join(fallback)}); "
                "their 68 points were placed in our detector's box instead (column dlib68_box = 'ours')"
            )

    @classmethod
    def _summarize(cls, rows: list[dict], entries: list[dict]) -> dict[str, Any]:
        n = len(rows)
        detected = sum(bool(r["face_detected"]) for r in rows)
        summary: dict[str, Any] = {
            "n_entries": len(entries),
            "n_entries_without_images": sum(e["n_images"] == 0 for e in entries),
            "n_images": n,
            "n_detected": detected,
            "detection_rate": detected / n if n else float("nan"),
        }
        keys = sorted({k for r in rows for k in r if k not in cls._NOT_AVERAGED})
        for key in keys:
            vals = np.array([r[key] for r in rows if key in r and r[key] is not None], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                summary[f"{key}_mean"] = float(vals.mean())
                summary[f"{key}_std"] = float(vals.std())
                summary[f"{key}_n"] = len(vals)
        div = [e["diversity_clip"] for e in entries if "diversity_clip" in e]
        if div:
            summary["diversity_clip_mean"] = float(np.mean(div))
        return summary

    def _fid_kid(self, generated: dict[str, list[Path]], notices: list[str]) -> dict[str, Any]:
        if self.inception is None or self.fid_reference_dir is None:
            missing = "Inception weights (--inception)" if self.inception is None else "real-photo folder (--fid-ref)"
            notices.append(f"FID/KID skipped: no {missing}")
            return {}
        from hifi_portrait.evaluation.inception import inception_features
        from hifi_portrait.face import load_image

        gen_images = [
            a.image
            for p in sorted({p for v in generated.values() for p in v})
            if (a := self.analyze(p)).image is not None
        ]
        real_paths = sorted(p for p in self.fid_reference_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        real_images = []
        for p in real_paths:
            try:
                real_images.append(load_image(p))
            except ImageLoadError as exc:
                logger.warning("FID reference skipped: %s", exc)
        if len(gen_images) < 2 or len(real_images) < 2:
            notices.append(
                f"FID/KID skipped: need 2+ images per set (generated {len(gen_images)}, real {len(real_images)})"
            )
            return {}
        fg = inception_features(self.inception, gen_images)
        fr = inception_features(self.inception, real_images)
        out: dict[str, Any] = {"fid": fid_from_features(fg, fr), "fid_n_generated": len(fg), "fid_n_real": len(fr)}
        out["kid_mean"], out["kid_std"] = kid_from_features(fg, fr, self.kid_subsets, self.kid_subset_size)
        if min(len(fg), len(fr)) < 2048:
            notices.append(
                f"FID with {min(len(fg), len(fr))} images is biased upward (2048-d features; papers use 10k+); "
                "compare FIDs only at equal set sizes, or prefer KID, which is unbiased"
            )
        return out
