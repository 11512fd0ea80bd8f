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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionXLControlNetPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models import AutoencoderKL, ControlNetModel, MultiControlNetModel, UNet2DConditionModel
from diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl import retrieve_timesteps
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.import_utils import is_invisible_watermark_available
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from hifi_portrait.errors import ModelFilesMissingError, NoUsableReferencesError
from hifi_portrait.face.matting import MATTE_BACKGROUND, composite
from hifi_portrait.loaders.hifi_portrait_loader import HiFiPortraitLoaderMixin
from hifi_portrait.models.face_refiner import FaceRefiner
from hifi_portrait.models.hifi_net import HiFiNetModel
from hifi_portrait.models.id_attention import append_id_tokens, get_id_attn_processors, set_id_scale
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


def _onload(module: torch.nn.Module | None) -> None:
    """Move a model offloaded by ``enable_model_cpu_offload`` to its execution device before calling a method
    other than ``forward`` (accelerate's hooks only wrap ``forward``)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


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

    The UNet's ID attention processors come with the adapter (:meth:`load_hifi_portrait`) or
    :meth:`set_hifi_portrait`.
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
    ) -> None:
        DiffusionPipeline.__init__(self)  # the parent's __init__ requires a ControlNet; ours is optional
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            face_refiner=face_refiner,
            hifi_net=hifi_net,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True)
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )
        add_watermarker = add_watermarker if add_watermarker is not None else is_invisible_watermark_available()
        if add_watermarker:
            from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

            self.watermark = StableDiffusionXLWatermarker()
        else:
            self.watermark = None
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.default_sample_size = self.unet.config.sample_size if getattr(self, "unet", None) is not None else 128
        self.face_analyzer: Any = None  # set by the user or created lazily for reference_images

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
        _onload(self.image_encoder)
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

    def _controlnet_hidden_states(
        self, text: torch.Tensor, id_tokens: torch.Tensor | None
    ) -> torch.Tensor | list[torch.Tensor]:
        """What the extra ControlNet(s) cross-attend to, by ``self.controlnet_context``: ``"text"`` (default) or
        ``"id_tokens"`` (InstantID's IdentityNet, hifi_portrait.loaders.instantid), or a list with one of these per
        net of a :class:`~hifi_portrait.pipelines.multi_controlnet.MultiContextControlNetModel` (InstantID +
        OpenPose: ``["id_tokens", "text"]``)."""
        context = getattr(self, "controlnet_context", "text")

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
        id_tokens: torch.Tensor | None = None,
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
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} not in {self._callback_tensor_inputs}")
        if prompt is None and prompt_embeds is None:
            raise ValueError("give prompt or prompt_embeds")
        controlnet = self.controlnet
        if controlnet is not None and image is None:
            raise ValueError("this pipeline has an extra ControlNet: give its condition image with image=")

        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = denoising_end
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
                negative_prompt,
                negative_prompt_2,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                lora_scale=lora_scale,
                clip_skip=self.clip_skip,
            )
        )

        # 2. references -> ID tokens, once
        has_refs = any(x is not None for x in (faces, reference_images, id_embeds))
        if id_tokens is None and has_refs:
            if reference_images is not None and faces is None:
                faces = self._analyze_images(reference_images, face_analyzer)
            id_tokens = self.encode_id_tokens(
                faces=faces,
                id_embeds=id_embeds,
                patch_tokens=patch_tokens,
                reference_quality=reference_quality,
                matte_references=matte_references,
                device=device,
            )
        ip_procs = get_id_attn_processors(self.unet)
        if ip_procs and id_scale is not None:
            set_id_scale(self.unet, id_scale)
        if id_scale is None:
            id_scale = max((p.scale for p in ip_procs.values()), default=0.0)
        tokens_cfg = None
        if id_tokens is not None or ip_procs or self.hifi_net is not None:
            if id_tokens is None:
                t = next(iter(ip_procs.values())).num_tokens if ip_procs else 1
                tokens = torch.zeros(1, t, self.unet.config.cross_attention_dim, device=device)
                if ip_procs and id_scale != 0:
                    logger.warning("no references given: generating without identity (zero ID tokens)")
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

        # 3. landmark map and extra ControlNet images
        landmark_pil = None
        hifi_active = self.hifi_net is not None and control_scale != 0
        if landmark_image is None and landmark_fn is not None:
            landmark_image = landmark_fn(faces, target)
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

        # 4. timesteps, latents
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            total, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents
        )
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            gs = torch.tensor(self.guidance_scale - 1).repeat(total)
            timestep_cond = self.get_guidance_scale_embedding(
                gs, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 5. SDXL micro-conditioning
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        add_text_embeds = pooled_prompt_embeds
        if self.text_encoder_2 is None:
            projection_dim = int(pooled_prompt_embeds.shape[-1])
        else:
            projection_dim = self.text_encoder_2.config.projection_dim
        add_time_ids = self._get_add_time_ids(
            original_size,
            crops_coords_top_left,
            target_size,
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        if negative_original_size is not None and negative_target_size is not None:
            negative_add_time_ids = self._get_add_time_ids(
                negative_original_size,
                negative_crops_coords_top_left,
                negative_target_size,
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
        unet_states = append_id_tokens(prompt_embeds, tokens_cfg) if ip_procs else prompt_embeds

        # 6. HiFi-Net condition, once (independent of the noisy latent)
        hifi_condition = None
        if hifi_active:
            _onload(self.hifi_net)
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
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}

                down_res, mid_res = None, None
                if hifi_condition is not None:
                    down_res, mid_res = self.hifi_net(
                        latent_model_input,
                        t,
                        condition=hifi_condition,
                        conditioning_scale=control_scale,
                        added_cond_kwargs=added_cond_kwargs,
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
                    d, m = controlnet(
                        latent_model_input,
                        t,
                        encoder_hidden_states=self._controlnet_hidden_states(prompt_embeds, tokens_cfg),
                        controlnet_cond=cn_cond,
                        conditioning_scale=cn_scale,
                        guess_mode=False,
                        added_cond_kwargs=added_cond_kwargs,
                        return_dict=False,
                    )
                    if down_res is None:
                        down_res, mid_res = d, m
                    else:
                        down_res = [a + b for a, b in zip(down_res, d, strict=True)]
                        mid_res = mid_res + m

                noise_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=unet_states,
                    timestep_cond=timestep_cond,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    down_block_additional_residuals=down_res,
                    mid_block_additional_residual=mid_res,
                    added_cond_kwargs=added_cond_kwargs,
                    return_dict=False,
                )[0]
                if do_cfg:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
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
                        "image": cond_image,
                    }
                    callback_outputs = callback_on_step_end(
                        self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = callback_outputs.pop("latents", latents)
                    new_prompt = callback_outputs.pop("prompt_embeds", None)
                    if new_prompt is not None:
                        prompt_embeds = new_prompt
                        unet_states = append_id_tokens(prompt_embeds, tokens_cfg) if ip_procs else prompt_embeds
                    add_text_embeds = callback_outputs.pop("add_text_embeds", add_text_embeds)
                    add_time_ids = callback_outputs.pop("add_time_ids", add_time_ids)
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
        if not return_dict:
            return (images, landmark_pil)
        return HiFiPortraitPipelineOutput(images=images, landmark_images=landmark_pil, id_tokens=id_tokens)
