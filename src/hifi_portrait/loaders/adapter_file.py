"""The one-file hifi-portrait adapter: a ``.safetensors`` file with namespaced keys and its configs as metadata.

Layout::

    face_refiner.<FaceRefiner state_dict key>     e.g. face_refiner.latents
    hifi_net.<HiFiNetModel state_dict key>        e.g. hifi_net.zero_convs.0.weight
    ip_attn.<UNet attn2 layer name>.to_k_ip.weight
    ip_attn.<UNet attn2 layer name>.to_v_ip.weight
    (e.g. ip_attn.mid_block.attentions.0.transformer_blocks.0.attn2.to_v_ip.weight)

safetensors metadata (all values are strings):

* ``format`` = ``"hifi-portrait-adapter"``, ``format_version`` = ``"1"``;
* ``parts``: JSON list of the namespaces present (any non-empty subset of the three);
* ``face_refiner_config`` / ``hifi_net_config``: the models' diffusers configs as JSON;
* ``ip_attn_config``: JSON ``{"num_tokens": T, "scale": s, "layers": {name: [hidden_size, cross_attention_dim]}}``;
* ``identity_model`` (when known, e.g. ``"dlib-resnet-128"``) and ``identity_dim`` (with a face refiner): the
  identity vectors the adapter was trained on. References analysed with another identity model are refused
  (:func:`check_identity_model`): their vectors would be read as the wrong tokens.

The models can be built from the file alone. Reading never unpickles anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hifi_portrait.errors import ModelFilesMissingError, WeightsMismatchError

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_FORMAT",
    "AdapterFile",
    "PARTS",
    "check_identity_model",
    "check_state_dict",
    "read_adapter_file",
    "write_adapter_file",
]

ADAPTER_FORMAT = "hifi-portrait-adapter"
FORMAT_VERSION = "1"
PARTS = ("face_refiner", "hifi_net", "ip_attn")
_MAX_LISTED = 12


@dataclass
class AdapterFile:
    """Content of an adapter file: per part, its tensors (keys without the namespace) and its config."""

    path: Path | None
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def parts(self) -> list[str]:
        return [p for p in PARTS if p in self.configs]


def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def check_state_dict(
    model_keys: dict[str, torch.Size], file_keys: dict[str, torch.Size], namespace: str, source: str
) -> None:
    """Raise :class:`WeightsMismatchError` naming missing, unexpected or wrongly shaped keys.

    Args:
        model_keys: ``{key: shape}`` the model expects (without namespace).
        file_keys: ``{key: shape}`` found in the file (without namespace).
        namespace: the part (``face_refiner``...), used to print full key names.
        source: the file, for the message.
    """
    missing = [f"{namespace}.{k}" for k in model_keys if k not in file_keys]
    unexpected = [f"{namespace}.{k}" for k in file_keys if k not in model_keys]
    shapes = [
        f"{namespace}.{k} (file {tuple(file_keys[k])}, model {tuple(s)})"
        for k, s in model_keys.items()
        if k in file_keys and tuple(file_keys[k]) != tuple(s)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes: {_listing(shapes)}")
    if problems:
        raise WeightsMismatchError(
            f"{source} does not match the {namespace} model it describes; "
            + "; ".join(problems)
            + ". Use a file written by save_hifi_portrait for this base model, or convert it first."
        )


def write_adapter_file(
    path: str | Path,
    face_refiner: torch.nn.Module | None = None,
    hifi_net: torch.nn.Module | None = None,
    ip_attn: dict[str, torch.nn.Module] | None = None,
    ip_num_tokens: int | None = None,
    ip_scale: float = 1.0,
    overwrite: bool = False,
    extra_metadata: dict[str, str] | None = None,
    identity_model: str | None = None,
) -> Path:
    """Write the parts given into one ``.safetensors`` file.

    Args:
        path: output file; must end in ``.safetensors``; its folder is created.
        face_refiner, hifi_net: diffusers models (``ModelMixin, ConfigMixin``).
        ip_attn: ``{attn2 layer name: IDAttnProcessor}`` (see ``get_id_attn_processors``).
        ip_num_tokens: ``T`` (defaults to the processors' ``num_tokens``).
        overwrite: replace an existing file (otherwise :class:`FileExistsError`).
        extra_metadata: more string metadata (e.g. training step, base model name).
        identity_model: the ``FaceAnalysis.identity_model`` of the training data (recorded, checked at use).

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"adapter files end in .safetensors, got {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name ending in .safetensors")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"format": ADAPTER_FORMAT, "format_version": FORMAT_VERSION}
    parts = []
    for name, model in (("face_refiner", face_refiner), ("hifi_net", hifi_net)):
        if model is None:
            continue
        parts.append(name)
        meta[f"{name}_config"] = model.to_json_string()
        for key, value in model.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    if ip_attn:
        parts.append("ip_attn")
        procs = dict(ip_attn)
        num_tokens = ip_num_tokens if ip_num_tokens is not None else next(iter(procs.values())).num_tokens
        layers = {}
        for layer, proc in procs.items():
            layers[layer] = [proc.hidden_size, proc.cross_attention_dim]
            tensors[f"ip_attn.{layer}.to_k_ip.weight"] = proc.to_k_ip.weight.detach().cpu().contiguous()
            tensors[f"ip_attn.{layer}.to_v_ip.weight"] = proc.to_v_ip.weight.detach().cpu().contiguous()
        ip_cfg = {"num_tokens": int(num_tokens), "scale": float(ip_scale), "layers": layers}
        meta["ip_attn_config"] = json.dumps(ip_cfg)
    if not parts:
        raise ValueError("nothing to save: give at least one of face_refiner, hifi_net, ip_attn")
    meta["parts"] = json.dumps(parts)
    if identity_model:
        meta["identity_model"] = str(identity_model)
    if face_refiner is not None and "id_embed_dim" in face_refiner.config:
        meta["identity_dim"] = str(int(face_refiner.config["id_embed_dim"]))
    for key, value in (extra_metadata or {}).items():
        meta[str(key)] = str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    logger.info("wrote hifi-portrait adapter %s (%s, %d tensors)", path, ", ".join(parts), len(tensors))
    return path


def check_identity_model(metadata: dict[str, str], identity_model: str | None, where: str) -> None:
    """Refuse identity vectors of another identity model than the adapter's (when both are known).

    Raises:
        WeightsMismatchError: the adapter records ``identity_model`` X and the references were analysed with Y.
    """
    trained = metadata.get("identity_model")
    if not trained or not identity_model or trained == identity_model:
        return
    dim = metadata.get("identity_dim", "?")
    hint = (
        "FaceAnalyzer(insightface_dir=<the insightface model folder>)"
        if trained.startswith("insightface")
        else "the default FaceAnalyzer()"
        if trained.startswith("dlib")
        else f"a FaceAnalyzer whose embedder is {trained!r}"
    )
    raise WeightsMismatchError(
        f"{where}: the adapter was trained on {trained} identity vectors ({dim}-d) but the references were "
        f"analysed with {identity_model}; analyse them with {hint}, or load an adapter trained for {identity_model}."
    )


def read_adapter_file(path: str | Path) -> AdapterFile:
    """Read and validate the structure of an adapter file (tensors on CPU, configs parsed).

    Raises:
        ModelFilesMissingError: the file does not exist.
        WeightsMismatchError: not an adapter file, a part without config, or keys outside the known namespaces.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFilesMissingError(
            f"adapter file {path} not found. It is the .safetensors file written by training "
            "(save_hifi_portrait) or downloaded with a hifi-portrait checkpoint."
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsMismatchError(f"{path} is not a readable .safetensors file ({exc})") from exc
    if meta.get("format") != ADAPTER_FORMAT:
        raise WeightsMismatchError(
            f"{path} is not a hifi-portrait adapter file (metadata 'format' is {meta.get('format')!r}, expected "
            f"{ADAPTER_FORMAT!r}). InstantID / IP-Adapter files must be converted first."
        )
    out = AdapterFile(path=path, metadata=meta)
    parts = json.loads(meta.get("parts", "[]"))
    for part in parts:
        if part not in PARTS:
            raise WeightsMismatchError(f"{path} declares an unknown part {part!r}; known parts: {', '.join(PARTS)}")
        key = f"{part}_config"
        if key not in meta:
            raise WeightsMismatchError(f"{path} has part {part!r} but no {key!r} metadata to build it from")
        out.configs[part] = json.loads(meta[key])
        out.tensors[part] = {}
    stray = []
    for key, value in raw.items():
        part, _, rest = key.partition(".")
        if part in out.tensors and rest:
            out.tensors[part][rest] = value
        else:
            stray.append(key)
    if stray:
        raise WeightsMismatchError(f"{path} has unexpected keys outside the declared parts {parts}: {_listing(stray)}")
    return out
