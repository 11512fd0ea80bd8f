"""Write an :class:`~hifi_portrait.evaluation.runner.EvaluationResult` as CSV, JSON, Markdown and plots."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hifi_portrait.evaluation.runner import EvaluationResult

logger = logging.getLogger(__name__)

#: (summary key, column title, format) of the Markdown tables; a column appears when some result has it.
_COLUMNS = [
    ("n_images", "images", "{:.0f}"),
    ("detection_rate", "face det. rate", "{:.3f}"),
    ("id_sim[{rec}]_mean", "ID sim ({rec}) ↑", "{:.3f}"),
    ("id_sim_gt[{rec}]_mean", "sim GT ({rec}) ↑", "{:.3f}"),
    ("copy_paste[{rec}]_mean", "copy-paste ({rec}) ↓", "{:+.3f}"),
    ("pose_error_mean", "pose err ° ↓", "{:.2f}"),
    ("yaw_error_mean", "yaw err ° ↓", "{:.2f}"),
    ("pitch_error_mean", "pitch err ° ↓", "{:.2f}"),
    ("roll_error_mean", "roll err ° ↓", "{:.2f}"),
    ("dlib68_pose_error_mean", "pose err dlib68 ° ↓", "{:.2f}"),
    ("dlib68_yaw_error_mean", "yaw err dlib68 ° ↓", "{:.2f}"),
    ("yaw_mp_vs_dlib68_mean", "yaw mp vs dlib68 °", "{:.2f}"),
    ("expression_error_mean", "expr. err ↓", "{:.3f}"),
    ("landmark_nme_mean", "landmark NME ↓", "{:.4f}"),
    ("clip_t_mean", "CLIP-T ↑", "{:.4f}"),
    ("diversity_clip_mean", "diversity (1-CLIP-I) ↑", "{:.4f}"),
    ("fid", "FID ↓", "{:.2f}"),
    ("kid_mean", "KID ↓", "{:.5f}"),
]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _columns(results: Sequence[EvaluationResult]) -> list[tuple[str, str, str]]:
    recs: list[str] = []
    for r in results:
        recs += [x for x in r.recognizers if x not in recs]
    cols = []
    for key, title, fmt in _COLUMNS:
        for rec in recs if "{rec}" in key else [None]:
            k = key.format(rec=rec) if rec else key
            if any(k in r.summary for r in results):
                cols.append((k, title.format(rec=rec) if rec else title, fmt))
    return cols


def markdown_table(results: Sequence[EvaluationResult]) -> str:
    """One row per method with every metric some method has (``-`` where skipped)."""
    cols = _columns(results)
    lines = ["| method | " + " | ".join(t for _, t, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in results:
        cells = []
        for key, _, fmt in cols:
            v = r.summary.get(key)
            cells.append("-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v))
        lines.append(f"| {r.method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: (row key, column title, format) of the per-image control table: mediapipe and dlib68 side by side.
_CONTROL_COLUMNS = [
    ("cmd_yaw", "cmd yaw", "{:.1f}"),
    ("yaw", "yaw mp", "{:.1f}"),
    ("dlib68_yaw", "yaw dlib68", "{:.1f}"),
    ("cmd_pitch", "cmd pitch", "{:.1f}"),
    ("pitch", "pitch mp", "{:.1f}"),
    ("dlib68_pitch", "pitch dlib68", "{:.1f}"),
    ("cmd_roll", "cmd roll", "{:.1f}"),
    ("roll", "roll mp", "{:.1f}"),
    ("dlib68_roll", "roll dlib68", "{:.1f}"),
    ("dlib68_box", "dlib68 box", "{}"),
    ("mouth_open", "mouth open", "{:.3f}"),
    ("bs_jawOpen", "jawOpen", "{:.2f}"),
    ("eye_open", "eye open (EAR)", "{:.3f}"),
    ("bs_eyeBlink", "eyeBlink", "{:.2f}"),
    ("mouth_corner_lift", "corner lift", "{:+.3f}"),
    ("bs_mouthSmile", "mouthSmile", "{:.2f}"),
    ("brow_raise", "brow raise", "{:.3f}"),
    ("bs_browInnerUp", "browInnerUp", "{:.2f}"),
]


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def control_table(result: EvaluationResult) -> str:
    """Per-image Markdown table of the control measurements: commanded, mediapipe and dlib68 pose side by side,
    then each dlib68 expression ratio beside mediapipe's comparable blendshape score ("" when nothing to show)."""
    rows = [r for r in result.rows if "dlib68_yaw" in r or "yaw" in r]
    if not rows:
        return ""
    cols = [c for c in _CONTROL_COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| image | " + " | ".join(t for _, t, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        cells = [_fmt(r.get(k), fmt) for k, _, fmt in cols]
        lines.append(f"| {Path(r['image']).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(result: EvaluationResult) -> str:
    parts = [f"# Evaluation of `{result.method}` on `{result.manifest}`\n", markdown_table([result])]
    parts.append(
        "\nIdentity and control: means over generated images with a detected face; `face det. rate` over all "
        "images; CLIP-T, diversity, FID/KID: every readable image.\n"
    )
    if result.entries:
        keys = [k for k in result.entries[0] if k != "entry"]
        extra = sorted({k for e in result.entries for k in e} - set(keys) - {"entry"})
        keys += extra
        parts.append("\n## Per entry\n\n| entry | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 1) + "|\n")
        for e in result.entries:
            cells = [f"{e[k]:.3f}" if isinstance(e.get(k), float) else str(e.get(k, "-")) for k in keys]
            parts.append(f"| {e['entry']} | " + " | ".join(cells) + " |\n")
    control = control_table(result)
    if control:
        parts.append(
            "\n## Control per image: mediapipe (mp) and the independent dlib68 measurement\n\n"
            "Angles in degrees; the expression ratios of dlib's 68 points (docs/evaluation.md) beside mediapipe's "
            "comparable blendshape scores: related, not equal (compare them as correlations).\n\n" + control
        )
    if result.notices:
        parts.append("\n## Notices\n\n" + "".join(f"- {n}\n" for n in result.notices))
    return "".join(parts)


def _plot_id_similarity(results: Sequence[EvaluationResult], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for r in results:
        for rec in r.recognizers:
            vals = [row[f"id_sim[{rec}]"] for row in r.rows if f"id_sim[{rec}]" in row]
            if vals:
                series.append((f"{r.method} ({rec})", vals))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    lo = min(min(v) for _, v in series)
    bins = np.linspace(min(lo, 0.0), 1.0, 41)
    for label, vals in series:
        ax.hist(vals, bins=bins, alpha=0.5, label=f"{label}, n={len(vals)}")
    ax.set_xlabel("cosine similarity to references")
    ax.set_ylabel("generated images")
    ax.set_title("Identity similarity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_pose_error(results: Sequence[EvaluationResult], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_with_data = [
        a for a in ("yaw", "pitch", "roll") if any(f"{a}_error" in row for r in results for row in r.rows)
    ]
    if not axes_with_data:
        return False
    fig, axs = plt.subplots(1, len(axes_with_data), figsize=(4 * len(axes_with_data), 3.5), squeeze=False)
    for ax, axis in zip(axs[0], axes_with_data, strict=True):
        for r in results:
            for prefix, marker, suffix in (("", "o", ""), ("dlib68_", "x", " (dlib68)")):
                key = f"{prefix}{axis}_error"
                pts = [(row[f"cmd_{axis}"], row[key]) for row in r.rows if key in row]
                if pts:
                    x, y = zip(*pts, strict=True)
                    ax.scatter(x, y, s=14, alpha=0.7, marker=marker, label=f"{r.method}{suffix}")
        ax.set_xlabel(f"commanded {axis} (°)")
        ax.set_ylabel(f"|{axis} error| (°)")
        ax.grid(alpha=0.3)
    axs[0][0].legend(fontsize=7)
    fig.suptitle("Pose error vs commanded angle (o: mediapipe, x: dlib68)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.csv`` (one row per image), ``results.json`` (everything), ``report.md`` and the plots
    ``id_similarity.png`` / ``pose_error_vs_angle.png`` (when there is data for them) into ``out_dir``.

    Returns:
        name -> path of every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    fields: list[str] = []
    for row in result.rows:
        fields += [k for k in row if k not in fields]
    files["csv"] = out / "results.csv"
    with files["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields or ["entry", "image"])
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    files["json"] = out / "results.json"
    files["json"].write_text(json.dumps(_jsonable(asdict(result)), indent=2, allow_nan=False), encoding="utf-8")
    files["markdown"] = out / "report.md"
    files["markdown"].write_text(_markdown(result), encoding="utf-8")
    if _plot_id_similarity([result], out / "id_similarity.png"):
        files["id_plot"] = out / "id_similarity.png"
    if _plot_pose_error([result], out / "pose_error_vs_angle.png"):
        files["pose_plot"] = out / "pose_error_vs_angle.png"
    logger.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return files


def write_comparison(results: Sequence[EvaluationResult], out_dir: str | os.PathLike) -> dict[str, Path]:
    """``comparison.md`` (one row per method), ``comparison.csv`` and the two plots with every method overlaid."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "comparison.md", "csv": out / "comparison.csv"}
    notices = "".join(f"- **{r.method}**: {n}\n" for r in results for n in r.notices)
    files["markdown"].write_text(
        f"# Comparison on `{results[0].manifest}`\n\n"
        + markdown_table(results)
        + ("\n## Notices\n\n" + notices if notices else ""),
        encoding="utf-8",
    )
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.summary if k not in keys]
    with files["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", *keys])
        for r in results:
            writer.writerow([r.method, *[r.summary.get(k, "") for k in keys]])
    if _plot_id_similarity(results, out / "comparison_id_similarity.png"):
        files["id_plot"] = out / "comparison_id_similarity.png"
    if _plot_pose_error(results, out / "comparison_pose_error_vs_angle.png"):
        files["pose_plot"] = out / "comparison_pose_error_vs_angle.png"
    return files
