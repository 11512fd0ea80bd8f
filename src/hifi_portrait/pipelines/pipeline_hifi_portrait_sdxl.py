"""StableDiffusionXLHiFiPortraitPipeline: SDXL + face refiner + HiFi-Net + decoupled ID attention.

Per generation (before the denoising loop, once):

1. references -> identity vectors ``(N, Dg)`` (from :class:`~hifi_portrait.face.types.FaceAnalysis`) and CLIP
   vision patch tokens ``(N, L, Dl)`` of their (matted) encoder crops -> :class:`FaceRefiner` -> ID tokens
   ``(1, T, D)``;
2. landmark map ``(3, H, W)`` + ID tokens -> :meth:`HiFiNetModel.prepare_condition` (cached);
3. prompt -> SDXL text embeddings (diffusers' ``encode_prompt``).

Per step: HiFi-Net's light branch gives UNet residuals (scaled by ``control_scale``), added to those of any extra
ControlNet(s); the UNet's text cross-attentions also attend to the ID tokens (scaled by ``id_scale``).

Classifier-free guidance: the unconditional half gets **zero ID tokens** (contributing exactly nothing in the
ID attention, i.e. "no identity") and the same landmark map; HiFi-Net's alignment sees the zero tokens there.
Guidance therefore pushes towards the identity as well as towards the prompt.
``id_scale=0`` and ``control_scale=0`` give exactly the plain SDXL output for the same seed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.models import AutoencoderKL, ControlNetModel, MultiControlNetModel, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
from diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl import retrieve_timesteps
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from hifi_portrait.errors import ConfigError, ModelFilesMissingError, NoUsableReferencesError
from hifi_portrait.face.matting import MATTE_BACKGROUND, composite
from hifi_portrait.loaders.hifi_portrait_loader import (
    ID_ATTENTION_KEYS_FILTER,
    HiFiPortraitLoaderMixin,
    id_attention_config,
    restore_id_attention,
)
from hifi_portrait.models.face_refiner import FaceRefiner
from hifi_portrait.models.hifi_net import HiFiNetCondition, HiFiNetModel
from hifi_portrait.models.id_attention import (
    RegionalIDTokens,
    region_masks_at,
    restore_processors,
    set_id_scale,
    sync_id_attention,
    with_id_tokens,
)
from hifi_portrait.pipelines.pipeline_output import HiFiPortraitPipelineOutput

logger = logging.getLogger(__name__)

__all__ = ["StableDiffusionXLHiFiPortraitPipeline", "reference_pixels"]


def reference_pixels(face: Any, matte: bool = True) -> np.ndarray:
    """The ``(S, S, 3)`` uint8 image a reference contributes to the image encoder.

    ``face.encoder_crop`` composited over gray :data:`MATTE_BACKGROUND` with ``face.mask`` when ``matte`` and a
    mask exists (the references are matted, as in the paper: with the default ``selfie-matte`` mask the person's
    head and hair stay, the background goes). Training must use the same function.
    """
    crop = np.asarray(face.encoder_crop)
    if crop.ndim != 3 or crop.shape[-1] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"encoder_crop must be (S, S, 3) uint8, got {crop.shape} {crop.dtype}")
    mask = getattr(face, "mask", None)
    if not matte or mask is None or np.asarray(mask).size == 0:
        return crop
    return composite(crop, mask, MATTE_BACKGROUND)


def _check_context(value: str | list[str]) -> str | list[str]:
    allowed = ("text", "id_tokens")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or any(v not in allowed for v in items):
        raise ConfigError(f"controlnet_context must be 'text', 'id_tokens' or a list of these, got {value!r}")
    return list(value) if isinstance(value, (list, tuple)) else value


def _uint8_arrays_to_pil(image: Any) -> Any:
    """``(H, W, 3)`` uint8 arrays (alone or in a list) -> PIL images; anything else unchanged."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
        return PIL.Image.fromarray(image)
    if isinstance(image, list):
        return [_uint8_arrays_to_pil(i) for i in image]
    return image


class StableDiffusionXLHiFiPortraitPipeline(StableDiffusionXLControlNetPipeline, HiFiPortraitLoaderMixin):
    """SDXL pipeline for identity-preserving portraits from several references, with landmark control.

    Components (beyond SDXL's ``vae, text_encoder(_2), tokenizer(_2), unet, scheduler``), all optional:
        face_refiner: :class:`FaceRefiner`, references -> ID tokens.
        hifi_net: :class:`HiFiNetModel`, landmark map + ID tokens -> UNet residuals.
        image_encoder / feature_extractor: CLIP vision tower giving the references' patch tokens
            (``hidden_states[-2]``, e.g. laion CLIP-ViT-H/14: 257 x 1280).
        controlnet: extra ControlNet(s) (a ``ControlNetModel``, a list of them, or ``MultiControlNetModel``),
            conditioned by ``image=`` as in diffusers' SDXL ControlNet pipeline.

    Configuration (saved in ``model_index.json``):
        controlnet_context: what the extra ControlNet(s) cross-attend to, ``"text"`` (diffusers' default) or
            ``"id_tokens"`` (InstantID's IdentityNet), or one of these per net of a
            :class:`~hifi_portrait.pipelines.multi_controlnet.MultiContextControlNetModel`; set with
            ``pipe.controlnet_context = ...``.
        id_attention: written by ``save_pretrained`` (``{"num_tokens": T, "scale": {layer: s}}``) so that
            ``from_pretrained`` puts the ID attention saved with the UNet back; not to be set by hand.

    The UNet's ID attention processors come with the adapter (:meth:`load_hifi_portrait`) or
    :meth:`set_hifi_portrait`. diffusers' IP-Adapter (``load_ip_adapter``), attention slicing, LoRA and
    layerwise casting compose with them (docs/pipeline.md).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->face_refiner->unet->vae"
    _optional_components = [
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "feature_extractor",
        "image_encoder",
        "controlnet",
        "face_refiner",
        "hifi_net",
    ]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        controlnet: ControlNetModel | list[ControlNetModel] | MultiControlNetModel | None = None,
        face_refiner: FaceRefiner | None = None,
        hifi_net: HiFiNetModel | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        controlnet_context: str | list[str] = "text",
        id_attention: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        self.register_modules(face_refiner=face_refiner, hifi_net=hifi_net)
        self.register_to_config(controlnet_context=_check_context(controlnet_context), id_attention=id_attention)
        self.default_sample_size = self.unet.config.sample_size if getattr(self, "unet", None) is not None else 128
        self.face_analyzer: Any = None  # set by the user or created lazily for reference_images

    @property
    def controlnet_context(self) -> str | list[str]:
        """What the extra ControlNet(s) cross-attend to (registered configuration, kept by save/load)."""
        return self.config.get("controlnet_context", "text")

    @controlnet_context.setter
    def controlnet_context(self, value: str | list[str]) -> None:
        self.register_to_config(controlnet_context=_check_context(value))

    def check_inputs(self, prompt, prompt_2, image, callback_steps, **kwargs: Any) -> None:
        """diffusers' input checks: the SDXL ControlNet pipeline's with an extra ControlNet, else the SDXL
        pipeline's (text, embeddings, IP-Adapter and callback inputs; the parent's require a ControlNet)."""
        if self.controlnet is not None:  # (H, W, 3) uint8 arrays are images here, as in prepare_image
            super().check_inputs(prompt, prompt_2, _uint8_arrays_to_pil(image), callback_steps, **kwargs)
            return
        for name in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end"):
            kwargs.pop(name, None)
        # height and width are checked by prepare_image / the landmark map; 8 passes the divisibility check
        StableDiffusionXLPipeline.check_inputs(self, prompt, prompt_2, 8, 8, callback_steps, **kwargs)

    # ------------------------------------------------------------------ save / load with the ID attention
    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``; the UNet's ID attention weights are saved with the UNet and recorded in
        the config (``id_attention``) so that :meth:`from_pretrained` puts them back."""
        unet = self.unet
        if unet is not None and getattr(unet, "encoder_hid_proj", None) is not None:
            if getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj":  # set as an attribute
                raise ConfigError(
                    "an IP-Adapter is loaded, and diffusers cannot save IP-Adapters with a pipeline (the reloaded "
                    "UNet would not load). Call pipe.unload_ip_adapter() before save_pretrained, and "
                    "pipe.load_ip_adapter(...) again after from_pretrained; the identity adapter is kept."
                )
        self.register_to_config(id_attention=id_attention_config(unet))
        super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> StableDiffusionXLHiFiPortraitPipeline:
        """diffusers' ``from_pretrained``, then the ID attention saved with the UNet is installed again."""
        model_logger = logging.getLogger("diffusers.models.modeling_utils")
        model_logger.addFilter(ID_ATTENTION_KEYS_FILTER)
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        finally:
            model_logger.removeFilter(ID_ATTENTION_KEYS_FILTER)
        restore_id_attention(pipe, variant=kwargs.get("variant"))
        return pipe

    # ------------------------------------------------------------------ diffusers features beside ours
    def set_attention_slice(self, slice_size: int | None) -> None:
        """diffusers' attention slicing (``enable_attention_slicing``/``disable_attention_slicing``), applied to
        the ID attention processors too instead of replacing them."""
        super().set_attention_slice(slice_size)
        if self.unet is not None:
            sync_id_attention(self.unet)

    def load_ip_adapter(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``load_ip_adapter``; on layers with ID attention, the IP-Adapter goes inside our processor
        (one processor attending to the text, the ID tokens and the IP-Adapter tokens, each with its scale)."""
        super().load_ip_adapter(*args, **kwargs)
        sync_id_attention(self.unet)

    def set_ip_adapter_scale(self, scale: Any) -> None:
        """diffusers' ``set_ip_adapter_scale``, also for IP-Adapters composed with the ID attention."""
        composed = {name: proc for name, proc in sync_id_attention(self.unet).items() if proc.ip_adapter is not None}
        modules = dict(self.unet.named_modules())
        for name, proc in composed.items():  # expose the IP-Adapter processors to diffusers' method
            modules[name].processor = proc.ip_adapter
        try:
            super().set_ip_adapter_scale(scale)
        finally:
            for name, proc in composed.items():
                modules[name].processor = proc

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapter(s) only: the ID attention and the image encoder (which the references need)
        stay. diffusers' own method would also drop both."""
        procs = sync_id_attention(self.unet)
        for proc in procs.values():
            proc.ip_adapter = None
        self.unet.encoder_hid_proj = None
        self.unet.config.encoder_hid_dim_type = None
        defaults = {
            name: AttnProcessor2_0() if isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)) else p
            for name, p in self.unet.attn_processors.items()
        }
        self.unet.set_attn_processor(defaults)

    # ------------------------------------------------------------------ references -> ID tokens
    def encode_patch_tokens(self, images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        """CLIP vision patch tokens (penultimate layer) of ``N`` RGB uint8 images -> ``(N, L, Dl)``."""
        if self.image_encoder is None or self.feature_extractor is None:
            raise ModelFilesMissingError(
                "reference images need a CLIP vision encoder for their patch tokens, and this pipeline has none. "
                "Pass image_encoder=CLIPVisionModelWithProjection.from_pretrained(<dir>) and "
                "feature_extractor=CLIPImageProcessor.from_pretrained(<dir>), e.g. the image_encoder folder of "
                "h94/IP-Adapter (models/image_encoder, laion CLIP-ViT-H-14), or give patch_tokens= directly."
            )
        dtype = next(self.image_encoder.parameters()).dtype
        pixels = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        pixels = pixels.to(device=device, dtype=dtype)
        out = self.image_encoder(pixels, output_hidden_states=True)
        return out.hidden_states[-2]

    def _analyze_images(self, images: Sequence[Any], face_analyzer: Any) -> list[Any]:
        analyzer = face_analyzer if face_analyzer is not None else self.face_analyzer
        if analyzer is None:
            from hifi_portrait.face import FaceAnalyzer  # default offline backends

            analyzer = self.face_analyzer = FaceAnalyzer()
        analyze = analyzer.analyze if hasattr(analyzer, "analyze") else analyzer
        faces = []
        for img in images:
            if isinstance(img, PIL.Image.Image):
                img = np.asarray(img.convert("RGB"))
            faces.append(analyze(img))
        return faces

    @torch.no_grad()
    def prepare_image(self, image: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """diffusers' control-image preparation, with ``(H, W, 3)`` uint8 arrays (what
        :func:`hifi_portrait.landmarks.render_map` returns) scaled to ``[0, 1]`` like PIL images: diffusers scales
        PIL images but passes numpy arrays through unchanged. Used for the landmark map and extra ControlNet images.
        """
        return super().prepare_image(_uint8_arrays_to_pil(image), *args, **kwargs)

    def encode_id_tokens(
        self,
        faces: Sequence[Any] | None = None,
        reference_images: Sequence[Any] | None = None,
        id_embeds: torch.Tensor | np.ndarray | None = None,
        patch_tokens: torch.Tensor | np.ndarray | None = None,
        reference_quality: torch.Tensor | Sequence[float] | None = None,
        face_analyzer: Any = None,
        matte_references: bool = True,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """References of ONE person -> ID tokens ``(1, T, D)`` (run once per generation, not per step).

        Give one of:
            faces: analysed faces (``FaceAnalysis`` or any object with ``identity (Dg,)``, ``quality.total``,
                ``encoder_crop (S, S, 3) uint8`` and optionally ``mask (S, S) uint8``);
            reference_images: photos (paths, PIL images or RGB arrays), analysed with ``face_analyzer``
                (default: ``hifi_portrait.face.FaceAnalyzer()``);
            id_embeds ``(N, Dg)`` (+ optional patch_tokens ``(N, L, Dl)``): raw tensors, no face package needed.
        reference_quality: ``(N,)`` weights overriding ``quality.total``.
        """
        if self.face_refiner is None:
            raise ModelFilesMissingError(
                "this pipeline has no face_refiner: load an adapter with pipe.load_hifi_portrait(<file>.safetensors)"
            )
        device = device or self._execution_device
        if reference_images is not None:
            if faces is not None:
                raise ValueError("give faces or reference_images, not both")
            faces = self._analyze_images(reference_images, face_analyzer)
        quality = None
        if faces is not None:
            faces = list(faces)
            if not faces:
                raise NoUsableReferencesError("no reference faces were given")
            from hifi_portrait.loaders.adapter_file import check_identity_model

            for face in faces:
                check_identity_model(
                    getattr(self, "adapter_identity", {}), getattr(face, "identity_model", None), "references"
                )
            id_embeds = torch.from_numpy(np.stack([np.asarray(f.identity, dtype=np.float32) for f in faces]))
            quality = torch.tensor([float(getattr(getattr(f, "quality", None), "total", 1.0)) for f in faces])
            if patch_tokens is None:
                patch_tokens = self.encode_patch_tokens([reference_pixels(f, matte_references) for f in faces], device)
        if id_embeds is None:
            raise ValueError("give faces, reference_images or id_embeds")
        id_embeds = torch.as_tensor(id_embeds)
        if id_embeds.ndim == 2:
            id_embeds = id_embeds[None]
        if patch_tokens is not None:
            patch_tokens = torch.as_tensor(patch_tokens)
            if patch_tokens.ndim == 3:
                patch_tokens = patch_tokens[None]
        if reference_quality is not None:
            quality = torch.as_tensor(reference_quality, dtype=torch.float32)
        if quality is not None and quality.ndim == 1:
            quality = quality[None]
        dim = self.face_refiner.config.id_embed_dim
        if id_embeds.shape[-1] != dim:
            raise ValueError(
                f"identity vectors are {id_embeds.shape[-1]}-d but the face refiner expects {dim}-d: the adapter was "
                "trained with another identity model (see FaceAnalysis.identity_model)."
            )
        dtype = self.face_refiner.dtype
        return self.face_refiner(
            id_embeds.to(device=device, dtype=dtype),
            None if patch_tokens is None else patch_tokens.to(device=device, dtype=dtype),
            None if quality is None else quality.to(device),
        )

    def _regional_tokens(
        self,
        id_tokens: Any,
        regions: Any,
        total: int,
        do_cfg: bool,
        prompt_embeds: torch.Tensor,
        device: torch.device,
    ) -> RegionalIDTokens:
        """Per-person ID tokens + region masks -> the :class:`RegionalIDTokens` of the CFG batch (zero tokens,
        or the refiner's own unconditional tokens, in the unconditional half), masks at latent resolution."""
        if not isinstance(id_tokens, (list, tuple)) or not id_tokens or regions is None:
            raise ConfigError(
                "a group portrait needs id_tokens=[tokens of person 1, ...] (one (1, T, D) tensor per person) and "
                "id_regions= (P, H, W) masks, one per person"
            )
        masks = torch.as_tensor(np.asarray(regions) if not torch.is_tensor(regions) else regions).float()
        if masks.ndim != 3 or masks.shape[0] != len(id_tokens):
            raise ConfigError(
                f"id_regions of shape {tuple(masks.shape)} for {len(id_tokens)} people: give (P, H, W) masks, one "
                "per person"
            )
        if not bool(torch.isfinite(masks).all()) or masks.min() < 0:
            raise ConfigError("id_regions must be finite and non-negative: 0 = not this person, 1 = this person")
        if masks.max() > 1:  # uint8 masks (0..255)
            masks = masks / 255.0
        if masks.max() > 1:
            raise ConfigError("id_regions must be in [0, 1] (or 0..255 for 8-bit masks)")
        uncond_fn = getattr(self.face_refiner, "unconditional_tokens", None)
        people = []
        for tokens in id_tokens:
            tokens = torch.as_tensor(tokens).to(device=device, dtype=prompt_embeds.dtype)
            if tokens.ndim == 2:
                tokens = tokens[None]
            if tokens.shape[0] == 1:
                tokens = tokens.expand(total, -1, -1)
            elif tokens.shape[0] != total:
                raise ValueError(f"id_tokens batch {tokens.shape[0]} is neither 1 nor batch x images ({total})")
            if do_cfg:
                uncond = uncond_fn(tokens).to(tokens) if uncond_fn is not None else torch.zeros_like(tokens)
                tokens = torch.cat([uncond, tokens])
            people.append(tokens)
        return RegionalIDTokens(people, masks[None].to(device))

    def _latent_regions(self, regional: RegionalIDTokens, height: int, width: int) -> RegionalIDTokens:
        """Region masks given at image resolution -> latent resolution (fraction of each 8x8 block covered)."""
        lat = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        masks = regional.masks
        if tuple(masks.shape[-2:]) == lat:
            return regional
        if tuple(masks.shape[-2:]) != (height, width):
            raise ConfigError(
                f"id_regions are {tuple(masks.shape[-2:])} but the image is {height}x{width} (latent {lat[0]}x"
                f"{lat[1]}): give the masks at the image or the latent resolution"
            )
        f = self.vae_scale_factor
        return RegionalIDTokens(regional.tokens, torch.nn.functional.avg_pool2d(masks, f, f))

    def _person_images(
        self, images: Any, tokens_cfg: Any, width: int, height: int, total: int, per_prompt: int, device, do_cfg: bool
    ) -> list[torch.Tensor]:
        """``id_region_images``, checked and prepared like the ControlNet's condition image."""
        controlnet = self.controlnet
        context = self.controlnet_context
        if not isinstance(tokens_cfg, RegionalIDTokens):
            raise ConfigError("id_region_images is for group portraits: give id_tokens=[...] and id_regions= too")
        if controlnet is None or isinstance(controlnet, MultiControlNetModel) or context != "id_tokens":
            raise ConfigError(
                "id_region_images needs one ControlNet that reads the ID tokens (InstantID's IdentityNet, "
                "pipe.controlnet_context == 'id_tokens'); extra ControlNets beside it are not routed per person"
            )
        if len(images) != tokens_cfg.num_people:
            raise ConfigError(f"{len(images)} id_region_images for {tokens_cfg.num_people} people: one per person")
        return [
            self.prepare_image(
                image=img,
                width=width,
                height=height,
                batch_size=total,
                num_images_per_prompt=per_prompt,
                device=device,
                dtype=controlnet.dtype,
                do_classifier_free_guidance=do_cfg,
            )
            for img in images
        ]

    def _regional_controlnet(self, x, t, regional: RegionalIDTokens, images, scale, added_cond_kwargs):
        """The ControlNet once per person (its tokens, its image), residuals times the person's region, summed.

        A person whose region is empty is not run; ``(None, None)`` when no one has a region."""
        down, mid = None, None
        for p, (tokens, image) in enumerate(zip(regional.tokens, images, strict=True)):
            mask = regional.masks[:, p : p + 1].float()
            if not bool((mask > 0).any()):
                continue
            d, m = self.controlnet(
                x,
                t,
                encoder_hidden_states=tokens,
                controlnet_cond=image,
                conditioning_scale=scale,
                guess_mode=False,
                added_cond_kwargs=added_cond_kwargs,
                return_dict=False,
            )
            d = [r * region_masks_at(mask, tuple(r.shape[-2:])).to(r) for r in d]
            m = m * region_masks_at(mask, tuple(m.shape[-2:])).to(m)
            down = d if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        return down, mid

    def _controlnet_hidden_states(
        self, text: torch.Tensor, id_tokens: torch.Tensor | RegionalIDTokens | None
    ) -> torch.Tensor | list[torch.Tensor]:
        """What the extra ControlNet(s) cross-attend to, by ``self.controlnet_context``: ``"text"`` (default) or
        ``"id_tokens"`` (InstantID's IdentityNet, hifi_portrait.loaders.instantid), or a list with one of these per
        net of a :class:`~hifi_portrait.pipelines.multi_controlnet.MultiContextControlNetModel` (InstantID +
        OpenPose: ``["id_tokens", "text"]``)."""
        context = self.controlnet_context

        if isinstance(id_tokens, RegionalIDTokens):  # IdentityNet: every person's tokens, side by side
            id_tokens = torch.cat(id_tokens.tokens, dim=1)

        def pick(name: str) -> torch.Tensor:
            return id_tokens if name == "id_tokens" and id_tokens is not None else text

        return [pick(c) for c in context] if isinstance(context, (list, tuple)) else pick(context)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        prompt_2: str | list[str] | None = None,
        image: PipelineImageInput | list[PipelineImageInput] = None,
        faces: Sequence[Any] | None = None,
        reference_images: Sequence[Any] | None = None,
        id_embeds: torch.Tensor | None = None,
        patch_tokens: torch.Tensor | None = None,
        reference_quality: torch.Tensor | Sequence[float] | None = None,
        id_tokens: torch.Tensor | list[torch.Tensor] | None = None,
        id_regions: torch.Tensor | np.ndarray | None = None,
        id_region_images: list[PipelineImageInput] | None = None,
        landmark_image: PipelineImageInput | None = None,
        landmark_fn: Callable[[Sequence[Any] | None, Any], PipelineImageInput] | None = None,
        target: Any = None,
        id_scale: float | None = None,
        control_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - diffusers' signature
        face_analyzer: Any = None,
        matte_references: bool = True,
    ) -> HiFiPortraitPipelineOutput | tuple:
        """Generate portraits of the person in the references, posed like the landmark map.

        HiFi-Portrait arguments (the others are those of diffusers' SDXL ControlNet pipeline):
            image: condition image(s) of the *extra* ControlNet(s) only (not the landmark map).
            faces / reference_images / id_embeds (+ patch_tokens, reference_quality): the references of one
                person, see :meth:`encode_id_tokens`; or id_tokens ``(1, T, D)`` computed before.
                Without any, no identity is injected (zero ID tokens).
                Group portraits: ``id_tokens`` a list with one ``(1, T, D)`` tensor per person and ``id_regions``
                their ``(P, H, W)`` region masks (image or latent resolution, values in ``[0, 1]``): each person's
                tokens act only inside its region, in the UNet's ID attention and HiFi-Net's ID alignment
                (:func:`hifi_portrait.pipelines.group.generate_group` makes both from references and a layout).
            id_region_images: group portraits with a ControlNet that reads the ID tokens (InstantID's IdentityNet):
                one condition image per person (its own keypoints). The ControlNet then runs once per person with
                that person's tokens and image, and each run's residuals are multiplied by the person's region
                (resized to each residual), so IdentityNet is routed per person too. ``image`` still gives the
                size (the map of everyone).
            landmark_image: the landmark map (PIL, ``(H, W, 3)`` uint8 array, or ``(3, H, W)`` tensor in
                ``[0, 1]``); sets the output size unless height/width are given.
            landmark_fn: ``landmark_fn(faces, target) -> landmark map``, called once when landmark_image is None
                (e.g. hifi_portrait.landmarks' renderer with a target pose/expression/driver as ``target``).
            id_scale: weight of the decoupled ID attention in the UNet (0 = off); ``None`` keeps the scale set on
                the processors (the adapter file's, ``load_instantid(..., id_scale=)``'s or ``pipe.set_id_scale``'s).
            control_scale: weight of HiFi-Net's residuals (0 = off; HiFi-Net is then not run).
            face_analyzer, matte_references: see :meth:`encode_id_tokens`.

        Returns:
            :class:`HiFiPortraitPipelineOutput` (``images``, ``landmark_images``, ``id_tokens``), or
            ``(images, landmark_images)`` when ``return_dict=False``.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        controlnet = self.controlnet
        if controlnet is not None and image is None:
            raise ValueError("this pipeline has an extra ControlNet: give its condition image with image=")
        if controlnet is not None:
            # align format for control guidance (as diffusers' StableDiffusionXLControlNetPipeline.__call__)
            if not isinstance(control_guidance_start, list) and isinstance(control_guidance_end, list):
                control_guidance_start = len(control_guidance_end) * [control_guidance_start]
            elif not isinstance(control_guidance_end, list) and isinstance(control_guidance_start, list):
                control_guidance_end = len(control_guidance_start) * [control_guidance_end]
            elif not isinstance(control_guidance_start, list) and not isinstance(control_guidance_end, list):
                mult = len(controlnet.nets) if isinstance(controlnet, MultiControlNetModel) else 1
                control_guidance_start, control_guidance_end = (
                    mult * [control_guidance_start],
                    mult * [control_guidance_end],
                )
        self.check_inputs(
            prompt=prompt,
            prompt_2=prompt_2,
            image=image,
            callback_steps=None,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )

        # processors replaced by diffusers calls (slicing, IP-Adapter loading) are composed back, or refused
        replaced: dict[str, Any] = {}
        id_procs = sync_id_attention(self.unet, replaced)
        saved_scales = {name: proc.scale for name, proc in id_procs.items()}
        try:  # id_scale applies to this call only
            if id_procs and id_scale is not None:
                set_id_scale(self.unet, id_scale)
            return self._generate(
                id_procs=id_procs,
                prompt=prompt,
                prompt_2=prompt_2,
                image=image,
                faces=faces,
                reference_images=reference_images,
                id_embeds=id_embeds,
                patch_tokens=patch_tokens,
                reference_quality=reference_quality,
                id_tokens=id_tokens,
                id_regions=id_regions,
                id_region_images=id_region_images,
                landmark_image=landmark_image,
                landmark_fn=landmark_fn,
                target=target,
                id_scale=id_scale,
                control_scale=control_scale,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                timesteps=timesteps,
                sigmas=sigmas,
                denoising_end=denoising_end,
                guidance_scale=guidance_scale,
                negative_prompt=negative_prompt,
                negative_prompt_2=negative_prompt_2,
                num_images_per_prompt=num_images_per_prompt,
                eta=eta,
                generator=generator,
                latents=latents,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                ip_adapter_image=ip_adapter_image,
                ip_adapter_image_embeds=ip_adapter_image_embeds,
                output_type=output_type,
                return_dict=return_dict,
                cross_attention_kwargs=cross_attention_kwargs,
                controlnet_conditioning_scale=controlnet_conditioning_scale,
                control_guidance_start=control_guidance_start,
                control_guidance_end=control_guidance_end,
                original_size=original_size,
                crops_coords_top_left=crops_coords_top_left,
                target_size=target_size,
                negative_original_size=negative_original_size,
                negative_crops_coords_top_left=negative_crops_coords_top_left,
                negative_target_size=negative_target_size,
                clip_skip=clip_skip,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                face_analyzer=face_analyzer,
                matte_references=matte_references,
            )
        finally:
            for name, proc in id_procs.items():
                proc.scale = saved_scales[name]
            restore_processors(self.unet, replaced)

    def _generate(self, id_procs: dict[str, Any], **kw: Any) -> HiFiPortraitPipelineOutput | tuple:
        """The body of :meth:`__call__` (its arguments, by name), run while the call's ID scale is set."""
        prompt, prompt_2, prompt_embeds = kw["prompt"], kw["prompt_2"], kw["prompt_embeds"]
        negative_prompt_embeds = kw["negative_prompt_embeds"]
        pooled_prompt_embeds = kw["pooled_prompt_embeds"]
        negative_pooled_prompt_embeds = kw["negative_pooled_prompt_embeds"]
        faces, reference_images, id_embeds, id_tokens = (
            kw["faces"],
            kw["reference_images"],
            kw["id_embeds"],
            kw["id_tokens"],
        )
        landmark_image, control_scale, id_scale = kw["landmark_image"], kw["control_scale"], kw["id_scale"]
        height, width, num_images_per_prompt = kw["height"], kw["width"], kw["num_images_per_prompt"]
        image, generator, output_type = kw["image"], kw["generator"], kw["output_type"]
        cross_attention_kwargs = kw["cross_attention_kwargs"]
        callback_on_step_end = kw["callback_on_step_end"]
        callback_on_step_end_tensor_inputs = kw["callback_on_step_end_tensor_inputs"]
        controlnet_conditioning_scale = kw["controlnet_conditioning_scale"]
        control_guidance_start, control_guidance_end = kw["control_guidance_start"], kw["control_guidance_end"]
        controlnet = self.controlnet

        self._guidance_scale = kw["guidance_scale"]
        self._clip_skip = kw["clip_skip"]
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = kw["denoising_end"]
        self._interrupt = False

        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        total = batch_size * num_images_per_prompt
        device = self._execution_device
        do_cfg = self.do_classifier_free_guidance

        # 1. text
        lora_scale = cross_attention_kwargs.get("scale", None) if cross_attention_kwargs is not None else None
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = (
            self.encode_prompt(
                prompt,
                prompt_2,
                device,
                num_images_per_prompt,
                do_cfg,
                kw["negative_prompt"],
                kw["negative_prompt_2"],
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                lora_scale=lora_scale,
                clip_skip=self.clip_skip,
            )
        )

        # 1b. IP-Adapter image embeddings (diffusers' IP-Adapter, composed with our ID attention)
        image_embeds = None
        if kw["ip_adapter_image"] is not None or kw["ip_adapter_image_embeds"] is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(
                kw["ip_adapter_image"], kw["ip_adapter_image_embeds"], device, total, do_cfg
            )

        # 2. references -> ID tokens, once
        has_refs = any(x is not None for x in (faces, reference_images, id_embeds))
        if id_tokens is None and has_refs:
            if reference_images is not None and faces is None:
                faces = self._analyze_images(reference_images, kw["face_analyzer"])
            id_tokens = self.encode_id_tokens(
                faces=faces,
                id_embeds=id_embeds,
                patch_tokens=kw["patch_tokens"],
                reference_quality=kw["reference_quality"],
                matte_references=kw["matte_references"],
                device=device,
            )
        if id_scale is None:
            id_scale = max((p.scale for p in id_procs.values()), default=0.0)
        tokens_cfg = None
        regional = isinstance(id_tokens, (list, tuple)) or kw["id_regions"] is not None
        if regional:
            if has_refs:
                raise ConfigError(
                    "a group portrait takes its people as id_tokens=[...] with id_regions=; encode each person's "
                    "references with pipe.encode_id_tokens (or use hifi_portrait.pipelines.group.generate_group)"
                )
            tokens_cfg = self._regional_tokens(id_tokens, kw["id_regions"], total, do_cfg, prompt_embeds, device)
        elif id_tokens is not None or id_procs or self.hifi_net is not None:
            if id_tokens is None:
                t = next(iter(id_procs.values())).num_tokens if id_procs else 1
                tokens = torch.zeros(1, t, self.unet.config.cross_attention_dim, device=device)
                if id_procs and id_scale != 0:
                    logger.warning("no references given: generating without identity")
            else:
                tokens = id_tokens
            tokens = tokens.to(device=device, dtype=prompt_embeds.dtype)
            if tokens.shape[0] == 1:
                tokens = tokens.expand(total, -1, -1)
            elif tokens.shape[0] != total:
                raise ValueError(f"id_tokens batch {tokens.shape[0]} is neither 1 nor batch x images ({total})")
            tokens_cfg = tokens
            if do_cfg:  # "no identity" half: zero tokens, unless the refiner defines its own (InstantID's)
                uncond_fn = getattr(self.face_refiner, "unconditional_tokens", None)
                use_fn = uncond_fn is not None and id_tokens is not None
                uncond = uncond_fn(tokens).to(tokens) if use_fn else torch.zeros_like(tokens)
                tokens_cfg = torch.cat([uncond, tokens])
        # the UNet sees ID tokens only when there are references: without, it is exactly the plain UNet
        unet_tokens = bool(id_procs) and id_tokens is not None

        # 3. landmark map and extra ControlNet images
        landmark_pil = None
        hifi_active = self.hifi_net is not None and control_scale != 0
        if landmark_image is None and kw["landmark_fn"] is not None:
            landmark_image = kw["landmark_fn"](faces, kw["target"])
        if hifi_active and landmark_image is None:
            raise ValueError(
                "HiFi-Net needs a landmark map: pass landmark_image= (or landmark_fn=), or control_scale=0"
            )
        cond_image = None
        if landmark_image is not None:
            dtype = self.hifi_net.dtype if self.hifi_net is not None else prompt_embeds.dtype
            cond_image = self.prepare_image(
                image=landmark_image,
                width=width,
                height=height,
                batch_size=total,
                num_images_per_prompt=num_images_per_prompt,
                device=device,
                dtype=dtype,
                do_classifier_free_guidance=do_cfg,
            )
            height, width = cond_image.shape[-2:]
            first = cond_image[-1].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            landmark_pil = [PIL.Image.fromarray(np.round(first * 255).astype(np.uint8))] * batch_size

        extra_images = None
        if controlnet is not None:
            nets = controlnet.nets if isinstance(controlnet, MultiControlNetModel) else [controlnet]
            imgs = image if isinstance(controlnet, MultiControlNetModel) else [image]
            if len(imgs) != len(nets):
                raise ValueError(f"{len(nets)} ControlNets but {len(imgs)} condition images")
            extra_images = [
                self.prepare_image(
                    image=img,
                    width=width,
                    height=height,
                    batch_size=total,
                    num_images_per_prompt=num_images_per_prompt,
                    device=device,
                    dtype=controlnet.dtype,
                    do_classifier_free_guidance=do_cfg,
                )
                for img in imgs
            ]
            height, width = extra_images[0].shape[-2:]
            if not isinstance(control_guidance_start, list):
                control_guidance_start = [control_guidance_start] * len(nets)
            if not isinstance(control_guidance_end, list):
                control_guidance_end = [control_guidance_end] * len(nets)
            if not isinstance(controlnet_conditioning_scale, list):
                controlnet_conditioning_scale = [controlnet_conditioning_scale] * len(nets)
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor

        if isinstance(tokens_cfg, RegionalIDTokens):
            tokens_cfg = self._latent_regions(tokens_cfg, height, width)
        person_images = None
        if kw["id_region_images"] is not None:
            person_images = self._person_images(
                kw["id_region_images"], tokens_cfg, width, height, total, num_images_per_prompt, device, do_cfg
            )

        # 4. timesteps, latents
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, kw["num_inference_steps"], device, kw["timesteps"], kw["sigmas"]
        )
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            total, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, kw["latents"]
        )
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            gs = torch.tensor(self.guidance_scale - 1).repeat(total)
            timestep_cond = self.get_guidance_scale_embedding(
                gs, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, kw["eta"])

        # 5. SDXL micro-conditioning
        original_size = kw["original_size"] or (height, width)
        target_size = kw["target_size"] or (height, width)
        add_text_embeds = pooled_prompt_embeds
        if self.text_encoder_2 is None:
            projection_dim = int(pooled_prompt_embeds.shape[-1])
        else:
            projection_dim = self.text_encoder_2.config.projection_dim
        add_time_ids = self._get_add_time_ids(
            original_size,
            kw["crops_coords_top_left"],
            target_size,
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        if kw["negative_original_size"] is not None and kw["negative_target_size"] is not None:
            negative_add_time_ids = self._get_add_time_ids(
                kw["negative_original_size"],
                kw["negative_crops_coords_top_left"],
                kw["negative_target_size"],
                dtype=prompt_embeds.dtype,
                text_encoder_projection_dim=projection_dim,
            )
        else:
            negative_add_time_ids = add_time_ids
        if do_cfg:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
            add_text_embeds = torch.cat([negative_pooled_prompt_embeds, add_text_embeds], dim=0)
            add_time_ids = torch.cat([negative_add_time_ids, add_time_ids], dim=0)
        prompt_embeds = prompt_embeds.to(device)
        add_text_embeds = add_text_embeds.to(device)
        add_time_ids = add_time_ids.to(device).repeat(total, 1)

        # 6. HiFi-Net condition, once (independent of the noisy latent)
        hifi_condition = None
        if hifi_active:
            hifi_condition = self.hifi_net.prepare_condition(cond_image, tokens_cfg)

        # 7. denoising loop
        if self.denoising_end is not None and 0 < self.denoising_end < 1:
            cutoff = int(
                round(
                    self.scheduler.config.num_train_timesteps
                    - (self.denoising_end * self.scheduler.config.num_train_timesteps)
                )
            )
            num_inference_steps = len([ts for ts in timesteps if ts >= cutoff])
            timesteps = timesteps[:num_inference_steps]
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order

        def cond_half(x: Any) -> Any:
            """The conditional half of a CFG batch (classifier-free guidance turned off by a callback)."""
            if isinstance(x, HiFiNetCondition):
                return x.select(slice(-total, None)) if x.features[0].shape[0] == 2 * total else x
            if isinstance(x, (list, tuple)):
                return type(x)(cond_half(v) for v in x)
            if isinstance(x, RegionalIDTokens):
                return x.select(slice(-total, None)) if x.tokens[0].shape[0] == 2 * total else x
            return x[-total:] if torch.is_tensor(x) and x.shape[0] == 2 * total else x

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if do_cfg and not self.do_classifier_free_guidance:  # re-read every step, as diffusers does
                    do_cfg = False
                    prompt_embeds, add_text_embeds, add_time_ids = cond_half(
                        (prompt_embeds, add_text_embeds, add_time_ids)
                    )
                    tokens_cfg, hifi_condition = cond_half(tokens_cfg), cond_half(hifi_condition)
                    person_images = cond_half(person_images)
                    extra_images, image_embeds = cond_half(extra_images), cond_half(image_embeds)
                latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}
                controlnet_added_cond_kwargs = added_cond_kwargs
                if image_embeds is not None:
                    added_cond_kwargs = {**added_cond_kwargs, "image_embeds": image_embeds}

                down_res, mid_res = None, None
                if hifi_condition is not None:
                    down_res, mid_res = self.hifi_net(
                        latent_model_input,
                        t,
                        condition=hifi_condition,
                        conditioning_scale=control_scale,
                        added_cond_kwargs=controlnet_added_cond_kwargs,
                        return_dict=False,
                    )
                    # HiFi-Net may run in another dtype than the UNet (e.g. fp32 adapter, fp16 UNet)
                    down_res = [r.to(latent_model_input.dtype) for r in down_res]
                    mid_res = mid_res.to(latent_model_input.dtype)
                if controlnet is not None:
                    keep = [
                        1.0 - float(i / len(timesteps) < s or (i + 1) / len(timesteps) > e)
                        for s, e in zip(control_guidance_start, control_guidance_end, strict=True)
                    ]
                    scales = [c * k for c, k in zip(controlnet_conditioning_scale, keep, strict=True)]
                    cn_cond = extra_images if isinstance(controlnet, MultiControlNetModel) else extra_images[0]
                    cn_scale = scales if isinstance(controlnet, MultiControlNetModel) else scales[0]
                    if person_images is not None:
                        d, m = self._regional_controlnet(
                            latent_model_input, t, tokens_cfg, person_images, cn_scale, controlnet_added_cond_kwargs
                        )
                    else:
                        d, m = controlnet(
                            latent_model_input,
                            t,
                            encoder_hidden_states=self._controlnet_hidden_states(prompt_embeds, tokens_cfg),
                            controlnet_cond=cn_cond,
                            conditioning_scale=cn_scale,
                            guess_mode=False,
                            added_cond_kwargs=controlnet_added_cond_kwargs,
                            return_dict=False,
                        )
                    if down_res is None:  # (d is None only when every person's region is empty)
                        down_res, mid_res = d, m
                    elif d is not None:
                        down_res = [a + b for a, b in zip(down_res, d, strict=True)]
                        mid_res = mid_res + m

                noise_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=with_id_tokens(prompt_embeds, tokens_cfg if unet_tokens else None),
                    timestep_cond=timestep_cond,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    down_block_additional_residuals=down_res,
                    mid_block_additional_residual=mid_res,
                    added_cond_kwargs=added_cond_kwargs,
                    return_dict=False,
                )[0]
                if do_cfg:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                        "add_text_embeds": add_text_embeds,
                        "add_time_ids": add_time_ids,
                        "negative_pooled_prompt_embeds": negative_pooled_prompt_embeds,
                        "negative_add_time_ids": negative_add_time_ids,
                        # as in diffusers' ControlNet pipeline: the (extra) ControlNet's condition image
                        "image": cond_image
                        if extra_images is None
                        else (extra_images[0] if len(extra_images) == 1 else extra_images),
                    }
                    callback_outputs = callback_on_step_end(
                        self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    add_text_embeds = callback_outputs.pop("add_text_embeds", add_text_embeds)
                    add_time_ids = callback_outputs.pop("add_time_ids", add_time_ids)
                    new_image = callback_outputs.pop("image", None)
                    if new_image is not None and extra_images is not None:
                        extra_images = list(new_image) if isinstance(new_image, (list, tuple)) else [new_image]
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 8. decode
        if output_type != "latent":
            needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
            if needs_upcasting:
                self.vae.to(dtype=torch.float32)
                latents = latents.to(next(iter(self.vae.post_quant_conv.parameters())).dtype)
            has_mean = getattr(self.vae.config, "latents_mean", None) is not None
            has_std = getattr(self.vae.config, "latents_std", None) is not None
            if has_mean and has_std:
                mean = torch.tensor(self.vae.config.latents_mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                std = torch.tensor(self.vae.config.latents_std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                latents = latents * std / self.vae.config.scaling_factor + mean
            else:
                latents = latents / self.vae.config.scaling_factor
            images = self.vae.decode(latents, return_dict=False)[0]
            if needs_upcasting:
                self.vae.to(dtype=torch.float16)
            if self.watermark is not None:
                images = self.watermark.apply_watermark(images)
            images = self.image_processor.postprocess(images, output_type=output_type)
        else:
            images = latents

        self.maybe_free_model_hooks()
        if not kw["return_dict"]:
            return (images, landmark_pil)
        return HiFiPortraitPipelineOutput(images=images, landmark_images=landmark_pil, id_tokens=id_tokens)
