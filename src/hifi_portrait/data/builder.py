"""The identity-grouped dataset builder: inputs -> analysis shards -> filter -> identities -> selection -> output.

Output folder layout (see docs/dataset.md)::

    OUT/manifest.json          format, config, files with sha256 (written last: its presence means "complete")
    OUT/identities.jsonl       one line per identity: name, shard, samples with roles, tightness
    OUT/failures.jsonl         one line per input image that is not in the dataset: stage and reason
    OUT/stats.json             counts, failures by stage, pose / quality / images-per-identity distributions,
                               identities to review (loose, or close to another identity)
    OUT/plots/*.png            images per identity, pose distribution, quality histogram
    OUT/shards/shard-000000.tar          (webdataset)  or  shards/shard-000000.parquet + shards/files/...
    OUT/work/analysis/shard-*.npz        cached per-image analysis (resumption); safe to delete when done
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hifi_portrait.data.captions import load_captioner, template_caption
from hifi_portrait.data.cluster import (
    centroids_of,
    cluster_identities,
    cluster_params,
    identity_tightness,
    near_duplicates,
)
from hifi_portrait.data.config import BuilderConfig
from hifi_portrait.data.engines import get_engine, make_progress
from hifi_portrait.data.inputs import InputItem, enumerate_inputs
from hifi_portrait.data.report import build_stats, uncertain_identities, write_plots
from hifi_portrait.data.select import choose_refs_and_targets, diversity_features
from hifi_portrait.data.shards import ShardView, finished_shards, plan_shards, read_shard_summary, remove_stale
from hifi_portrait.data.stages import (
    BLENDSHAPE_NAMES,
    AnalyzerFactory,
    decode_image,
    iter_item_bytes,
    photo_mask_png,
)
from hifi_portrait.data.writer import (
    Sample,
    atomic_write,
    encode_photo,
    sha256_file,
    write_parquet_shard,
    write_webdataset_shard,
)
from hifi_portrait.errors import ConfigError, DatasetError, HiFiPortraitError
from hifi_portrait.utils.files import check_writable_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class BuildResult:
    """Summary of a build (``seconds`` and shard counts vary between runs; the files written do not)."""

    out_dir: Path
    inputs: int
    samples: int
    identities: int
    excluded: int
    shards_total: int
    shards_computed: int
    shards_reused: int
    seconds: float
    stats: dict[str, Any]


@dataclass
class _Analysed:
    """All successfully analysed images of the run, concatenated over shards (row-aligned)."""

    records: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]  # identity, keypoints, bbox, blendshapes, pose (row-aligned with records)
    refs: list[tuple[str, int]]  # (shard file, row) of each record: landmarks and crops are read from there

    def view(self, path: str) -> ShardView:
        return _shard_view(path)


@functools.lru_cache(maxsize=64)
def _shard_view(path: str) -> ShardView:
    return ShardView(Path(path))


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder for the dataset")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        ours = (out_dir / MANIFEST).exists() or (out_dir / "work").is_dir()
        if not ours:
            raise ConfigError(
                f"--out {out_dir} is not empty and is not a dataset folder of this tool; choose an empty or new folder"
            )
    check_writable_dir(out_dir)  # a read-only or impossible --out fails now, not after the analysis


def _factory_name(factory: AnalyzerFactory) -> str:
    """A stable name of the analyzer factory (its settings change the cached analysis)."""
    if hasattr(factory, "__dataclass_fields__"):
        return repr(factory)
    return f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', type(factory).__qualname__)}"


def _analysis(
    items: list[InputItem], out_dir: Path, cfg: BuilderConfig, engine: str, factory: AnalyzerFactory, progress: bool
) -> tuple[list[dict[str, Any]], _Analysed, int, int]:
    """Run (or resume) the per-image stage; return all records, the successful ones, shards computed / reused."""
    fingerprint = cfg.analysis_fingerprint() + ":" + _factory_name(factory)
    _shard_view.cache_clear()  # memory maps of an earlier build in this process may point to replaced files
    specs = plan_shards(items, cfg.shard_size, fingerprint)
    work_dir = out_dir / "work" / "analysis"
    work_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale(work_dir, specs)
    if stale:
        logger.info("removed %d analysis shard(s) of an earlier plan", stale)
    done = finished_shards(work_dir, specs)
    todo = [spec for spec in specs if spec.index not in done]
    logger.info("%d analysis shards: %d already done, %d to compute", len(specs), len(done), len(todo))
    workers = cfg.workers or os.cpu_count() or 1
    done_images = sum(len(s.items) for s in specs if s.index in done)
    bar, update = make_progress(len(items), done_images, enabled=progress)
    try:
        get_engine(engine)(todo, work_dir, factory, workers, cfg.multi_face, cfg.max_image_pixels, update)
    finally:
        bar.close()
    all_records: list[dict[str, Any]] = []
    ok_records, rows, refs = [], defaultdict(list), []
    for spec in specs:  # only records and small arrays in memory; landmarks and crops are read when written
        records, arrays = read_shard_summary(work_dir / spec.filename())
        for record in records:
            all_records.append(record)
            if record["ok"]:
                ok_records.append(record)
                for name, arr in arrays.items():
                    rows[name].append(arr[record["row"]])
                refs.append((str(work_dir / spec.filename()), record["row"]))
    stacked = {name: np.stack(v) for name, v in rows.items()} if ok_records else {}
    return all_records, _Analysed(ok_records, stacked, refs), len(todo), len(done)


#: Most identities listed for review in stats.json (``uncertain_identities_total`` counts them all).
MAX_REVIEW = 1000


def quality_reasons(record: dict[str, Any], pose: np.ndarray, cfg: BuilderConfig) -> list[str]:
    """Which quality thresholds a face fails (empty list = passes)."""
    q = cfg.quality
    checks = [
        (record["face_size"] < q.min_face_size, f"face {record['face_size']:.0f}px < min_face_size {q.min_face_size}"),
        (
            record["sharpness"] < q.min_sharpness,
            f"sharpness {record['sharpness']:.1f} < min_sharpness {q.min_sharpness}",
        ),
        (abs(pose[0]) > q.max_abs_yaw, f"|yaw| {abs(pose[0]):.0f} > max_abs_yaw {q.max_abs_yaw}"),
        (abs(pose[1]) > q.max_abs_pitch, f"|pitch| {abs(pose[1]):.0f} > max_abs_pitch {q.max_abs_pitch}"),
        (
            record["occlusion"] > q.max_occlusion,
            f"occlusion {record['occlusion']:.2f} > max_occlusion {q.max_occlusion}",
        ),
        (
            record["det_score"] < q.min_det_score,
            f"det_score {record['det_score']:.2f} < min_det_score {q.min_det_score}",
        ),
        (record["quality"] < q.min_quality, f"quality {record['quality']:.2f} < min_quality {q.min_quality}"),
    ]
    return [msg for failed, msg in checks if failed]


def assign_identities(
    records: list[dict[str, Any]], vectors: np.ndarray, cfg: BuilderConfig, identity_model: str
) -> tuple[list[str], dict[int, str]]:
    """Identity name per record (``""`` = dropped) and the reasons of the drops (by record position).

    Labelled records keep their label (minus identity outliers when ``cluster.purify_labeled``); unlabelled ones
    are clustered (``cluster-000000``, numbered by first appearance in key order).
    """
    params = cluster_params(cfg.cluster, identity_model)
    outlier, _ = params.resolved()
    names = [""] * len(records)
    dropped: dict[int, str] = {}
    labelled = [i for i, r in enumerate(records) if r["label"]]
    if labelled:
        label_names = sorted({records[i]["label"] for i in labelled})
        label_index = {name: n for n, name in enumerate(label_names)}
        ids = np.array([label_index[records[i]["label"]] for i in labelled])
        vec = vectors[labelled]
        keep = np.ones(len(labelled), dtype=bool)
        if cfg.cluster.purify_labeled:
            cents = centroids_of(vec, ids)
            sims = np.einsum("nd,nd->n", vec, cents[ids])
            sizes = np.bincount(ids)
            keep = ~((sims < outlier) & (sizes[ids] > 2))
            for j in np.flatnonzero(~keep):
                dropped[labelled[j]] = (
                    f"identity outlier: cosine {sims[j]:.3f} to its label's centroid < {outlier:.3f}"
                )
        for j, i in enumerate(labelled):
            if keep[j]:
                names[i] = records[i]["label"]
    unlabelled = [i for i, r in enumerate(records) if not r["label"]]
    if unlabelled:
        ids = cluster_identities(vectors[unlabelled], params)
        for j, i in enumerate(unlabelled):
            if ids[j] < 0:
                dropped[i] = f"identity outlier: removed from its cluster (cosine to centroid < {outlier:.3f})"
            else:
                names[i] = f"cluster-{ids[j]:06d}"
    return names, dropped


def build_dataset(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: BuilderConfig | None = None,
    engine: str = "local",
    analyzer_factory: AnalyzerFactory | None = None,
    progress: bool = True,
) -> BuildResult:
    """Build (or finish building) an identity-grouped training set from photo collections.

    Args:
        inputs: folders (recursive), ``.tar`` shards, ``.csv``/``.parquet`` lists of paths, or image files.
        out_dir: output folder (created; a re-run on the same folder resumes and rewrites identical files).
        config: builder settings (defaults if ``None``).
        engine: ``"local"`` (processes on this machine) or ``"ray"`` (Ray Data).
        analyzer_factory: picklable no-argument callable returning a face analyzer (default:
            :class:`hifi_portrait.face.FaceAnalyzer`); called once per worker.
        progress: show progress bars.

    Raises:
        DatasetError: no input images, or no usable identity in the end.
        ConfigError: bad config, or an output folder that is not ours.
    """
    from hifi_portrait.data.stages import DefaultAnalyzerFactory

    start = time.perf_counter()
    cfg = config or BuilderConfig()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    captioner = load_captioner(cfg.captioner)  # resolved and checked before any photo is analysed
    factory = analyzer_factory or DefaultAnalyzerFactory(min_face_px=min(40.0, cfg.quality.min_face_size))
    items, labelled = enumerate_inputs(list(inputs), cfg.labels)
    logger.info("%d input images (%s)", len(items), "identity labels from the input" if labelled else "no labels")
    item_by_key = {item.key: item for item in items}

    all_records, analysed, computed, reused = _analysis(items, out_dir, cfg, engine, factory, progress)
    failures = {r["key"]: {k: r[k] for k in ("key", "label", "stage", "reason")} for r in all_records if not r["ok"]}
    records, arrays = analysed.records, analysed.arrays

    # ---- quality filter
    passing: list[int] = []
    for i, record in enumerate(records):
        reasons = quality_reasons(record, arrays["pose"][i], cfg)
        if reasons:
            failures[record["key"]] = {
                "key": record["key"],
                "label": record["label"],
                "stage": "quality",
                "reason": "; ".join(reasons),
            }
        else:
            passing.append(i)
    models = sorted({records[i]["identity_model"] for i in passing})
    if len(models) > 1:
        raise DatasetError(
            f"faces were analysed with several identity models ({', '.join(models)}); rebuild in one go"
        )
    if not passing:
        _write_failures(out_dir, failures)
        raise DatasetError(
            f"none of the {len(items)} input images has a usable face; see {out_dir / 'failures.jsonl'} for reasons"
        )
    identity_model = models[0]
    recs = [records[i] for i in passing]
    vectors = arrays["identity"][passing].astype(np.float32)
    pose, blend = arrays["pose"][passing], arrays["blendshapes"][passing]
    quality = np.array([r["quality"] for r in recs], dtype=np.float64)

    # ---- identities, near-duplicates, small identities
    names, dropped = assign_identities(recs, vectors, cfg, identity_model)
    for j, reason in dropped.items():
        failures[recs[j]["key"]] = {
            "key": recs[j]["key"],
            "label": recs[j]["label"],
            "stage": "identity",
            "reason": reason,
        }
    ident_list = sorted({n for n in names if n})
    ident_index = {name: n for n, name in enumerate(ident_list)}
    groups = np.array([ident_index[n] if n else -1 for n in names], dtype=np.int64)
    hashes = np.array([int(r["dhash"], 16) for r in recs], dtype=np.uint64)
    dup_of = near_duplicates(
        hashes, vectors, quality, groups, cfg.cluster.duplicate_hash_distance, cfg.cluster.duplicate_cosine
    )
    for j in np.flatnonzero(dup_of >= 0):
        failures[recs[j]["key"]] = {
            "key": recs[j]["key"],
            "label": recs[j]["label"],
            "stage": "duplicate",
            "reason": f"near-duplicate of {recs[int(dup_of[j])]['key']}",
        }
        groups[j] = -1
    members: dict[int, list[int]] = defaultdict(list)
    for j in np.flatnonzero(groups >= 0):
        members[int(groups[j])].append(int(j))
    identities = []
    for g in sorted(members):
        rows = sorted(members[g], key=lambda j: recs[j]["key"])
        if len(rows) < cfg.selection.min_images:
            for j in rows:
                failures[recs[j]["key"]] = {
                    "key": recs[j]["key"],
                    "label": recs[j]["label"],
                    "stage": "identity",
                    "reason": f"identity {ident_list[g]} has {len(rows)} usable image(s) "
                    f"< selection.min_images {cfg.selection.min_images}",
                }
            continue
        identities.append((ident_list[g], rows))
    if not identities:
        _write_failures(out_dir, failures)
        raise DatasetError(
            f"no identity has {cfg.selection.min_images} or more usable images; see {out_dir / 'failures.jsonl'}"
        )

    # ---- how tight each identity is, and how close its nearest other identity (for review)
    params = cluster_params(cfg.cluster, identity_model)
    rows_all = np.array([j for _, rows in identities for j in rows], dtype=np.int64)
    group_of = np.repeat(np.arange(len(identities)), [len(rows) for _, rows in identities])
    tightness = {}
    for (name, _), t in zip(identities, identity_tightness(vectors[rows_all], group_of), strict=True):
        t["nearest"] = identities[t["nearest"]][0] if t["nearest"] >= 0 else None
        tightness[name] = t

    # ---- selection of references / targets
    feats = diversity_features(pose, blend, cfg.selection.pose_scale, cfg.selection.expression_weight)
    plan = []  # (identity name, [(row, role)])
    for name, rows in identities:
        refs, targets = choose_refs_and_targets(
            feats[rows], quality[rows], cfg.selection.max_refs, cfg.selection.max_targets
        )
        roles = {rows[i]: "ref" for i in refs} | {rows[i]: "target" for i in targets}
        plan.append((name, [(j, roles.get(j, "extra")) for j in rows]))

    # ---- output
    kept_meta, written = _write_output(
        out_dir,
        cfg,
        plan,
        recs,
        analysed,
        passing,
        vectors,
        pose,
        blend,
        item_by_key,
        captioner,
        identity_model,
        progress,
        tightness,
    )
    failure_list = _write_failures(out_dir, failures)
    kept_rows = [j for _, rows in plan for j, _ in rows]
    extra = {
        "identity_model": identity_model,
        "labels": "from input" if labelled else "clustering",
        "same_person_threshold": params.threshold,
        "clustering": {"method": params.method, "threshold": params.threshold, "edge_threshold": params.edge()},
        "format": cfg.output.format,
    }
    review = uncertain_identities(tightness, params.threshold)
    extra["uncertain_identities_total"] = len(review)
    extra["uncertain_identities"] = review[:MAX_REVIEW]  # the most doubtful first
    stats = build_stats(len(items), failure_list, kept_meta, pose[kept_rows], quality[kept_rows], extra)
    atomic_write(out_dir / "stats.json", json.dumps(stats, indent=1, sort_keys=True).encode())
    files = [out_dir / "identities.jsonl", out_dir / "failures.jsonl", out_dir / "stats.json", *written]
    if cfg.output.plots:
        files += write_plots(out_dir / "plots", kept_meta, pose[kept_rows], quality, quality[kept_rows])
    manifest = {
        "format": cfg.output.format,
        "format_version": FORMAT_VERSION,
        "identity_model": identity_model,
        "mask_methods": sorted({m["mask_method"] for m in kept_meta}),
        "blendshape_names": list(BLENDSHAPE_NAMES),
        "config": {k: v for k, v in cfg.to_dict().items() if k != "workers"},  # parallelism never changes output
        "counts": {
            "inputs": len(items),
            "samples": len(kept_meta),
            "identities": len(plan),
            "excluded": len(failure_list),
        },
        "files": {str(p.relative_to(out_dir)): sha256_file(p) for p in sorted(files)},
    }
    _shard_view.cache_clear()  # release the memory maps of the analysis shards
    _remove_stale_outputs(out_dir, set(manifest["files"]))
    atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    seconds = time.perf_counter() - start
    logger.info(
        "dataset written to %s: %d identities, %d samples in %.1fs", out_dir, len(plan), len(kept_meta), seconds
    )
    return BuildResult(
        out_dir=out_dir,
        inputs=len(items),
        samples=len(kept_meta),
        identities=len(plan),
        excluded=len(failure_list),
        shards_total=computed + reused,
        shards_computed=computed,
        shards_reused=reused,
        seconds=seconds,
        stats=stats,
    )


def _write_output(
    out_dir,
    cfg,
    plan,
    recs,
    analysed,
    passing,
    vectors,
    pose,
    blend,
    item_by_key,
    captioner,
    identity_model,
    progress,
    tightness,
):
    """Write the dataset shards and ``identities.jsonl``; return (sample metadata list, files written)."""
    from tqdm.auto import tqdm

    shard_dir = out_dir / "shards"
    written: list[Path] = []
    kept_meta: list[dict[str, Any]] = []
    identity_lines = []
    per_shard = cfg.output.identities_per_shard
    bar = tqdm(total=sum(len(rows) for _, rows in plan), unit="img", desc="writing dataset", disable=not progress)
    for shard_index, start in enumerate(range(0, len(plan), per_shard)):
        chunk = plan[start : start + per_shard]
        ordered = [(start + n, name, j, role) for n, (name, rows) in enumerate(chunk) for j, role in rows]
        items = [item_by_key[recs[j]["key"]] for _, _, j, _ in ordered]
        samples: list[Sample] = []
        counters: dict[int, int] = defaultdict(int)
        by_identity: dict[str, list] = defaultdict(list)
        for (ident_index, name, j, role), (item, data) in zip(ordered, iter_item_bytes(items), strict=True):
            if isinstance(data, Exception):
                raise HiFiPortraitError(f"{item.key} could be read during analysis but not now: {data}")
            image = decode_image(data, item.key, cfg.max_image_pixels)
            photo, scale = encode_photo(image, cfg.output.max_side, cfg.output.jpeg_quality)
            row = passing[j]
            record = recs[j]
            sample_name = f"{ident_index:06d}_{counters[ident_index]:03d}"
            counters[ident_index] += 1
            meta = {
                "sample": sample_name,
                "identity": name,
                "role": role,
                "source": item.key,
                "image_size": [
                    max(1, round(record["image_size"][0] * scale)),
                    max(1, round(record["image_size"][1] * scale)),
                ],
                "scale": scale,
                "bbox": (analysed.arrays["bbox"][row] * scale).round(3).tolist(),
                "keypoints": (analysed.arrays["keypoints"][row] * scale).round(3).tolist(),
                "pose": dict(zip(("yaw", "pitch", "roll"), pose[j].round(3).tolist(), strict=True)),
                "blendshapes": dict(zip(BLENDSHAPE_NAMES, blend[j].round(4).tolist(), strict=True)),
                "quality": round(record["quality"], 4),
                "quality_parts": {k: round(v, 4) for k, v in record["quality_parts"].items()},
                "det_score": round(record["det_score"], 4),
                "identity_model": identity_model,
                "mask_method": record["mask_method"],
                "face_coverage": round(record.get("face_coverage", 1.0), 4),
            }
            meta["caption"] = captioner(image, meta) if captioner else template_caption(meta)
            shard_path, shard_row = analysed.refs[row]
            view = analysed.view(shard_path)
            landmarks = view.landmarks(shard_row) * np.float32(scale)
            blobs = view.blobs(shard_row)
            photo_mask = None  # the target's face mask in its photo: the face-weighted loss of training
            if role == "target":
                photo_mask = photo_mask_png(blobs["mask"], record["encoder_affine"], meta["image_size"], scale)
            samples.append(
                Sample(sample_name, meta, photo, blobs["crop"], blobs["mask"], vectors[j], landmarks, photo_mask)
            )
            kept_meta.append(meta)
            by_identity[name].append({"sample": sample_name, "role": role})
            bar.update(1)
        if cfg.output.format == "webdataset":
            path = shard_dir / f"shard-{shard_index:06d}.tar"
            write_webdataset_shard(path, samples)
            written.append(path)
        else:
            path = shard_dir / f"shard-{shard_index:06d}.parquet"
            _, files = write_parquet_shard(path, shard_dir / "files", samples)
            written += [path, *files]
        for name, _ in chunk:
            identity_lines.append(
                {
                    "identity": name,
                    "shard": str(path.relative_to(out_dir)),
                    "samples": by_identity[name],
                    "tightness": tightness[name],
                }
            )
    bar.close()
    atomic_write(
        out_dir / "identities.jsonl", "".join(json.dumps(x, sort_keys=True) + "\n" for x in identity_lines).encode()
    )
    return kept_meta, written


def _write_failures(out_dir: Path, failures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Write ``failures.jsonl`` (one line per excluded input, sorted by key); return the sorted list."""
    failure_list = [failures[k] for k in sorted(failures)]
    atomic_write(
        out_dir / "failures.jsonl", "".join(json.dumps(f, sort_keys=True) + "\n" for f in failure_list).encode()
    )
    return failure_list


def _remove_stale_outputs(out_dir: Path, keep: set[str]) -> None:
    """Delete dataset files of an earlier run that this run did not write (e.g. fewer shards now)."""
    for leftover in out_dir.glob(".tmp-*"):  # temporary files of a run killed while writing
        leftover.unlink()
    for sub in ("shards", "plots"):
        root = out_dir / sub
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), reverse=True):
            rel = str(path.relative_to(out_dir))
            if path.is_file() and rel not in keep:
                path.unlink()
