"""``hifi-portrait generate --base SDXL --adapter FILE REFS... --prompt ... --out DIR``: portraits of one person.

Steps: check the model files (before anything slow), analyse the reference photos (hifi_portrait.face; outliers
dropped), fit their 3D face shape and render the target landmark map (hifi_portrait.landmarks: ``--yaw/--pitch/
--roll``, ``--expression NAME[:I]``, ``--driver PHOTO``), load SDXL + the adapter (+ LoRA), denoise with a progress
bar, and write under ``--out``:

* ``portrait_<seed>_<i>.png``: the portrait(s);
* ``landmarks_<style>.png``: the landmark map used;
* ``settings.json``: every setting, the references used/skipped, the target, timings and versions.

Model files (none ship with the package; the message of exit code 3 lists what is missing and where it comes from):
the SDXL base (a diffusers folder, or a Hub id when online), the hifi-portrait adapter ``.safetensors`` and a CLIP
vision encoder folder (``--image-encoder``, or ``image_encoder/`` inside the SDXL folder). Nothing is downloaded
unless ``--base`` is a Hub id.

InstantID mode (``--instantid ip-adapter.safetensors --identitynet ControlNetModel/ --insightface-dir antelopev2/``):
InstantID's published weights (converted with ``hifi-portrait convert-instantid``) replace the adapter and the CLIP
encoder; identity = our fused references' 512-d ArcFace embeddings, control = our InstantID-style keypoint map
(docs/instantid.md).

Exit codes: 0 done; 1 no usable reference / bad weights; 2 bad option; 3 model files missing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from hifi_portrait.cli.common import safe_child, user_errors
from hifi_portrait.errors import ConfigError, HiFiPortraitError, LandmarkError, ModelFilesMissingError
from hifi_portrait.pipelines.model_files import (
    instantid_file_problems,
    load_instantid_pipeline,
    load_pipeline,
    require_model_files,
)

logger = logging.getLogger(__name__)


def _pick_device(device: str | None, fp16: bool, cpu_offload: bool) -> str:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and (fp16 or cpu_offload):
        raise ConfigError("--fp16 and --cpu-offload need a GPU (--device cuda); on CPU run in float32 without them")
    return device


def _analyse(refs: Sequence[Path], insightface_dir: Path | None) -> tuple[list[Any], list[dict], Any]:
    """Analyse the photos (bad ones skipped with a warning); returns (kept analyses, per-photo report, FaceSet)."""
    from hifi_portrait.errors import NoUsableReferencesError
    from hifi_portrait.face import FaceAnalyzer, FaceSet

    analyzer = FaceAnalyzer(insightface_dir=insightface_dir)
    analyses, report = [], []
    for path in refs:
        try:
            analyses.append(analyzer.analyze(path))
            report.append({"source": str(path), "used": True})
        except HiFiPortraitError as exc:
            typer.secho(f"      skipped {path}: {exc}", fg="yellow", err=True)
            report.append({"source": str(path), "used": False, "reason": str(exc)})
    if not analyses:
        raise NoUsableReferencesError(f"none of the {len(refs)} reference photo(s) has a usable face")
    face_set = FaceSet.from_analyses(analyses)
    if face_set.outliers and len(face_set.outliers) < len(analyses):
        for i in face_set.outliers:
            typer.secho(f"      dropped {analyses[i].source}: probably another person", fg="yellow", err=True)
            next(r for r in report if r["source"] == str(analyses[i].source))["used"] = False
        face_set = face_set.without_outliers()
    for a in face_set.analyses:
        entry = next(r for r in report if r["source"] == str(a.source))
        entry.update(quality=round(float(a.quality.total), 4), pose=[round(float(v), 2) for v in a.pose.as_array()])
    return face_set.analyses, report, analyzer


def generate_portraits(
    pipe: Any,
    analyses: Sequence[Any],
    landmark_map: Any,
    prompt: str,
    negative_prompt: str | None = None,
    steps: int = 30,
    seed: int = 0,
    num_images: int = 1,
    guidance_scale: float = 5.0,
    id_scale: float = 0.8,
    control_scale: float = 0.8,
    progress: bool = True,
) -> list[Any]:
    """Run the pipeline once (references encoded once): ``num_images`` PIL portraits of the map's size."""
    import numpy as np
    import torch

    height, width = np.asarray(landmark_map).shape[:2]
    pipe.set_progress_bar_config(disable=not progress, desc="denoising", leave=True)
    try:
        out = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            faces=list(analyses),
            landmark_image=landmark_map,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=num_images,
            id_scale=id_scale,
            control_scale=control_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
        )
    except ValueError as exc:
        if "identity vectors are" in str(exc):  # the adapter's refiner was trained with another identity model
            raise ConfigError(f"{exc} Use --insightface-dir for adapters trained on 512-d ArcFace vectors.") from None
        raise
    return list(out.images)


def generate_instantid_portraits(
    pipe: Any,
    id_embeds: Any,
    quality: Any,
    landmark_map: Any,
    prompt: str,
    negative_prompt: str | None = None,
    steps: int = 30,
    seed: int = 0,
    num_images: int = 1,
    guidance_scale: float = 5.0,
    id_scale: float = 0.8,
    control_scale: float = 0.8,
    progress: bool = True,
) -> list[Any]:
    """InstantID mode: ``(N, 512)`` ArcFace embeddings + keypoint map -> portraits (IdentityNet at control_scale)."""
    import numpy as np
    import torch

    height, width = np.asarray(landmark_map).shape[:2]
    pipe.set_progress_bar_config(disable=not progress, desc="denoising", leave=True)
    out = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        id_embeds=torch.as_tensor(id_embeds),
        reference_quality=torch.as_tensor(quality),
        image=landmark_map,
        height=height,
        width=width,
        controlnet_conditioning_scale=control_scale,
        id_scale=id_scale,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        num_images_per_prompt=num_images,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    return list(out.images)


def generate_for_targets(
    weights: Any,
    analyses: Sequence[Any],
    targets: Sequence[tuple[str, Any]],
    prompt: str,
    steps: int = 30,
    seed: int = 0,
    out: Path = Path("."),
    style: str = "hifi",
    **kwargs: Any,
) -> list[Path]:
    """Portraits for several ``(label, GeneratedLandmarks)`` targets with one loaded pipeline (used by ``run``).

    ``weights`` has ``base``, ``adapter``, ``image_encoder`` attributes (e.g. ``demo.weights.WeightsConfig``).
    """
    from PIL import Image

    from hifi_portrait.landmarks import render_map

    device = _pick_device(None, False, False)
    pipe = load_pipeline(weights.base, weights.adapter, weights.image_encoder, device=device)
    written = []
    for label, gen in targets:
        images = generate_portraits(pipe, analyses, render_map(gen, style), prompt, steps=steps, seed=seed, **kwargs)
        for i, image in enumerate(images):
            path = safe_child(Path(out), f"{label}.png" if len(images) == 1 else f"{label}_{i}.png")
            Image.fromarray(_uint8(image)).save(path)
            written.append(path)
    return written


def _uint8(image: Any):
    import numpy as np

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return arr


def generate(
    refs: list[Path] = typer.Argument(..., help="Reference photos of one person (1 to ~8)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text prompt."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    base: str | None = typer.Option(
        None, envvar="HIFI_PORTRAIT_BASE", help="SDXL base: diffusers folder, or a Hub id when online."
    ),
    adapter: Path | None = typer.Option(
        None, envvar="HIFI_PORTRAIT_ADAPTER", help="hifi-portrait adapter .safetensors."
    ),
    image_encoder: Path | None = typer.Option(
        None, envvar="HIFI_PORTRAIT_IMAGE_ENCODER", help="CLIP vision encoder folder (default <base>/image_encoder)."
    ),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="Negative prompt."),
    yaw: float | None = typer.Option(None, help="Yaw in degrees (> 0: face turned towards the image's right)."),
    pitch: float | None = typer.Option(None, help="Pitch in degrees (> 0: looking up)."),
    roll: float | None = typer.Option(None, help="Roll in degrees (> 0: counter-clockwise in the image)."),
    expression: str | None = typer.Option(None, "--expression", "-e", help="Preset NAME[:INTENSITY], e.g. smile:0.6."),
    driver: Path | None = typer.Option(None, help="Photo whose pose and expression (not face shape) are used."),
    size: str = typer.Option("1024x1024", help="Portrait WIDTHxHEIGHT (multiples of 8)."),
    steps: int = typer.Option(30, min=1, max=500, help="Denoising steps."),
    seed: int = typer.Option(0, help="Random seed."),
    num_images: int = typer.Option(1, min=1, max=16, help="Portraits to generate."),
    guidance_scale: float = typer.Option(5.0, help="Classifier-free guidance scale."),
    id_scale: float = typer.Option(0.8, help="Identity strength (0 = off)."),
    control_scale: float = typer.Option(0.8, help="Landmark control strength (0 = off)."),
    style: str = typer.Option("hifi", help="Landmark map style the adapter was trained on (hifi by default)."),
    lora: list[Path] = typer.Option([], "--lora", help="SDXL LoRA .safetensors (repeatable)."),
    lora_scale: float = typer.Option(1.0, help="Weight of every --lora."),
    fp16: bool = typer.Option(False, "--fp16", help="Half precision (GPU)."),
    cpu_offload: bool = typer.Option(False, "--cpu-offload", help="Keep models on the CPU until used (GPU)."),
    device: str | None = typer.Option(None, help="torch device (default: cuda when available, else cpu)."),
    insightface_dir: Path | None = typer.Option(
        None, help="insightface model folder (antelopev2) for adapters trained on 512-d ArcFace vectors."
    ),
    instantid: Path | None = typer.Option(
        None, help="InstantID mode: its ip-adapter converted to .safetensors (hifi-portrait convert-instantid)."
    ),
    identitynet: Path | None = typer.Option(None, help="InstantID mode: IdentityNet's ControlNetModel/ folder."),
) -> None:
    """Generate identity-preserving portraits of the person in REFS with the requested pose and expression."""
    with user_errors():
        _run(locals())


def _run(opt: dict[str, Any]) -> None:
    import numpy as np
    from PIL import Image

    from hifi_portrait.cli.landmarks import parse_size
    from hifi_portrait.landmarks import STYLES, fit_identity_shape, generate_landmarks, make_target, render_map

    started = time.perf_counter()
    width, height = parse_size(opt["size"])
    if width % 8 or height % 8:
        raise ConfigError(f"--size {opt['size']}: width and height must be multiples of 8")
    if opt["style"] not in STYLES:
        raise ConfigError(f"--style must be one of {', '.join(STYLES)}, not {opt['style']!r}")
    try:
        make_target(yaw=opt["yaw"], pitch=opt["pitch"], roll=opt["roll"], expression=opt["expression"])
    except LandmarkError as exc:
        raise ConfigError(str(exc)) from None
    device = _pick_device(opt["device"], opt["fp16"], opt["cpu_offload"])

    typer.echo("[1/4] checking model files")
    mode = "instantid" if opt["instantid"] is not None else "hifi-portrait"
    if mode == "instantid":
        problems = instantid_file_problems(opt["base"], opt["instantid"], opt["identitynet"], opt["insightface_dir"])
        if problems:
            raise ModelFilesMissingError(
                "InstantID mode needs model files that were not found:\n  - "
                + "\n  - ".join(problems)
                + "\nSee docs/instantid.md."
            )
        opt["style"] = "instantid"  # IdentityNet was trained on InstantID's keypoint drawing
    else:
        require_model_files(opt["base"], opt["adapter"], opt["image_encoder"])
    out: Path = opt["out"]
    out.mkdir(parents=True, exist_ok=True)

    typer.echo(f"[2/4] analysing {len(opt['refs'])} reference photo(s)")
    analyses, ref_report, analyzer = _analyse(opt["refs"], opt["insightface_dir"])
    t_analysis = time.perf_counter()

    typer.echo("[3/4] target landmark map")
    driver_face = analyzer.analyze(opt["driver"]) if opt["driver"] is not None else None
    try:
        target = make_target(
            yaw=opt["yaw"], pitch=opt["pitch"], roll=opt["roll"], expression=opt["expression"], driver=driver_face
        )
    except LandmarkError as exc:
        raise ConfigError(f"with the driver {opt['driver']}: {exc}") from None
    gen = generate_landmarks(fit_identity_shape(analyses), target, size=(width, height))
    cond = render_map(gen, opt["style"])
    map_path = safe_child(out, f"landmarks_{opt['style']}.png")
    Image.fromarray(cond).save(map_path)

    what = "InstantID (IdentityNet + ip-adapter)" if mode == "instantid" else "adapter"
    typer.echo(f"[4/4] loading SDXL + {what} on {device}{' (fp16)' if opt['fp16'] else ''}")
    common = {
        "loras": opt["lora"],
        "lora_scale": opt["lora_scale"],
        "fp16": opt["fp16"],
        "device": device,
        "cpu_offload": opt["cpu_offload"],
    }
    run_kw = {
        "steps": opt["steps"],
        "seed": opt["seed"],
        "num_images": opt["num_images"],
        "guidance_scale": opt["guidance_scale"],
        "id_scale": opt["id_scale"],
        "control_scale": opt["control_scale"],
        "progress": logging.getLogger().getEffectiveLevel() <= logging.INFO,
    }
    if mode == "instantid":
        from hifi_portrait.loaders.instantid import instantid_embeddings

        id_embeds, quality = instantid_embeddings(analyses, analyzer.embedder)
        pipe = load_instantid_pipeline(opt["base"], opt["instantid"], opt["identitynet"], **common)
        t_load = time.perf_counter()
        images = generate_instantid_portraits(
            pipe, id_embeds, quality, cond, opt["prompt"], opt["negative_prompt"], **run_kw
        )
    else:
        pipe = load_pipeline(opt["base"], opt["adapter"], opt["image_encoder"], **common)
        t_load = time.perf_counter()
        images = generate_portraits(pipe, analyses, cond, opt["prompt"], opt["negative_prompt"], **run_kw)
    t_gen = time.perf_counter()
    outputs = []
    for i, image in enumerate(images):
        path = safe_child(out, f"portrait_{opt['seed']}_{i}.png")
        Image.fromarray(_uint8(image)).save(path)
        outputs.append(path.name)
        typer.echo(f"wrote {path}")

    import diffusers
    import torch

    import hifi_portrait

    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in opt.items()
        if key not in ("refs", "lora", "driver", "out", "insightface_dir", "instantid", "identitynet")
    }
    settings.update(
        instantid=str(opt["instantid"]) if opt["instantid"] else None,
        identitynet=str(opt["identitynet"]) if opt["identitynet"] else None,
        lora=[str(p) for p in opt["lora"]],
        driver=str(opt["driver"]) if opt["driver"] else None,
        size=[width, height],
        device=device,
        dtype="float16" if opt["fp16"] else "float32",
        references=ref_report,
        mode=mode,
        identity_model=analyses[0].identity_model,
        target={
            "yaw": target.yaw,
            "pitch": target.pitch,
            "roll": target.roll,
            "blendshapes": {k: v for k, v in target.blendshapes.items() if v > 0},
        },
        keypoints=np.round(gen.keypoints, 3).tolist(),
        landmark_map=map_path.name,
        outputs=outputs,
        seconds={
            "analysis": round(t_analysis - started, 2),
            "load": round(t_load - t_analysis, 2),
            "generation": round(t_gen - t_load, 2),
        },
        versions={
            "hifi_portrait": hifi_portrait.__version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
    )
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    typer.echo(f"wrote {map_path} and {out / 'settings.json'}")
