"""``hifi-portrait generate --person refs_a/ --person refs_b/ [--layout auto|BOXES] [--person-target ...]``:
a group portrait, each person from its own references, target and place (hifi_portrait.pipelines.group).

Writes under ``--out``: ``portrait_<seed>_<i>.png``, ``landmarks_<style>.png`` (every face on one map),
``regions.png`` (each person's region in its colour) and ``settings.json`` (people, their references, targets,
boxes and regions' areas).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from hifi_portrait.cli.common import safe_child
from hifi_portrait.errors import ConfigError, LandmarkError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: Region colours of regions.png (RGB), person 1, 2, ...
REGION_COLORS = ((230, 80, 60), (60, 140, 230), (80, 200, 90), (230, 190, 40), (170, 90, 220), (40, 200, 200))
#: Options of the one-person command that a group portrait does not take.
NOT_FOR_GROUPS = {"driver": "--driver", "sweep": "--sweep", "controlnet": "--controlnet"}


def person_photos(path: Path) -> list[Path]:
    """A ``--person`` value: a folder (its photos, sorted) or one photo."""
    path = Path(path)
    if path.is_dir():
        photos = sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if not photos:
            raise ConfigError(f"--person {path}: the folder has no photos ({', '.join(PHOTO_SUFFIXES)})")
        return photos
    if path.is_file():
        return [path]
    raise ConfigError(f"--person {path}: no such folder or photo")


def parse_boxes(spec: str, n: int, size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """``'x1,y1,x2,y2;x1,y1,x2,y2'`` -> one box per person (ConfigError when malformed or off the canvas)."""
    boxes = []
    for part in spec.split(";"):
        try:
            values = tuple(float(v) for v in part.split(","))
        except ValueError:
            values = ()
        if len(values) != 4:
            raise ConfigError(f"--layout {spec!r}: write 'auto' or x1,y1,x2,y2 per person, separated by ';'")
        x1, y1, x2, y2 = values
        if not (0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]):
            raise ConfigError(f"--layout box {part!r} is not inside the {size[0]}x{size[1]} canvas with x1<x2, y1<y2")
        boxes.append(values)
    if len(boxes) != n:
        raise ConfigError(f"--layout gives {len(boxes)} box(es) for {n} --person: one box per person")
    return boxes


def parse_person_target(spec: str, opt: dict[str, Any]) -> tuple[Any, float]:
    """``'yaw=20;expression=smile:0.6;size=0.8'`` -> (TargetAttributes, relative size); unset = the global options."""
    from hifi_portrait.landmarks import make_target

    values: dict[str, Any] = {"yaw": opt["yaw"], "pitch": opt["pitch"], "roll": opt["roll"]}
    values["expression"] = opt["expression"]
    rel = 1.0
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("yaw", "pitch", "roll", "expression", "size"):
            raise ConfigError(
                f"--person-target {spec!r}: write KEY=VALUE items separated by ';' with KEY one of yaw, pitch, roll, "
                "expression, size"
            )
        if key == "expression":
            values[key] = value.strip()
            continue
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--person-target {spec!r}: {key} must be a number, not {value!r}") from None
        if key == "size":
            if not 0.2 <= number <= 5:
                raise ConfigError(f"--person-target {spec!r}: size is a relative face size in 0.2..5")
            rel = number
        else:
            values[key] = number
    try:
        return make_target(**values), rel
    except LandmarkError as exc:
        raise ConfigError(f"--person-target {spec!r}: {exc}") from None


def _check(opt: dict[str, Any]) -> tuple[tuple[int, int], list[list[Path]], list[Any], list[float], Any]:
    from hifi_portrait.cli.generate import _check_options

    if not opt["person"]:
        raise ConfigError("--layout and --person-target are for group portraits: give --person DIR per person")
    if opt["refs"]:
        raise ConfigError(
            "a group portrait takes each person's photos with --person (folder or photo), not as REFS: move "
            f"{opt['refs'][0]} ... into a folder and pass --person FOLDER"
        )
    if len(opt["person"]) < 2:
        raise ConfigError("a group portrait needs 2 or more --person (for one person, give the photos as REFS)")
    for key, flag in NOT_FOR_GROUPS.items():
        if opt[key]:
            raise ConfigError(f"{flag} is not available for group portraits (give each person's target with "
                              "--person-target)")  # fmt: skip
    n = len(opt["person"])
    if opt["person_target"] and len(opt["person_target"]) != n:
        raise ConfigError(f"--person-target given {len(opt['person_target'])} times for {n} --person: one per person")
    size, _ = _check_options(opt)
    targets = [parse_person_target(spec, opt) for spec in (opt["person_target"] or [""] * n)]
    layout = opt["layout"] or "auto"
    boxes = None
    if layout != "auto":
        boxes = parse_boxes(layout, n, size)
        if any(rel != 1.0 for _, rel in targets):
            raise ConfigError("--person-target size= is for --layout auto: explicit boxes already give each size")
    elif n > 4:
        raise ConfigError(f"--layout auto places 2 to 4 people, not {n}: give one box per person with --layout")
    photos = [person_photos(p) for p in opt["person"]]
    return size, photos, [t for t, _ in targets], [r for _, r in targets], boxes


def run_group(opt: dict[str, Any]) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from hifi_portrait.cli.generate import _analyse, _check_files, _pick_device, _uint8
    from hifi_portrait.landmarks.generate import Placement
    from hifi_portrait.pipelines.group import Person, generate_group
    from hifi_portrait.pipelines.model_files import load_instantid_pipeline, load_pipeline

    started = time.perf_counter()
    (width, height), photos, targets, relative, boxes = _check(opt)
    device = _pick_device(opt["device"], opt["fp16"], opt["cpu_offload"])
    typer.echo("[1/4] checking model files")
    mode = _check_files(opt, [])
    out: Path = opt["out"]
    out.mkdir(parents=True, exist_ok=True)

    typer.echo(f"[2/4] analysing the reference photos of {len(photos)} people")
    analyses_of, reports, analyzer = [], [], None
    for i, refs in enumerate(photos):
        typer.echo(f"      person {i + 1}: {len(refs)} photo(s)")
        analyses, report, analyzer = _analyse(refs, opt["insightface_dir"])
        analyses_of.append(analyses)
        reports.append(report)

    common = {"loras": opt["lora"], "lora_scale": opt["lora_scale"], "fp16": opt["fp16"], "device": device}
    common["cpu_offload"] = opt["cpu_offload"]
    typer.echo(f"[3/4] loading SDXL + {'InstantID' if mode == 'instantid' else 'adapter'} on {device}")
    people = []
    if mode == "instantid":
        from hifi_portrait.loaders.instantid import instantid_embeddings

        pipe = load_instantid_pipeline(opt["base"], opt["instantid"], opt["identitynet"], **common)
        for analyses in analyses_of:
            embeds, quality = instantid_embeddings(analyses, analyzer.embedder)
            people.append(Person(faces=analyses, id_embeds=torch.as_tensor(embeds),
                                 reference_quality=torch.as_tensor(quality)))  # fmt: skip
        scale_kw = {"controlnet_conditioning_scale": opt["control_scale"]}
    else:
        pipe = load_pipeline(opt["base"], opt["adapter"], opt["image_encoder"], **common)
        people = [Person(faces=analyses) for analyses in analyses_of]
        scale_kw = {"control_scale": opt["control_scale"]}
    for i, person in enumerate(people):
        person.target = targets[i]
        person.relative_size = relative[i]
        if boxes is not None:
            person.placement = Placement(box=boxes[i])
    t_load = time.perf_counter()

    typer.echo("[4/4] group landmark map, regions and denoising")
    pipe.set_progress_bar_config(disable=True)
    try:
        result = generate_group(
            pipe,
            people,
            prompt=opt["prompt"],
            size=(width, height),
            style=opt["style"],
            negative_prompt=opt["negative_prompt"] or None,
            num_inference_steps=opt["steps"],
            guidance_scale=opt["guidance_scale"],
            num_images_per_prompt=opt["num_images"],
            id_scale=opt["id_scale"],
            generator=torch.Generator("cpu").manual_seed(opt["seed"]),
            **scale_kw,
        )
    except ValueError as exc:
        if "identity vectors are" in str(exc):
            raise ConfigError(f"{exc} Use --insightface-dir for adapters trained on 512-d ArcFace vectors.") from None
        raise
    map_name = f"landmarks_{opt['style']}.png"
    Image.fromarray(result.landmark_map).save(safe_child(out, map_name))
    colored = np.zeros((height, width, 3), dtype=np.uint8)
    for i, region in enumerate(result.regions):
        colored[region > 0] = REGION_COLORS[i % len(REGION_COLORS)]
    Image.fromarray(colored).save(safe_child(out, "regions.png"))
    names = []
    for i, image in enumerate(result.images):
        path = safe_child(out, f"portrait_{opt['seed']}_{i}.png")
        Image.fromarray(_uint8(image)).save(path)
        names.append(path.name)
        typer.echo(f"wrote {path}")
    seconds = {"load": t_load - started, "generation": time.perf_counter() - t_load}
    _write_settings(out, opt, mode, device, (width, height), reports, result, names, map_name, seconds)


def _write_settings(out, opt, mode, device, size, reports, result, names, map_name, seconds) -> None:
    import numpy as np

    import hifi_portrait

    skip = ("refs", "lora", "driver", "out", "insightface_dir", "instantid", "identitynet", "controlnet", "person")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in opt.items() if k not in skip}
    people = []
    for i, (gen, region, report) in enumerate(zip(result.layout.people, result.regions, reports, strict=True)):
        uv = gen.points2d
        people.append(
            {
                "person": str(opt["person"][i]),
                "references": report,
                "target": {"yaw": gen.target.yaw, "pitch": gen.target.pitch, "roll": gen.target.roll,
                           "blendshapes": {k: v for k, v in gen.target.blendshapes.items() if v > 0}},
                "face_box": [round(float(v), 1) for v in (*uv.min(0), *uv.max(0))],
                "region_pixels": int(np.count_nonzero(region)),
            }
        )  # fmt: skip
    settings.update(
        mode=mode,
        device=device,
        size=list(size),
        people=people,
        depth_order=result.layout.order,
        landmark_map=map_name,
        regions="regions.png",
        outputs=names,
        seconds={k: round(v, 2) for k, v in seconds.items()},
        version=hifi_portrait.__version__,
        instantid=str(opt["instantid"]) if opt["instantid"] else None,
    )
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    typer.echo(f"wrote {out / 'settings.json'}")
