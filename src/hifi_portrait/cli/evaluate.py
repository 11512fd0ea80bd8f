"""``hifi-portrait eval``: score folders of generated portraits (ours or any other method's) on one protocol.

Examples::

    hifi-portrait eval bench.yaml --generated ours=out/ours --generated instantid=out/instantid --out eval/
    hifi-portrait eval --references photos/alice --generated out/alice --out eval/alice --prompt "a photo of a woman"

Writes ``<out>/<method>/{results.csv, results.json, report.md, id_similarity.png, pose_error_vs_angle.png}`` and,
with several methods, ``<out>/comparison.{md,csv}`` and overlaid plots. Metrics whose model files were not given
(ArcFace, CLIP, Inception, dlib's 68-point model) are skipped with a notice in the report, never estimated otherwise.
Pose and expression are measured twice: by mediapipe and, independently, by dlib's 68 points + PnP (``dlib68_*``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import typer

from hifi_portrait.cli.common import safe_child, user_errors
from hifi_portrait.errors import ConfigError

logger = logging.getLogger(__name__)


def parse_generated(values: list[str]) -> list[tuple[str, Path]]:
    """``NAME=DIR`` or ``DIR`` (name = folder name) -> ``[(name, dir)]`` with unique, file-safe names."""
    out: list[tuple[str, Path]] = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            name, folder = Path(value).name, value
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
        if not name or not folder:
            raise ConfigError(f"--generated {value!r}: expected NAME=FOLDER or FOLDER")
        if name in (n for n, _ in out):
            raise ConfigError(f"--generated: method name {name!r} is used twice; name them with NAME=FOLDER")
        out.append((name, Path(folder)))
    return out


def evaluate(
    manifest: Path | None = typer.Argument(None, help="Benchmark manifest (.yaml/.json); see docs/evaluation.md."),
    generated: list[str] = typer.Option(
        ..., "--generated", "-g", help="Folder of generated images, as NAME=FOLDER or FOLDER; repeat per method."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created)."),
    references: Path | None = typer.Option(
        None, help="Without a manifest: a folder of reference photos; every generated image is scored against it."
    ),
    prompt: str = typer.Option("", help="Without a manifest: the prompt of the generated images (for CLIP-T)."),
    insightface: Path | None = typer.Option(
        None, help="insightface model folder (antelopev2/buffalo_l): also report ArcFace similarity."
    ),
    clip: Path | None = typer.Option(None, help="Local transformers CLIP folder: CLIP-T and diversity."),
    inception: Path | None = typer.Option(
        None, help="pt_inception-2015-12-05-6726825d.pth (or .safetensors): FID and KID (needs --fid-ref)."
    ),
    fid_ref: Path | None = typer.Option(None, "--fid-ref", help="Folder of real photos for FID/KID."),
    kid_subsets: int = typer.Option(100, help="KID: number of random subsets."),
    kid_subset_size: int = typer.Option(1000, help="KID: subset size (capped by the set sizes)."),
    face_landmarker: Path | None = typer.Option(None, help="A face_landmarker.task file (default: packaged copy)."),
    device: str = typer.Option("cpu", help="torch device of CLIP and Inception."),
    dlib68: bool = typer.Option(
        True,
        "--dlib68/--no-dlib68",
        help="Also measure pose and expression with dlib's 68-point model + PnP (independent of mediapipe; "
        "evaluation only: the model's training data, iBUG 300-W, is licensed for non-commercial research).",
    ),
    dlib68_model: Path | None = typer.Option(
        None, help="shape_predictor_68_face_landmarks.dat (default: the face_recognition_models package's copy)."
    ),
) -> None:
    """Score generated portraits: identity, copy-paste, pose/expression/landmark control, CLIP-T, FID/KID."""
    from hifi_portrait.evaluation import (
        ClipScorer,
        Evaluator,
        load_fid_inception,
        load_manifest,
        manifest_from_folders,
        markdown_table,
        write_comparison,
        write_report,
    )

    with user_errors():
        if (manifest is None) == (references is None):
            raise ConfigError("give either a MANIFEST or --references FOLDER (not both, not neither)")
        methods = parse_generated(generated)
        if inception is not None and fid_ref is None:
            raise ConfigError("--inception needs --fid-ref FOLDER (the real photos FID/KID compare with)")
        bench = load_manifest(manifest) if manifest else manifest_from_folders(references, prompt=prompt)
        from hifi_portrait.evaluation.dlib68 import Dlib68Estimator
        from hifi_portrait.face import FaceAnalyzer, InsightFaceEmbedder, QualityConfig

        if dlib68_model is not None and not dlib68:
            raise ConfigError("--dlib68-model was given with --no-dlib68; drop one of them")
        # an explicitly named model file must exist (exit code 3); the packaged default is skipped with a notice
        independent = Dlib68Estimator(dlib68_model) if dlib68_model is not None else "auto" if dlib68 else None

        analyzer = FaceAnalyzer(quality=QualityConfig(on_unusable="warn"), face_landmarker_path=face_landmarker)
        recognizers = [analyzer.embedder]
        if insightface is not None:
            recognizers.append(InsightFaceEmbedder(insightface))
        evaluator = Evaluator(
            analyzer=analyzer,
            recognizers=recognizers,
            clip=ClipScorer(clip, device=device) if clip else None,
            inception=load_fid_inception(inception, device=device) if inception else None,
            fid_reference_dir=fid_ref,
            kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size,
            dlib68=independent,
        )
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for name, folder in methods:
            typer.echo(f"scoring {name}: {folder}")
            result = evaluator.evaluate(bench, folder, method=name)
            files = write_report(result, safe_child(out, name))
            typer.echo(
                f"  {result.summary['n_detected']}/{result.summary['n_images']} faces detected; "
                f"report: {files['markdown']}"
            )
            results.append(result)
        if len(results) > 1:
            files = write_comparison(results, out)
            typer.echo(f"comparison: {files['markdown']}")
        typer.echo("")
        typer.echo(markdown_table(results))
        for note in sorted({n for r in results for n in r.notices if "skipped" in n}):
            typer.echo(f"note: {note}")
