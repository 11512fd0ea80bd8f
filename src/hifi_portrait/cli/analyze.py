"""``hifi-portrait analyze PHOTO_OR_DIR... --out DIR``: analyse the reference photos of one person.

Writes, under ``--out``:

* ``<photo>/``: ``arcface.png`` (112x112 aligned crop), ``encoder.png`` (larger aligned crop), ``mask.png`` (its
  face/head mask), ``composited.png`` (the crop matted on grey: what the image encoder sees), ``matte.png`` (the
  person matte of the whole photo, with ``--mask selfie-matte``), ``overlay.png`` (landmarks, keypoints and pose
  on the photo), ``analysis.json`` + ``analysis.npz`` (:class:`~hifi_portrait.face.types.FaceAnalysis`, loadable
  with ``FaceAnalysis.load(".../analysis")``);
* ``faceset/``: the reference set (``FaceSet.load``): similarity matrix, outliers, fused identity;
* ``contact_sheet.png``: every usable face with its scores (outliers framed in red);
* ``report.json``: faces, skipped files with reasons, similarity matrix, outliers.

Exit code 1 (with a message) when no usable face remains.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import typer
from PIL import Image

from hifi_portrait.cli.common import safe_child, user_errors
from hifi_portrait.errors import ConfigError, HiFiPortraitError, ImageLoadError, NoUsableReferencesError
from hifi_portrait.utils.files import check_writable_dir, not_a_regular_file, writing_to

logger = logging.getLogger(__name__)


def parse_policy(value: str) -> str | int:
    """``"largest"``, ``"error"`` or a face index (``"0"``, ``"1"``, ...)."""
    value = value.strip().lower()
    if value in ("largest", "error"):
        return value
    if re.fullmatch(r"\d+", value):
        return int(value)
    raise ConfigError(f"--policy must be 'largest', 'error' or a face index such as 0 or 1, not {value!r}")


def _skip(path: Path, reason: str, error: str = "ImageLoadError") -> dict:
    return {"file": str(path), "reason": reason, "error": error}


def collect_inputs(paths: list[Path]) -> tuple[list[Path], list[dict]]:
    """Files to analyse (folders expanded, not recursively, hidden files ignored) and the paths skipped, with why.

    Every entry of a folder is either analysed or listed as skipped: sub-folders, dangling or looping symbolic
    links, FIFOs, sockets and devices are skipped with their reason (none of them is opened, so a FIFO cannot
    block the run); a folder that cannot be listed is skipped too.
    """
    files: list[Path] = []
    skipped: list[dict] = []
    for path in paths:
        if path.is_dir():
            try:
                entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            except OSError as exc:
                skipped.append(_skip(path, f"the folder cannot be listed ({exc.strerror or exc})"))
                continue
            for entry in entries:
                reason = not_a_regular_file(entry)
                if reason is None:
                    files.append(entry)
                elif reason.startswith("a folder"):
                    skipped.append(_skip(entry, "a sub-folder (analyze reads the top level of a folder only)"))
                else:
                    skipped.append(_skip(entry, reason))
            continue
        reason = not_a_regular_file(path)
        if reason is None:
            files.append(path)
        else:
            skipped.append(_skip(path, "no such file or folder" if reason == "no such file" else reason))
    return files, skipped


def output_stem(path: Path, used: set[str]) -> str:
    """A folder name for a photo: its file stem with unsafe characters replaced, made unique."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "photo"
    name, k = stem, 1
    while name in used or name in ("faceset",):
        name = f"{stem}_{k}"
        k += 1
    used.add(name)
    return name


@functools.lru_cache(maxsize=2)
def _analyzer(
    min_face_px: float,
    min_sharpness: float,
    insightface: Path | None,
    face_landmarker: Path | None,
    mask: str = "selfie-matte",
):
    """A FaceAnalyzer for these options, kept so that repeated calls in one process load the models once."""
    from hifi_portrait.face import FaceAnalyzer, QualityConfig, make_matting

    return FaceAnalyzer(
        quality=QualityConfig(min_face_px=min_face_px, min_sharpness=min_sharpness),
        insightface_dir=insightface,
        face_landmarker_path=face_landmarker,
        matting=make_matting(mask),
    )


def write_mask_images(folder: Path, image: np.ndarray, analysis: Any, matting: Any) -> None:
    """``mask.png``, ``composited.png`` (the encoder crop matted on grey, as the image encoder gets it) and, when
    the mask backend has a person matting model, ``matte.png`` (the person matte of the whole photo)."""
    from hifi_portrait.face.matting import composite

    Image.fromarray(analysis.mask).save(folder / "mask.png")
    Image.fromarray(composite(analysis.encoder_crop, analysis.mask)).save(folder / "composited.png")
    person = getattr(matting, "person", None)
    if person is not None:
        Image.fromarray(np.round(person.matte(image) * 255).astype(np.uint8)).save(folder / "matte.png")


def _analyse_files(
    files: list[Path], analyzer, policy: str | int, workers: int, out: Path, skipped: list[dict]
) -> tuple[list, list[Path], dict[str, str]]:
    """Analyse ``files`` a chunk at a time and write each face's folder; unusable files are appended to ``skipped``.

    Returns the analyses, their output folders, and notes by source (a multi-page file: which page was used).
    """
    from tqdm import tqdm

    from hifi_portrait.face import load_image
    from hifi_portrait.face.visualize import landmark_overlay
    from hifi_portrait.utils.image_io import count_frames

    analyses, folders, notes, used = [], [], {}, set()
    chunk = max(1, workers) * 4
    with tqdm(total=len(files), desc="analysing faces", unit="photo") as progress:
        for start in range(0, len(files), chunk):
            loaded = []
            for path in files[start : start + chunk]:
                try:
                    loaded.append((path, load_image(path)))
                except ImageLoadError as exc:
                    logger.warning("skipping %s: %s", path, exc)
                    skipped.append(_skip(path, str(exc), type(exc).__name__))
                    progress.update(1)
                    continue
                pages = count_frames(path)
                if pages > 1:
                    notes[str(path)] = f"{pages} pages or frames: only the first was analysed"
                    logger.warning("%s has %d pages or frames: only the first is analysed", path, pages)
            results = analyzer.analyze_many(
                [image for _, image in loaded], policy=policy, workers=workers, sources=[str(p) for p, _ in loaded]
            )
            for (path, image), result in zip(loaded, results, strict=True):
                progress.update(1)
                if isinstance(result, HiFiPortraitError):
                    logger.warning("skipping %s: %s", path, result)
                    skipped.append(_skip(path, str(result), type(result).__name__))
                    continue
                folder = safe_child(out, output_stem(path, used))
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(result.arcface_crop).save(folder / "arcface.png")
                Image.fromarray(result.encoder_crop).save(folder / "encoder.png")
                write_mask_images(folder, image, result, analyzer.matting)
                landmark_overlay(image, result).save(folder / "overlay.png")
                result.save(folder / "analysis")
                analyses.append(result)
                folders.append(folder)
    return analyses, folders, notes


def analyze(
    photos: list[Path] = typer.Argument(..., help="Photos and/or folders of photos of one person."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created)."),
    policy: str = typer.Option("largest", help="Which face when a photo has several: largest, error, or an index."),
    drop_outliers: bool = typer.Option(
        False, "--drop-outliers", help="Leave out faces that look like another person."
    ),
    insightface: Path | None = typer.Option(
        None, help="insightface model folder (antelopev2 / buffalo_l) to use ArcFace instead of dlib."
    ),
    face_landmarker: Path | None = typer.Option(None, help="A face_landmarker.task file (default: packaged copy)."),
    min_face_px: float = typer.Option(40.0, help="Smallest usable face (sqrt of box area, pixels)."),
    min_sharpness: float = typer.Option(20.0, help="Smallest usable Laplacian variance of the 112 px face crop."),
    workers: int = typer.Option(min(2, os.cpu_count() or 1), help="Photos analysed in parallel (threads)."),
    mask: str = typer.Option(
        "selfie-matte",
        help="Face mask: selfie-matte (person matte inside the head region: face and hair) or landmark-hull "
        "(hull of the face mesh, no hair).",
    ),
) -> Any:
    """Analyse reference photos: crops, masks, landmarks, pose, identity, quality, set consistency.

    Returns the kept :class:`~hifi_portrait.face.FaceSet` (without the outliers when ``--drop-outliers``) for callers
    in Python; annotated ``Any`` because typer evaluates annotations at start-up.
    """
    from hifi_portrait.face import FaceSet
    from hifi_portrait.face.visualize import contact_sheet

    with user_errors():
        face_policy = parse_policy(policy)
        check_writable_dir(out)
        files, skipped = collect_inputs(list(photos))
        analyzer = _analyzer(min_face_px, min_sharpness, insightface, face_landmarker, mask)
        with writing_to(out):
            analyses, folders, notes = _analyse_files(files, analyzer, face_policy, workers, out, skipped)
        kept = None
        report: dict = {"inputs": [str(p) for p in photos], "policy": face_policy, "faces": [], "skipped": skipped}
        if analyses:
            fset = FaceSet.from_analyses(analyses)
            kept = fset
            if drop_outliers and fset.outliers:
                try:
                    kept = fset.without_outliers()
                except NoUsableReferencesError:
                    kept = None
            to_fused = [float(a.identity @ (kept or fset).fused_identity) for a in analyses]
            for i, (analysis, folder) in enumerate(zip(analyses, folders, strict=True)):
                report["faces"].append(
                    {
                        "source": analysis.source,
                        "folder": folder.name,
                        "face_index": analysis.face_index,
                        "bbox": [round(float(v), 2) for v in analysis.bbox],
                        "det_score": round(analysis.det_score, 4),
                        "pose": {k: round(v, 2) for k, v in analysis.pose.__dict__.items()},
                        "quality": {
                            k: (round(v, 4) if isinstance(v, float) else v)
                            for k, v in analysis.quality.__dict__.items()
                        },
                        "similarity_to_fused": round(to_fused[i], 4),
                        "outlier": i in fset.outliers,
                        "dropped": drop_outliers and i in fset.outliers,
                    }
                    | ({"note": notes[analysis.source]} if analysis.source in notes else {})
                )
            report |= {
                "identity_model": fset.identity_model,
                "same_person_threshold": fset.threshold,
                "similarity": np.round(fset.similarity.astype(np.float64), 4).tolist(),
                "outliers": [analyses[i].source for i in fset.outliers],
                "dropped": [analyses[i].source for i in fset.outliers] if drop_outliers else [],
                "mask_method": analyses[0].mask_method,
                "faceset": "faceset",
            }
            with writing_to(out):
                if kept is not None:
                    kept.save(out / "faceset")
                labels = [Path(a.source).name for a in analyses]
                contact_sheet(analyses, labels, to_fused, fset.outliers).save(out / "contact_sheet.png")
        with writing_to(out):
            (out / "report.json").write_text(json.dumps(report, indent=2))

        if not analyses or kept is None:
            reasons = "; ".join(f"{Path(s['file']).name}: {s['error']}" for s in skipped[:5]) or "no input files"
            if analyses:
                reasons = "every face was flagged as an outlier"
            raise NoUsableReferencesError(
                f"no usable face among {len(files)} file(s) ({reasons}); see {out / 'report.json'} and give clear "
                "photos with one visible face of the same person."
            )
        typer.echo(
            f"{len(analyses)} face(s) analysed, {len(skipped)} file(s) skipped, "
            f"{len(fset.outliers)} outlier(s){' dropped' if drop_outliers and fset.outliers else ''}; "
            f"results in {out} (report.json, contact_sheet.png)"
        )
        return kept
