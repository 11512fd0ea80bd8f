"""Which model files generation needs, whether the user supplied them, and how to say what is missing.

Generation needs three things that cannot ship with the package (no public weights exist offline):

* an SDXL base model in the diffusers folder layout (``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``scheduler/``);
* the hifi-portrait adapter: one ``.safetensors`` file with ``face_refiner.*``, ``hifi_net.*`` and ``ip_attn.*``
  keys (made by ``hifi-portrait train``);
* a CLIP vision encoder in the transformers layout (``config.json`` + ``model.safetensors``), either given
  explicitly or found as ``image_encoder/`` inside the SDXL folder.

Face analysis and landmark maps need none of them, so the demo works without them and explains what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hifi_portrait.errors import ModelFilesMissingError

#: Sub-folders a diffusers SDXL base folder must contain, besides ``model_index.json``.
SDXL_SUBFOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")

HOW_TO_PASS = (
    "hifi-portrait demo --base /path/to/stable-diffusion-xl-base-1.0 "
    "--adapter /path/to/hifi_portrait_adapter.safetensors [--image-encoder /path/to/clip-vision]"
)


@dataclass(frozen=True)
class WeightsConfig:
    """Paths of the model files generation needs; ``None`` = not given.

    Attributes:
        base: folder of an SDXL base model in the diffusers layout.
        adapter: the hifi-portrait adapter ``.safetensors`` file.
        image_encoder: folder of a CLIP vision encoder (transformers layout); defaults to ``base/image_encoder``.
    """

    base: Path | None = None
    adapter: Path | None = None
    image_encoder: Path | None = None

    def resolved_image_encoder(self) -> Path | None:
        """The image-encoder folder to use: the one given, else ``base/image_encoder`` when it exists."""
        if self.image_encoder is not None:
            return Path(self.image_encoder)
        if self.base is not None and (Path(self.base) / "image_encoder").is_dir():
            return Path(self.base) / "image_encoder"
        return None

    def problems(self) -> list[str]:
        """One human-readable line per missing or malformed file; empty when everything is in place."""
        out: list[str] = []
        if self.base is None:
            out.append(
                "SDXL base folder (diffusers layout, e.g. a local copy of stabilityai/stable-diffusion-xl-base-1.0 "
                "with model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, "
                "scheduler/): not given, pass `--base DIR`"
            )
        else:
            base = Path(self.base)
            if not base.is_dir():
                out.append(f"SDXL base folder {base}: does not exist or is not a folder")
            else:
                absent = [name for name in ("model_index.json", *SDXL_SUBFOLDERS) if not (base / name).exists()]
                if absent:
                    out.append(f"SDXL base folder {base}: lacks {', '.join(absent)} (is it in the diffusers layout?)")
        if self.adapter is None:
            out.append(
                "hifi-portrait adapter (`.safetensors` with `face_refiner.*`, `hifi_net.*`, `ip_attn.*` keys, made by "
                "`hifi-portrait train`): not given, pass `--adapter FILE`"
            )
        else:
            adapter = Path(self.adapter)
            if adapter.suffix != ".safetensors":
                out.append(f"adapter {adapter}: must be a .safetensors file (pickled checkpoints are never loaded)")
            elif not adapter.is_file():
                out.append(f"adapter {adapter}: file not found")
        encoder = self.resolved_image_encoder()
        if encoder is None:
            out.append(
                "CLIP vision encoder (transformers layout: config.json + model.safetensors, e.g. the image_encoder "
                "folder of h94/IP-Adapter): not given and no image_encoder/ inside the SDXL folder, "
                "pass `--image-encoder DIR`"
            )
        elif not (encoder / "config.json").is_file() or not any(encoder.glob("*.safetensors")):
            out.append(f"CLIP vision encoder {encoder}: needs config.json and a .safetensors weights file")
        return out

    @property
    def complete(self) -> bool:
        return not self.problems()

    def require(self) -> None:
        """Raise :class:`ModelFilesMissingError` naming every missing file, or return when all are present."""
        problems = self.problems()
        if problems:
            raise ModelFilesMissingError(
                "generation needs model files that were not found:\n  - "
                + "\n  - ".join(problems)
                + f"\nPass them as: {HOW_TO_PASS}\n(see docs/demo.md and the README's 'Getting weights')."
            )


def weights_help_markdown(problems: list[str]) -> str:
    """Markdown for the demo page: which files generation needs and how to pass them (empty when none missing)."""
    if not problems:
        return ""
    items = "\n".join(f"- {line}" for line in problems)
    return (
        "**Generation is off: model weights are not configured.** Analysis and landmark previews work without "
        f"them. Generation needs:\n\n{items}\n\nStart the demo with them:\n\n```\n{HOW_TO_PASS}\n```\n"
        "Only `.safetensors` weights are loaded (never pickles). See docs/demo.md."
    )
