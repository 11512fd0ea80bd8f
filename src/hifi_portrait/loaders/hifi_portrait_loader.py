"""Loader mixin: ``pipe.load_hifi_portrait(path)`` / ``pipe.save_hifi_portrait(path)`` for the one-file adapter.

Works on any diffusers pipeline with a ``unet`` that registers ``face_refiner`` and ``hifi_net`` as (optional)
components, like :class:`hifi_portrait.pipelines.StableDiffusionXLHiFiPortraitPipeline`.
Load the adapter before ``enable_model_cpu_offload()`` (offload hooks are attached to the components that exist
when it is called).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from hifi_portrait.errors import WeightsMismatchError
from hifi_portrait.loaders.adapter_file import (
    AdapterFile,
    check_identity_model,
    check_state_dict,
    read_adapter_file,
    write_adapter_file,
)
from hifi_portrait.models.face_refiner import FaceRefiner
from hifi_portrait.models.hifi_net import HiFiNetModel
from hifi_portrait.models.id_attention import (
    get_id_attn_processors,
    install_id_attention,
    remove_id_attention,
    set_id_scale,
)

logger = logging.getLogger(__name__)

__all__ = ["HiFiPortraitLoaderMixin"]


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in sd.items()}


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

        Args:
            path: the ``.safetensors`` adapter file.
            device, dtype: default to the UNet's.
            id_scale: ID attention scale; default the one saved in the file.

        Returns:
            The parts loaded (``["face_refiner", "hifi_net", "ip_attn"]`` for a full adapter).

        Raises:
            ModelFilesMissingError: no such file.
            WeightsMismatchError: missing/unexpected/misshaped keys (named), layers the UNet does not have, or
                ``self.face_analyzer`` embeds with another identity model than the one the adapter was trained on.
        """
        adapter = read_adapter_file(path)
        device = device if device is not None else self.unet.device
        dtype = dtype if dtype is not None else self.unet.dtype
        built = {}
        for part, cls in (("face_refiner", FaceRefiner), ("hifi_net", HiFiNetModel)):
            if part not in adapter.configs:
                continue
            model = cls.from_config(adapter.configs[part])
            sd = adapter.tensors[part]
            check_state_dict(_shapes(model.state_dict()), _shapes(sd), part, str(adapter.path))
            model.load_state_dict(sd, strict=True)
            model = model.to(device)
            if model.dtype != dtype:
                model = model.to(dtype)
            built[part] = model.eval()
        if "ip_attn" in adapter.configs:
            self._load_ip_attn(adapter, device, dtype, id_scale)
        self._check_adapter_consistency(built, adapter)
        self.adapter_identity = {
            k: adapter.metadata[k] for k in ("identity_model", "identity_dim") if k in adapter.metadata
        }
        analyzer = getattr(self, "face_analyzer", None)
        check_identity_model(adapter.metadata, getattr(getattr(analyzer, "embedder", None), "name", None), str(path))
        if built:
            self.register_modules(**built)
        logger.info("loaded hifi-portrait adapter %s: %s", adapter.path, ", ".join(adapter.parts))
        return adapter.parts

    def _load_ip_attn(self, adapter: AdapterFile, device, dtype, id_scale: float | None) -> None:
        cfg = adapter.configs["ip_attn"]
        layers: dict[str, list[int]] = cfg["layers"]
        sd = adapter.tensors["ip_attn"]
        modules = dict(self.unet.named_modules())
        absent = [name for name in layers if name not in modules]
        if absent:
            raise WeightsMismatchError(
                f"{adapter.path} has ID attention for layers this UNet does not have: "
                f"{', '.join(f'ip_attn.{n}' for n in absent[:12])}. The adapter was trained for another base "
                "architecture (SDXL expected)."
            )
        expected = {}
        for name, (hidden, cross) in layers.items():
            expected[f"{name}.to_k_ip.weight"] = torch.Size([hidden, cross])
            expected[f"{name}.to_v_ip.weight"] = torch.Size([hidden, cross])
        check_state_dict(expected, _shapes(sd), "ip_attn", str(adapter.path))
        for name, (hidden, cross) in layers.items():
            attn = modules[name]
            if (attn.to_k.out_features, attn.to_k.in_features) != (hidden, cross):
                raise WeightsMismatchError(
                    f"ip_attn.{name} in {adapter.path} is {hidden}x{cross}, the UNet layer is "
                    f"{attn.to_k.out_features}x{attn.to_k.in_features}: another base architecture."
                )
        remove_id_attention(self.unet)
        scale = float(cfg.get("scale", 1.0)) if id_scale is None else float(id_scale)
        procs = install_id_attention(
            self.unet,
            num_tokens=int(cfg["num_tokens"]),
            scale=scale,
            layer_names=list(layers),
            init_from_text=False,
            device=device,
            dtype=dtype,
        )
        with torch.no_grad():
            for name, proc in procs.items():
                proc.to_k_ip.weight.copy_(sd[f"{name}.to_k_ip.weight"])
                proc.to_v_ip.weight.copy_(sd[f"{name}.to_v_ip.weight"])

    def _check_adapter_consistency(self, built: dict, adapter: AdapterFile) -> None:
        refiner = built.get("face_refiner", getattr(self, "face_refiner", None))
        cross = self.unet.config.cross_attention_dim
        if refiner is not None and refiner.config.output_dim != cross:
            raise WeightsMismatchError(
                f"face_refiner in {adapter.path} makes {refiner.config.output_dim}-d ID tokens, the UNet's "
                f"cross_attention_dim is {cross}: the adapter belongs to another base architecture."
            )
        procs = get_id_attn_processors(self.unet)
        if refiner is not None and procs:
            t = next(iter(procs.values())).num_tokens
            if t != refiner.config.num_tokens:
                raise WeightsMismatchError(
                    f"face_refiner makes {refiner.config.num_tokens} ID tokens but the ID attention of "
                    f"{adapter.path} expects {t}."
                )

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
