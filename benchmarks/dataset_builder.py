"""Benchmark of the dataset builder: end-to-end images/s and identity clustering time for 1M synthetic vectors.

    python benchmarks/dataset_builder.py                      # both parts, defaults below
    python benchmarks/dataset_builder.py --images 240 --workers 1 2 --cluster-n 1000000 --dims 128 512
    python benchmarks/dataset_builder.py --skip-images --cluster-n 200000 --dims 128
    python benchmarks/dataset_builder.py --quick   # seconds: 8 images, 2000 vectors (CI)

End to end: ``--images`` distinct photos are made from the bundled real photos (tests/data, tests/data/ids) by
flips, crops, rescaling and colour changes, and built into a dataset (no captioning model: template captions) with
``workers`` analysis processes, each single-threaded. Reported: wall time and images/s including the one-time
model loading of each worker, and the steady-state rate without it (per core = divided by workers).

Clustering: ``--cluster-n`` synthetic unit identity vectors of ``--dims`` dimensions: people with 2 to 30 photos
each (geometric), same-person cosine about 0.75, different people about 0 (ArcFace-like); clustered by
:func:`hifi_portrait.data.cluster_identities` (default ``"average"`` method: blocked exact k-NN graph, components,
exact average linkage inside mixed components, joining of split people by mean cross-pair cosine, outlier removal)
at threshold 0.5; reported: seconds and pairwise precision / recall against the truth.
benchmarks/identity_calibration.py compares the clustering methods on the same vectors.

``--write`` appends the numbers, date and machine to benchmarks/results/dataset_builder.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one analysis process per core, before numpy/torch load

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


@dataclass(frozen=True)
class TimedFactory:
    """The default analyzer factory, recording each worker's model-loading time (first analysis included)."""

    log_dir: str

    def __call__(self):
        from hifi_portrait.data.stages import DefaultAnalyzerFactory

        start = time.perf_counter()
        analyzer = DefaultAnalyzerFactory()()
        analyzer.analyze(str(DATA / "obama.jpg"))  # loads every model
        seconds = time.perf_counter() - start
        Path(self.log_dir, f"load-{os.getpid()}.json").write_text(json.dumps({"seconds": seconds}))
        return analyzer


def make_images(dest: Path, count: int, seed: int = 0) -> int:
    """Write ``count`` distinct photos (augmented copies of the bundled single-person photos) into ``dest``."""
    sources = sorted(DATA.glob("ids/*/*.jpg")) + [
        DATA / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")
    ]
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    base = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in sources]
    for i in range(count):
        img = base[i % len(base)]
        if i >= len(base):
            w, h = img.size
            dx, dy = rng.uniform(0, 0.08, 2)
            img = img.crop(
                (int(dx * w), int(dy * h), int(w * (1 - rng.uniform(0, 0.08))), int(h * (1 - rng.uniform(0, 0.08))))
            )
            if rng.random() < 0.5:
                img = ImageOps.mirror(img)
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
            s = rng.uniform(0.8, 1.6)
            img = img.resize((max(64, int(img.width * s)), max(64, int(img.height * s))), Image.BICUBIC)
        img.save(dest / f"img{i:05d}.jpg", quality=90)
    return count


def bench_images(count: int, workers: int) -> dict:
    from hifi_portrait.data import BuilderConfig, build_dataset

    tmp = Path(tempfile.mkdtemp(prefix="hp-bench-"))
    try:
        make_images(tmp / "in", count)
        (tmp / "logs").mkdir()
        cfg = BuilderConfig(workers=workers, shard_size=16, labels="none")
        start = time.perf_counter()
        result = build_dataset(
            [tmp / "in"], tmp / "out", cfg, analyzer_factory=TimedFactory(str(tmp / "logs")), progress=False
        )
        wall = time.perf_counter() - start
        loads = [json.loads(p.read_text())["seconds"] for p in (tmp / "logs").glob("load-*.json")]
        steady = wall - max(loads)
        return {
            "images": count,
            "workers": workers,
            "wall_s": round(wall, 2),
            "images_per_s": round(count / wall, 2),
            "model_load_s": round(max(loads), 2),
            "steady_images_per_s": round(count / steady, 2),
            "steady_images_per_s_per_core": round(count / steady / workers, 2),
            "samples": result.samples,
            "identities": result.identities,
            "excluded": result.excluded,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def synthetic_identities(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors of people with 2..30 photos; same-person cosine ~0.75, others ~0."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(2 + rng.geometric(1 / 8, size=n // 2), 30)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    labels = np.repeat(np.arange(len(sizes)), sizes)[:n]
    centres = rng.standard_normal((len(sizes), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        sl = slice(start, min(n, start + 100_000))
        noise = rng.standard_normal((sl.stop - sl.start, dim), dtype=np.float32) * np.float32(0.58 / np.sqrt(dim))
        x[sl] = centres[labels[sl]] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def bench_clustering(n: int, dim: int) -> dict:
    from hifi_portrait.data import ClusterParams, cluster_identities, pairwise_precision_recall

    x, labels = synthetic_identities(n, dim)
    start = time.perf_counter()
    pred = cluster_identities(x, ClusterParams(threshold=0.5, k=10))
    seconds = time.perf_counter() - start
    precision, recall = pairwise_precision_recall(pred, labels)
    return {
        "vectors": n,
        "dim": dim,
        "people": int(labels.max()) + 1,
        "seconds": round(seconds, 1),
        "clusters": int(pred.max()) + 1,
        "outliers": int((pred < 0).sum()),
        "pairwise_precision": round(precision, 4),
        "pairwise_recall": round(recall, 4),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f} at start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--cluster-n", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--skip-clustering", action="store_true")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/results/dataset_builder.md")
    parser.add_argument("--quick", action="store_true", help="seconds: smallest sizes, one round (CI checks it runs)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.workers, args.cluster_n, args.dims = 8, [1], 2000, [128]
    where = machine()
    print(f"machine: {where}")
    rows_img, rows_cl = [], []
    if not args.skip_images:
        for workers in args.workers:
            row = bench_images(args.images, workers)
            print("end to end:", json.dumps(row))
            rows_img.append(row)
    if not args.skip_clustering:
        for dim in args.dims:
            row = bench_clustering(args.cluster_n, dim)
            print("clustering:", json.dumps(row))
            rows_cl.append(row)
    if args.write:
        out = ROOT / "benchmarks" / "results" / "dataset_builder.md"
        lines = [f"\n## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC — {where}\n"]
        if rows_img:
            lines += [
                "| images | workers | wall s | images/s (incl. model load) | model load s | steady images/s | "
                "steady images/s per core | samples | identities | excluded |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['images']} | {r['workers']} | {r['wall_s']} | {r['images_per_s']} | {r['model_load_s']} | "
                f"{r['steady_images_per_s']} | {r['steady_images_per_s_per_core']} | {r['samples']} | "
                f"{r['identities']} | {r['excluded']} |"
                for r in rows_img
            ]
            lines.append("")
        if rows_cl:
            lines += [
                "| vectors | dim | people | seconds | clusters | outliers | pairwise precision | pairwise recall |",
                "|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['vectors']} | {r['dim']} | {r['people']} | {r['seconds']} | {r['clusters']} | "
                f"{r['outliers']} | {r['pairwise_precision']} | {r['pairwise_recall']} |"
                for r in rows_cl
            ]
        if not out.exists():
            out.write_text(
                "# Dataset builder benchmark\n\nWritten by `python benchmarks/dataset_builder.py --write`.\n"
            )
        with open(out, "a") as handle:
            handle.write("\n".join(lines) + "\n")
        print(f"appended to {out}")


if __name__ == "__main__":
    main()
