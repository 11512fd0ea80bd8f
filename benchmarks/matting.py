"""Face masks side by side: the selfie-segmentation head mask (default) vs the landmark hull, on the bundled photos.

Usage::

    python benchmarks/matting.py [--rounds 20] [--markdown benchmarks/results/matting.md]
    python benchmarks/matting.py --quick   # seconds: 2 photos, 2 rounds, nothing written (CI)

For each photo with a hand-drawn hair region (``tests/data/hair_regions.json``, drawn by hand, not by a model) the
faces are analysed once; then, on one core (LiteRT 1 thread, OpenCV 1 thread), per photo:

* time of ``SelfieHeadMatting.mask`` on the 512 px encoder crop (model + head region + edge refinement), of the
  model call alone, of the mask without refinement, and of ``LandmarkHullMatting.mask``; thread CPU time and
  wall time, median over ``--rounds``;
* the fraction of the hand-drawn hair inside each mask (``>= 128``, mask pasted back into photo pixels);
* IoU of the head mask of the mirrored photo (mirrored back) with the photo's own;
* what edge refinement buys: the mean image-gradient magnitude (Sobel, grey crop) under the mask's edges, weighted
  by the mask's own gradient, refined / unrefined (> 1: the refined edge sits on the photo's edges). The guided
  filter is built to follow the grey image's edges, so this checks that it does, not that the matte is "right".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from face_analysis import _cpu_name

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def _median_times(fn, rounds: int) -> tuple[float, float, float]:
    """(thread CPU ms, wall ms) medians and the fastest CPU ms over ``rounds`` calls after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3, min(cpu) * 1e3


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a >= 128, b >= 128
    return float((a & b).sum() / max((a | b).sum(), 1))


def _edge_strength(crop: np.ndarray, mask: np.ndarray) -> float:
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    image_edges = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    m = mask.astype(np.float32)
    mask_edges = np.hypot(cv2.Sobel(m, cv2.CV_32F, 1, 0), cv2.Sobel(m, cv2.CV_32F, 0, 1))
    return float((image_edges * mask_edges).sum() / max(mask_edges.sum(), 1e-6))


def measure(rounds: int, limit: int | None = None) -> list[dict]:
    from hifi_portrait.face import FaceAnalyzer, LandmarkHullMatting, PersonMatting, SelfieHeadMatting, load_image
    from hifi_portrait.face.alignment import transform_points
    from hifi_portrait.face.matting import mask_to_photo

    cv2.setNumThreads(1)
    analyzer = FaceAnalyzer()
    head, plain, hull = analyzer.matting, SelfieHeadMatting(PersonMatting(refine=False)), LandmarkHullMatting()
    rows = []
    polygons = list(json.loads((DATA / "hair_regions.json").read_text())["polygons"].items())
    for name, polygon in polygons[:limit]:
        image = load_image(DATA / name)
        fa = analyzer.analyze(image)
        crop, lm = fa.encoder_crop, transform_points(fa.landmarks, fa.encoder_affine)
        canvas = head.person.letterbox(crop)[0]
        hair = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(hair, [np.array(polygon, np.int32)], 1)
        mirrored = analyzer.analyze(np.ascontiguousarray(image[:, ::-1]))

        def photo(mask, a=fa):
            return mask_to_photo(mask, a.encoder_affine, a.image_size)

        rows.append(
            {
                "photo": name,
                "head": _median_times(partial(head.mask, crop, lm), rounds),
                "model": _median_times(partial(head.person._model, canvas[None]), rounds),
                "unrefined": _median_times(partial(plain.mask, crop, lm), rounds),
                "hull": _median_times(partial(hull.mask, crop, lm), rounds),
                "hair_head": float((photo(fa.mask)[hair > 0] >= 128).mean()),
                "hair_hull": float((photo(hull.mask(crop, lm))[hair > 0] >= 128).mean()),
                "mirror_iou": _iou(photo(fa.mask), photo(mirrored.mask, mirrored)[:, ::-1]),
                "edge_gain": _edge_strength(crop, fa.mask) / _edge_strength(crop, plain.mask(crop, lm)),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| photo | head mask ms (CPU / wall) | model alone | head mask, no refinement | hull | hair in head mask "
        "| hair in hull | mirror IoU | edge strength refined / unrefined |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = {k: f"{r[k][0]:.1f} / {r[k][1]:.1f}" for k in ("head", "model", "unrefined", "hull")}
        lines.append(
            f"| {r['photo']} | {t['head']} | {t['model']} | {t['unrefined']} | {t['hull']} | {r['hair_head']:.3f} "
            f"| {r['hair_hull']:.3f} | {r['mirror_iou']:.3f} | {r['edge_gain']:.2f} |"
        )
    med = {k: statistics.median(r[k][0] for r in rows) for k in ("head", "model", "unrefined", "hull")}
    lines.append(
        f"| **median** | **{med['head']:.1f}** CPU | {med['model']:.1f} | {med['unrefined']:.1f} | {med['hull']:.2f} "
        f"| min {min(r['hair_head'] for r in rows):.3f} | max {max(r['hair_hull'] for r in rows):.3f} "
        f"| min {min(r['mirror_iou'] for r in rows):.3f} | min {min(r['edge_gain'] for r in rows):.2f} |"
    )
    fastest = {k: statistics.median(r[k][2] for r in rows) for k in ("head", "model", "unrefined", "hull")}
    lines.append(
        f"| fastest call (median over photos) | **{fastest['head']:.1f}** CPU | {fastest['model']:.1f} "
        f"| {fastest['unrefined']:.1f} | {fastest['hull']:.2f} | | | | |"
    )
    lines.append("")
    lines.append(
        "Median times include other jobs' contention for the 2 shared cores (wall time well above CPU time shows "
        "it); the fastest call is the closest to an idle core."
    )
    lines.append(
        f"Head mask / hull time: {med['head'] / med['hull']:.0f}x; the model is {med['model'] / med['head']:.0%} of "
        "the head mask's time."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the result here")
    parser.add_argument("--quick", action="store_true", help="seconds: 2 photos, 2 rounds (CI checks it runs)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.markdown = 2, None
    rows = measure(args.rounds, limit=2 if args.quick else None)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    text = "\n".join(
        [
            "# Face masks: selfie-segmentation head mask vs landmark hull",
            "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {_cpu_name()}, {os.cpu_count()} CPU cores visible (shared with other jobs), no GPU; "
            f"Python {platform.python_version()}; one thread (LiteRT and OpenCV)",
            f"- load average when it ran: {' '.join(load)}",
            f"- command: `python benchmarks/matting.py --rounds {args.rounds} "
            "--markdown benchmarks/results/matting.md`",
            "",
            table(rows),
            "",
        ]
    )
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
