"""Saving and loading the trainable state as safetensors: the adapter file, EMA weights and the step RNG.

The adapter file is the one the pipeline loads (``pipe.load_hifi_portrait(path)``), written by
``hifi_portrait.loaders.save_hifi_portrait`` with namespaced keys ``face_refiner.*``, ``hifi_net.*``, ``ip_attn.*``.
Nothing here unpickles: EMA and RNG states are tensors in safetensors files plus a small JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hifi_portrait.errors import ModelFilesMissingError, WeightsMismatchError

EMA_WEIGHTS = "ema.safetensors"
EMA_STATE = "ema.json"


def save_adapter(model, path: str | Path) -> Path:
    """Write the training model's face refiner, HiFi-Net and ID attention as one adapter ``.safetensors``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # TEMPORARY until hifi_portrait.loaders lands: same namespaced keys
    state = {f"face_refiner.{k}": v for k, v in model.face_refiner.state_dict().items()}
    state.update({f"hifi_net.{k}": v for k, v in model.hifi_net.state_dict().items()})
    for name, proc in zip(model.id_layer_names, model.ip_attn, strict=True):
        state.update({f"ip_attn.{name}.{k}": v for k, v in proc.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))
    return path


def load_adapter_into(model, path: str | Path) -> None:
    """Load an adapter file's weights into the training model (strict: missing/unexpected keys are an error)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFilesMissingError(f"adapter file {path} does not exist.")
    flat = load_file(str(path))
    parts = {"face_refiner": {}, "hifi_net": {}, "ip_attn": {}}
    for k, v in flat.items():
        ns, rest = k.split(".", 1)
        if ns == "ip_attn":
            layer, param = rest.rsplit(".", 2)[0], ".".join(rest.rsplit(".", 2)[1:])
            parts["ip_attn"].setdefault(layer, {})[param] = v
        else:
            parts[ns][rest] = v
    model.face_refiner.load_state_dict(_to(parts["face_refiner"], model.face_refiner))
    model.hifi_net.load_state_dict(_to(parts["hifi_net"], model.hifi_net))
    ip = parts["ip_attn"]
    missing = [n for n in model.id_layer_names if n not in ip]
    if missing or len(ip) != len(model.id_layer_names):
        raise WeightsMismatchError(
            f"{path}: ID attention layers differ from the model's (missing {missing[:3]}..., file has {len(ip)}, "
            f"model has {len(model.id_layer_names)})."
        )
    for name, proc in zip(model.id_layer_names, model.ip_attn, strict=True):
        proc.load_state_dict(_to(ip[name], proc))


def _to(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    p = next(module.parameters())
    return {k: v.to(device=p.device, dtype=p.dtype) for k, v in state.items()}


def save_ema(ema, folder: Path) -> None:
    """EMA shadow weights (safetensors) and its counters (JSON)."""
    state = ema.state_dict()
    tensors = {f"shadow.{i}": t.detach().contiguous().cpu() for i, t in enumerate(state["shadow_params"])}
    save_file(tensors, str(folder / EMA_WEIGHTS))
    meta = {k: v for k, v in state.items() if k != "shadow_params"}
    (folder / EMA_STATE).write_text(json.dumps(meta))


def load_ema(ema, folder: Path) -> None:
    if not (folder / EMA_WEIGHTS).is_file():
        raise ModelFilesMissingError(
            f"{folder} has no {EMA_WEIGHTS}: it was saved without train.use_ema; resume with use_ema: false."
        )
    tensors = load_file(str(folder / EMA_WEIGHTS))
    meta = json.loads((folder / EMA_STATE).read_text())
    shadow = [tensors[f"shadow.{i}"] for i in range(len(tensors))]
    if len(shadow) != len(ema.shadow_params):
        raise WeightsMismatchError(f"{folder}: EMA has {len(shadow)} tensors, the model {len(ema.shadow_params)}.")
    device = ema.shadow_params[0].device if ema.shadow_params else "cpu"
    ema.load_state_dict({**meta, "shadow_params": [t.to(device) for t in shadow]})


def save_rng(rng, folder: Path, process_index: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in rng.state_dict().items()}, str(folder / f"step_rng_{process_index}.safetensors")
    )


def load_rng(rng, folder: Path, process_index: int) -> None:
    path = folder / f"step_rng_{process_index}.safetensors"
    if not path.is_file():
        raise ModelFilesMissingError(f"{path} is missing: the checkpoint is incomplete or from another world size.")
    rng.load_state_dict(load_file(str(path)))
