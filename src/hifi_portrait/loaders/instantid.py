"""InstantID's published weights with the HiFi-Portrait pipeline: convert, load, and feed our references.

InstantID (https://huggingface.co/InstantX/InstantID) ships

* ``ControlNetModel/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``): **IdentityNet**, a full
  diffusers ``ControlNetModel`` conditioned on a 5-keypoint map, whose cross-attention reads the 16 ID tokens
  (not the text);
* ``ip-adapter.bin``: a torch *pickle* ``{"image_proj": Resampler state dict, "ip_adapter": {"<i>.to_k_ip.weight",
  "<i>.to_v_ip.weight", ...}}`` where ``<i>`` indexes ``unet.attn_processors`` in order (odd indices = the
  ``attn2`` text cross-attentions of SDXL).

:func:`convert_instantid_checkpoint` reads the pickle **only** with ``torch.load(..., weights_only=True)``
(anything but tensors and plain containers is refused) and writes a ``.safetensors`` with namespaced keys::

    image_proj.<Resampler key>        (see hifi_portrait.models.instantid_projection)
    ip_adapter.<i>.to_k_ip.weight     (hidden_size, cross_attention_dim)
    ip_adapter.<i>.to_v_ip.weight

and the projection's config in the metadata (``format`` = ``"instantid-ip-adapter"``). :func:`load_instantid`
puts it on a :class:`~hifi_portrait.pipelines.StableDiffusionXLHiFiPortraitPipeline`: the projection becomes the
pipeline's ``face_refiner`` (N references fused, then resampled), the ``ip_adapter`` weights become our
:class:`~hifi_portrait.models.IDAttnProcessor` (same arithmetic as InstantID's ``IPAttnProcessor``), IdentityNet
becomes the pipeline's ``controlnet`` and reads the ID tokens. Identity comes from our multi-reference analysis
(:func:`instantid_embeddings`: 512-d insightface ArcFace only) and the keypoint map from
``hifi_portrait.landmarks.render_map(..., "instantid")``. See docs/instantid.md.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hifi_portrait.errors import AdapterFormatError, ConfigError, ModelFilesMissingError, WeightsMismatchError
from hifi_portrait.loaders.adapter_file import check_state_dict
from hifi_portrait.loaders.validation import (
    LIMITS,
    check_dtype,
    check_torch_dtype,
    integer,
    short,
    shown_key,
    strict_json,
    validate_config,
)
from hifi_portrait.models.id_attention import install_id_attention, remove_id_attention
from hifi_portrait.models.instantid_projection import InstantIDImageProjection

logger = logging.getLogger(__name__)

__all__ = [
    "INSTANTID_FORMAT",
    "convert_instantid_checkpoint",
    "instantid_embeddings",
    "instantid_ip_layers",
    "load_instantid",
    "read_instantid_file",
]

INSTANTID_FORMAT = "instantid-ip-adapter"
_INDEX = r"(0|[1-9][0-9]{0,5})"  # canonical decimal (no leading zeros), at most 6 digits
_IP_KEY = re.compile(rf"^{_INDEX}\.to_([kv])_ip\.weight$")
_LAYER_KEY = re.compile(rf"^layers\.{_INDEX}\.")
#: every key of InstantID's Resampler state dict (``layers.<i>.`` repeated ``depth`` times)
_PROJ_KEY = re.compile(
    rf"^(latents|(proj_in|proj_out|norm_out)\.(weight|bias)|layers\.{_INDEX}\."
    r"(0\.(norm1|norm2)\.(weight|bias)|0\.(to_q|to_kv|to_out)\.weight|1\.0\.(weight|bias)|1\.[13]\.weight))$"
)
#: largest ``unet.attn_processors`` index an ``ip_adapter`` key may have (SDXL has 140 processors)
MAX_PROCESSOR_INDEX = 4 * LIMITS["ip_layers"]
#: bounds of the projection config (read from a converted file's metadata or derived from a checkpoint's shapes)
PROJECTION_SCHEMA = {
    "id_embed_dim": integer(1, LIMITS["width"]),
    "num_tokens": integer(1, LIMITS["id_tokens"]),
    "output_dim": integer(1, LIMITS["width"]),
    "hidden_dim": integer(1, LIMITS["width"]),
    "num_layers": integer(1, LIMITS["depth"]),
    "head_dim": integer(1, LIMITS["width"]),
    "num_heads": integer(1, LIMITS["heads"]),
    "ff_mult": integer(1, LIMITS["ff_mult"]),
}
_WHERE = (
    "InstantID's weights are at https://huggingface.co/InstantX/InstantID (ip-adapter.bin and "
    "ControlNetModel/config.json + ControlNetModel/diffusion_pytorch_model.safetensors)"
)


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------- conversion
def _safe_torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        if "Unsupported operand" in reason or "weights only" not in str(exc).lower():  # not a pickle, or corrupt
            raise AdapterFormatError(
                f"{path} is not a readable torch checkpoint ({short(reason, 200)}). {_WHERE}."
            ) from None
        raise WeightsMismatchError(
            f"{path} holds Python objects other than tensors and plain containers, so it was NOT unpickled "
            f"(torch.load with weights_only=True refused it: {short(reason, 200)}). Only checkpoints made of "
            f"tensors, like InstantID's official ip-adapter.bin, can be converted. {_WHERE}."
        ) from None
    except MemoryError:
        raise AdapterFormatError(
            f"{path} claims more memory than is available; it is not InstantID's checkpoint"
        ) from None
    except Exception as exc:  # torch/zipfile/pickle raise many types for damaged files (RuntimeError, EOFError...)
        raise AdapterFormatError(
            f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {short(str(exc), 200)}). {_WHERE}."
        ) from None


def _ndim(key: str) -> int:
    """Rank of a Resampler tensor: latents 3, Linear weights 2, biases and LayerNorm weights 1."""
    if key == "latents":
        return 3
    norm = key.startswith("norm_out.") or ".norm1." in key or ".norm2." in key or key.endswith(".1.0.weight")
    return 1 if key.endswith(".bias") or norm else 2


def check_projection_layout(sd: dict[str, torch.Tensor], source: Path | str) -> None:
    """Refuse an ``image_proj`` state dict that is not InstantID's Resampler layout, from key names and ranks alone:
    layer indices out of range or with gaps, tensors of the wrong rank (named). Keys outside the layout are left to
    :func:`check_state_dict` (named as unexpected, with the missing ones)."""
    sd = {k: v for k, v in sd.items() if _PROJ_KEY.match(k)}  # other keys: named as unexpected by the shape check
    indices = {int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k))}
    if indices and max(indices) >= LIMITS["depth"]:
        raise AdapterFormatError(
            f"{source}: image_proj has layer index {max(indices)}; InstantID's projection has 4 layers and at most "
            f"{LIMITS['depth']} are accepted. {_WHERE}."
        )
    gaps = sorted(set(range(max(indices) + 1)) - indices) if indices else []
    if gaps:
        raise AdapterFormatError(f"{source}: image_proj lacks layers {gaps[:12]} (layers must be numbered from 0)")
    wrong = [f"image_proj.{k} ({v.ndim}-d, expected {_ndim(k)}-d)" for k, v in sd.items() if v.ndim != _ndim(k)]
    if wrong:
        raise AdapterFormatError(f"{source}: tensors of the wrong rank: {_listing(wrong)}. {_WHERE}.")


def projection_config_from_state_dict(
    sd: dict[str, torch.Tensor], head_dim: int = 64, source: Path | str = "the checkpoint"
) -> dict[str, int]:
    """The :class:`InstantIDImageProjection` config implied by a Resampler state dict's shapes.

    ``head_dim`` cannot be read from shapes (only ``heads * head_dim`` can); InstantID uses 64. The layout is checked
    first (:func:`check_projection_layout`) and the sizes are bounded (``PROJECTION_SCHEMA``).
    """
    check_projection_layout(sd, source)
    needed = ["latents", "proj_in.weight", "proj_out.weight", "layers.0.0.to_q.weight", "layers.0.1.1.weight"]
    absent = [k for k in needed if k not in sd]
    if absent:
        raise WeightsMismatchError(
            f"{source}: the image_proj part lacks {', '.join('image_proj.' + k for k in absent)}"
        )
    latents = sd["latents"]
    if latents.shape[0] != 1:
        raise AdapterFormatError(f"{source}: image_proj.latents must be (1, T, dim), got {tuple(latents.shape)}")
    hidden = int(latents.shape[2])
    inner = int(sd["layers.0.0.to_q.weight"].shape[0])
    if inner % head_dim:
        raise WeightsMismatchError(
            f"{source}: image_proj attention width {inner} is not a multiple of head_dim {head_dim}. {_WHERE}."
        )
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k)) and _PROJ_KEY.match(k))
    config = {
        "id_embed_dim": int(sd["proj_in.weight"].shape[1]),
        "num_tokens": int(latents.shape[1]),
        "output_dim": int(sd["proj_out.weight"].shape[0]),
        "hidden_dim": hidden,
        "num_layers": depth,
        "head_dim": head_dim,
        "num_heads": inner // head_dim,
        "ff_mult": int(sd["layers.0.1.1.weight"].shape[0]) // max(hidden, 1),
    }
    return validate_config(config, PROJECTION_SCHEMA, "image_proj", source, required=tuple(PROJECTION_SCHEMA))


def projection_shapes(config: dict[str, int], source: Path | str) -> dict[str, torch.Size]:
    """``{key: shape}`` of the projection a bounded config builds, on the meta device (nothing allocated)."""
    try:
        with torch.device("meta"):
            model = InstantIDImageProjection(**config)
    except Exception as exc:
        raise AdapterFormatError(
            f"{source}: the image projection config cannot build a model: {short(str(exc))}"
        ) from None
    return {k: v.shape for k, v in model.state_dict().items()}


def check_ip_adapter_layout(ip_sd: dict[str, torch.Tensor], output_dim: int, source: Path | str) -> list[int]:
    """Refuse ``ip_adapter`` entries that are not ``<i>.to_k_ip.weight`` / ``<i>.to_v_ip.weight`` pairs of 2-D
    ``(hidden, output_dim)`` matrices with ``i`` below :data:`MAX_PROCESSOR_INDEX`; returns the sorted indices."""
    bad = [f"ip_adapter.{shown_key(k)}" for k in ip_sd if not _IP_KEY.match(k)]
    if bad:
        raise WeightsMismatchError(
            f"{source}: unexpected ip_adapter keys {_listing(bad)} (expected '<index>.to_k_ip.weight' / "
            "'<index>.to_v_ip.weight')"
        )
    indices = sorted({int(_IP_KEY.match(k).group(1)) for k in ip_sd})
    if not indices:
        raise WeightsMismatchError(f"{source}: the ip_adapter part is empty. {_WHERE}.")
    if indices[-1] >= MAX_PROCESSOR_INDEX:
        raise AdapterFormatError(
            f"{source}: ip_adapter index {indices[-1]} is out of range (indices number the UNet's attention "
            f"processors: 140 for SDXL, at most {MAX_PROCESSOR_INDEX} accepted). {_WHERE}."
        )
    unpaired = [
        f"ip_adapter.{i}.to_{c}_ip.weight" for i in indices for c in "kv" if f"{i}.to_{c}_ip.weight" not in ip_sd
    ]
    if unpaired:
        raise WeightsMismatchError(f"{source}: missing keys {_listing(unpaired)}")
    wrong = []
    for i in indices:
        k, v = ip_sd[f"{i}.to_k_ip.weight"], ip_sd[f"{i}.to_v_ip.weight"]
        ok = k.ndim == 2 and k.shape == v.shape and k.shape[1] == output_dim and 1 <= k.shape[0] <= LIMITS["width"]
        if not ok:
            wrong.append(f"ip_adapter.{i} (to_k_ip {tuple(k.shape)}, to_v_ip {tuple(v.shape)})")
    if wrong:
        raise AdapterFormatError(
            f"{source}: ip_adapter weights must be pairs of equal (hidden, {output_dim}) matrices ({output_dim} = the "
            f"projection's token width); wrong: {_listing(wrong)}"
        )
    return indices


def _tensor_dict(obj: Any, name: str, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise WeightsMismatchError(f"{path}: {name!r} must be a dict of tensors, got {type(obj).__name__}")
    bad = [f"{name}.{shown_key(k)}" for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsMismatchError(f"{path}: entries that are not tensors: {_listing(bad)}")
    for key, value in obj.items():
        check_torch_dtype(value, f"{name}.{key}", path)
    return obj


def convert_instantid_checkpoint(
    src: str | Path, dst: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None
) -> Path:
    """Convert InstantID's ``ip-adapter.bin`` into a namespaced ``.safetensors`` (see the module docstring).

    Args:
        src: the pickle; read with ``torch.load(src, map_location="cpu", weights_only=True)`` only.
        dst: output file ending in ``.safetensors`` (its folder is created).
        overwrite: replace an existing ``dst``.
        dtype: cast the tensors (e.g. ``torch.float16``); default keep.

    Returns:
        ``dst``.

    Raises:
        ModelFilesMissingError: ``src`` does not exist.
        WeightsMismatchError: non-tensor objects (refused), missing parts, wrong or unexpected keys (named).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ModelFilesMissingError(f"InstantID checkpoint {src} not found. {_WHERE}.")
    if dst.suffix != ".safetensors":
        raise ConfigError(f"the converted file must end in .safetensors, got {dst}")
    if dst.is_dir():
        raise ConfigError(f"{dst} is a folder; give a file name ending in .safetensors")
    if dst.exists() and not overwrite:
        raise ConfigError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
    if dst.resolve() == src.resolve():
        raise ConfigError("the output would overwrite the input")
    raw = _safe_torch_load(src)
    if not isinstance(raw, dict):
        raise WeightsMismatchError(
            f"{src} holds a {type(raw).__name__}, expected a dict with 'image_proj' and 'ip_adapter'. {_WHERE}."
        )
    absent = [k for k in ("image_proj", "ip_adapter") if k not in raw]
    extra = [shown_key(k) for k in raw if not (isinstance(k, str) and k in ("image_proj", "ip_adapter"))]
    if absent or extra:
        problems = ([f"missing parts: {', '.join(absent)}"] if absent else []) + (
            [f"unexpected parts: {_listing(extra)}"] if extra else []
        )
        raise WeightsMismatchError(
            f"{src} is not an InstantID ip-adapter checkpoint ({'; '.join(problems)}); "
            f"found parts {_listing([shown_key(k) for k in raw])}. {_WHERE}."
        )
    proj_sd = _tensor_dict(raw["image_proj"], "image_proj", src)
    ip_sd = _tensor_dict(raw["ip_adapter"], "ip_adapter", src)

    config = projection_config_from_state_dict(proj_sd, source=src)
    check_state_dict(projection_shapes(config, src), {k: v.shape for k, v in proj_sd.items()}, "image_proj", str(src))
    indices = check_ip_adapter_layout(ip_sd, config["output_dim"], src)

    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for prefix, sd in (("image_proj", proj_sd), ("ip_adapter", ip_sd)):
        for key, value in sd.items():
            t = value.detach().cpu()
            t = (t.to(dtype) if dtype is not None else t).contiguous()
            # tensors sharing a storage (or views into a larger one) are copied: safetensors refuses shared memory
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages or t.untyped_storage().nbytes() != t.nbytes:
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            tensors[f"{prefix}.{key}"] = t
    meta = {
        "format": INSTANTID_FORMAT,
        "format_version": "1",
        "image_proj_config": json.dumps(config),
        "ip_adapter_indices": json.dumps(indices),
        "ip_adapter_num_tokens": str(config["num_tokens"]),
        "source": src.name,
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("converted %s -> %s (%d tensors, %d ID attention layers)", src, dst, len(tensors), len(indices))
    return dst


# ---------------------------------------------------------------------------------------------- loading
def read_instantid_file(path: str | Path) -> tuple[dict[str, int], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read a converted file: ``(projection config, image_proj tensors, ip_adapter tensors)`` (keys unprefixed)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFilesMissingError(
            f"converted InstantID file {path} not found. Convert InstantID's ip-adapter.bin with "
            f"`hifi-portrait convert-instantid ip-adapter.bin --out {path.name}`. {_WHERE}."
        )
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"{path} is not a .safetensors file; pickles are never loaded directly. Convert it first: "
            f"`hifi-portrait convert-instantid {path} --out {path.with_suffix('.safetensors').name}`"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            specs = {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors' own error types for corrupt headers
        raise AdapterFormatError(f"{path} is not a readable .safetensors file ({short(str(exc), 160)})") from None
    if meta.get("format") != INSTANTID_FORMAT:
        raise AdapterFormatError(
            f"{path} is not a converted InstantID file (metadata 'format' is {short(meta.get('format'))}, expected "
            f"{INSTANTID_FORMAT!r}); make it with `hifi-portrait convert-instantid`."
        )
    hint = "Convert InstantID's ip-adapter.bin again with `hifi-portrait convert-instantid`."
    if "image_proj_config" not in meta:
        raise AdapterFormatError(f"{path}: the metadata has no 'image_proj_config'. {hint}")
    config = validate_config(
        strict_json(meta["image_proj_config"], "image_proj_config", path, hint),
        PROJECTION_SCHEMA,
        "image_proj_config",
        path,
        required=tuple(PROJECTION_SCHEMA),
        hint=hint,
    )
    stray = [k for k in specs if k.partition(".")[0] not in ("image_proj", "ip_adapter") or not k.partition(".")[2]]
    if stray:
        raise WeightsMismatchError(f"{path} has keys outside image_proj./ip_adapter.: {_listing(stray)}")
    for key, (dtype, _) in specs.items():
        check_dtype(dtype, key, path)
    shapes = {k.partition(".")[2]: torch.Size(s) for k, (_, s) in specs.items() if k.startswith("image_proj.")}
    check_state_dict(projection_shapes(config, path), shapes, "image_proj", str(path))
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw = {k: f.get_tensor(k) for k in specs}
    proj, ip = {}, {}
    for key, value in raw.items():
        part, _, rest = key.partition(".")
        (proj if part == "image_proj" else ip)[rest] = value
    check_ip_adapter_layout(ip, config["output_dim"], path)
    return config, proj, ip


def instantid_ip_layers(unet: torch.nn.Module) -> dict[int, str]:
    """``{index in unet.attn_processors: attn2 layer name}`` — InstantID's ``ip_adapter`` key numbering."""
    from diffusers.models.attention_processor import Attention

    modules = dict(unet.named_modules())
    out = {}
    for i, name in enumerate(unet.attn_processors.keys()):
        layer = name.removesuffix(".processor")
        module = modules.get(layer)
        if isinstance(module, Attention) and layer.endswith("attn2") and module.is_cross_attention:
            out[i] = layer
    return out


def load_instantid(
    pipe: Any,
    path: str | Path,
    controlnet: Any = None,
    id_scale: float = 0.8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> InstantIDImageProjection:
    """Put InstantID's image projection, ID attention and (optionally) IdentityNet on a HiFi-Portrait pipeline.

    After this, call the pipeline with ``id_embeds=`` (``(N, 512)`` ArcFace embeddings, see
    :func:`instantid_embeddings`), ``reference_quality=``, ``image=`` (the InstantID keypoint map, PIL or uint8 array),
    ``controlnet_conditioning_scale=`` and ``id_scale=`` (InstantID's ``ip_adapter_scale``). With N = 1 the result
    equals InstantID's own pipeline (checked to 1e-6 on tiny random models, see docs/instantid.md).

    The load is transactional: the file is checked before the pipeline changes, and a failure after that (out of
    memory on the device, ...) puts back the earlier processors, face refiner, HiFi-Net, ControlNet and config.

    Args:
        pipe: a :class:`~hifi_portrait.pipelines.StableDiffusionXLHiFiPortraitPipeline` (SDXL UNet).
        path: the ``.safetensors`` written by :func:`convert_instantid_checkpoint`.
        controlnet: IdentityNet (``ControlNetModel.from_pretrained(".../ControlNetModel")``), or a list whose
            first item is IdentityNet; None keeps the pipeline's ControlNet (which must then be IdentityNet).
        id_scale: initial ID attention scale. The pipeline call's ``id_scale`` argument (InstantID's
            ``ip_adapter_scale``) overrides it for that call only.
        device, dtype: default to the UNet's.

    Returns:
        The loaded projection (also registered as ``pipe.face_refiner``).

    Raises:
        ModelFilesMissingError / ConfigError: no such file, or a pickle given (convert it first).
        WeightsMismatchError: missing, unexpected or misshaped keys (named), or another base architecture.
    """
    config, proj_sd, ip_sd = read_instantid_file(path)
    unet = pipe.unet
    device = device if device is not None else unet.device
    dtype = dtype if dtype is not None else unet.dtype

    cross = unet.config.cross_attention_dim
    if config["output_dim"] != cross:
        raise WeightsMismatchError(
            f"{path} makes {config['output_dim']}-d ID tokens but the UNet's cross_attention_dim is {cross}: "
            "InstantID's weights are for SDXL."
        )

    layers = instantid_ip_layers(unet)
    modules = dict(unet.named_modules())
    expected = {}
    for i, name in layers.items():
        attn = modules[name]
        shape = torch.Size([attn.to_k.out_features, attn.to_k.in_features])
        expected[f"{i}.to_k_ip.weight"] = shape
        expected[f"{i}.to_v_ip.weight"] = shape
    check_state_dict(expected, {k: v.shape for k, v in ip_sd.items()}, "ip_adapter", str(path))
    model = InstantIDImageProjection(**config)  # shapes checked by read_instantid_file
    model.load_state_dict(proj_sd, strict=True)

    if isinstance(controlnet, (list, tuple)):
        from diffusers.models import MultiControlNetModel

        controlnet = MultiControlNetModel(list(controlnet))
    # commit: the file is valid; if anything below still fails (out of memory while the processors or the
    # projection move to the device, ...), the pipeline is put back as it was: nothing of an earlier adapter is lost
    before = pipe._adapter_state()
    try:
        remove_id_attention(unet)
        procs = install_id_attention(
            unet,
            num_tokens=model.config.num_tokens,
            scale=id_scale,
            layer_names=list(layers.values()),
            init_from_text=False,
            device=device,
            dtype=dtype,
        )
        with torch.no_grad():
            for i, name in layers.items():
                procs[name].to_k_ip.weight.copy_(ip_sd[f"{i}.to_k_ip.weight"])
                procs[name].to_v_ip.weight.copy_(ip_sd[f"{i}.to_v_ip.weight"])
        model = model.to(device=device, dtype=dtype).eval()
        if getattr(pipe, "hifi_net", None) is not None:
            logger.info("InstantID replaces the HiFi-Net branch (it reads our refiner's tokens): removing hifi_net")
        pipe.register_modules(face_refiner=model, hifi_net=None)
        if controlnet is not None:
            pipe.register_modules(controlnet=controlnet)
        pipe.controlnet_context = "id_tokens"  # the pipeline passes the ID tokens to the ControlNet(s)
    except BaseException:
        pipe._restore_adapter_state(before)
        raise
    if getattr(pipe, "controlnet", None) is None:
        logger.warning("no IdentityNet ControlNet on the pipeline: only InstantID's ID attention will act")
    logger.info(
        "loaded InstantID weights %s (%d ID attention layers, T=%d)", path, len(procs), model.config.num_tokens
    )
    return model


# ---------------------------------------------------------------------------------------------- identity
def _raw_arcface(embedder: Any, crop: np.ndarray) -> np.ndarray:
    """Unnormalised ArcFace output of an aligned 112x112 RGB crop (what insightface calls ``face.embedding``)."""
    session = embedder._get_session()  # InsightFaceEmbedder's onnxruntime session
    x = (np.asarray(crop, dtype=np.float32) - 127.5) / 127.5
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0][0], dtype=np.float32)


def instantid_embeddings(
    references: Any, embedder: Any = None, embedding_norm: float | None = None, drop_outliers: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Our analysed references -> InstantID's identity input: ``(N, 512)`` raw ArcFace embeddings and ``(N,)``
    quality weights, for ``pipe(id_embeds=..., reference_quality=...)`` (the projection fuses them).

    InstantID was trained on insightface antelopev2's *unnormalised* 512-d embeddings; our analyses store unit
    vectors. The norm comes from ``embedder`` (the :class:`~hifi_portrait.face.InsightFaceEmbedder` that made the
    vectors: each reference's ``arcface_crop`` is run again without normalisation) or from ``embedding_norm``.

    Args:
        references: a :class:`~hifi_portrait.face.FaceSet` (its outliers are dropped when ``drop_outliers``) or a
            list of :class:`~hifi_portrait.face.FaceAnalysis`.
        embedder: an ``InsightFaceEmbedder``; optional when ``embedding_norm`` is given.
        embedding_norm: norm to give every unit vector instead of re-running the embedder.

    Raises:
        ConfigError: the identity vectors are not 512-d insightface ArcFace vectors (dlib's 128-d default cannot
            feed InstantID), or neither ``embedder`` nor ``embedding_norm`` is given.
    """
    analyses = list(getattr(references, "analyses", references))
    if drop_outliers and hasattr(references, "outliers") and references.outliers:
        kept = [a for i, a in enumerate(analyses) if i not in set(references.outliers)]
        analyses = kept or analyses
    if not analyses:
        from hifi_portrait.errors import NoUsableReferencesError

        raise NoUsableReferencesError("no reference faces for InstantID")
    models = {a.identity_model for a in analyses}
    dims = {int(np.asarray(a.identity).shape[-1]) for a in analyses}
    if len(models) != 1 or not next(iter(models)).startswith("insightface") or dims != {512}:
        raise ConfigError(
            f"InstantID needs 512-d insightface ArcFace identity vectors (antelopev2 glintr100), but the references "
            f"were embedded with {sorted(models)} ({sorted(dims)}-d; dlib's 128-d default cannot feed it). Analyse "
            "them with FaceAnalyzer(insightface_dir='/path/to/antelopev2') (`--insightface-dir` on the CLI); the "
            "antelopev2 pack comes from the insightface model zoo (non-commercial licence)."
        )
    quality = np.array([max(float(a.quality.total), 1e-3) for a in analyses], dtype=np.float32)
    if embedder is not None:
        embeds = np.stack([_raw_arcface(embedder, a.arcface_crop) for a in analyses])
    elif embedding_norm is not None:
        unit = np.stack([np.asarray(a.identity, dtype=np.float32) for a in analyses])
        embeds = unit / np.linalg.norm(unit, axis=1, keepdims=True) * float(embedding_norm)
    else:
        raise ConfigError(
            "InstantID reads unnormalised ArcFace embeddings: pass the InsightFaceEmbedder that analysed the "
            "references (embedder=) or their typical norm (embedding_norm=)"
        )
    return embeds.astype(np.float32), quality
