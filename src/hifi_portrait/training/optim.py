"""Optimizer and learning-rate schedule for the trainable modules."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hifi_portrait.errors import ConfigError
from hifi_portrait.training.config import OptimConfig


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig, learning_rate: float | None = None):
    """AdamW (``torch.optim``) or, with ``use_8bit_adam``, bitsandbytes' ``AdamW8bit`` (needs a CUDA GPU).

    Raises:
        ConfigError: ``use_8bit_adam`` is set but bitsandbytes is not installed (the message says how to get it).
    """
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError(
                "optim.use_8bit_adam is true but bitsandbytes is not installed: `pip install 'hifi-portrait[bnb]'` "
                "(or `pip install bitsandbytes`; it needs a CUDA GPU), or set optim.use_8bit_adam: false."
            ) from None
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters: the face refiner, HiFi-Net and ID attention are all frozen.")
    return optimizer_class(
        params,
        lr=learning_rate if learning_rate is not None else cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )


def make_lr_scheduler(optimizer, cfg: OptimConfig, num_training_steps: int, num_processes: int = 1):
    """diffusers' ``get_scheduler`` with warmup and total steps counted as diffusers' examples do (per process)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * num_processes,
        num_training_steps=num_training_steps * num_processes,
        num_cycles=cfg.lr_num_cycles,
        power=cfg.lr_power,
    )
