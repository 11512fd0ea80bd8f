"""Throughput of face analysis: our default pipeline vs face_recognition's HOG + encoding pipeline, same images.

Usage::

    python benchmarks/face_analysis.py [--rounds 5] [--markdown benchmarks/results/face_analysis.md]
    python benchmarks/face_analysis.py --quick   # seconds: 2 photos at 256 px, one round (CI)

Images: the bundled single-person photos resized so that their longer side is 512 px (one face each). Both
pipelines load their models once and are warmed up on every image before timing; then ``--rounds`` passes over
the images are timed. Reported: faces per second (wall clock and process CPU time), per-stage medians of our
pipeline, and the ratio ours / face_recognition.

* ours: ``FaceAnalyzer().analyze(image)``: RetinaFace detection, the orientation check (the face crop detected in
  its 4 quarter turns), mediapipe FaceLandmarker (478 landmarks, blendshapes, pose) on the face crop, dlib ResNet
  identity (PyTorch port), ArcFace 112 and 512 px aligned crops, landmark mask, quality score. Much more output per
  face than the baseline. Also timed without the orientation check (``check_orientation=False``).
* face_recognition: ``face_locations(image, model="hog")`` + ``face_encodings(image, locations)`` (dlib HOG
  detector, 5-point shape predictor, dlib ResNet in dlib): detection + identity only.
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
PHOTOS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg", "astronaut.jpg"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _images(side: int) -> list[np.ndarray]:
    from PIL import Image

    from hifi_portrait.face import load_image

    out = []
    for name in PHOTOS:
        img = Image.fromarray(load_image(DATA / name))
        scale = side / max(img.size)
        out.append(np.asarray(img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)))
    return out


def _time(fn, images: list[np.ndarray], rounds: int) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, faces) for ``rounds`` passes of ``fn`` over ``images``."""
    faces = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        for img in images:
            faces += fn(img)
    return time.perf_counter() - wall, time.process_time() - cpu, faces


def bench_ours(images, rounds):
    from hifi_portrait.face import FaceAnalyzer

    analyzer = FaceAnalyzer()
    for img in images:  # warm-up: loads every model
        analyzer.analyze(img)
    result = _time(lambda im: int(analyzer.analyze(im) is not None), images, rounds)
    list(analyzer.analyze_many(images, workers=2))  # warm the second worker's models
    wall, cpu = time.perf_counter(), time.process_time()
    faces = 0
    for _ in range(rounds):
        faces += sum(1 for r in analyzer.analyze_many(images, workers=2) if not isinstance(r, Exception))
    parallel = (time.perf_counter() - wall, time.process_time() - cpu, faces)
    # per-stage medians
    stages: dict[str, list[float]] = {"detect": [], "mesh": [], "identity": [], "total": []}
    for img in images:
        t0 = time.perf_counter()
        det = analyzer.detector.detect(img)[0]
        t1 = time.perf_counter()
        analyzer.landmarker.fit(img, det)
        t2 = time.perf_counter()
        analyzer.embedder.embed(img, det)
        t3 = time.perf_counter()
        analyzer.analyze(img)
        t4 = time.perf_counter()
        for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[key].append(value * 1000)
    upright_only = FaceAnalyzer(check_orientation=False)  # what the orientation check costs
    for img in images:
        upright_only.analyze(img)
    no_check = _time(lambda im: int(upright_only.analyze(im) is not None), images, rounds)
    return result, parallel, no_check, {k: statistics.median(v) for k, v in stages.items()}


def bench_face_recognition(images, rounds):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import face_recognition_models  # noqa: F401  (imports pkg_resources: setuptools < 81)
        except ImportError as exc:
            raise SystemExit(
                f"the face_recognition baseline cannot load its models ({exc}): face_recognition_models imports "
                "pkg_resources, which setuptools >= 81 removed; `bash scripts/install.sh dev` pins setuptools<81 "
                "(or run `pip install 'setuptools<81'`)."
            ) from None
        import face_recognition

    def run(img):
        locations = face_recognition.face_locations(img, model="hog")
        if not locations:
            return 0
        largest = max(locations, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        return len(face_recognition.face_encodings(img, [largest]))

    for img in images:
        run(img)
    return _time(run, images, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--side", type=int, default=512, help="longer side of the test photos, pixels")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the result table here")
    parser.add_argument("--quick", action="store_true", help="seconds: smallest sizes, one round (CI checks it runs)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.side = 1, 256

    images = _images(args.side)[: 2 if args.quick else None]
    (o_wall, o_cpu, o_faces), (p_wall, p_cpu, p_faces), (n_wall, n_cpu, n_faces), stages = bench_ours(
        images, args.rounds
    )
    fr_wall, fr_cpu, fr_faces = bench_face_recognition(images, args.rounds)
    ours, theirs = o_faces / o_wall, fr_faces / fr_wall
    rows = [
        (
            "hifi-portrait default, 1 worker (RetinaFace + mediapipe mesh + dlib ResNet/torch + crops, mask, quality)",
            o_faces,
            o_wall,
            o_cpu,
        ),
        ("hifi-portrait default, `analyze_many(workers=2)`", p_faces, p_wall, p_cpu),
        ("hifi-portrait, 1 worker, `check_orientation=False` (no 4-way orientation check)", n_faces, n_wall, n_cpu),
        ("face_recognition 1.3 (HOG detection + dlib encoding)", fr_faces, fr_wall, fr_cpu),
    ]
    lines = [
        "# Face analysis throughput",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {_cpu_name()}, {os.cpu_count()} CPU cores visible, no GPU; Python {platform.python_version()}",
        f"- images: {len(images)} bundled photos ({', '.join(PHOTOS)}) resized to {args.side} px (longer side), "
        f"one face each, {args.rounds} timed rounds after a warm-up round; models loaded once",
        "- command: `python benchmarks/face_analysis.py --markdown benchmarks/results/face_analysis.md`",
        "",
        "| pipeline | faces | wall s | faces/s (wall) | CPU s | faces per CPU-s |",
        "|---|---|---|---|---|---|",
    ]

    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = ["?"]
    lines.insert(4, f"- load average when it ran (other jobs on the machine): {' '.join(load)}")
    for name, faces, wall, cpu in rows:
        lines.append(f"| {name} | {faces} | {wall:.2f} | {faces / wall:.1f} | {cpu:.2f} | {faces / cpu:.1f} |")
    lines += [
        "",
        f"**ratio ours (1 worker) / face_recognition: {ours / theirs:.2f}x faces/s (wall)**, "
        f"{(o_faces / o_cpu) / (fr_faces / fr_cpu):.2f}x per CPU-second; with 2 workers "
        f"{(p_faces / p_wall) / theirs:.2f}x (wall).",
        "",
        "Our per-face stage medians (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()),
        "",
        "CPU time counts every thread of the process, so faces per CPU-second is the figure least disturbed by",
        "other jobs sharing the machine; wall-clock faces/s is what a user sees on an otherwise idle machine.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
