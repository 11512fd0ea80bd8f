"""The SDXL HiFi-Portrait pipeline (diffusers-native) and its output dataclass."""

from hifi_portrait.pipelines.pipeline_hifi_portrait_sdxl import StableDiffusionXLHiFiPortraitPipeline, reference_pixels
from hifi_portrait.pipelines.pipeline_output import HiFiPortraitPipelineOutput

__all__ = ["HiFiPortraitPipelineOutput", "StableDiffusionXLHiFiPortraitPipeline", "reference_pixels"]
