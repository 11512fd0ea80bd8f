"""Loader mixin: ``pipe.load_hifi_portrait(path)`` / ``pipe.save_hifi_portrait(path)`` for the one-file adapter.

Works on any diffusers pipeline with a ``unet`` that registers ``face_refiner`` and ``hifi_net`` as (optional)
components, like :class:`hifi_portrait.pipelines.StableDiffusionXLHiFiPortraitPipeline`.
Load the adapter before ``enable_model_cpu_offload()`` (offload hooks are attached to the components that exist
when it is called).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from safetensors import safe_open

from hifi_portrait.errors import AdapterFormatError, WeightsMismatchError
from hifi_portrait.loaders.adapter_file import (
    AdapterFile,
    check_identity_model,
    load_adapter_tensors,
    read_adapter_header,
    write_adapter_file,
)
from hifi_portrait.models.face_refiner import FaceRefiner
from hifi_portrait.models.hifi_net import HiFiNetModel
from hifi_portrait.models.id_attention import (
    get_id_attn_processors,
    id_attention_layer_names,
    install_id_attention,
    remove_id_attention,
    set_id_scale,
    sync_id_attention,
)

logger = logging.getLogger(__name__)

__all__ = ["HiFiPortraitLoaderMixin"]


def _with_defaults(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """A validated config completed with the constructor's defaults (the values ``from_config`` will use)."""
    params = inspect.signature(cls.__init__).parameters
    return {name: config.get(name, p.default) for name, p in params.items() if name not in ("self", "kwargs")}


class HiFiPortraitLoaderMixin:
    """Adds ``load_hifi_portrait``, ``save_hifi_portrait``, ``set_hifi_portrait``, ``unload_hifi_portrait``."""

    # ------------------------------------------------------------------ attach in-memory models
    def set_hifi_portrait(
        self,
        face_refiner: FaceRefiner | None = None,
        hifi_net: HiFiNetModel | None = None,
        num_id_tokens: int | None = None,
        install_ip_attention: bool = True,
        id_scale: float = 1.0,
    ) -> None:
        """Attach models built in memory (e.g. during training) and install fresh ID attention processors.

        Args:
            face_refiner, hifi_net: the models; None leaves the current one.
            num_id_tokens: ``T``; defaults to ``face_refiner.config.num_tokens``.
            install_ip_attention: install new (text-initialised) :class:`IDAttnProcessor` on the UNet.
            id_scale: initial ID attention scale.
        """
        if face_refiner is not None:
            self.register_modules(face_refiner=face_refiner)
        if hifi_net is not None:
            self.register_modules(hifi_net=hifi_net)
        if install_ip_attention:
            if num_id_tokens is None:
                if getattr(self, "face_refiner", None) is None:
                    raise ValueError("give num_id_tokens or a face_refiner to install ID attention")
                num_id_tokens = self.face_refiner.config.num_tokens
            remove_id_attention(self.unet)
            install_id_attention(self.unet, num_tokens=num_id_tokens, scale=id_scale)

    # ------------------------------------------------------------------ load
    def load_hifi_portrait(
        self,
        path: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        id_scale: float | None = None,
    ) -> list[str]:
        """Build the face refiner, HiFi-Net and ID attention of an adapter file and attach them.

        The load is transactional: the whole file is checked (header schema, sizes, dtypes, shapes, fit with this
        pipeline's UNet) before anything is built, and the pipeline is changed only at the end, all at once. If
        anything fails, the pipeline keeps its previous face refiner, HiFi-Net, attention processors and config.

        Args:
            path: the ``.safetensors`` adapter file.
            device, dtype: default to the UNet's.
            id_scale: ID attention scale; default the one saved in the file.

        Returns:
            The parts loaded (``["face_refiner", "hifi_net", "ip_attn"]`` for a full adapter).

        Raises:
            ModelFilesMissingError: no such file.
            AdapterFormatError: a malformed file (bad header or metadata, wrong types, sizes out of bounds, integer
                or float64 tensors, layers that are not the UNet's text cross-attentions).
            WeightsMismatchError: missing/unexpected/misshaped keys (named), another base architecture, or
                ``self.face_analyzer`` embeds with another identity model than the one the adapter was trained on.
        """
        adapter = read_adapter_header(path)
        if id_scale is not None and not math.isfinite(float(id_scale)):
            raise ValueError(f"id_scale must be a finite number, got {id_scale}")
        self._check_adapter_fits(adapter)
        load_adapter_tensors(adapter)
        device = device if device is not None else self.unet.device
        dtype = dtype if dtype is not None else self.unet.dtype
        built = {}
        for part, cls in (("face_refiner", FaceRefiner), ("hifi_net", HiFiNetModel)):
            if part in adapter.configs:
                model = cls.from_config(adapter.configs[part])
                model.load_state_dict(adapter.tensors[part], strict=True)
                built[part] = model.to(device=device, dtype=dtype).eval()
        analyzer = getattr(self, "face_analyzer", None)
        check_identity_model(adapter.metadata, getattr(getattr(analyzer, "embedder", None), "name", None), str(path))
        before = self._adapter_state()
        try:  # commit: nothing below depends on the file's validity any more; undone if anything still fails
            if "ip_attn" in adapter.configs:
                self._install_ip_attn(adapter, device, dtype, id_scale)
            if built:
                self.register_modules(**built)
        except BaseException:
            self._restore_adapter_state(before)
            raise
        self.adapter_identity = {
            k: adapter.metadata[k] for k in ("identity_model", "identity_dim") if k in adapter.metadata
        }
        logger.info("loaded hifi-portrait adapter %s: %s", adapter.path, ", ".join(adapter.parts))
        return adapter.parts

    def _adapter_state(self) -> tuple:
        """What a load may change (this one or :func:`~hifi_portrait.loaders.instantid.load_instantid`): the UNet's
        processors, the face refiner, HiFi-Net and ControlNet, the pipeline config (``controlnet_context``
        included)."""
        return (
            dict(self.unet.attn_processors),
            {name: getattr(self, name, None) for name in ("face_refiner", "hifi_net", "controlnet")},
            self._internal_dict,
        )

    def _restore_adapter_state(self, state: tuple) -> None:
        processors, components, config = state
        self.unet.set_attn_processor(processors)
        self.register_modules(**components)
        self._internal_dict = config

    def _check_adapter_fits(self, adapter: AdapterFile) -> None:
        """Everything about the file that depends on this pipeline, checked before anything is built."""
        where = adapter.path
        cross = self.unet.config.cross_attention_dim
        cross = cross[0] if isinstance(cross, (list, tuple)) else cross
        fr = (
            _with_defaults(FaceRefiner, adapter.configs["face_refiner"]) if "face_refiner" in adapter.configs else None
        )
        if fr is not None and fr["output_dim"] != cross:
            raise WeightsMismatchError(
                f"face_refiner in {where} makes {fr['output_dim']}-d ID tokens, the UNet's "
                f"cross_attention_dim is {cross}: the adapter belongs to another base architecture."
            )
        encoder = getattr(self, "image_encoder", None)
        if fr is not None and encoder is not None:
            width = getattr(encoder.config, "hidden_size", None)
            if width is not None and fr["patch_dim"] != width:
                raise WeightsMismatchError(
                    f"face_refiner in {where} reads {fr['patch_dim']}-d patch tokens, the pipeline's image "
                    f"encoder gives {width}-d ones: use the CLIP vision encoder the adapter was trained with."
                )
            size, patch = getattr(encoder.config, "image_size", None), getattr(encoder.config, "patch_size", None)
            if isinstance(size, int) and isinstance(patch, int) and patch > 0:
                n_patches = (size // patch) ** 2 + 1  # patches and the class token
                if n_patches > fr["num_patches"]:
                    raise WeightsMismatchError(
                        f"face_refiner in {where} knows {fr['num_patches']} patch tokens per reference, the "
                        f"pipeline's image encoder gives {n_patches}: use the CLIP vision encoder the adapter was "
                        "trained with."
                    )
        if "hifi_net" in adapter.configs:
            self._check_hifi_net_fits(adapter.configs["hifi_net"], where)
        if "ip_attn" in adapter.configs:
            self._check_ip_layers_fit(adapter.configs["ip_attn"]["layers"], where)
        # token counts: the refiner and the ID attention in use after the load must agree
        tokens = {}
        if fr is not None:
            tokens["face_refiner"] = fr["num_tokens"]
        elif getattr(self, "face_refiner", None) is not None:
            tokens["face_refiner"] = self.face_refiner.config.num_tokens
        if "ip_attn" in adapter.configs:
            tokens["ip_attn"] = adapter.configs["ip_attn"]["num_tokens"]
        elif procs := get_id_attn_processors(self.unet):
            tokens["ip_attn"] = next(iter(procs.values())).num_tokens
        if len(set(tokens.values())) > 1:
            raise WeightsMismatchError(
                f"face_refiner makes {tokens['face_refiner']} ID tokens but the ID attention of "
                f"{where} expects {tokens['ip_attn']}."
                if "ip_attn" in adapter.configs
                else f"face_refiner of {where} makes {tokens['face_refiner']} ID tokens but the ID attention "
                f"installed on the UNet expects {tokens['ip_attn']}."
            )

    def _check_hifi_net_fits(self, cfg: dict, where) -> None:
        cfg = _with_defaults(HiFiNetModel, cfg)
        ucfg = self.unet.config
        cross = ucfg.cross_attention_dim
        expected = {
            "in_channels": ucfg.in_channels,
            "block_out_channels": tuple(ucfg.block_out_channels),
            "layers_per_block": ucfg.layers_per_block,
            "cross_attention_dim": cross[0] if isinstance(cross, (list, tuple)) else cross,
            "flip_sin_to_cos": ucfg.flip_sin_to_cos,
            "freq_shift": ucfg.freq_shift,
            "addition_embed_type": ucfg.addition_embed_type,
            "addition_time_embed_dim": ucfg.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": ucfg.projection_class_embeddings_input_dim,
        }
        if getattr(self, "vae_scale_factor", None) is not None:
            expected["vae_scale_factor"] = self.vae_scale_factor
        wrong = [f"{key} {cfg[key]!r} (UNet: {value!r})" for key, value in expected.items() if cfg[key] != value]
        if wrong:
            raise WeightsMismatchError(
                f"hifi_net in {where} was built for another UNet: {'; '.join(wrong)}. The adapter belongs to another "
                "base architecture (SDXL expected)."
            )

    def _check_ip_layers_fit(self, layers: dict[str, tuple[int, int]], where) -> None:
        cross_layers = set(id_attention_layer_names(self.unet))
        modules = dict(self.unet.named_modules())
        absent = [name for name in layers if name not in modules]
        if absent:
            raise WeightsMismatchError(
                f"{where} has ID attention for layers this UNet does not have: "
                f"{', '.join(f'ip_attn.{n}' for n in absent[:12])}. The adapter was trained for another base "
                "architecture (SDXL expected)."
            )
        for name, (hidden, dim) in layers.items():
            if name not in cross_layers:
                module = modules[name]
                kind = "a self-attention layer" if isinstance(module, Attention) else f"a {type(module).__name__}"
                raise AdapterFormatError(
                    f"{where}: ip_attn layer {name!r} is {kind} of the UNet, not a text cross-attention (attn2) "
                    "layer; ID attention only goes on those. The file is damaged or was edited."
                )
            attn = modules[name]
            if (attn.to_k.out_features, attn.to_k.in_features) != (hidden, dim):
                raise WeightsMismatchError(
                    f"ip_attn.{name} in {where} is {hidden}x{dim}, the UNet layer is "
                    f"{attn.to_k.out_features}x{attn.to_k.in_features}: another base architecture."
                )

    def _install_ip_attn(self, adapter: AdapterFile, device, dtype, id_scale: float | None) -> None:
        cfg = adapter.configs["ip_attn"]
        sd = adapter.tensors["ip_attn"]
        remove_id_attention(self.unet)
        scale = float(cfg["scale"]) if id_scale is None else float(id_scale)
        procs = install_id_attention(
            self.unet,
            num_tokens=cfg["num_tokens"],
            scale=scale,
            layer_names=list(cfg["layers"]),
            init_from_text=False,
            device=device,
            dtype=dtype,
        )
        with torch.no_grad():
            for name, proc in procs.items():
                proc.to_k_ip.weight.copy_(sd[f"{name}.to_k_ip.weight"])
                proc.to_v_ip.weight.copy_(sd[f"{name}.to_v_ip.weight"])

    # ------------------------------------------------------------------ save / unload
    def save_hifi_portrait(
        self, path: str | Path, overwrite: bool = False, extra_metadata: dict[str, str] | None = None
    ) -> Path:
        """Write the attached face refiner, HiFi-Net and ID attention weights to one ``.safetensors`` file."""
        procs = get_id_attn_processors(self.unet)
        scale = next(iter(procs.values())).scale if procs else 1.0
        return write_adapter_file(
            path,
            face_refiner=getattr(self, "face_refiner", None),
            hifi_net=getattr(self, "hifi_net", None),
            ip_attn=procs or None,
            ip_scale=scale,
            overwrite=overwrite,
            extra_metadata=extra_metadata,
        )

    def set_id_scale(self, scale: float) -> None:
        """Set the ID attention scale of the UNet's ID processors."""
        set_id_scale(self.unet, scale)

    def unload_hifi_portrait(self) -> None:
        """Remove the face refiner, HiFi-Net and the UNet's ID attention processors."""
        remove_id_attention(self.unet)
        self.register_modules(face_refiner=None, hifi_net=None)


# ---------------------------------------------------------------------------------------------- save_pretrained
_PROC_KEY = re.compile(r"^(?P<layer>.+)\.processor\.to_(?P<kv>[kv])_ip\.weight$")


def id_attention_config(unet: torch.nn.Module | None) -> dict | None:
    """What ``save_pretrained`` records in the pipeline config about the UNet's ID attention (its weights are
    saved with the UNet, as ``<layer>.processor.to_k_ip.weight``): ``{"num_tokens": T, "scale": {layer: s}}``."""
    procs = sync_id_attention(unet) if unet is not None else {}
    if not procs:
        return None
    return {
        "num_tokens": next(iter(procs.values())).num_tokens,
        "scale": {name: float(proc.scale) for name, proc in procs.items()},
    }


def _unet_weight_files(folder: Path, variant: str | None) -> list[Path]:
    stem = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
    for ext in (".safetensors", ".bin"):
        files = sorted(
            p
            for p in folder.glob(f"diffusion_pytorch_model*{ext}")
            if p.name == stem + ext or re.fullmatch(re.escape(stem) + r"-\d+-of-\d+" + re.escape(ext), p.name)
        )
        if files:
            return files
    return []


def _read_id_attention_tensors(folder: Path, variant: str | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in _unet_weight_files(folder, variant):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open has no items()
                    if _PROC_KEY.match(key):
                        out[key] = f.get_tensor(key)
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True)
            out.update({k: v for k, v in sd.items() if _PROC_KEY.match(k)})
    return out


def restore_id_attention(pipe, variant: str | None = None) -> int:
    """After ``from_pretrained``: put back the ID attention recorded in the pipeline config, with the
    ``to_k_ip``/``to_v_ip`` weights saved in the UNet's folder (diffusers drops them as unexpected keys).

    Returns:
        The number of layers restored (0 when the config records none, or the UNet already has them).

    Raises:
        WeightsMismatchError: the config records ID attention but the UNet's weight files lack it (named).
    """
    cfg = pipe.config.get("id_attention") if hasattr(pipe, "config") else None
    unet = getattr(pipe, "unet", None)
    if not cfg or unet is None or get_id_attn_processors(unet):
        return 0
    folder = Path(str(unet.config.get("_name_or_path", "")))
    tensors = _read_id_attention_tensors(folder, variant) if folder.is_dir() else {}
    scales: dict[str, float] = cfg["scale"]
    missing = [
        f"{name}.processor.to_{kv}_ip.weight"
        for name in scales
        for kv in "kv"
        if f"{name}.processor.to_{kv}_ip.weight" not in tensors
    ]
    if missing:
        raise WeightsMismatchError(
            f"the pipeline config records ID attention on {len(scales)} layers, but the UNet weights in {folder} "
            f"lack {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}. Save the pipeline again with "
            "save_pretrained, or load the adapter with pipe.load_hifi_portrait(<file>)."
        )
    weight = next(unet.parameters())
    procs = install_id_attention(
        unet,
        num_tokens=int(cfg["num_tokens"]),
        layer_names=list(scales),
        init_from_text=False,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        for name, proc in procs.items():
            proc.to_k_ip.weight.copy_(tensors[f"{name}.processor.to_k_ip.weight"])
            proc.to_v_ip.weight.copy_(tensors[f"{name}.processor.to_v_ip.weight"])
            proc.scale = float(scales[name])
    logger.info("restored the ID attention of %d UNet layers from %s", len(procs), folder)
    return len(procs)


class _DropIDAttentionKeysWarning(logging.Filter):
    """Hides diffusers' "weights ... were not used" warning when the only unused keys are the ID attention's,
    which :func:`restore_id_attention` loads right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "were not used when initializing" not in msg:
            return True
        keys = re.findall(r"[\w.]+\.(?:weight|bias)", msg.split("when initializing", 1)[-1])
        return not (keys and all(_PROC_KEY.match(k) for k in keys))


ID_ATTENTION_KEYS_FILTER = _DropIDAttentionKeysWarning()
