"""Adapters between the demo and the library: the landmark backend and the portrait generator.

The page only needs three small capabilities (see the protocols in :mod:`hifi_portrait.demo.callbacks`); these
classes provide them with :mod:`hifi_portrait.landmarks` and :mod:`hifi_portrait.pipelines`, and tests may pass
their own.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from hifi_portrait.errors import HiFiPortraitError

if TYPE_CHECKING:
    from hifi_portrait.demo.callbacks import TargetSpec
    from hifi_portrait.face.types import FaceAnalysis
    from hifi_portrait.pipelines.model_files import WeightsConfig

logger = logging.getLogger(__name__)


class DefaultLandmarkBackend:
    """Identity shape fitting and landmark maps with :mod:`hifi_portrait.landmarks`.

    ``styles`` are the map styles of :func:`hifi_portrait.landmarks.render.render_map` (ours first) and
    ``presets`` the expression presets of :data:`hifi_portrait.landmarks.expression.PRESETS`.
    """

    def __init__(self) -> None:
        from hifi_portrait.landmarks.expression import PRESETS
        from hifi_portrait.landmarks.render import STYLES

        self.styles: tuple[str, ...] = tuple(STYLES)
        self.presets: tuple[str, ...] = tuple(PRESETS)
        self._neutral = None

    def fit(self, analyses: list[FaceAnalysis]) -> Any:
        """The references' neutral 3D identity shape (:class:`~hifi_portrait.landmarks.shape.IdentityShape`)."""
        from hifi_portrait.landmarks.shape import fit_identity_shape

        return fit_identity_shape(analyses)

    def neutral(self) -> Any:
        """mediapipe's canonical face, shown before any reference is analysed."""
        if self._neutral is None:
            from hifi_portrait.landmarks.shape import IdentityShape

            self._neutral = IdentityShape.canonical()
        return self._neutral

    def render(self, shape: Any, target: TargetSpec, size: tuple[int, int], style: str) -> np.ndarray:
        """``(H, W, 3)`` uint8 landmark map of ``shape`` with the target's pose and expression.

        With a driver, the driver's pose and expression are used and the sliders ignored.
        """
        from hifi_portrait.landmarks.generate import generate_landmarks, make_target
        from hifi_portrait.landmarks.render import render_map

        if target.driver is not None:
            attrs = make_target(driver=target.driver)
        else:
            expression = f"{target.preset}:{target.intensity:g}" if target.preset else None
            attrs = make_target(
                yaw=target.yaw,
                pitch=target.pitch,
                roll=target.roll,
                expression=expression,
                blendshapes=target.blendshapes or None,
            )
        return render_map(generate_landmarks(shape, attrs, size=size), style)


@runtime_checkable
class Generator(Protocol):
    """Makes one portrait: ``(H, W, 3)`` uint8 from the kept references and a landmark map."""

    def __call__(
        self,
        references: list[FaceAnalysis],
        landmark_map: np.ndarray,
        *,
        prompt: str,
        negative_prompt: str,
        seed: int,
        steps: int,
        id_scale: float,
        control_scale: float,
    ) -> np.ndarray: ...


class PipelineGenerator:
    """A :class:`Generator` around the hifi-portrait SDXL pipeline, loaded from files on first use.

    Args:
        pipe: an already loaded pipeline (then ``weights`` is not used).
        weights: model files to load the pipeline from (checked when the first portrait is asked for).
        device: torch device for a loaded pipeline.
    """

    def __init__(self, pipe: Any = None, weights: WeightsConfig | None = None, device: str = "cpu") -> None:
        self._pipe = pipe
        self._weights = weights
        self._device = device
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._pipe is None:
                if self._weights is None:
                    raise HiFiPortraitError("no pipeline and no weights given to the demo")
                self._weights.require()
                self._pipe = load_pipeline(self._weights, self._device)
        return self._pipe

    def __call__(
        self,
        references: list[FaceAnalysis],
        landmark_map: np.ndarray,
        *,
        prompt: str,
        negative_prompt: str,
        seed: int,
        steps: int,
        id_scale: float,
        control_scale: float,
    ) -> np.ndarray:
        import torch

        pipe = self._load()
        generator = torch.Generator("cpu").manual_seed(int(seed))
        height, width = landmark_map.shape[:2]
        out = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            faces=references,
            landmark_image=landmark_map,
            id_scale=id_scale,
            control_scale=control_scale,
            num_inference_steps=steps,
            height=height,
            width=width,
            generator=generator,
            output_type="np",
        )
        image = np.asarray(out.images[0])
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        return image


def load_pipeline(weights: WeightsConfig, device: str = "cpu") -> Any:
    """Load the hifi-portrait SDXL pipeline from the user's files (fp16 on CUDA, fp32 elsewhere).

    Raises:
        ModelFilesMissingError: a file is missing (all missing files are named).
        WeightsMismatchError: the adapter does not fit the base model.
    """
    from hifi_portrait.pipelines.model_files import load_pipeline as load

    pipe = load(
        weights.base, weights.adapter, weights.image_encoder, fp16=str(device).startswith("cuda"), device=device
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_generator(pipe: Any = None, *, weights: WeightsConfig | None = None, device: str = "cpu") -> Generator:
    """A :class:`Generator` from a loaded pipeline, or one that loads it from ``weights`` on first use."""
    return PipelineGenerator(pipe=pipe, weights=weights, device=device)
