"""Benchmark of the landmark generator: time per target (generation + rendering) and round-trip accuracy.

Usage::

    python benchmarks/landmarks.py [--size 1024x1024] [--repeats 200] [--markdown benchmarks/results/landmarks.md]

Times (CPU only, after a warm-up) are medians over ``--repeats`` targets with varying pose and expression, both
wall-clock and process CPU time (the latter is robust to other jobs sharing the machine). Accuracy: leave-one-out
round trip on the bundled photos of one person (fit the shape on the others, command the held-out photo's
measured pose and expression, compare with its detected landmarks; mean error over the 468 mesh points /
inter-ocular distance, after fitting scale and translation).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _faces(names):
    from hifi_portrait.face import FaceAnalyzer

    analyzer = FaceAnalyzer()
    return {n: analyzer.analyze(DATA / n) for n in names}


def _nme(pred: np.ndarray, truth: np.ndarray) -> float:
    from hifi_portrait.landmarks import mesh as M

    iod = np.linalg.norm(truth[M.RIGHT_IRIS_CENTER, :2] - truth[M.LEFT_IRIS_CENTER, :2])
    a, b = pred[: M.NUM_MESH, :2], truth[: M.NUM_MESH, :2]
    a0, b0 = a - a.mean(0), b - b.mean(0)
    s = (a0 * b0).sum() / (a0 * a0).sum()
    return float(np.linalg.norm(s * a0 + b.mean(0) - b, axis=1).mean() / iod)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--markdown", type=Path, default=None, help="Write the results table to this file.")
    parser.add_argument("--quick", action="store_true", help="seconds: smallest sizes, one round (CI checks it runs)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = "256x256", 5
    width, height = (int(v) for v in args.size.split("x"))

    import cv2

    from hifi_portrait.landmarks import (
        PRESETS,
        STYLES,
        IdentityShape,
        fit_identity_shape,
        generate_landmarks,
        make_target,
        render_map,
    )

    names = ("obama.jpg", "obama2.jpg", "obama3.jpg")
    faces = _faces(names)
    t0 = time.perf_counter()
    shape = fit_identity_shape([faces[n] for n in names])
    fit_ms = (time.perf_counter() - t0) * 1000
    _ = shape.basis
    rng = np.random.default_rng(0)
    presets = list(PRESETS)
    targets = [
        make_target(yaw=float(y), pitch=float(p), roll=float(r), expression=f"{presets[i % len(presets)]}:{k:.2f}")
        for i, (y, p, r, k) in enumerate(
            zip(
                rng.uniform(-60, 60, args.repeats),
                rng.uniform(-30, 30, args.repeats),
                rng.uniform(-30, 30, args.repeats),
                rng.uniform(0, 1, args.repeats),
                strict=True,
            )
        )
    ]
    for style in STYLES:  # warm-up (mediapipe connection tables, OpenCV)
        render_map(generate_landmarks(shape, targets[0], size=(width, height)), style)

    def timed(fn) -> tuple[float, float]:
        """Median wall-clock and CPU (process) milliseconds per target."""
        wall, cpu = [], []
        for t in targets:
            w0, c0 = time.perf_counter(), time.process_time()
            fn(t)
            wall.append((time.perf_counter() - w0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        return statistics.median(wall), statistics.median(cpu), float(np.percentile(cpu, 10))

    size = (width, height)
    rows = [
        ("generation only (pose-calibrated)", *timed(lambda t: generate_landmarks(shape, t, size=size))),
        (
            "generation only (no pose calibration)",
            *timed(lambda t: generate_landmarks(shape, t, size=size, calibrate_pose=False)),
        ),
    ]
    for style in STYLES:

        def run(t, style=style):
            return render_map(generate_landmarks(shape, t, size=size), style)

        rows.append((f"generation + render `{style}`", *timed(run)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    accuracy = []
    for held in names:
        refs = [n for n in names if n != held]
        fitted = fit_identity_shape([faces[n] for n in refs])
        target = make_target(driver=faces[held])
        size = faces[held].image_size
        ours = _nme(generate_landmarks(fitted, target, size=size).landmarks, faces[held].landmarks)
        canon = _nme(generate_landmarks(IdentityShape.canonical(), target, size=size).landmarks, faces[held].landmarks)
        copy = min(_nme(faces[n].landmarks, faces[held].landmarks) for n in refs)
        no_expr = make_target(yaw=target.yaw, pitch=target.pitch, roll=target.roll)
        ours_no_expr = _nme(generate_landmarks(fitted, no_expr, size=size).landmarks, faces[held].landmarks)
        accuracy.append((held, ours, ours_no_expr, canon, copy))

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Landmark generator benchmark",
        "",
        f"- date: {stamp}",
        f"- machine: {_cpu_name()}, {os.cpu_count()} logical CPUs, no GPU used; load average {load:.1f} during the "
        "run (the machine is shared: wall-clock times are inflated when the load exceeds the CPU count, CPU times "
        "much less)",
        f"- python {platform.python_version()}, numpy {np.__version__}, OpenCV {cv2.__version__}",
        f"- canvas {width}x{height}; median over {args.repeats} targets (random pose in the tested range, random "
        "preset and intensity); identity shape fitted from 3 photos in "
        f"{fit_ms:.1f} ms",
        "- command: `python benchmarks/landmarks.py --markdown benchmarks/results/landmarks.md`",
        "",
        "| step | median wall ms per target | median CPU ms per target | 10th percentile CPU ms |",
        "|---|---|---|---|",
        *[f"| {name} | {wall:.2f} | {cpu:.2f} | {p10:.2f} |" for name, wall, cpu, p10 in rows],
        "",
        "Round trip (leave one photo out; NME = mean 2D error of the 468 mesh points / inter-ocular distance):",
        "",
        "| held-out photo | ours (fitted identity) | ours, pose only (neutral expression) | canonical mean face "
        "| best copy of a reference's landmarks |",
        "|---|---|---|---|---|",
        *[f"| {h} | {o:.4f} | {on:.4f} | {c:.4f} | {cp:.4f} |" for h, o, on, c, cp in accuracy],
        "| mean | " + " | ".join(f"{np.mean([a[k] for a in accuracy]):.4f}" for k in range(1, 5)) + " |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
