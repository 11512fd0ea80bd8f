"""The Gradio page: widgets wired to the plain functions of :mod:`hifi_portrait.demo.callbacks`.

Safety and resource limits (see docs/demo.md):

* binds to ``127.0.0.1`` unless told otherwise (:func:`launch_demo`);
* uploads larger than ``max_upload_mb`` are refused by the server (Gradio's ``max_file_size``), photos whose
  header claims too many pixels are refused before decoding (:func:`hifi_portrait.face.load_image`), and at most
  ``max_references`` photos are analysed per request;
* one queue for the whole page with at most ``max_queue`` waiting requests (beyond: an immediate "queue full"
  answer, HTTP 503 on the API); face analysis and generation run one at a time, previews two at a time;
* per-session state lives at most ``session_ttl_s`` seconds and at most ``max_sessions`` sessions are kept;
  Gradio's cache of output files is cleaned every 10 minutes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from hifi_portrait.demo import callbacks as cb
from hifi_portrait.demo.engines import DefaultLandmarkBackend, Generator, pipeline_generator
from hifi_portrait.demo.weights import WeightsConfig, weights_help_markdown
from hifi_portrait.errors import HiFiPortraitError

logger = logging.getLogger(__name__)

PREVIEW_SIZE = (512, 512)

INTRO = """# HiFi-Portrait demo
Upload **several photos of one person** (2-8, different angles help). The page checks them (face crops, head
pose, quality, and whether every photo shows the same person), fits the person's 3D face shape, and draws the
**landmark map** that conditions generation: the person's own face shape, with the pose and expression you set
below (sliders, presets, or a driver photo whose pose and expression are copied but not its face)."""


@dataclass(frozen=True)
class DemoLimits:
    """Resource limits of one demo server (see the module docstring).

    Attributes:
        max_upload_mb: largest accepted upload per file, in megabytes.
        max_queue: requests that may wait in the queue; more get "queue full".
        max_references: photos analysed per request.
        max_sessions: browser sessions whose state is kept (oldest dropped first).
        session_ttl_s: seconds a session's state is kept.
    """

    max_upload_mb: float = 10.0
    max_queue: int = 16
    max_references: int = 8
    max_sessions: int = 64
    session_ttl_s: int = 3600


def _user_error(exc: HiFiPortraitError) -> Exception:
    import gradio as gr

    return gr.Error(str(exc), duration=None)


def build_demo(
    analyzer: cb.Analyzer | None = None,
    landmark_generator: cb.LandmarkBackend | None = None,
    pipeline: Any = None,
    *,
    weights: WeightsConfig | None = None,
    device: str = "cpu",
    max_upload_mb: float = 10.0,
    max_queue: int = 16,
    max_references: int = 8,
    max_sessions: int = 64,
    session_ttl_s: int = 3600,
    preview_size: tuple[int, int] = PREVIEW_SIZE,
    generation_size: tuple[int, int] = (1024, 1024),
):
    """Build the demo page (a ``gradio.Blocks``); start it with :func:`launch_demo`.

    Args:
        analyzer: face analyzer (default :class:`hifi_portrait.face.FaceAnalyzer`, created on first use).
        landmark_generator: landmark backend (default :class:`~hifi_portrait.demo.engines.DefaultLandmarkBackend`).
        pipeline: a loaded hifi-portrait pipeline, or a :class:`~hifi_portrait.demo.engines.Generator`
            callable; ``None`` loads one from ``weights`` when they are complete, else generation is off and the
            page lists the missing files.
        weights: model files for generation (used when ``pipeline`` is ``None``).
        device: torch device for a pipeline loaded from ``weights``.
        max_upload_mb, max_queue, max_references, max_sessions, session_ttl_s: see :class:`DemoLimits`.
        preview_size: ``(width, height)`` of the landmark preview in pixels.
        generation_size: ``(width, height)`` of generated portraits (and of their landmark map) in pixels.

    Returns:
        The ``gradio.Blocks`` with its queue configured; its ``hifi_limits`` attribute holds the
        :class:`DemoLimits` that :func:`launch_demo` applies.
    """
    import gradio as gr

    limits = DemoLimits(max_upload_mb, max_queue, max_references, max_sessions, session_ttl_s)
    landmarks = landmark_generator or DefaultLandmarkBackend()
    weights = weights or WeightsConfig()
    generator: Generator | None
    missing: list[str] = []
    if pipeline is not None:
        # a diffusers pipeline (has .components) is wrapped; any other callable is used as a Generator
        generator = pipeline_generator(pipeline) if hasattr(pipeline, "components") else pipeline
    else:
        missing = weights.problems()
        generator = None if missing else pipeline_generator(weights=weights, device=device)

    _analyzer: list[Any] = [analyzer]

    def get_analyzer() -> cb.Analyzer:
        if _analyzer[0] is None:
            from hifi_portrait.face import FaceAnalyzer

            _analyzer[0] = FaceAnalyzer()
        return _analyzer[0]

    slider_labels = list(cb.BLENDSHAPE_SLIDERS)

    # ------------------------------------------------------------------ callbacks (thin wrappers)
    def on_analyze(files: list[str] | None):
        try:
            view = cb.analyze_references(files, get_analyzer(), landmarks, max_references=limits.max_references)
        except HiFiPortraitError as exc:
            raise _user_error(exc) from exc
        return view.state, view.gallery, view.table, view.warnings

    def on_driver(path: str | None):
        driver, message = cb.analyze_driver(path, get_analyzer())
        return driver, message, gr.update(value=cb.SOURCE_DRIVER if driver is not None else cb.SOURCE_SLIDERS)

    def target_from(source, driver, yaw, pitch, roll, preset, intensity, *bs_values) -> cb.TargetSpec:
        return cb.TargetSpec(
            yaw=float(yaw),
            pitch=float(pitch),
            roll=float(roll),
            preset=str(preset or "neutral"),
            intensity=float(intensity),
            blendshapes=cb.blendshapes_from_sliders(dict(zip(slider_labels, bs_values, strict=True))),
            driver=driver if source == cb.SOURCE_DRIVER else None,
        )

    def on_preview(state, style, source, driver, *target_values) -> np.ndarray:
        try:
            target = target_from(source, driver, *target_values)
            return cb.render_preview(state, target, landmarks, size=preview_size, style=style)
        except HiFiPortraitError as exc:
            raise _user_error(exc) from exc

    def on_generate(
        state, style, source, driver, prompt, negative, seed, steps, id_scale, control_scale, *target_values
    ):
        if generator is None:
            raise gr.Error("Generation is off: model weights are not configured (see the note above the button).")
        try:
            refs = cb.require_references(state)
            target = target_from(source, driver, *target_values)
            landmark_map = cb.render_preview(state, target, landmarks, size=generation_size, style=style)
            return generator(
                refs,
                landmark_map,
                prompt=prompt,
                negative_prompt=negative,
                seed=int(seed),
                steps=int(steps),
                id_scale=float(id_scale),
                control_scale=float(control_scale),
            )
        except HiFiPortraitError as exc:
            raise _user_error(exc) from exc

    # ------------------------------------------------------------------ layout
    with gr.Blocks(title="HiFi-Portrait demo", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        state = gr.State(None, time_to_live=limits.session_ttl_s)
        driver_state = gr.State(None, time_to_live=limits.session_ttl_s)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                refs = gr.File(
                    label=f"Reference photos of one person (up to {limits.max_references}, "
                    f"{limits.max_upload_mb:g} MB each)",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="refs",
                )
                warnings = gr.Markdown("Upload 2 to 8 photos of one person.", elem_id="warnings")
                gallery = gr.Gallery(
                    label="Aligned face crops: crop, mask, matted",
                    columns=3,
                    height=260,
                    elem_id="crops",
                    object_fit="contain",
                )
                table = gr.Dataframe(
                    headers=cb.TABLE_HEADERS, label="Analysis", interactive=False, elem_id="analysis-table", wrap=True
                )
            with gr.Column(scale=1):
                source = gr.Radio(
                    [cb.SOURCE_SLIDERS, cb.SOURCE_DRIVER],
                    value=cb.SOURCE_SLIDERS,
                    label="Target pose and expression from",
                    elem_id="source",
                )
                with gr.Row():
                    yaw = gr.Slider(
                        -60, 60, value=0, step=1, label="yaw°", info="+ = turns to image right", elem_id="yaw"
                    )
                    pitch = gr.Slider(-30, 30, value=0, step=1, label="pitch°", info="+ = looks up", elem_id="pitch")
                    roll = gr.Slider(
                        -30, 30, value=0, step=1, label="roll°", info="+ = counter-clockwise", elem_id="roll"
                    )
                with gr.Row():
                    preset = gr.Dropdown(
                        list(landmarks.presets), value="neutral", label="expression preset", elem_id="preset"
                    )
                    intensity = gr.Slider(0, 1, value=1, step=0.05, label="intensity", elem_id="intensity")
                with gr.Accordion("Blendshapes (added to the preset)", open=False):
                    bs_sliders = [
                        gr.Slider(0, 1, value=0, step=0.05, label=label, elem_id=cb.slider_id(label))
                        for label in slider_labels
                    ]
                with gr.Accordion("Driver photo (copy its pose and expression, not its face)", open=False):
                    driver = gr.Image(
                        type="filepath", label="driver photo", sources=["upload"], height=200, elem_id="driver"
                    )
                    driver_info = gr.Markdown("No driver photo: the sliders set the target.", elem_id="driver-info")
                style = gr.Dropdown(
                    list(landmarks.styles), value=landmarks.styles[0], label="landmark map style", elem_id="style"
                )
                preview = gr.Image(
                    label="Landmark map (live)", format="png", interactive=False, height=360, elem_id="preview"
                )
        with gr.Accordion("Generate", open=True):
            with gr.Row():
                prompt = gr.Textbox("a professional studio portrait photo, soft light", label="prompt", scale=3)
                negative = gr.Textbox("blurry, lowres, deformed", label="negative prompt", scale=2)
            with gr.Row():
                seed = gr.Number(0, precision=0, label="seed")
                steps = gr.Slider(1, 50, value=30, step=1, label="steps")
                id_scale = gr.Slider(0, 1.5, value=1.0, step=0.05, label="identity scale")
                control_scale = gr.Slider(0, 1.5, value=0.8, step=0.05, label="landmark control scale")
            gr.Markdown(weights_help_markdown(missing), elem_id="weights-status", visible=bool(missing))
            generate_btn = gr.Button(
                "Generate", variant="primary", interactive=generator is not None, elem_id="generate"
            )
            output = gr.Image(label="Portrait", format="png", interactive=False, elem_id="output")

        target_inputs = [yaw, pitch, roll, preset, intensity, *bs_sliders]
        preview_inputs = [state, style, source, driver_state, *target_inputs]
        preview_kwargs = dict(
            fn=on_preview,
            inputs=preview_inputs,
            outputs=preview,
            show_progress="hidden",
            trigger_mode="always_last",
            concurrency_limit=2,
            concurrency_id="preview",
        )

        analysis = refs.change(
            on_analyze,
            inputs=refs,
            outputs=[state, gallery, table, warnings],
            api_name="analyze",
            concurrency_limit=1,
            concurrency_id="analyzer",
        )
        analysis.then(api_visibility="private", **preview_kwargs)
        driver_event = driver.change(
            on_driver,
            inputs=driver,
            outputs=[driver_state, driver_info, source],
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id="analyzer",
        )
        driver_event.then(api_visibility="private", **preview_kwargs)
        gr.on([c.change for c in (style, source, *target_inputs)], api_name="preview", **preview_kwargs)
        # while a driver photo sets the target, the pose/expression controls are greyed out
        source.change(
            lambda src: [gr.update(interactive=src != cb.SOURCE_DRIVER) for _ in target_inputs],
            inputs=source,
            outputs=target_inputs,
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )
        demo.load(api_visibility="private", **preview_kwargs)
        generate_btn.click(
            on_generate,
            inputs=[
                state,
                style,
                source,
                driver_state,
                prompt,
                negative,
                seed,
                steps,
                id_scale,
                control_scale,
                *target_inputs,
            ],
            outputs=output,
            api_name="generate",
            concurrency_limit=1,
            concurrency_id="generate",
        )

    demo.queue(max_size=limits.max_queue, default_concurrency_limit=1)
    demo.hifi_limits = limits
    return demo


def launch_demo(demo, host: str = "127.0.0.1", port: int = 7860, block: bool = False, quiet: bool = True):
    """Start a page built by :func:`build_demo` with its limits; returns ``(app, local_url)``.

    Args:
        host: address to bind; the default serves only this machine.
        port: TCP port.
        block: keep serving until interrupted (the CLI); else return at once (tests, notebooks).
    """
    limits: DemoLimits = getattr(demo, "hifi_limits", DemoLimits())
    app, local_url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=int(limits.max_upload_mb * 1024 * 1024),
        state_session_capacity=limits.max_sessions,
        prevent_thread_lock=not block,
        ssr_mode=False,
        show_error=True,
        quiet=quiet,
        footer_links=["api"],
        mcp_server=False,
    )
    return app, local_url
