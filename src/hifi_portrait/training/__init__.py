"""Training of the HiFi-Portrait adapter (face refiner, HiFi-Net, ID attention) with accelerate.

Public API::

    from hifi_portrait.training import load_config
    from hifi_portrait.training.train import train

    cfg = load_config("train.yaml", overrides=["train.max_train_steps=1000"])
    result = train(cfg)              # -> TrainResult (steps, losses, val_losses, adapter_path)

CLI: ``hifi-portrait train --config FILE`` or ``accelerate launch -m hifi_portrait.training.train --config FILE``
(``train`` is a module, so that ``-m`` works; the function of the same name lives in it). See docs/training.md.
"""

from hifi_portrait.training.config import TrainingConfig, config_from_dict, load_config

__all__ = ["TrainingConfig", "config_from_dict", "load_config"]
