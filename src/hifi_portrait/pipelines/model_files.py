"""The model files that generation needs, their checks, and loading the pipeline from them.

None of the files ships with the package (no public hifi-portrait weights exist): an SDXL base in the diffusers
layout (or a Hub id when online), the hifi-portrait adapter ``.safetensors`` and a CLIP vision encoder folder; or,
for InstantID's published weights, the converted ip-adapter, IdentityNet and an ArcFace model. Every check returns
one line per missing file saying what it is and where it comes from (docs/weights.md); the CLI (``generate``,
``run``) and the demo use these functions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hifi_portrait.errors import ConfigError, ModelFilesMissingError

logger = logging.getLogger(__name__)

#: Sub-folders (besides model_index.json) of an SDXL base in the diffusers layout.
SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

WHERE_BASE = (
    "an SDXL base model in the diffusers layout (model_index.json, " + ", ".join(f"{p}/" for p in SDXL_PARTS) + "), "
    "e.g. `huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0 --local-dir sdxl-base` "
    "(https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0) or any SDXL fine-tune with that layout; "
    "pass the folder (or, with network, the Hub id) as --base"
)
WHERE_ADAPTER = (
    "the hifi-portrait adapter: one .safetensors file with face_refiner.*, hifi_net.* and ip_attn.* keys, written "
    "by `hifi-portrait train` (pipe.save_hifi_portrait); pass it as --adapter. Pickled checkpoints are never loaded"
)
WHERE_ENCODER = (
    "a CLIP vision encoder folder (transformers layout: config.json + model.safetensors), e.g. models/image_encoder "
    "of https://huggingface.co/h94/IP-Adapter (laion CLIP-ViT-H-14); it must be the encoder the adapter was "
    "trained with; pass it as --image-encoder or put it in <base>/image_encoder/"
)


def is_hub_id(value: str) -> bool:
    """True for ``"owner/name"`` strings that are not an existing local path."""
    return bool(_HUB_ID.match(value)) and not Path(value).expanduser().exists()


def model_file_problems(base: str | Path | None, adapter: Path | None, image_encoder: Path | None) -> list[str]:
    """One line per missing or malformed model file (empty when generation can start)."""
    problems = []
    base_dir = None
    if base is None:
        problems.append(f"SDXL base: not given. Needed: {WHERE_BASE}.")
    elif not is_hub_id(str(base)):
        base_dir = Path(base).expanduser()
        if not base_dir.is_dir():
            problems.append(f"SDXL base {base_dir}: no such folder. Needed: {WHERE_BASE}.")
        else:
            absent = [p for p in ("model_index.json", *SDXL_PARTS) if not (base_dir / p).exists()]
            if absent:
                problems.append(f"SDXL base {base_dir}: lacks {', '.join(absent)}. Needed: {WHERE_BASE}.")
    if adapter is None:
        problems.append(f"adapter: not given. Needed: {WHERE_ADAPTER}.")
    elif Path(adapter).suffix != ".safetensors":
        problems.append(f"adapter {adapter}: not a .safetensors file. Needed: {WHERE_ADAPTER}.")
    elif not Path(adapter).is_file():
        problems.append(f"adapter {adapter}: file not found. Needed: {WHERE_ADAPTER}.")
    encoder = resolve_image_encoder(base_dir, image_encoder)
    if encoder is None:
        where = " (and the SDXL folder has no image_encoder/)" if base_dir is not None else ""
        problems.append(f"CLIP vision encoder: not given{where}. Needed: {WHERE_ENCODER}.")
    elif not (encoder / "config.json").is_file() or not any(encoder.glob("*.safetensors")):
        problems.append(
            f"CLIP vision encoder {encoder}: needs config.json and a .safetensors file. Needed: {WHERE_ENCODER}."
        )
    return problems


def instantid_file_problems(
    base: str | Path | None, instantid: Path, identitynet: Path | None, insightface_dir: Path | None
) -> list[str]:
    """Like :func:`model_file_problems` for InstantID mode (SDXL base, converted ip-adapter, IdentityNet, ArcFace)."""
    problems = [p for p in model_file_problems(base, None, None) if p.startswith("SDXL base")]
    where = "from https://huggingface.co/InstantX/InstantID"
    if Path(instantid).suffix != ".safetensors":
        problems.append(
            f"InstantID ip-adapter {instantid}: not a .safetensors file; convert InstantID's "
            "ip-adapter.bin with `hifi-portrait convert-instantid ip-adapter.bin --out "
            "ip-adapter.safetensors`"
        )
    elif not Path(instantid).is_file():
        problems.append(
            f"InstantID ip-adapter {instantid}: file not found (convert ip-adapter.bin {where} with "
            "`hifi-portrait convert-instantid`)"
        )
    if identitynet is None:
        problems.append(
            f"IdentityNet: not given; pass --identitynet with the ControlNetModel/ folder {where} "
            "(config.json + diffusion_pytorch_model.safetensors)"
        )
    elif not (Path(identitynet) / "config.json").is_file() or not any(Path(identitynet).glob("*.safetensors")):
        problems.append(
            f"IdentityNet {identitynet}: needs config.json and diffusion_pytorch_model.safetensors "
            f"(the ControlNetModel/ folder {where})"
        )
    if insightface_dir is None:
        problems.append(
            "ArcFace model: InstantID reads 512-d antelopev2 embeddings; pass --insightface-dir with the "
            "antelopev2 pack of the insightface model zoo (non-commercial licence)"
        )
    return problems


def resolve_image_encoder(base_dir: Path | None, image_encoder: Path | None) -> Path | None:
    if image_encoder is not None:
        return Path(image_encoder).expanduser()
    if base_dir is not None and (base_dir / "image_encoder").is_dir():
        return base_dir / "image_encoder"
    return None


def require_model_files(base: str | Path | None, adapter: Path | None, image_encoder: Path | None) -> None:
    """Raise :class:`ModelFilesMissingError` naming every missing file and where it comes from."""
    problems = model_file_problems(base, adapter, image_encoder)
    if problems:
        raise ModelFilesMissingError(
            "generation needs model files that were not found:\n  - "
            + "\n  - ".join(problems)
            + "\nSee docs/pipeline.md ('Files a user must supply') and docs/instantid.md."
        )


def load_pipeline(
    base: str | Path,
    adapter: Path,
    image_encoder: Path | None = None,
    loras: Sequence[Path] = (),
    lora_scale: float = 1.0,
    fp16: bool = False,
    device: str = "cpu",
    cpu_offload: bool = False,
) -> Any:
    """SDXL + CLIP vision encoder + adapter (+ LoRAs) as a ready :class:`StableDiffusionXLHiFiPortraitPipeline`.

    Raises:
        ModelFilesMissingError: a file is missing, or a Hub id cannot be fetched (offline).
        WeightsMismatchError: the adapter does not fit the base model.
    """
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline

    require_model_files(base, adapter, image_encoder)
    dtype = torch.float16 if fp16 else torch.float32
    base_dir = None if is_hub_id(str(base)) else Path(base).expanduser()
    encoder_dir = resolve_image_encoder(base_dir, image_encoder)
    encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_dir), dtype=dtype, use_safetensors=True)
    # image preprocessing: the encoder folder's, else the SDXL folder's feature_extractor/, else CLIP's standard
    # 224 px one (IP-Adapter's encoder folder ships none)
    extra: dict[str, Any] = {}
    if (encoder_dir / "preprocessor_config.json").is_file():
        extra["feature_extractor"] = CLIPImageProcessor.from_pretrained(str(encoder_dir))
    elif base_dir is None or not (base_dir / "feature_extractor" / "preprocessor_config.json").is_file():
        extra["feature_extractor"] = CLIPImageProcessor()
    try:
        pipe = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(
            str(base), image_encoder=encoder, dtype=dtype, use_safetensors=True, add_watermarker=False, **extra
        )
    except (OSError, ValueError) as exc:
        if base_dir is None:
            raise ModelFilesMissingError(
                f"could not fetch the SDXL base {base!r} from the Hugging Face Hub ({exc}). Without network, "
                f"download it once and pass the folder. Needed: {WHERE_BASE}."
            ) from None
        raise ModelFilesMissingError(
            f"could not load the SDXL base from {base_dir} ({exc}). Needed: {WHERE_BASE}."
        ) from None
    pipe.load_hifi_portrait(str(adapter))
    return _place(pipe, loras, lora_scale, device, cpu_offload)


def load_instantid_pipeline(
    base: str | Path,
    instantid: Path,
    identitynet: Path,
    loras: Sequence[Path] = (),
    lora_scale: float = 1.0,
    fp16: bool = False,
    device: str = "cpu",
    cpu_offload: bool = False,
    controlnets: Sequence[Path] = (),
) -> Any:
    """SDXL + IdentityNet + InstantID's converted image projection and ID attention (+ LoRAs).

    ``controlnets``: folders of extra SDXL ControlNets (diffusers layout, e.g. an OpenPose one), run beside
    IdentityNet as a multi-ControlNet; they read the text while IdentityNet reads the ID tokens, as in InstantID's
    multi-ControlNet pipeline. Their condition images follow IdentityNet's in ``pipe(image=[...])``.
    """
    import torch
    from diffusers import ControlNetModel

    from hifi_portrait.loaders.instantid import load_instantid
    from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
    from hifi_portrait.pipelines.multi_controlnet import MultiContextControlNetModel

    dtype = torch.float16 if fp16 else torch.float32
    controlnet = ControlNetModel.from_pretrained(str(identitynet), dtype=dtype, use_safetensors=True)
    if controlnets:
        extra = [ControlNetModel.from_pretrained(str(p), dtype=dtype, use_safetensors=True) for p in controlnets]
        controlnet = MultiContextControlNetModel([controlnet, *extra])
    try:
        pipe = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(
            str(base), controlnet=controlnet, dtype=dtype, use_safetensors=True, add_watermarker=False
        )
    except (OSError, ValueError) as exc:
        raise ModelFilesMissingError(f"could not load the SDXL base {base} ({exc}). Needed: {WHERE_BASE}.") from None
    load_instantid(pipe, instantid)
    if controlnets:
        pipe.controlnet_context = ["id_tokens"] + ["text"] * len(controlnets)
    return _place(pipe, loras, lora_scale, device, cpu_offload)


def _place(pipe: Any, loras: Sequence[Path], lora_scale: float, device: str, cpu_offload: bool) -> Any:
    """Add the LoRAs, then move the pipeline to ``device`` (or let diffusers' CPU offload place it)."""
    _add_loras(pipe, loras, lora_scale)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def _add_loras(pipe: Any, loras: Sequence[Path], lora_scale: float) -> None:
    for i, lora in enumerate(loras):
        if not Path(lora).is_file():
            raise ModelFilesMissingError(f"LoRA file {lora} not found")
        try:
            pipe.load_lora_weights(str(lora), adapter_name=f"lora{i}")
        except ImportError as exc:
            raise ConfigError(f"--lora needs the peft package: pip install 'peft>=0.18' ({exc})") from None
    if loras:
        pipe.set_adapters([f"lora{i}" for i in range(len(loras))], adapter_weights=[lora_scale] * len(loras))


@dataclass(frozen=True)
class WeightsConfig:
    """Paths of the model files generation needs; ``None`` = not given.

    Attributes:
        base: folder of an SDXL base model in the diffusers layout (or a Hub id when online).
        adapter: the hifi-portrait adapter ``.safetensors`` file.
        image_encoder: folder of a CLIP vision encoder (transformers layout); defaults to ``base/image_encoder``.
    """

    base: Path | str | None = None
    adapter: Path | None = None
    image_encoder: Path | None = None

    def resolved_image_encoder(self) -> Path | None:
        """The image-encoder folder to use: the one given, else ``base/image_encoder`` when it exists."""
        base_dir = None if self.base is None or is_hub_id(str(self.base)) else Path(self.base).expanduser()
        return resolve_image_encoder(base_dir, self.image_encoder)

    def problems(self) -> list[str]:
        """One human-readable line per missing or malformed file; empty when everything is in place."""
        return model_file_problems(self.base, self.adapter, self.image_encoder)

    @property
    def complete(self) -> bool:
        return not self.problems()

    def require(self) -> None:
        """Raise :class:`ModelFilesMissingError` naming every missing file, or return when all are present."""
        require_model_files(self.base, self.adapter, self.image_encoder)
