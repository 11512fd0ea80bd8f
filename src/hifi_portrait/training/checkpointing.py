"""``checkpoint-{step}`` folders: listing, ``latest`` resolution, rotation, and the training RNG's state.

The folders are written by ``accelerator.save_state`` (optimizer, LR scheduler, sampler, global RNG states and
every object registered with ``register_for_checkpointing``); our trainable modules are saved in them by the
save hook of :mod:`hifi_portrait.training.trainer` as one adapter ``.safetensors`` (the same file format as the
exported adapter), so any checkpoint can also be loaded directly by the pipeline.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import torch

from hifi_portrait.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-{step}`` folders of ``output_dir`` sorted by step (oldest first); ``[]`` if none."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | Path) -> int:
    """The global step a ``checkpoint-{step}`` folder was saved at."""
    m = CHECKPOINT_RE.match(Path(path).name)
    if m is None:
        raise ConfigError(f"{path} is not a checkpoint folder (expected a name like checkpoint-1000).")
    return int(m.group(1))


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from, or None to start fresh.

    ``resume`` is ``None`` (fresh start), ``"latest"`` (the newest ``checkpoint-*`` in ``output_dir``; a fresh
    start with a log line when there is none, as in diffusers' examples), a folder name inside ``output_dir`` or
    a path to a checkpoint folder (an error when it does not exist, since the user asked for that one).
    """
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("no checkpoint in %s: starting a new training run", output_dir)
            return None
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        path = Path(output_dir) / resume
    if not path.is_dir():
        raise ConfigError(
            f"checkpoint {resume!r} to resume from does not exist (looked in {Path(output_dir)}); "
            f"use 'latest' or one of: {', '.join(p.name for p in list_checkpoints(output_dir)) or 'none yet'}."
        )
    checkpoint_step(path)
    return path


def rotate_checkpoints(output_dir: str | Path, total_limit: int | None) -> list[Path]:
    """Before saving a new checkpoint, delete the oldest so that at most ``total_limit`` remain after it.

    Returns the removed folders.
    """
    if total_limit is None:
        return []
    found = list_checkpoints(output_dir)
    if len(found) < total_limit:
        return []
    removing = found[: len(found) - total_limit + 1]
    logger.info("%d checkpoints exist, removing %s", len(found), ", ".join(p.name for p in removing))
    for p in removing:
        shutil.rmtree(p)
    return removing


class TrainingRNG:
    """The random generator of the training step (noise, timesteps, condition dropout, VAE sampling).

    A dedicated ``torch.Generator`` rather than the global RNG, so that the sequence of random draws depends only
    on the seed and the step: the DataLoader and other libraries also draw from the global RNG, at moments that
    differ between an uninterrupted run and a resumed one. Registered with ``accelerator.register_for_checkpointing``
    so its state travels in every checkpoint.

    With several processes, every process draws the numbers of the *global* batch (its first dimension times
    ``num_processes``) from the same seed and keeps its own slice: the sample that is the ``k``-th of a global
    batch gets the same noise, timestep and dropout whether the batch is split over 1 or 2 processes, so a
    2-process run equals a 1-process run with the same global batch (tested to 1e-5). Every process's generator
    state is saved in each checkpoint all the same.

    Args:
        seed: base seed (``None``: a random one).
        device: where the random tensors are drawn.
        process_index, num_processes: this process's rank and the number of processes.
    """

    def __init__(
        self, seed: int | None, device: torch.device | str = "cpu", process_index: int = 0, num_processes: int = 1
    ):
        self.device = torch.device(device)
        self.process_index, self.num_processes = int(process_index), max(1, int(num_processes))
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator_state"].cpu())

    def _local(self, draw, shape: tuple[int, ...]) -> torch.Tensor:
        """``draw(shape)`` for this process's part of the global batch (dimension 0 is the batch)."""
        if self.num_processes == 1:
            return draw(shape)
        n = shape[0]
        full = draw((n * self.num_processes, *shape[1:]))
        return full[self.process_index * n : (self.process_index + 1) * n]

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._local(
            lambda s: torch.randn(s, generator=self.generator, device=self.device, dtype=dtype), tuple(shape)
        )

    def rand(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._local(lambda s: torch.rand(s, generator=self.generator, device=self.device), tuple(shape))

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self._local(
            lambda s: torch.randint(0, high, s, generator=self.generator, device=self.device), tuple(shape)
        )
