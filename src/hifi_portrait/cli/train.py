"""``hifi-portrait train --config FILE``: train the face refiner, HiFi-Net and ID attention on a built dataset.

Writes, under ``train.output_dir`` of the config: ``config.yaml`` (the full config, defaults included),
``checkpoint-{step}/`` folders (resume with ``--resume latest``), ``logs/`` (TensorBoard: loss, lr, val_loss,
validation images), ``validation/*.png`` and, at the end, ``hifi_portrait_adapter.safetensors`` (load it with
``pipe.load_hifi_portrait(path)``).

For several GPUs: ``accelerate launch -m hifi_portrait.training.train --config FILE`` (same options).
See docs/training.md for a full config, data sizes and compute estimates.

Exit codes: 1 dataset missing or empty, training failed; 2 bad config (unknown key, bad value); 3 model files
missing (SDXL base folder, image encoder).
"""

from __future__ import annotations

from pathlib import Path

import typer

from hifi_portrait.cli.common import user_errors


def train(
    config: Path = typer.Option(..., "--config", "-c", help="YAML training config (see docs/training.md)."),
    resume: str = typer.Option(
        None, "--resume", help="'latest' or a checkpoint folder: continue a run (overrides the config)."
    ),
    output_dir: Path = typer.Option(None, "--output-dir", "-o", help="Run folder (overrides train.output_dir)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override one config value, e.g. --set optim.learning_rate=5e-5 (repeatable)."
    ),
    stop_after_steps: int = typer.Option(
        None, "--stop-after-steps", help="Save a checkpoint and stop at this global step (time-limited jobs)."
    ),
) -> None:
    """Train a HiFi-Portrait adapter (one .safetensors file) with accelerate.

    Examples:

      hifi-portrait train --config configs/train_sdxl.yaml

      hifi-portrait train --config configs/train_sdxl.yaml --resume latest --set train.max_train_steps=200000
    """
    from hifi_portrait.training.config import load_config

    with user_errors():
        options = []  # validated with the file, errors name the option
        if resume:
            options.append((("checkpointing", "resume_from_checkpoint"), resume, f"--resume {resume}"))
        if output_dir is not None:
            options.append((("train", "output_dir"), str(output_dir), f"--output-dir {output_dir}"))
        cfg = load_config(config, list(set_), options)  # checked before the (slow) training stack is imported
        from hifi_portrait.training.train import train as run_training

        typer.echo(f"training into {cfg.train.output_dir} (full config: {Path(cfg.train.output_dir) / 'config.yaml'})")
        result = run_training(cfg, stop_after_steps=stop_after_steps)
    if result.adapter_path is not None:
        typer.echo(f"done: {result.global_step} steps in {result.seconds:.0f} s; adapter: {result.adapter_path}")
    else:
        typer.echo(f"stopped at step {result.global_step}; resume with --resume latest")
