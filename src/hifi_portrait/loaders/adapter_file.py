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

The models can be built from the file alone. Reading never unpickles anything, and nothing in the file can make
the loader read another path or the network (configs are JSON objects, never strings).

Reading is in two steps: :func:`read_adapter_header` validates the whole header (metadata schema with bounded
sizes, dtypes, every tensor's shape against what its config builds, computed on the meta device) without reading
tensor data, then :func:`load_adapter_tensors` reads the tensors. Every failure is a typed error naming the file
and the field (:class:`~hifi_portrait.errors.AdapterFormatError`, a ``WeightsMismatchError``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hifi_portrait.errors import AdapterFormatError, ModelFilesMissingError, WeightsMismatchError
from hifi_portrait.loaders.validation import (
    ALLOWED_DTYPES,
    LIMITS,
    Check,
    bool_list,
    boolean,
    check_dtype,
    choice,
    int_list,
    integer,
    number,
    short,
    strict_json,
    validate_config,
)
from hifi_portrait.models.face_refiner import FaceRefiner
from hifi_portrait.models.hifi_net import HiFiNetModel

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_FORMAT",
    "AdapterFile",
    "FACE_REFINER_SCHEMA",
    "HIFI_NET_SCHEMA",
    "IP_ATTN_SCHEMA",
    "PARTS",
    "check_identity_model",
    "check_state_dict",
    "expected_shapes",
    "load_adapter_tensors",
    "read_adapter_file",
    "read_adapter_header",
    "write_adapter_file",
]

ADAPTER_FORMAT = "hifi-portrait-adapter"
FORMAT_VERSION = "1"
PARTS = ("face_refiner", "hifi_net", "ip_attn")
_MAX_LISTED = 12


@dataclass
class AdapterFile:
    """Content of an adapter file: per part, its tensors (keys without the namespace), shapes and validated config."""

    path: Path | None
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, dict[str, torch.Size]] = field(default_factory=dict)

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


# ---------------------------------------------------------------------------------------------- reading
_HINT = "Use an adapter file written by save_hifi_portrait / `hifi-portrait train`; this one is damaged or was edited."
_LAYER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_W = LIMITS["width"]

#: Schema of ``face_refiner_config`` (keys = FaceRefiner's constructor arguments; left out = their defaults).
FACE_REFINER_SCHEMA: dict[str, Check] = {
    "id_embed_dim": integer(1, _W),
    "patch_dim": integer(1, _W),
    "num_patches": integer(1, LIMITS["patches"]),
    "hidden_dim": integer(1, _W),
    "num_tokens": integer(1, LIMITS["id_tokens"]),
    "output_dim": integer(1, _W),
    "num_layers": integer(1, LIMITS["depth"]),
    "num_heads": integer(1, LIMITS["heads"]),
    "id_tokens_per_ref": integer(1, LIMITS["depth"]),
    "ff_mult": integer(1, LIMITS["ff_mult"]),
    "quality_eps": number(0.0, 1.0, lo_open=True),
}

#: Schema of ``hifi_net_config`` (keys = HiFiNetModel's constructor arguments; left out = their defaults).
HIFI_NET_SCHEMA: dict[str, Check] = {
    "in_channels": integer(1, 64),
    "block_out_channels": int_list(1, _W, max_len=LIMITS["levels"]),
    "layers_per_block": integer(1, LIMITS["blocks_per_level"]),
    "cross_attention_dim": integer(1, _W),
    "flip_sin_to_cos": boolean(),
    "freq_shift": integer(0, 16),
    "addition_embed_type": choice("text_time", None),
    "addition_time_embed_dim": integer(1, _W, nullable=True),
    "projection_class_embeddings_input_dim": integer(1, 8 * _W, nullable=True),
    "vae_scale_factor": integer(1, 64),  # a power of 2: the model checks it
    "size_ratio": number(0.0, 4.0, lo_open=True),
    "branch_layers_per_block": integer(1, LIMITS["blocks_per_level"]),
    "attention_levels": bool_list(max_len=LIMITS["levels"]),
    "align_levels": bool_list(max_len=LIMITS["levels"]),
    "attention_head_dim": integer(1, _W),
    "norm_num_groups": integer(1, 1024),
    "conditioning_channels": integer(1, 16),
    "conditioning_embedding_channels": int_list(1, _W, max_len=LIMITS["levels"]),
    "use_mid_block": boolean(),
}

#: Schema of ``ip_attn_config`` (every key required; ``layers`` checked by :func:`_ip_layers`).
IP_ATTN_SCHEMA: dict[str, Check] = {
    "num_tokens": integer(1, LIMITS["id_tokens"]),
    "scale": number(-100.0, 100.0),
    "layers": lambda value: value,
}

_MODELS = {"face_refiner": (FaceRefiner, FACE_REFINER_SCHEMA), "hifi_net": (HiFiNetModel, HIFI_NET_SCHEMA)}


def _fail(path: Path, message: str) -> AdapterFormatError:
    return AdapterFormatError(f"{path}: {message}. {_HINT}")


def _regular_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise ModelFilesMissingError(
            f"adapter file {path} is a symbolic link to a missing file (or a link loop); point it at the adapter's "
            ".safetensors file"
        )
    if not path.exists():
        raise ModelFilesMissingError(
            f"adapter file {path} not found. It is the .safetensors file written by training "
            "(save_hifi_portrait) or downloaded with a hifi-portrait checkpoint."
        )
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe, socket or device)"
        raise AdapterFormatError(f"adapter file {path} is {kind}; give the adapter's .safetensors file")


def _header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """Metadata and ``{key: (dtype name, shape)}`` from the safetensors header; no tensor data is read."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            specs = {}
            for key in f.keys():  # noqa: SIM118 - safe_open has no items()
                view = f.get_slice(key)
                specs[key] = (str(view.get_dtype()), tuple(int(n) for n in view.get_shape()))
    except Exception as exc:  # safetensors raises its own error types for corrupt or truncated headers
        raise AdapterFormatError(
            f"{path} is not a readable .safetensors file ({short(str(exc), 160)}). Adapter files are the "
            ".safetensors written by save_hifi_portrait; the file may be truncated or of another format."
        ) from None
    return meta, specs


def _parts(meta: dict[str, str], path: Path) -> list[str]:
    if "parts" not in meta:
        raise _fail(path, f"the metadata has no 'parts' entry (a JSON list, any of {', '.join(PARTS)})")
    parts = strict_json(meta["parts"], "parts", path, _HINT)
    if not isinstance(parts, list) or not parts:
        raise _fail(path, f"metadata 'parts' must be a non-empty JSON list of {', '.join(PARTS)}, got {short(parts)}")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise _fail(path, f"metadata 'parts' names unknown parts {short(unknown)}; known parts: {', '.join(PARTS)}")
    if len(set(parts)) != len(parts):
        raise _fail(path, f"metadata 'parts' lists a part twice: {short(parts)}")
    orphans = [
        k
        for k in meta
        if k.endswith("_config") and k.removesuffix("_config") in PARTS and k.removesuffix("_config") not in parts
    ]
    if orphans:
        raise _fail(path, f"metadata has {', '.join(orphans)} but 'parts' {short(parts)} does not list that part")
    return [p for p in PARTS if p in parts]


def _ip_layers(layers: Any, path: Path) -> dict[str, tuple[int, int]]:
    if not isinstance(layers, dict) or not layers:
        raise _fail(
            path, f"ip_attn_config.layers must be a non-empty JSON object {{name: [hidden, D]}}, got {short(layers)}"
        )
    if len(layers) > LIMITS["ip_layers"]:
        raise _fail(path, f"ip_attn_config.layers lists {len(layers)} layers, more than {LIMITS['ip_layers']}")
    out = {}
    for name, dims in layers.items():
        if not name:
            raise _fail(path, "ip_attn_config.layers has an empty layer name")
        if len(name) > LIMITS["layer_name_chars"] or not _LAYER_NAME.match(name):
            raise _fail(path, f"ip_attn_config.layers has a malformed layer name {short(name)}")
        if not name.endswith("attn2"):
            raise _fail(
                path,
                f"ip_attn_config.layers names {short(name)}, which is not a text cross-attention layer (attn2): "
                "ID attention only goes on the UNet's attn2 layers",
            )
        if (
            not isinstance(dims, list)
            or len(dims) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        ):
            raise _fail(
                path,
                f"ip_attn_config.layers[{short(name)}] must be [hidden_size, cross_attention_dim], got {short(dims)}",
            )
        if not all(1 <= d <= _W for d in dims):
            raise _fail(
                path, f"ip_attn_config.layers[{short(name)}] sizes must be between 1 and {_W}, got {short(dims)}"
            )
        out[name] = (dims[0], dims[1])
    return out


def _configs(meta: dict[str, str], parts: list[str], path: Path) -> dict[str, dict[str, Any]]:
    configs = {}
    for part in parts:
        key = f"{part}_config"
        if key not in meta:
            raise _fail(path, f"part {part!r} is declared but the metadata has no {key!r} to build it from")
        raw = strict_json(meta[key], key, path, _HINT)
        if part == "ip_attn":
            cfg = validate_config(raw, IP_ATTN_SCHEMA, key, path, required=tuple(IP_ATTN_SCHEMA), hint=_HINT)
            cfg["layers"] = _ip_layers(cfg["layers"], path)
        else:
            cls, schema = _MODELS[part]
            cfg = validate_config(raw, schema, key, path, class_name=cls.__name__, hint=_HINT)
        configs[part] = cfg
    return configs


def expected_shapes(part: str, config: dict[str, Any], path: Path | str = "") -> dict[str, torch.Size]:
    """``{state-dict key: shape}`` of the model a validated config builds, computed on the meta device (no memory,
    no random init: costs only the construction of a bounded number of modules)."""
    if part == "ip_attn":
        shapes = {}
        for name, (hidden, cross) in config["layers"].items():
            shapes[f"{name}.to_k_ip.weight"] = shapes[f"{name}.to_v_ip.weight"] = torch.Size([hidden, cross])
        return shapes
    cls, _ = _MODELS[part]
    try:
        with torch.device("meta"):
            model = cls(**config)
    except Exception as exc:  # the model's own argument checks (divisibility, lengths...)
        raise AdapterFormatError(
            f"{path}: {part}_config cannot build a {cls.__name__}: {short(str(exc), 200)}. {_HINT}"
        ) from None
    return {k: v.shape for k, v in model.state_dict().items()}


def read_adapter_header(path: str | Path) -> AdapterFile:
    """Read and fully validate an adapter file's header, reading no tensor data.

    Checks, in order: the file is a readable safetensors file; ``format`` / ``format_version``; ``parts``; every
    part's config (a JSON object with known keys, right types, bounded sizes, see ``LIMITS``); keys inside the
    declared parts; dtypes (float16/bfloat16/float32); every tensor's shape against the one the config builds.

    Returns:
        An :class:`AdapterFile` with ``configs`` (validated, ready for ``from_config``) and ``shapes``; its
        ``tensors`` are empty until :func:`load_adapter_tensors`.

    Raises:
        ModelFilesMissingError: the file does not exist.
        AdapterFormatError: anything malformed (the message names the file and the field).
        WeightsMismatchError: keys missing, unexpected or wrongly shaped for the configs (named).
    """
    path = Path(path)
    _regular_file(path)
    meta, specs = _header(path)
    if meta.get("format") != ADAPTER_FORMAT:
        raise AdapterFormatError(
            f"{path} is not a hifi-portrait adapter file (metadata 'format' is {short(meta.get('format'))}, expected "
            f"{ADAPTER_FORMAT!r}). InstantID / IP-Adapter files must be converted first."
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterFormatError(
            f"{path}: adapter format_version {short(meta.get('format_version'))} is not supported (this hifi-portrait "
            f"reads version {FORMAT_VERSION!r}); a newer file needs a newer hifi-portrait."
        )
    parts = _parts(meta, path)
    out = AdapterFile(path=path, configs=_configs(meta, parts, path), metadata=meta)
    grouped: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {p: {} for p in parts}
    stray = []
    for key, spec in specs.items():
        part, _, rest = key.partition(".")
        if part in grouped and rest:
            grouped[part][rest] = spec
        else:
            stray.append(key)
    if stray:
        raise WeightsMismatchError(f"{path} has unexpected keys outside the declared parts {parts}: {_listing(stray)}")
    for part in parts:
        for key, (dtype, _) in grouped[part].items():
            check_dtype(dtype, f"{part}.{key}", path)
        file_shapes = {k: torch.Size(shape) for k, (_, shape) in grouped[part].items()}
        check_state_dict(expected_shapes(part, out.configs[part], path), file_shapes, part, str(path))
        out.shapes[part] = file_shapes
    return out


def load_adapter_tensors(adapter: AdapterFile) -> AdapterFile:
    """Read the tensors of a header validated by :func:`read_adapter_header` (checked again as they are read, in
    case the file changed in between). Returns ``adapter`` with ``tensors`` filled."""
    path = adapter.path
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for part, shapes in adapter.shapes.items():
                sd = {}
                for key, shape in shapes.items():
                    t = f.get_tensor(f"{part}.{key}")
                    if t.shape != shape or t.dtype not in ALLOWED_DTYPES.values():
                        raise AdapterFormatError(f"{path} changed while it was read ({part}.{key}); read it again")
                    sd[key] = t
                adapter.tensors[part] = sd
    except AdapterFormatError:
        raise
    except Exception as exc:
        raise AdapterFormatError(f"{path}: reading the tensors failed ({short(str(exc), 160)}). {_HINT}") from None
    return adapter


def read_adapter_file(path: str | Path) -> AdapterFile:
    """Validate an adapter file (:func:`read_adapter_header`) and read its tensors (on CPU, as stored).

    Raises:
        ModelFilesMissingError: the file does not exist.
        AdapterFormatError / WeightsMismatchError: see :func:`read_adapter_header`.
    """
    return load_adapter_tensors(read_adapter_header(path))
