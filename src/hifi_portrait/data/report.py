"""Statistics report (JSON) and plots (PNG) of a built dataset."""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from hifi_portrait.data.writer import atomic_write

logger = logging.getLogger(__name__)


def _describe(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [5, 25, 50, 75, 95])
    return {
        "mean": round(float(np.mean(values)), 4),
        "std": round(float(np.std(values)), 4),
        "min": round(float(np.min(values)), 4),
        "p05": round(float(q[0]), 4),
        "p25": round(float(q[1]), 4),
        "median": round(float(q[2]), 4),
        "p75": round(float(q[3]), 4),
        "p95": round(float(q[4]), 4),
        "max": round(float(np.max(values)), 4),
    }


def build_stats(
    n_inputs: int,
    failures: list[dict[str, Any]],
    kept: list[dict[str, Any]],
    pose: np.ndarray,
    quality: np.ndarray,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The JSON statistics report: counts, failures by stage, identities, pose and quality distributions.

    Args:
        n_inputs: number of input images.
        failures: one record per input image that is not in the dataset (``stage`` and ``reason``).
        kept: one metadata dict per output sample (``identity`` and ``role`` used).
        pose: ``(M, 3)`` yaw, pitch, roll in degrees of the kept samples.
        quality: ``(M,)`` quality totals of the kept samples.
        extra: more fields to include (identity model, thresholds, ...).
    """
    per_identity = Counter(m["identity"] for m in kept)
    sizes = np.array(sorted(per_identity.values()), dtype=np.float64)
    roles = Counter(m["role"] for m in kept)
    stats = {
        "inputs": n_inputs,
        "samples": len(kept),
        "identities": len(per_identity),
        "excluded": len(failures),
        "excluded_by_stage": dict(sorted(Counter(f["stage"] for f in failures).items())),
        "roles": dict(sorted(roles.items())),
        "images_per_identity": _describe(sizes),
        "images_per_identity_histogram": {str(k): v for k, v in sorted(Counter(sizes.astype(int).tolist()).items())},
        "pose_degrees": {name: _describe(pose[:, i]) for i, name in enumerate(("yaw", "pitch", "roll"))}
        if len(pose)
        else {},
        "quality": _describe(quality),
    }
    stats.update(extra)
    return stats


def uncertain_identities(tightness: dict[str, dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Identities a user should look at, most doubtful first: loose ones, and ones close to another identity.

    ``tightness``: per identity name, :func:`hifi_portrait.data.cluster.identity_tightness`'s record (``nearest``
    as a name). An identity is *loose* when the mean cosine over its pairs of images is below ``threshold`` (the
    clustering threshold) or one image's mean cosine to the others is below ``threshold - (1 - threshold)``; it is
    *close to* another when the mean cosine over their cross pairs reaches ``threshold - (1 - threshold) / 4``
    (the same or very similar looking people, possibly one person split in two).
    """
    loose_member = threshold - (1.0 - threshold)
    near = threshold - (1.0 - threshold) / 4
    out = []
    for name, t in sorted(tightness.items()):
        reasons = []
        if t["images"] > 1 and t["mean_similarity"] < threshold:
            reasons.append(f"mean similarity of its images {t['mean_similarity']:.3f} < {threshold:.3f}")
        if t["images"] > 1 and t["min_member_similarity"] < loose_member:
            reasons.append(f"one image has mean similarity {t['min_member_similarity']:.3f} < {loose_member:.3f}")
        if t["nearest"] is not None and t["nearest_similarity"] >= near:
            reasons.append(f"close to {t['nearest']} (mean similarity {t['nearest_similarity']:.3f} >= {near:.3f})")
        if reasons:
            margin = min(t["mean_similarity"] - threshold, near - (t["nearest_similarity"] or -1.0))
            out.append({"identity": name, "reasons": reasons, **t, "_margin": margin})
    out.sort(key=lambda r: (r["_margin"], r["identity"]))
    return [{k: v for k, v in r.items() if k != "_margin"} for r in out]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def write_plots(
    out_dir: Path,
    kept: list[dict[str, Any]],
    pose: np.ndarray,
    quality_all: np.ndarray,
    quality_kept: np.ndarray,
) -> list[Path]:
    """Write ``images_per_identity.png``, ``pose_distribution.png``, ``quality_histogram.png`` (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = []
    sizes = sorted(Counter(m["identity"] for m in kept).values())
    fig, ax = plt.subplots(figsize=(6, 4))
    if sizes:
        ax.hist(sizes, bins=np.arange(min(sizes), max(sizes) + 2) - 0.5, color="tab:blue")
    ax.set_xlabel("images per identity")
    ax.set_ylabel("identities")
    ax.set_title(f"{len(sizes)} identities, {len(kept)} images")
    paths.append(out_dir / "images_per_identity.png")
    atomic_write(paths[-1], _png(fig))
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for i, name in enumerate(("yaw", "pitch", "roll")):
        if len(pose):
            axes[i].hist(pose[:, i], bins=np.arange(-90, 91, 5), color="tab:green")
        axes[i].set_xlabel(f"{name} (degrees)")
    axes[0].set_ylabel("images")
    fig.suptitle("head pose of the kept images")
    fig.tight_layout()
    paths.append(out_dir / "pose_distribution.png")
    atomic_write(paths[-1], _png(fig))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    if len(quality_all):
        ax.hist(quality_all, bins=bins, color="tab:gray", alpha=0.6, label="all analysed faces")
    if len(quality_kept):
        ax.hist(quality_kept, bins=bins, color="tab:orange", alpha=0.8, label="kept")
    ax.set_xlabel("face quality (0..1)")
    ax.set_ylabel("images")
    ax.legend()
    paths.append(out_dir / "quality_histogram.png")
    atomic_write(paths[-1], _png(fig))
    plt.close(fig)
    return paths
