"""``hifi-portrait build-dataset INPUT... --out DIR [--engine local|ray] [--config FILE]``.

Builds an identity-grouped training set from folders, tar shards or CSV/Parquet lists of photos (see
docs/dataset.md). Re-running the same command on the same ``--out`` resumes an interrupted build without
recomputing finished analysis shards, and writes byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hifi_portrait.cli.common import user_errors


def build_dataset(
    inputs: list[Path] = typer.Argument(..., help="Folders (recursive), .tar shards, .csv/.parquet lists, or images."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created; re-run on it to resume)."),
    engine: str = typer.Option("local", "--engine", help="local (processes on this machine) or ray (Ray Data)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML or JSON builder config."),
    workers: int | None = typer.Option(None, "--workers", "-j", help="Analysis processes (default: CPU cores)."),
    labels: str | None = typer.Option(None, "--labels", help="auto, folders, column or none (overrides config)."),
    output_format: str | None = typer.Option(None, "--format", help="webdataset or parquet (overrides config)."),
) -> None:
    """Build an identity-grouped dataset (refs + targets + landmarks + captions) from photo collections."""
    from hifi_portrait.data import build_dataset as run_build
    from hifi_portrait.data.config import BuilderConfig
    from hifi_portrait.utils.config import load_model

    with user_errors():
        options = [  # command-line values go through the same validation as the file's, errors name the option
            (("workers",), workers, f"--workers {workers}"),
            (("labels",), labels, f"--labels {labels}"),
            (("output", "format"), output_format, f"--format {output_format}"),
        ]
        cfg = load_model(BuilderConfig, config, overrides=[o for o in options if o[1] is not None])
        import os

        progress = os.environ.get("TQDM_DISABLE", "") not in ("1", "true", "True")
        result = run_build([str(p) for p in inputs], out, cfg, engine=engine, progress=progress)
    stats = result.stats
    typer.echo(
        f"dataset: {out}\n"
        f"  inputs {result.inputs}, samples {result.samples}, identities {result.identities} "
        f"({stats['labels']}), excluded {result.excluded} {stats['excluded_by_stage']}\n"
        f"  roles {stats['roles']}, identity model {stats['identity_model']}\n"
        f"  analysis shards: {result.shards_computed} computed, {result.shards_reused} reused; "
        f"{result.seconds:.1f}s ({result.inputs / max(result.seconds, 1e-9):.1f} images/s)\n"
        f"  see {out / 'stats.json'}, {out / 'failures.jsonl'}, {out / 'plots'}"
    )
