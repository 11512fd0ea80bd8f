"""Saving and loading the trainable state as safetensors: the adapter file, EMA weights and the step RNG.

The adapter file is the one the pipeline loads (``pipe.load_hifi_portrait(path)``), written by
``hifi_portrait.loaders.write_adapter_file`` with namespaced keys ``face_refiner.*``, ``hifi_net.*``, ``ip_attn.*``.
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


def save_adapter(model, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the training model's face refiner, HiFi-Net and ID attention as one adapter ``.safetensors``."""
    from hifi_portrait.loaders import write_adapter_file

    procs = dict(zip(model.id_layer_names, model.ip_attn, strict=True))
    scale = next(iter(procs.values())).scale if procs else 1.0
    return write_adapter_file(
        path,
        face_refiner=model.face_refiner,
        hifi_net=model.hifi_net,
        ip_attn=procs,
        ip_scale=scale,
        overwrite=True,
        extra_metadata=extra_metadata,
        identity_model=getattr(model, "identity_model", None),
    )


def load_adapter_into(model, path: str | Path) -> None:
    """Load an adapter file's weights into the training model.

    Raises:
        ModelFilesMissingError: no such file. WeightsMismatchError: missing, unexpected or misshaped keys (named),
            e.g. an adapter made with other ``model.face_refiner`` / ``model.hifi_net`` options.
    """
    from hifi_portrait.loaders import check_state_dict, read_adapter_file

    adapter = read_adapter_file(path)
    for part in ("face_refiner", "hifi_net"):
        module = getattr(model, part)
        sd = adapter.tensors.get(part)
        if sd is None:
            raise WeightsMismatchError(f"{path} has no {part} part; training needs a full adapter.")
        check_state_dict(_shapes(module.state_dict()), _shapes(sd), part, str(path))
        module.load_state_dict(_to(sd, module))
    ip = adapter.tensors.get("ip_attn", {})
    expected = {}
    for name, proc in zip(model.id_layer_names, model.ip_attn, strict=True):
        expected.update({f"{name}.{k}": v.shape for k, v in proc.state_dict().items()})
    check_state_dict(expected, _shapes(ip), "ip_attn", str(path))
    for name, proc in zip(model.id_layer_names, model.ip_attn, strict=True):
        proc.load_state_dict(_to({k: ip[f"{name}.{k}"] for k in proc.state_dict()}, proc))


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in sd.items()}


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
