"""The SDXL HiFi-Portrait pipeline (diffusers-native), its output dataclass, and its model-file checks.

Imports are lazy (as in diffusers), so that ``hifi_portrait.pipelines.model_files`` can be used (e.g. by the CLI
to check the user's files) without importing diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "StableDiffusionXLHiFiPortraitPipeline": "pipeline_hifi_portrait_sdxl",
    "reference_pixels": "pipeline_hifi_portrait_sdxl",
    "HiFiPortraitPipelineOutput": "pipeline_output",
    "WeightsConfig": "model_files",
}

__all__ = ["HiFiPortraitPipelineOutput", "StableDiffusionXLHiFiPortraitPipeline", "WeightsConfig", "reference_pixels"]

if TYPE_CHECKING:
    from hifi_portrait.pipelines.model_files import WeightsConfig
    from hifi_portrait.pipelines.pipeline_hifi_portrait_sdxl import (
        StableDiffusionXLHiFiPortraitPipeline,
        reference_pixels,
    )
    from hifi_portrait.pipelines.pipeline_output import HiFiPortraitPipelineOutput


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"hifi_portrait.pipelines.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
