"""``hifi-portrait run REFS... --out DIR``: the whole job on the reference photos of one person.

1. ``analysis/``: what ``hifi-portrait analyze`` writes (crops, masks, overlays, contact sheet, report.json);
2. ``control/``: the references' identity shape (``identity_shape.npz``), a pose grid (yaw x pitch) and an
   expression grid (preset x yaw) of landmark maps, and the map of each requested target;
3. ``portraits/``: generated portraits for the targets when the model files are configured (``--base``,
   ``--adapter``, ``--image-encoder`` or the ``HIFI_PORTRAIT_BASE`` / ``HIFI_PORTRAIT_ADAPTER`` /
   ``HIFI_PORTRAIT_IMAGE_ENCODER`` environment variables); otherwise ``portraits/MISSING_WEIGHTS.txt`` says
   which files are needed and where they come from, and the command still succeeds.

Exit codes: 0 done; 1 no usable reference; 2 bad option; 3 model files given but incomplete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from hifi_portrait.cli.common import user_errors

#: Targets rendered (and generated, when weights are configured) by default: (label, yaw, pitch, roll, expression).
DEFAULT_TARGETS = [
    ("frontal_neutral", 0.0, 0.0, 0.0, "neutral"),
    ("left_smile", -30.0, 0.0, 0.0, "smile:0.8"),
    ("right_laugh", 30.0, 5.0, 0.0, "laugh:0.7"),
    ("up_surprise", 0.0, 15.0, 0.0, "surprise:0.8"),
]
GRID_YAWS = (-45.0, -20.0, 0.0, 20.0, 45.0)
GRID_PITCHES = (-20.0, 0.0, 20.0)
GRID_EXPRESSIONS = ("neutral", "smile", "laugh", "surprise", "angry", "sad", "eyes_closed", "mouth_open")


def _env_path(value: Path | None, name: str) -> Path | None:
    if value is not None:
        return value
    env = os.environ.get(name)
    return Path(env) if env else None


def control_grids(shape, size: tuple[int, int], style: str) -> dict[str, np.ndarray]:
    """Landmark-map grids of the identity shape: ``pose`` (rows pitch, columns yaw) and ``expression``
    (rows presets at intensity 0.8, columns yaw). Returns name -> RGB uint8 image."""
    from hifi_portrait.cli.landmarks import labelled_grid
    from hifi_portrait.landmarks import generate_landmarks, make_target, render_map

    def tile(**kwargs) -> np.ndarray:
        return render_map(generate_landmarks(shape, make_target(**kwargs), size=size), style)

    pose_tiles, pose_labels = [], []
    for pitch in GRID_PITCHES[::-1]:
        for yaw in GRID_YAWS:
            pose_tiles.append(tile(yaw=yaw, pitch=pitch))
            pose_labels.append(f"yaw {yaw:+.0f} pitch {pitch:+.0f}")
    expr_tiles, expr_labels = [], []
    for name in GRID_EXPRESSIONS:
        for yaw in GRID_YAWS:
            expr_tiles.append(tile(yaw=yaw, expression=f"{name}:0.8" if name != "neutral" else name))
            expr_labels.append(f"{name} yaw {yaw:+.0f}")
    cols = len(GRID_YAWS)
    return {
        "pose": labelled_grid(pose_tiles, pose_labels, max_tile=192, cols=cols),
        "expression": labelled_grid(expr_tiles, expr_labels, max_tile=192, cols=cols),
    }


def run(
    refs: list[Path] = typer.Argument(..., help="Reference photos (or folders) of one person."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Output folder."),
    prompt: str = typer.Option("a portrait photo of a person, natural light, detailed skin", help="Text prompt."),
    size: str = typer.Option("1024x1024", help="Canvas / portrait size WIDTHxHEIGHT."),
    style: str = typer.Option("hifi", help="Landmark map style for the grids: hifi, instantid, mediapipe, mesh."),
    base: Path | None = typer.Option(None, help="SDXL base folder (diffusers layout). Env: HIFI_PORTRAIT_BASE."),
    adapter: Path | None = typer.Option(None, help="hifi-portrait adapter .safetensors. Env: HIFI_PORTRAIT_ADAPTER."),
    image_encoder: Path | None = typer.Option(
        None, help="CLIP vision encoder folder. Env: HIFI_PORTRAIT_IMAGE_ENCODER."
    ),
    steps: int = typer.Option(30, help="Denoising steps (generation only)."),
    seed: int = typer.Option(0, help="Random seed (generation only)."),
) -> None:
    """Run the main job: analyse the references, render pose/expression control grids, generate portraits."""
    from hifi_portrait.cli.analyze import analyze
    from hifi_portrait.cli.landmarks import parse_size
    from hifi_portrait.errors import ConfigError
    from hifi_portrait.landmarks import STYLES, fit_identity_shape, generate_landmarks, make_target, render_map
    from hifi_portrait.pipelines.model_files import WeightsConfig

    with user_errors():
        canvas = parse_size(size)
        if style not in STYLES:
            raise ConfigError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
        weights = WeightsConfig(
            base=_env_path(base, "HIFI_PORTRAIT_BASE"),
            adapter=_env_path(adapter, "HIFI_PORTRAIT_ADAPTER"),
            image_encoder=_env_path(image_encoder, "HIFI_PORTRAIT_IMAGE_ENCODER"),
        )
        nothing_given = weights.base is None and weights.adapter is None and weights.image_encoder is None
        if not nothing_given:
            weights.require()  # exit 3 naming what is missing, before any work
        out.mkdir(parents=True, exist_ok=True)

        typer.echo("[1/3] analysing the reference photos")
        face_set = analyze(
            refs,
            out=out / "analysis",
            policy="largest",
            drop_outliers=True,
            insightface=None,
            face_landmarker=None,
            min_face_px=40.0,
            min_sharpness=20.0,
            workers=2,
            mask="selfie-matte",
        )
        analyses = face_set.analyses

        typer.echo(f"[2/3] fitting the identity shape of {len(analyses)} reference(s), rendering control grids")
        control = out / "control"
        control.mkdir(exist_ok=True)
        shape = fit_identity_shape(analyses)
        shape.save(control / "identity_shape.npz")
        for name, grid in control_grids(shape, (256, 256), style).items():
            Image.fromarray(grid).save(control / f"{name}_grid.png")
        targets = []
        for label, yaw, pitch, roll, expression in DEFAULT_TARGETS:
            target = make_target(yaw=yaw, pitch=pitch, roll=roll, expression=expression)
            gen = generate_landmarks(shape, target, size=canvas)
            Image.fromarray(render_map(gen, style)).save(control / f"{label}_{style}.png")
            targets.append((label, target, gen))
        typer.echo(f"      wrote {control}/pose_grid.png, expression_grid.png and {len(targets)} target maps")

        typer.echo("[3/3] portraits")
        portraits = out / "portraits"
        portraits.mkdir(exist_ok=True)
        if nothing_given:
            problems = weights.problems()
            text = (
                "Portrait generation was skipped: no model weights are configured.\n"
                "Analysis and landmark control grids above do not need them. Generation needs:\n  - "
                + "\n  - ".join(problems)
                + "\nPass them with --base/--adapter/--image-encoder or the HIFI_PORTRAIT_* environment variables."
                "\nSee docs/weights.md.\n"
            )
            (portraits / "MISSING_WEIGHTS.txt").write_text(text)
            typer.echo("      skipped: no weights configured (see portraits/MISSING_WEIGHTS.txt)")
        else:
            from hifi_portrait.cli.generate import generate_for_targets

            written = generate_for_targets(
                weights,
                analyses,
                [(label, gen) for label, _, gen in targets],
                prompt=prompt,
                steps=steps,
                seed=seed,
                out=portraits,
            )
            typer.echo(f"      wrote {len(written)} portrait(s) to {portraits}")
        typer.echo(f"done: results in {out}")
