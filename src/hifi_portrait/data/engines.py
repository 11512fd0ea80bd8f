"""Engines that run the expensive per-image stage (:func:`~hifi_portrait.data.stages.analyze_shard`) over shards.

* ``local``: the calling process (``workers=1``) or a pool of spawned processes, each holding one analyzer.
* ``ray``: the same function in Ray Data actors (``pip install 'hifi-portrait[ray]'``); connects to a running
  cluster when ``RAY_ADDRESS`` is set (or ``ray.init`` was called), else starts a local Ray instance.

Each finished shard is written by the worker itself, atomically, so that whatever the engine, an interrupted run
keeps all completed shards. Workers end with the builder, even when it is killed with ``kill -9``: pool workers
watch their parent (:func:`~hifi_portrait.utils.lifetime.die_with_parent`), and the processes of a local Ray
instance started here are killed by a guardian (:class:`~hifi_portrait.utils.lifetime.ProcessTreeReaper`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from hifi_portrait.data.shards import ShardSpec, write_shard
from hifi_portrait.data.stages import Analyzer, AnalyzerFactory, analyze_shard
from hifi_portrait.errors import ConfigError
from hifi_portrait.utils.lifetime import ProcessTreeReaper, die_with_parent

logger = logging.getLogger(__name__)

_WORKER_ANALYZER: Analyzer | None = None


def _limit_threads() -> None:
    """One analysis process per core: keep each process's numeric libraries single-threaded."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _init_worker(factory: AnalyzerFactory) -> None:
    global _WORKER_ANALYZER
    die_with_parent()
    _limit_threads()
    _WORKER_ANALYZER = factory()


def process_shard(spec: ShardSpec, analyzer: Analyzer, work_dir: Path, multi_face: str, max_pixels: int) -> dict:
    """Analyse one shard and write its result file; returns ``{"index", "ok", "failed"}`` counts."""
    result = analyze_shard(spec, analyzer, multi_face, max_pixels)
    write_shard(Path(work_dir) / spec.filename(), result)
    ok = sum(1 for r in result.records if r["ok"])
    return {"index": spec.index, "ok": ok, "failed": len(result.records) - ok}


def _pool_task(spec: ShardSpec, work_dir: str, multi_face: str, max_pixels: int) -> dict:
    assert _WORKER_ANALYZER is not None
    return process_shard(spec, _WORKER_ANALYZER, Path(work_dir), multi_face, max_pixels)


def run_local(
    specs: list[ShardSpec],
    work_dir: Path,
    factory: AnalyzerFactory,
    workers: int,
    multi_face: str,
    max_pixels: int,
    progress: Callable[[dict], None] | None = None,
) -> None:
    """Analyse ``specs`` in this process (``workers == 1``) or in ``workers`` spawned processes."""
    if not specs:
        return
    if workers <= 1:
        analyzer = factory()
        for spec in specs:
            counts = process_shard(spec, analyzer, work_dir, multi_face, max_pixels)
            if progress:
                progress(counts)
        return
    ctx = get_context("spawn")  # fork + threaded native libraries (onnxruntime, mediapipe) can deadlock
    with ProcessPoolExecutor(
        max_workers=min(workers, len(specs)), mp_context=ctx, initializer=_init_worker, initargs=(factory,)
    ) as pool:
        futures = [pool.submit(_pool_task, spec, str(work_dir), multi_face, max_pixels) for spec in specs]
        for future in as_completed(futures):
            counts = future.result()
            if progress:
                progress(counts)


class _RayShardWorker:
    """Ray Data actor: holds one analyzer, processes one shard per row."""

    def __init__(self, factory: AnalyzerFactory, work_dir: str, multi_face: str, max_pixels: int) -> None:
        _limit_threads()
        self.analyzer = factory()
        self.work_dir, self.multi_face, self.max_pixels = Path(work_dir), multi_face, max_pixels

    def __call__(self, row: dict) -> dict:
        return process_shard(row["spec"], self.analyzer, self.work_dir, self.multi_face, self.max_pixels)


def run_ray(
    specs: list[ShardSpec],
    work_dir: Path,
    factory: AnalyzerFactory,
    workers: int,
    multi_face: str,
    max_pixels: int,
    progress: Callable[[dict], None] | None = None,
) -> None:
    """Analyse ``specs`` with Ray Data: one row per shard, ``workers`` actors (one CPU each)."""
    if not specs:
        return
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray Data: pip install 'hifi-portrait[ray]' (or 'ray[data]'), or use --engine local"
        ) from None
    address = os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized() and not address
    reaper = ProcessTreeReaper() if started else None  # a local instance must not outlive a killed builder
    try:
        if not ray.is_initialized():
            ray.init(
                address=address,
                num_cpus=None if address else max(1, workers),
                include_dashboard=False,
                ignore_reinit_error=True,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"spec": spec} for spec in specs], override_num_blocks=len(specs))
        ds = ds.map(
            _RayShardWorker,
            fn_constructor_args=(factory, str(work_dir), multi_face, max_pixels),
            concurrency=max(1, min(workers, len(specs))),
            num_cpus=1,
        )
        for row in ds.iter_rows():
            if progress:
                progress(row)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
        if reaper is not None:
            reaper.close()


ENGINES = {"local": run_local, "ray": run_ray}


def get_engine(name: str):
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    return ENGINES[name]


def make_progress(total_images: int, done_images: int, enabled: bool = True):
    """A tqdm bar over images and the callback engines call with each finished shard's counts."""
    bar = tqdm(total=total_images, initial=done_images, unit="img", desc="analysing faces", disable=not enabled)

    def update(counts: dict) -> None:
        bar.update(int(counts["ok"]) + int(counts["failed"]))

    return bar, update
