"""Identity thresholds from labelled photos, and identity clustering methods compared (issue 13).

    python benchmarks/identity_calibration.py                 # real photos + 1M synthetic vectors (128-d, 512-d)
    python benchmarks/identity_calibration.py --synthetic-n 0 # real photos only (about a minute)
    python benchmarks/identity_calibration.py --quick         # seconds: 12 photos, 3000 vectors (CI)
    python benchmarks/identity_calibration.py --write         # also writes benchmarks/results/identity_calibration.*

Real photos: every photo of tests/data/calib and tests/data/ids (their SOURCES.md), one person per folder
(``ids/_distractors``: one person per file; ``elon_musk.jpg`` there is the same man as ``calib/elon_musk``). Each is
embedded as ``build-dataset`` does (RetinaFace, largest face, dlib ResNet 128-d). People are split in two halves
with a fixed seed: thresholds are chosen on the calibration half only and the figures that count are measured on
the held-out half (other seeds are reported as a robustness check).

Rules (precision first): a clustering method's threshold is the strictest one of the grid whose pairwise recall on
the calibration half is still >= ``RECALL_FLOOR``; the ``FaceSet`` same-person threshold is the one that flags the
most impostors (a photo of someone else added to 2-4 photos of a person) while flagging at most
``FALSE_OUTLIER_RATE`` of the genuine photos, on the calibration half.

Methods (each at its own calibrated threshold): ``average`` (the default of ``cluster_identities``), ``components``
(the previous default), dlib's ``chinese_whispers_clustering`` (Euclidean distance ``sqrt(2 - 2 cos)`` on unit
vectors), ``mutual`` (connected components of mutual 10-NN edges), ``core-attach`` (components of mutual 10-NN
edges above a strict threshold, then each other photo joins the core of highest mean similarity if it reaches the
threshold), ``complete`` (complete linkage).

Synthetic: ``--synthetic-n`` ArcFace-like vectors (benchmarks/dataset_builder.py's generator; threshold 0.5), the
graph methods timed (``--synthetic-methods``). ArcFace (insightface) is not calibrated here: its model files are
not available offline; its thresholds stay the usual ArcFace range.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
RESULTS = ROOT / "benchmarks" / "results"
RECALL_FLOOR = 0.90
FALSE_OUTLIER_RATE = 0.05
GRID = np.round(np.arange(0.880, 0.9501, 0.0025), 4)
EDGES = np.round(np.arange(0.0, 0.0501, 0.0025), 4)  # edge threshold = threshold - EDGES
ALIASES = {"_distractors/elon_musk": "elon_musk"}  # the same man as calib/elon_musk

sys.path.insert(0, str(Path(__file__).resolve().parent))


def labelled_photos() -> tuple[list[Path], np.ndarray]:
    """Every labelled photo and its person name."""
    paths = sorted(DATA.glob("calib/*/*.jpg")) + sorted(DATA.glob("ids/*/*.jpg"))
    names = []
    for p in paths:
        name = p.parent.name
        if name == "_distractors":
            name = ALIASES.get(f"_distractors/{p.stem}", f"distractor_{p.stem}")
        names.append(name)
    return paths, np.array(names)


def embed(paths: list[Path]) -> np.ndarray:
    """dlib 128-d unit identity vectors of the largest face of each photo, as the dataset builder computes them."""
    from hifi_portrait.face.detection import RetinaFaceDetector
    from hifi_portrait.face.identity import DlibEmbedder
    from hifi_portrait.utils.image_io import load_image

    detector, embedder = RetinaFaceDetector(num_threads=1), DlibEmbedder()
    out = np.zeros((len(paths), 128), dtype=np.float32)
    for i, path in enumerate(paths):
        image = load_image(path)
        faces = detector.detect(image)
        if faces:
            out[i] = embedder.embed(image, faces[0])
    return out


def split_people(names: np.ndarray, seed: int) -> np.ndarray:
    """Boolean mask of the photos whose person is in the calibration half (people shuffled with ``seed``)."""
    people = sorted(set(names.tolist()))
    order = np.random.default_rng(seed).permutation(len(people))
    calib = {people[i] for i in order[: len(people) // 2]}
    return np.array([n in calib for n in names])


# ---------------------------------------------------------------------------------------------- methods
def _dense_linkage(x: np.ndarray, threshold: float, method: str) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(x) < 2:
        return np.zeros(len(x), dtype=np.int64)
    dist = np.clip(1.0 - x.astype(np.float64) @ x.T.astype(np.float64), 0.0, 2.0)
    return fcluster(linkage(dist[np.triu_indices(len(x), 1)], method), 1.0 - threshold, "distance") - 1


def chinese_whispers(x: np.ndarray, threshold: float) -> np.ndarray:
    """dlib's ``chinese_whispers_clustering`` (all pairs; Euclidean distance on unit vectors)."""
    import dlib

    vecs = [dlib.vector(v.astype(np.float64).tolist()) for v in x]
    return np.array(dlib.chinese_whispers_clustering(vecs, float(np.sqrt(max(0.0, 2.0 - 2.0 * threshold)))))


def chinese_whispers_graph(x: np.ndarray, threshold: float) -> np.ndarray:
    """dlib's ``chinese_whispers`` on the edges of our k-NN graph with cosine >= threshold (for large sets)."""
    import dlib

    from hifi_portrait.data.cluster import ClusterParams, graph_edges

    rows, cols, _ = graph_edges(x, ClusterParams(threshold=threshold, method="components"))
    keep = rows < cols
    edges = list(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))
    edges += [(i, i) for i in range(len(x))]  # every vector is a vertex, even without an edge
    return np.array(dlib.chinese_whispers(edges))


def core_attach(x: np.ndarray, threshold: float) -> np.ndarray:
    """Strict cores (mutual 10-NN edges >= threshold + (1 - threshold) / 2), then attach by mean similarity."""
    from hifi_portrait.data.cluster import ClusterParams, graph_clusters

    strict = threshold + (1.0 - threshold) / 2
    cores = graph_clusters(x, ClusterParams(threshold=strict, mutual=True, method="components"))
    sizes = np.bincount(cores)
    core_ids = np.flatnonzero(sizes >= 2)
    out = np.where(sizes[cores] >= 2, cores, -1)
    loose = np.flatnonzero(out < 0)
    if len(core_ids) and len(loose):
        sims = x[loose] @ x.T  # (loose, N)
        means = np.stack([sims[:, cores == c].mean(axis=1) for c in core_ids], axis=1)
        best = means.argmax(axis=1)
        attach = means[np.arange(len(loose)), best] >= threshold
        out[loose[attach]] = core_ids[best[attach]]
    singles = out < 0
    out[singles] = out.max(initial=0) + 1 + np.arange(singles.sum())
    return out


def run_method(name: str, x: np.ndarray, threshold: float, edge: float | None = None) -> np.ndarray:
    from hifi_portrait.data.cluster import ClusterParams, cluster_identities, graph_clusters

    if name == "average":
        return cluster_identities(x, ClusterParams(threshold=threshold, edge_threshold=edge))
    if name == "components":
        return cluster_identities(x, ClusterParams(threshold=threshold, method="components"))
    if name == "mutual":
        return graph_clusters(x, ClusterParams(threshold=threshold, mutual=True, method="components"))
    if name == "chinese-whispers":
        return chinese_whispers(x, threshold) if len(x) <= 5000 else chinese_whispers_graph(x, threshold)
    if name == "core-attach":
        return core_attach(x, threshold)
    if name == "complete":
        return _dense_linkage(x, threshold, "complete")
    raise ValueError(name)


METHODS = ("average", "components", "chinese-whispers", "mutual", "core-attach", "complete")


def sweep(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """``(len(GRID), 2)`` pairwise precision, recall of ``method`` at each threshold of the grid."""
    from hifi_portrait.data.cluster import pairwise_precision_recall

    return np.array([pairwise_precision_recall(run_method(method, x, t), y) for t in GRID])


def sweep_edge(x: np.ndarray, y: np.ndarray, threshold: float) -> np.ndarray:
    """``(len(EDGES), 2)`` precision, recall of ``average`` at ``threshold`` with edge / attach thresholds EDGES."""
    from hifi_portrait.data.cluster import pairwise_precision_recall

    return np.array([pairwise_precision_recall(run_method("average", x, threshold, threshold - d), y) for d in EDGES])


def choose_edge(curve: np.ndarray, threshold: float) -> float:
    """Strictest edge threshold reaching the best recall among those as precise as edge = threshold."""
    ok = np.flatnonzero(curve[:, 0] >= curve[0, 0] - 1e-9)
    best = curve[ok, 1].max()
    return round(threshold - float(EDGES[ok[curve[ok, 1] >= best - 1e-9].min()]), 4)


def choose(curve: np.ndarray) -> float:
    """Strictest grid threshold whose recall is >= RECALL_FLOOR (the loosest one if none is)."""
    ok = np.flatnonzero(curve[:, 1] >= RECALL_FLOOR)
    return float(GRID[ok.max()] if len(ok) else GRID[0])


# ---------------------------------------------------------------------------------------------- FaceSet
def faceset_trials(x: np.ndarray, names: np.ndarray, seed: int = 0, per_person: int = 12):
    """Reference sets: 2-4 photos of a person plus one impostor photo (or none): ``[(vectors, impostor index)]``."""
    rng = np.random.default_rng(seed)
    people = sorted({n for n in names.tolist() if (names == n).sum() >= 2})
    trials = []
    for person in people:
        own = np.flatnonzero(names == person)
        others = np.flatnonzero(names != person)
        for _ in range(per_person):
            size = int(rng.integers(2, min(4, len(own)) + 1))
            refs = rng.choice(own, size=size, replace=False)
            if rng.random() < 0.5:
                imp = int(rng.choice(others))
                pos = int(rng.integers(0, size + 1))
                trials.append((np.insert(refs, pos, imp), pos))
            elif size >= 3:
                trials.append((refs, -1))
    return trials


def faceset_rates(x: np.ndarray, trials, threshold: float) -> tuple[float, float]:
    """(impostors flagged, genuine photos flagged) fractions of ``FaceSet``'s outlier rule at ``threshold``."""
    from hifi_portrait.face.face_set import _outliers

    caught = impostors = false = genuine = 0
    for idx, imp in trials:
        v = x[idx].astype(np.float64)
        sim = v @ v.T
        n = len(idx)
        median = np.median(sim[~np.eye(n, dtype=bool)].reshape(n, n - 1), axis=1)
        flagged = set(_outliers(sim, median, threshold)) if n >= 3 else set()
        if imp >= 0:
            impostors += 1
            caught += imp in flagged
        genuine += n - (imp >= 0)
        false += len(flagged - {imp})
    return caught / max(impostors, 1), false / max(genuine, 1)


# ---------------------------------------------------------------------------------------------- end to end
#: build-dataset settings compared end to end: the default, and the previous default (components at 0.91)
BUILDS = {"default": {}, "previous (components, threshold 0.91)": {"method": "components", "threshold": 0.91}}


def build_held_out(paths: list[Path], names: np.ndarray, held: np.ndarray) -> dict:
    """``build-dataset`` (no labels) on the held-out photos copied into one folder under shuffled names, with each
    cluster setting of BUILDS (the analysis is computed once, later builds reuse it); pairwise precision / recall of
    its identities over the photos that passed the quality filter (a photo left out as an identity outlier or a
    one-photo identity counts as a singleton)."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="hp-calib-"))
    try:
        order = np.random.default_rng(0).permutation(int(held.sum()))
        truth = {}
        for rank, i in zip(order, np.flatnonzero(held), strict=True):
            name = f"photo{rank:04d}.jpg"
            (tmp / "in").mkdir(exist_ok=True)
            shutil.copy(paths[i], tmp / "in" / name)
            truth[name] = names[i]
        return {name: _build_once(tmp, truth, cluster) for name, cluster in BUILDS.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_once(tmp: Path, truth: dict[str, str], cluster: dict) -> dict:
    from hifi_portrait.data import BuilderConfig, build_dataset
    from hifi_portrait.data.cluster import pairwise_precision_recall

    out = tmp / "out"
    cfg = BuilderConfig.from_dict({"workers": 1, "labels": "none", "cluster": cluster})
    build_dataset([tmp / "in"], out, cfg, progress=False)
    pred = {}
    for line in (out / "identities.jsonl").read_text().splitlines():
        entry = json.loads(line)
        for sample in entry["samples"]:
            pred[sample["sample"]] = entry["identity"]
    keys, ids = [], []
    for line in (out / "failures.jsonl").read_text().splitlines():
        f = json.loads(line)
        if f["stage"] in ("identity", "duplicate"):
            keys.append(Path(f["key"]).name)
            ids.append(f"single-{len(ids)}")
    stats = json.loads((out / "stats.json").read_text())
    samples = _sample_sources(out)
    for sample, identity in pred.items():
        keys.append(Path(samples[sample]).name)
        ids.append(identity)
    y_pred = np.unique(ids, return_inverse=True)[1]
    y_true = np.unique([truth[k] for k in keys], return_inverse=True)[1]
    p, r = pairwise_precision_recall(y_pred, y_true)
    return {
        "photos": len(truth),
        "scored": len(keys),
        "people": len(set(truth.values())),
        "identities": stats["identities"],
        "precision": round(p, 4),
        "recall": round(r, 4),
        "uncertain_identities": [u["identity"] for u in stats["uncertain_identities"]],
    }


def _sample_sources(out: Path) -> dict[str, str]:
    import tarfile

    sources = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    sources[member.name[: -len(".json")]] = meta["source"]
    return sources


# ---------------------------------------------------------------------------------------------- synthetic
def synthetic(n: int, dims: list[int], methods: list[str]) -> list[dict]:
    from dataset_builder import synthetic_identities

    from hifi_portrait.data.cluster import pairwise_precision_recall

    rows = []
    for dim in dims:
        x, labels = synthetic_identities(n, dim)
        for method in methods:
            start = time.perf_counter()
            pred = run_method(method, x, 0.5)
            seconds = time.perf_counter() - start
            p, r = pairwise_precision_recall(pred, labels)
            row = {"vectors": n, "dim": dim, "method": method, "seconds": round(seconds, 1)}
            row |= {"precision": round(p, 4), "recall": round(r, 4), "load_after": round(os.getloadavg()[0], 1)}
            print("synthetic:", json.dumps(row), flush=True)
            rows.append(row)
    return rows


def plot(curves_cal: dict, curves_held: dict, faceset: np.ndarray, chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, curves, title in ((axes[0], curves_cal, "calibration half"), (axes[1], curves_held, "held-out half")):
        for i, (method, c) in enumerate(curves.items()):
            colour = f"C{i}"
            ax.plot(GRID, c[:, 0], "-", color=colour, label=f"{method} precision")
            ax.plot(GRID, c[:, 1], "--", color=colour, label=f"{method} recall")
            ax.axvline(chosen[method], color=colour, lw=0.6, alpha=0.6)
        ax.set_title(f"pairwise precision / recall, {title}")
        ax.set_xlabel("threshold (cosine, dlib-resnet-128)")
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=6, ncol=2, loc="lower left")
    axes[2].plot(GRID, faceset[:, 0], label="impostors flagged")
    axes[2].plot(GRID, faceset[:, 1], label="genuine photos flagged")
    axes[2].axvline(chosen["faceset"], color="k", lw=0.6)
    axes[2].set_title("FaceSet outliers vs same-person threshold (calibration half)")
    axes[2].set_xlabel("threshold (cosine)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="split of the people into calibration / held-out")
    parser.add_argument("--check-seeds", type=int, nargs="*", default=[1, 2], help="more splits (robustness)")
    parser.add_argument("--synthetic-n", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--synthetic-methods", nargs="+", default=["average", "components"])
    parser.add_argument("--build", action="store_true", help="also build-dataset on the held-out photos (minutes)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/identity_calibration.*")
    parser.add_argument("--quick", action="store_true", help="seconds: 12 photos, 3000 vectors (CI checks it runs)")
    args = parser.parse_args()
    paths, names = labelled_photos()
    if args.quick:
        keep = np.concatenate([np.flatnonzero(names == n)[:3] for n in sorted(set(names.tolist()))[:4]])
        paths, names = [paths[i] for i in keep], names[keep]
        args.synthetic_n, args.dims, args.check_seeds = 3000, [128], []
    from hifi_portrait.data.cluster import pairwise_precision_recall

    load = os.getloadavg()[0]
    print(f"load average at start {load:.1f}; {len(paths)} photos of {len(set(names.tolist()))} people")
    start = time.perf_counter()
    x = embed(paths)
    found = np.linalg.norm(x, axis=1) > 0
    print(f"embedded in {time.perf_counter() - start:.1f}s; no face in {(~found).sum()} photos")
    x, names = x[found], names[found]
    paths_found = [p for p, f in zip(paths, found, strict=True) if f]
    results = {"photos": len(names), "people": len(set(names.tolist())), "seeds": {}}
    for seed in [args.seed, *args.check_seeds]:
        cal = split_people(names, seed)
        ycal = np.unique(names[cal], return_inverse=True)[1]
        yheld = np.unique(names[~cal], return_inverse=True)[1]
        curves_cal = {m: sweep(x[cal], ycal, m) for m in METHODS}
        chosen = {m: choose(c) for m, c in curves_cal.items()}
        curves_held = {m: sweep(x[~cal], yheld, m) for m in METHODS}
        held = {}
        for m in METHODS:
            i = int(np.flatnonzero(GRID == chosen[m])[0])
            held[m] = {"threshold": chosen[m], "calib": curves_cal[m][i].round(4).tolist()}
            held[m]["held_out"] = curves_held[m][i].round(4).tolist()
            at_default = int(np.flatnonzero(GRID == chosen["average"])[0])
            held[m]["held_out_at_average_threshold"] = curves_held[m][at_default].round(4).tolist()
            safe = np.flatnonzero(curves_held[m][:, 0] >= 0.98)
            held[m]["held_out_loosest_threshold_precision_0.98"] = float(GRID[safe.min()]) if len(safe) else None
        # the default method's edge / attach threshold, at its threshold, also from the calibration half
        t = chosen["average"]
        edge_curve = sweep_edge(x[cal], ycal, t)
        edge = choose_edge(edge_curve, t)
        pred = run_method("average", x[~cal], t, edge)
        held["average (calibrated edge)"] = {
            "threshold": t,
            "edge_threshold": edge,
            "calib": edge_curve[int(np.argmin(np.abs(t - EDGES - edge)))].round(4).tolist(),
            "held_out": np.round(pairwise_precision_recall(pred, yheld), 4).tolist(),
        }
        trials = faceset_trials(x[cal], names[cal], seed)
        fs = np.array([faceset_rates(x[cal], trials, t) for t in GRID])
        ok = np.flatnonzero(fs[:, 1] <= FALSE_OUTLIER_RATE)
        best = ok[np.argmax(fs[ok, 0])] if len(ok) else 0
        chosen["faceset"] = float(GRID[best])
        held_trials = faceset_trials(x[~cal], names[~cal], seed)
        fs_held = faceset_rates(x[~cal], held_trials, chosen["faceset"])
        same = names[:, None] == names[None]
        iu = np.triu_indices(len(names), 1)
        sims = (x @ x.T)[iu]
        entry = {
            "calibration_people": int(len(set(names[cal].tolist()))),
            "held_out_people": int(len(set(names[~cal].tolist()))),
            "calibration_photos": int(cal.sum()),
            "held_out_photos": int((~cal).sum()),
            "methods": held,
            "faceset": {
                "threshold": chosen["faceset"],
                "calib_impostors_flagged": round(float(fs[best, 0]), 3),
                "calib_genuine_flagged": round(float(fs[best, 1]), 3),
                "held_out_impostors_flagged": round(fs_held[0], 3),
                "held_out_genuine_flagged": round(fs_held[1], 3),
                "trials_calib": len(trials),
                "trials_held_out": len(held_trials),
            },
            "pairs_all_photos": {
                "same_person_min": round(float(sims[same[iu]].min()), 4),
                "different_people_max": round(float(sims[~same[iu]].max()), 4),
            },
        }
        results["seeds"][seed] = entry
        print(f"seed {seed}:", json.dumps(entry))
        if seed == args.seed:
            main_curves = (curves_cal, curves_held, fs, chosen)
    if args.build:
        results["build_held_out"] = build_held_out(paths_found, names, ~split_people(names, args.seed))
        print("build-dataset on the held-out half:", json.dumps(results["build_held_out"]))
    synth = []
    if args.synthetic_n:
        synth = synthetic(args.synthetic_n, args.dims, args.synthetic_methods)
    results["synthetic"] = synth
    if args.write and not args.quick:
        RESULTS.mkdir(exist_ok=True)
        plot(*main_curves, RESULTS / "identity_calibration.png")
        stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, load average {load:.1f} at start"
        (RESULTS / "identity_calibration.json").write_text(json.dumps({"when": stamp} | results, indent=1) + "\n")
        print(f"wrote {RESULTS / 'identity_calibration.json'} and .png")


if __name__ == "__main__":
    main()
