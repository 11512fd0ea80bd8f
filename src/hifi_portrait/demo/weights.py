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

from hifi_portrait.pipelines.model_files import WeightsConfig

__all__ = ["HOW_TO_PASS", "WeightsConfig", "weights_help_markdown"]

HOW_TO_PASS = (
    "hifi-portrait demo --base /path/to/stable-diffusion-xl-base-1.0 "
    "--adapter /path/to/hifi_portrait_adapter.safetensors [--image-encoder /path/to/clip-vision]"
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
