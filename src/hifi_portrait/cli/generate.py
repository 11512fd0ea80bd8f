"""``hifi-portrait generate --base SDXL --adapter FILE REFS... --prompt ... --out DIR``: portraits of one person.

Steps: check the model files (before anything slow), analyse the reference photos (hifi_portrait.face; outliers
dropped), fit their 3D face shape and render the target landmark map(s) (hifi_portrait.landmarks: ``--yaw/--pitch/
--roll``, ``--expression NAME[:I]``, ``--driver PHOTO``), load SDXL + the adapter (+ LoRA), denoise with a progress
bar, and write under ``--out``:

* ``portrait_<seed>_<i>.png``: the portrait(s);
* ``landmarks_<style>.png``: the landmark map used, and ``control_<name>.png`` for each ``--controlnet``;
* ``sweep_<what>.png`` with ``--sweep yaw|pitch|roll|expression``: a contact sheet, one column per target
  (portrait, then each map), the portraits and maps of each target as ``<what>_<value>_...png``;
* ``settings.json``: every setting, the references used/skipped, the target(s), timings and versions.

Model files (none ship with the package; the message of exit code 3 lists what is missing and where it comes from):
the SDXL base (a diffusers folder, or a Hub id when online), the hifi-portrait adapter ``.safetensors`` and a CLIP
vision encoder folder (``--image-encoder``, or ``image_encoder/`` inside the SDXL folder). Nothing is downloaded
unless ``--base`` is a Hub id.

InstantID mode (``--instantid DIR_OR_FILE --insightface-dir antelopev2/``): InstantID's published weights (its
``ip-adapter.bin`` converted with ``hifi-portrait convert-instantid``; ``DIR`` holds ``ip-adapter.safetensors`` and
``ControlNetModel/``, or give the file and ``--identitynet``) replace the adapter and the CLIP encoder; identity =
our fused references' 512-d ArcFace embeddings, control = our InstantID-style keypoint map (docs/instantid.md).
``--controlnet openpose=DIR`` (or ``dwpose=DIR``) adds a public OpenPose ControlNet beside IdentityNet as a
multi-ControlNet; both are conditioned from the same generated 3D target, so pose and expression agree
(docs/recipes.md).

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
    extra_maps: Sequence[Any] = (),
    extra_scales: Sequence[float] = (),
) -> list[Any]:
    """InstantID mode: ``(N, 512)`` ArcFace embeddings + keypoint map -> portraits (IdentityNet at control_scale).

    ``extra_maps`` / ``extra_scales``: condition images and scales of the extra ControlNets the pipeline was loaded
    with (``load_instantid_pipeline(..., controlnets=)``), in the same order.
    """
    import numpy as np
    import torch

    height, width = np.asarray(landmark_map).shape[:2]
    pipe.set_progress_bar_config(disable=not progress, desc="denoising", leave=True)
    out = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        id_embeds=torch.as_tensor(id_embeds),
        reference_quality=torch.as_tensor(quality),
        image=[landmark_map, *extra_maps] if extra_maps else landmark_map,
        height=height,
        width=width,
        controlnet_conditioning_scale=[control_scale, *extra_scales] if extra_maps else control_scale,
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


#: Map styles an extra ``--controlnet NAME=DIR`` can be conditioned with (hifi_portrait.landmarks.openpose).
CONTROLNET_STYLES = ("openpose", "dwpose")
#: Default strengths and why: InstantID's own demos (gradio_demo/app.py, app-multicontrolnet.py) default to 0.8 for
#: IdentityNet and the ip-adapter and to 0.4 for the pose ControlNet beside IdentityNet; IdentityNet then stays the
#: main spatial control (identity needs it), the OpenPose net adds the face points that carry expression.
DEFAULT_CONTROLNET_SCALE = 0.4

#: Ranges of ``--sweep yaw|pitch|roll`` in degrees (the OpenPose face points are tested to yaw +-45).
SWEEP_RANGES = {"yaw": (-45.0, 45.0), "pitch": (-20.0, 20.0), "roll": (-20.0, 20.0)}


def generate(
    refs: list[Path] = typer.Argument(None, help="Reference photos of one person (1 to ~8)."),
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
    id_scale: float = typer.Option(0.8, help="Identity strength (0 = off; InstantID mode: its ip-adapter)."),
    control_scale: float = typer.Option(
        0.8, help="Landmark control strength (0 = off; InstantID mode: IdentityNet, 0.8 as InstantID's demos)."
    ),
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
        None,
        help="InstantID mode: its folder (ip-adapter.safetensors from convert-instantid + ControlNetModel/), or the "
        "converted ip-adapter .safetensors file itself.",
    ),
    identitynet: Path | None = typer.Option(
        None, help="InstantID mode: IdentityNet's ControlNetModel/ folder (default <--instantid>/ControlNetModel)."
    ),
    controlnet: list[str] = typer.Option(
        [],
        "--controlnet",
        help="InstantID mode: STYLE=DIR, an SDXL ControlNet (diffusers folder) beside IdentityNet, conditioned by our "
        "map of the same target: openpose=DIR (OpenPose maps, 70 face points; thibaud/ or "
        "xinsir/controlnet-openpose-sdxl-1.0) or dwpose=DIR (DWPose maps, 68 face points). Repeatable.",
    ),
    controlnet_scale: list[float] = typer.Option(
        [],
        "--controlnet-scale",
        help=f"Strength of each --controlnet, in order (one value: all; default {DEFAULT_CONTROLNET_SCALE}, as "
        "InstantID's multi-ControlNet demo: IdentityNet stays the main spatial control).",
    ),
    pose_shoulders: bool = typer.Option(
        False,
        "--pose-shoulders",
        help="OpenPose maps: also draw the neck-to-shoulder limbs, placed from the head pose.",
    ),
    pose_thick: bool = typer.Option(
        False, "--pose-thick", help="OpenPose maps: xinsir's thicker body lines (recommended on their model card)."
    ),
    pose_resolution: int = typer.Option(
        512,
        "--pose-resolution",
        help="OpenPose maps: draw as controlnet_aux's detectors with this detect_resolution (their default 512: drawn "
        "at a 512 short side, then resized), so lines have the widths these ControlNets saw; 0 = at full size.",
    ),
    sweep: str | None = typer.Option(
        None, help="Also sweep yaw, pitch, roll or expression: one portrait per value and a contact sheet."
    ),
    sweep_steps: int = typer.Option(
        5, help="Angles in a yaw/pitch/roll sweep (the expression sweep uses every preset)."
    ),
    person: list[Path] = typer.Option(
        [],
        "--person",
        help="Group portrait: one person's reference photos (a folder, or one photo). Repeat per person (2 or more); "
        "replaces the REFS argument. See docs/group_portraits.md.",
    ),
    layout: str | None = typer.Option(
        None,
        help="Group portrait: 'auto' (2-4 people side by side, default) or one box per person, "
        "'x1,y1,x2,y2;x1,y1,x2,y2' in pixels.",
    ),
    person_target: list[str] = typer.Option(
        [],
        "--person-target",
        help="Group portrait: one per --person, in order, e.g. 'yaw=20;pitch=-5;expression=smile:0.6;size=0.8' "
        "(size: face size relative to the others in the auto layout); unset values take --yaw/--pitch/--roll/"
        "--expression.",
    ),
) -> None:
    """Generate identity-preserving portraits of the person in REFS with the requested pose and expression.

    Public recipe (InstantID's published weights + a public SDXL OpenPose ControlNet, both driven by our 3D target):

    hifi-portrait generate refs/*.jpg --base sdxl-base --instantid InstantID/ --insightface-dir antelopev2/
    --controlnet openpose=controlnet-openpose-sdxl-1.0/ --yaw 20 --expression smile --prompt "a portrait photo"
    --out portraits [--sweep yaw]

    InstantID/ holds ip-adapter.safetensors (from convert-instantid) and ControlNetModel/ (IdentityNet, strength
    --control-scale, default 0.8); the OpenPose ControlNet reads our OpenPose map of the same target (68 face points,
    pupils, head skeleton) at --controlnet-scale (default 0.4, as in InstantID's multi-ControlNet demo). Model ids,
    file sizes, licences, VRAM: docs/recipes.md.
    """
    with user_errors():
        opt = locals()
        if opt["person"] or opt["layout"] is not None or opt["person_target"]:
            from hifi_portrait.cli.group import run_group

            run_group(opt)
        else:
            if not opt["refs"]:
                raise ConfigError("give the reference photos of the person (REFS), or --person DIR per person")
            _run(opt)


def parse_controlnets(specs: Sequence[str], scales: Sequence[float]) -> list[tuple[str, Path, float]]:
    """``["openpose=DIR", ...]`` and their scales -> ``[(style, folder, scale), ...]`` (ConfigError when bad)."""
    out = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or name not in CONTROLNET_STYLES or not folder:
            raise ConfigError(
                f"--controlnet {spec!r}: write STYLE=DIR with STYLE one of {', '.join(CONTROLNET_STYLES)}, "
                "e.g. --controlnet openpose=controlnet-openpose-sdxl-1.0/"
            )
        out.append((name, Path(folder).expanduser()))
    if len(scales) not in (0, 1, len(out)) or (scales and not out):
        raise ConfigError(
            f"--controlnet-scale: give one value, or one per --controlnet ({len(out)}), not {len(scales)}"
        )
    values = list(scales) * len(out) if len(scales) == 1 else list(scales) or [DEFAULT_CONTROLNET_SCALE] * len(out)
    return [(name, folder, float(v)) for (name, folder), v in zip(out, values, strict=True)]


def resolve_instantid(instantid: Path, identitynet: Path | None) -> tuple[Path, Path | None]:
    """``--instantid`` as InstantID's folder or the converted file -> (ip-adapter .safetensors, IdentityNet folder).

    Raises:
        ModelFilesMissingError: the folder has only InstantID's pickled ``ip-adapter.bin`` (convert it first).
    """
    if not Path(instantid).is_dir():
        return Path(instantid), identitynet
    folder = Path(instantid)
    converted = folder / "ip-adapter.safetensors"
    if not converted.is_file() and (folder / "ip-adapter.bin").is_file():
        raise ModelFilesMissingError(
            f"{folder} has InstantID's pickled ip-adapter.bin but no ip-adapter.safetensors: convert it once with "
            f"`hifi-portrait convert-instantid {folder / 'ip-adapter.bin'} --out {converted}` (pickles are never "
            "loaded for generation)."
        )
    if identitynet is None and (folder / "ControlNetModel").is_dir():
        identitynet = folder / "ControlNetModel"
    return converted, identitynet


def controlnet_problems(controlnets: Sequence[tuple[str, Path, float]]) -> list[str]:
    """One line per ``--controlnet`` folder that is not a diffusers ControlNet with safetensors weights."""
    problems = []
    for name, folder, _ in controlnets:
        weights = [folder / f"diffusion_pytorch_model.safetensors{s}" for s in ("", ".index.json")]
        if not (folder / "config.json").is_file() or not any(w.is_file() for w in weights):
            found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
            problems.append(
                f"{name} ControlNet {folder}: needs config.json and diffusion_pytorch_model.safetensors, a diffusers "
                f"ControlNet folder (found: {', '.join(found[:6]) or 'nothing'}), e.g. `huggingface-cli download "
                f"xinsir/controlnet-openpose-sdxl-1.0 config.json diffusion_pytorch_model.safetensors --local-dir "
                f"{folder}`; a pickle-only folder (.bin) must be converted first, see docs/recipes.md"
            )
    return problems


def sweep_targets(base: Any, what: str | None, steps: int) -> list[tuple[str, Any]]:
    """``[(label, TargetAttributes)]``: the base target alone (label ``""``), or one per value of the sweep."""
    import numpy as np

    from hifi_portrait.landmarks import PRESETS, TargetAttributes, preset_scores

    if what is None:
        return [("", base)]
    pose = {"yaw": base.yaw, "pitch": base.pitch, "roll": base.roll}
    if what == "expression":
        return [(f"expression_{name}", TargetAttributes(**pose, blendshapes=preset_scores(name))) for name in PRESETS]
    lo, hi = SWEEP_RANGES[what]
    return [
        (f"{what}_{angle:+.0f}", TargetAttributes(**{**pose, what: float(angle)}, blendshapes=base.blendshapes))
        for angle in np.linspace(lo, hi, steps)
    ]


def _check_options(opt: dict[str, Any]) -> tuple[tuple[int, int], list[tuple[str, Path, float]]]:
    """Validate the options that need no model file; returns the canvas size and the parsed --controlnet list."""
    from hifi_portrait.cli.landmarks import parse_size
    from hifi_portrait.landmarks import STYLES, make_target

    width, height = parse_size(opt["size"])
    if width % 8 or height % 8:
        raise ConfigError(f"--size {opt['size']}: width and height must be multiples of 8")
    if opt["style"] not in STYLES:
        raise ConfigError(f"--style must be one of {', '.join(STYLES)}, not {opt['style']!r}")
    if opt["sweep"] is not None and opt["sweep"] not in (*SWEEP_RANGES, "expression"):
        raise ConfigError(f"--sweep must be one of yaw, pitch, roll, expression, not {opt['sweep']!r}")
    if opt["pose_resolution"] and not 64 <= opt["pose_resolution"] <= 4096:
        raise ConfigError(f"--pose-resolution must be 0 (full size) or 64..4096, not {opt['pose_resolution']}")
    if not 2 <= opt["sweep_steps"] <= 25:
        raise ConfigError("--sweep-steps must be between 2 and 25")
    try:
        make_target(yaw=opt["yaw"], pitch=opt["pitch"], roll=opt["roll"], expression=opt["expression"])
    except LandmarkError as exc:
        raise ConfigError(str(exc)) from None
    controlnets = parse_controlnets(opt["controlnet"], opt["controlnet_scale"])
    if controlnets and opt["instantid"] is None:
        raise ConfigError(
            "--controlnet runs beside InstantID's IdentityNet: give --instantid too (docs/recipes.md); the "
            "hifi-portrait adapter's landmark branch already reads our landmark map"
        )
    return (width, height), controlnets


def _check_files(opt: dict[str, Any], controlnets: Sequence[tuple[str, Path, float]]) -> str:
    """Raise ModelFilesMissingError naming every missing file; returns the mode ("instantid" or "hifi-portrait")."""
    if opt["instantid"] is None:
        require_model_files(opt["base"], opt["adapter"], opt["image_encoder"])
        from hifi_portrait.loaders.adapter_file import read_adapter_header

        read_adapter_header(opt["adapter"])  # a bad adapter fails here, before the photos are analysed
        return "hifi-portrait"
    opt["instantid"], opt["identitynet"] = resolve_instantid(opt["instantid"], opt["identitynet"])
    problems = instantid_file_problems(opt["base"], opt["instantid"], opt["identitynet"], opt["insightface_dir"])
    problems += controlnet_problems(controlnets)
    if problems:
        raise ModelFilesMissingError(
            "InstantID mode needs model files that were not found:\n  - "
            + "\n  - ".join(problems)
            + "\nSee docs/instantid.md and docs/recipes.md."
        )
    opt["style"] = "instantid"  # IdentityNet was trained on InstantID's keypoint drawing
    return "instantid"


def _maps(gen: Any, opt: dict[str, Any], controlnets: Sequence[tuple[str, Path, float]]) -> dict[str, Any]:
    """The maps of one target: ``{"landmarks_<style>": main map, "control_<name>": map of each --controlnet}``."""
    from hifi_portrait.landmarks import render_map

    maps = {f"landmarks_{opt['style']}": render_map(gen, opt["style"])}
    for name, _, _ in controlnets:
        options = {"shoulders": opt["pose_shoulders"], "thick": opt["pose_thick"]}
        options["detect_resolution"] = opt["pose_resolution"] or None
        maps[f"control_{name}"] = render_map(gen, name, **options)
    return maps


def _run(opt: dict[str, Any]) -> None:
    import numpy as np
    from PIL import Image

    from hifi_portrait.landmarks import fit_identity_shape, generate_landmarks, make_target

    started = time.perf_counter()
    (width, height), controlnets = _check_options(opt)
    device = _pick_device(opt["device"], opt["fp16"], opt["cpu_offload"])

    typer.echo("[1/4] checking model files")
    mode = _check_files(opt, controlnets)
    out: Path = opt["out"]
    out.mkdir(parents=True, exist_ok=True)

    typer.echo(f"[2/4] analysing {len(opt['refs'])} reference photo(s)")
    analyses, ref_report, analyzer = _analyse(opt["refs"], opt["insightface_dir"])
    t_analysis = time.perf_counter()

    typer.echo("[3/4] target landmark map(s)")
    driver_face = analyzer.analyze(opt["driver"]) if opt["driver"] is not None else None
    try:
        target = make_target(
            yaw=opt["yaw"], pitch=opt["pitch"], roll=opt["roll"], expression=opt["expression"], driver=driver_face
        )
    except LandmarkError as exc:
        raise ConfigError(f"with the driver {opt['driver']}: {exc}") from None
    shape = fit_identity_shape(analyses)
    jobs = []
    for label, t in sweep_targets(target, opt["sweep"], opt["sweep_steps"]):
        gen = generate_landmarks(shape, t, size=(width, height))
        jobs.append((label, t, gen, _maps(gen, opt, controlnets)))
        for name, image in jobs[-1][3].items():
            Image.fromarray(image).save(safe_child(out, f"{label}_{name}.png" if label else f"{name}.png"))

    portraits_of = _load(opt, mode, device, controlnets, analyses, analyzer)
    t_load = time.perf_counter()
    records = []
    for label, t, gen, maps in jobs:
        images = portraits_of(list(maps.values()))
        names = []
        for i, image in enumerate(images):
            path = safe_child(out, f"{label + '_' if label else ''}portrait_{opt['seed']}_{i}.png")
            Image.fromarray(_uint8(image)).save(path)
            names.append(path.name)
            typer.echo(f"wrote {path}")
        records.append(_target_record(label, t, gen, maps, names, np.asarray(_uint8(images[0]))))
    t_gen = time.perf_counter()
    if opt["sweep"]:
        sheet = safe_child(out, f"sweep_{opt['sweep']}.png")
        Image.fromarray(_contact_sheet(records)).save(sheet)
        typer.echo(f"wrote {sheet}")
    seconds = {"analysis": t_analysis - started, "load": t_load - t_analysis, "generation": t_gen - t_load}
    _write_settings(out, opt, mode, device, (width, height), ref_report, analyses, controlnets, records, seconds)


def _load(opt: dict[str, Any], mode: str, device: str, controlnets, analyses, analyzer) -> Any:
    """Load the pipeline once; returns ``portraits_of(maps)`` (main map first, then each --controlnet's map)."""
    what = "InstantID (IdentityNet + ip-adapter)" if mode == "instantid" else "adapter"
    what += "".join(f" + {name} ControlNet" for name, _, _ in controlnets)
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
    prompts = (opt["prompt"], opt["negative_prompt"])
    if mode != "instantid":
        pipe = load_pipeline(opt["base"], opt["adapter"], opt["image_encoder"], **common)
        return lambda maps: generate_portraits(pipe, analyses, maps[0], *prompts, **run_kw)
    from hifi_portrait.loaders.instantid import instantid_embeddings

    id_embeds, quality = instantid_embeddings(analyses, analyzer.embedder)
    pipe = load_instantid_pipeline(
        opt["base"], opt["instantid"], opt["identitynet"], controlnets=[c[1] for c in controlnets], **common
    )
    scales = [c[2] for c in controlnets]
    return lambda maps: generate_instantid_portraits(
        pipe, id_embeds, quality, maps[0], *prompts, **run_kw, extra_maps=maps[1:], extra_scales=scales
    )


def _target_record(label: str, target: Any, gen: Any, maps: dict[str, Any], outputs: list[str], first: Any) -> dict:
    """What settings.json and the contact sheet keep of one target."""
    import numpy as np

    return {
        "label": label,
        "target": {
            "yaw": target.yaw,
            "pitch": target.pitch,
            "roll": target.roll,
            "blendshapes": {k: v for k, v in target.blendshapes.items() if v > 0},
        },
        "keypoints": np.round(gen.keypoints, 3).tolist(),
        "maps": [f"{label}_{name}.png" if label else f"{name}.png" for name in maps],
        "outputs": outputs,
        "_tiles": [first, *maps.values()],
        "_names": ["portrait", *(name.split("_", 1)[1] for name in maps)],
    }


def _contact_sheet(records: Sequence[dict]) -> Any:
    """One column per target: its first portrait, then each of its maps (labelled_grid of the landmarks CLI)."""
    from hifi_portrait.cli.landmarks import labelled_grid

    rows = len(records[0]["_tiles"])
    tiles = [r["_tiles"][k] for k in range(rows) for r in records]
    labels = [f"{r['label']} {r['_names'][k]}" for k in range(rows) for r in records]
    return labelled_grid(tiles, labels, cols=len(records))


def _write_settings(out, opt, mode, device, size, ref_report, analyses, controlnets, records, seconds) -> None:
    import diffusers
    import torch

    import hifi_portrait

    skip = ("refs", "lora", "driver", "out", "insightface_dir", "instantid", "identitynet", "controlnet")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in opt.items() if k not in skip}
    first = records[0]
    settings.update(
        instantid=str(opt["instantid"]) if opt["instantid"] else None,
        identitynet=str(opt["identitynet"]) if opt["identitynet"] else None,
        controlnets=[{"style": n, "path": str(p), "scale": s} for n, p, s in controlnets],
        lora=[str(p) for p in opt["lora"]],
        driver=str(opt["driver"]) if opt["driver"] else None,
        size=list(size),
        device=device,
        dtype="float16" if opt["fp16"] else "float32",
        references=ref_report,
        mode=mode,
        identity_model=analyses[0].identity_model,
        target=first["target"],
        keypoints=first["keypoints"],
        landmark_map=first["maps"][0],
        outputs=[name for r in records for name in r["outputs"]],
        targets=[{k: v for k, v in r.items() if not k.startswith("_")} for r in records],
        seconds={k: round(v, 2) for k, v in seconds.items()},
        versions={
            "hifi_portrait": hifi_portrait.__version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
    )
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    typer.echo(f"wrote {out / 'settings.json'}")
