"""``hifi-portrait landmarks REFS... --out DIR``: target landmark maps with the references' face shape.

Writes, under ``--out``:

* ``landmarks_<style>.png``: the conditioning map (``--style``: hifi, instantid, mediapipe, mesh, openpose, dwpose);
* ``overlay.png``: the first reference photo moved onto the target canvas with the map blended over it;
* ``sweep_<axis>.png`` with ``--sweep yaw|pitch|roll``: a grid of maps over that angle's tested range;
* ``landmarks.json``: the target (pose, blendshapes), the canvas, the 5 keypoints and the 478 landmarks;
* ``identity_shape.npz``: the fitted shape (pass it instead of photos next time: ``landmarks shape.npz ...``).

Exit codes: 1 no usable reference / no face in the driver; 2 bad option (unknown preset or blendshape, angle out of
range, bad size); 3 model files missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from hifi_portrait.cli.common import safe_child, user_errors
from hifi_portrait.errors import ConfigError, HiFiPortraitError, LandmarkError, NoUsableReferencesError

logger = logging.getLogger(__name__)

#: Angles swept by ``--sweep`` (degrees): the range the generator is tested on.
SWEEP_RANGES = {"yaw": (-60.0, 60.0), "pitch": (-30.0, 30.0), "roll": (-30.0, 30.0)}


def parse_size(value: str) -> tuple[int, int]:
    """``"1024x1024"`` or ``"832x1216"`` -> ``(width, height)``."""
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must look like WIDTHxHEIGHT (e.g. 1024x1024), not {value!r}") from None
    if not (8 <= w <= 8192 and 8 <= h <= 8192):
        raise ConfigError(f"--size {value}: width and height must be between 8 and 8192 pixels")
    return w, h


def parse_floats(value: str, count: int, option: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.split(","))
    except ValueError:
        out = ()
    if len(out) != count:
        raise ConfigError(f"{option} needs {count} comma-separated numbers, not {value!r}")
    return out


def parse_blendshapes(items: list[str]) -> dict[str, float]:
    """``["jawOpen=0.5", ...]`` -> ``{"jawOpen": 0.5}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--blendshape must look like NAME=VALUE (e.g. jawOpen=0.5), not {item!r}") from None
        if not sep:
            raise ConfigError(f"--blendshape must look like NAME=VALUE (e.g. jawOpen=0.5), not {item!r}")
    return out


def load_blendshapes_file(path: Path) -> dict[str, float]:
    """Blendshape scores from a JSON file: ``{"jawOpen": 0.4, ...}``, or an object with such a ``"blendshapes"``
    entry (e.g. a ``landmarks.json`` this command wrote), or mediapipe's list of ``{"category_name", "score"}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--blendshapes {path}: not a readable JSON file ({exc}).") from None
    if isinstance(data, dict) and isinstance(data.get("blendshapes"), dict | list):
        data = data["blendshapes"]
    if isinstance(data, list) and all(isinstance(d, dict) and {"category_name", "score"} <= d.keys() for d in data):
        data = {d["category_name"]: d["score"] for d in data}
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise ConfigError(
            f"--blendshapes {path}: expected a JSON object of blendshape scores, e.g. "
            '{"jawOpen": 0.4, "mouthSmileLeft": 0.7}.'
        )
    return {str(k): float(v) for k, v in data.items() if k != "_neutral"}


def labelled_grid(tiles: list[np.ndarray], labels: list[str], max_tile: int = 256, cols: int = 7) -> np.ndarray:
    """Same-size RGB tiles, each shrunk to at most ``max_tile`` px and captioned, laid out ``cols`` per row."""
    import cv2

    h, w = tiles[0].shape[:2]
    scale = min(1.0, max_tile / max(h, w))
    th, tw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    small = []
    for tile, label in zip(tiles, labels, strict=True):
        t = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA) if scale < 1 else tile.copy()
        cv2.putText(t, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        small.append(t)
    rows = []
    for start in range(0, len(small), cols):
        row = small[start : start + cols]
        row += [np.zeros_like(small[0])] * (cols - len(row)) if len(small) > cols else []
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def landmarks(
    refs: list[Path] = typer.Argument(..., help="Reference photos of one person (or one identity_shape.npz)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    yaw: float | None = typer.Option(None, help="Yaw in degrees (> 0: face turned towards the image's right)."),
    pitch: float | None = typer.Option(None, help="Pitch in degrees (> 0: looking up)."),
    roll: float | None = typer.Option(None, help="Roll in degrees (> 0: counter-clockwise in the image)."),
    expression: str | None = typer.Option(
        None,
        "--expression",
        "-e",
        help="Preset NAME[:INTENSITY] (neutral, smile, laugh, surprise, angry, sad, eyes_closed, mouth_open; "
        "intensity in [0, 1]) and/or blendshapes NAME=SCORE, comma-separated: e.g. 'jawOpen=0.4,mouthSmileLeft=0.7'.",
    ),
    blendshapes_file: Path | None = typer.Option(
        None, "--blendshapes", help="JSON file of blendshape scores ({NAME: SCORE}); set on top of --expression."
    ),
    blendshape: list[str] = typer.Option(
        [], "--blendshape", "-b", help="NAME=VALUE, one of the 52 mediapipe blendshapes (repeatable)."
    ),
    driver: Path | None = typer.Option(None, help="Photo whose pose and expression (not face shape) are used."),
    size: str = typer.Option("1024x1024", help="Canvas WIDTHxHEIGHT in pixels."),
    style: str = typer.Option("hifi", help="Map style: hifi, instantid, mediapipe, mesh, openpose or dwpose."),
    center: str = typer.Option("0.5,0.5", help="Face centre X,Y as fractions of the canvas."),
    face_height: float = typer.Option(0.5, help="Face height (forehead to chin) as a fraction of the canvas height."),
    box: str | None = typer.Option(None, help="Face box X1,Y1,X2,Y2 in pixels (overrides --center/--face-height)."),
    fov: float = typer.Option(30.0, help="Vertical field of view of the pinhole camera, degrees."),
    sweep: str | None = typer.Option(None, help="Also write a grid of maps sweeping yaw, pitch or roll."),
    sweep_steps: int = typer.Option(7, help="Number of angles in the sweep."),
    expression_model: str | None = typer.Option(
        None,
        help="Expression model: hand (hand-designed; default for photos) or fitted (data-driven, reads back closer "
        "to what is asked); an identity_shape.npz keeps the model it was neutralized with unless this is given.",
    ),
) -> None:
    """Generate a landmark map with the references' 3D face shape and the requested pose and expression."""
    with user_errors():
        _run(
            refs,
            out,
            yaw,
            pitch,
            roll,
            expression,
            blendshape,
            blendshapes_file,
            driver,
            size,
            style,
            center,
            face_height,
            box,
            fov,
            sweep,
            sweep_steps,
            expression_model,
        )


def _run(
    refs,
    out,
    yaw,
    pitch,
    roll,
    expression,
    blendshape,
    blendshapes_file,
    driver,
    size,
    style,
    center,
    face_height,
    box,
    fov,
    sweep,
    sweep_steps,
    expression_model=None,
) -> None:
    from hifi_portrait.landmarks import (
        STYLES,
        IdentityShape,
        Placement,
        fit_identity_shape,
        generate_landmarks,
        make_target,
        overlay,
        render_map,
        warp_reference,
    )

    canvas = parse_size(size)
    if style not in STYLES:
        raise ConfigError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
    if sweep is not None and sweep not in SWEEP_RANGES:
        raise ConfigError(f"--sweep must be one of {', '.join(SWEEP_RANGES)}, not {sweep!r}")
    if not 2 <= sweep_steps <= 49:
        raise ConfigError("--sweep-steps must be between 2 and 49")
    from hifi_portrait.landmarks.expression import DEFAULT_EXPRESSION_MODEL, EXPRESSION_MODELS

    if expression_model is not None and expression_model not in EXPRESSION_MODELS:
        raise ConfigError(
            f"--expression-model must be one of {', '.join(EXPRESSION_MODELS)}, not {expression_model!r}"
        )
    scores = {**(load_blendshapes_file(blendshapes_file) if blendshapes_file else {}), **parse_blendshapes(blendshape)}
    try:
        placement = Placement(
            center=parse_floats(center, 2, "--center"),  # type: ignore[arg-type]
            face_height=face_height,
            box=parse_floats(box, 4, "--box") if box else None,  # type: ignore[arg-type]
        )
        # validate the target before the (slow) face analysis
        make_target(yaw=yaw, pitch=pitch, roll=roll, expression=expression, blendshapes=scores or None)
    except LandmarkError as exc:
        raise ConfigError(str(exc)) from None
    if not refs:
        raise NoUsableReferencesError("no reference photo given: pass photos of the person (or identity_shape.npz)")

    out.mkdir(parents=True, exist_ok=True)
    analyses, preview_image = [], None
    if len(refs) == 1 and refs[0].suffix.lower() == ".npz":
        shape = IdentityShape.load(refs[0])
        if expression_model is not None and shape.expression_model != expression_model:
            shape = IdentityShape(shape.points, shape.weights, shape.residuals, shape.sources, expression_model)
        typer.echo(f"identity shape loaded from {refs[0]}")
    else:
        from hifi_portrait.face import FaceAnalyzer, load_image

        analyzer = FaceAnalyzer()
        for path in refs:
            try:
                analyses.append(analyzer.analyze(path))
                typer.echo(f"analysed {path}")
            except HiFiPortraitError as exc:
                logger.warning("skipping reference %s: %s", path, exc)
                typer.secho(f"skipped {path}: {exc}", fg="yellow", err=True)
        if not analyses:
            raise NoUsableReferencesError(
                f"none of the {len(refs)} reference photo(s) has a usable face; use clear photos of one person."
            )
        shape = fit_identity_shape(analyses, expression_model=expression_model or DEFAULT_EXPRESSION_MODEL)
        shape.save(out / "identity_shape.npz")
        preview_image = load_image(Path(analyses[0].source))

    driver_face = None
    if driver is not None:
        from hifi_portrait.face import FaceAnalyzer

        driver_face = FaceAnalyzer().analyze(driver)  # FaceNotFoundError -> exit 1 with the file named
    try:
        target = make_target(
            yaw=yaw, pitch=pitch, roll=roll, expression=expression, blendshapes=scores or None, driver=driver_face
        )
    except LandmarkError as exc:
        raise ConfigError(f"with the driver {driver}: {exc}") from None

    gen = generate_landmarks(shape, target, size=canvas, placement=placement, fov_deg=fov)
    cond = render_map(gen, style)
    map_path = safe_child(out, f"landmarks_{style}.png")
    Image.fromarray(cond).save(map_path)
    typer.echo(f"wrote {map_path}")

    if preview_image is not None:
        background = warp_reference(preview_image, analyses[0].landmarks, gen)
    else:
        background = np.full_like(cond, 32)
    preview = overlay(background, cond if style != "instantid" else render_map(gen, "mediapipe"))
    Image.fromarray(preview).save(out / "overlay.png")

    info = {
        "references": shape.sources,
        "reference_weights": [float(w) for w in shape.weights],
        "size": list(canvas),
        "style": style,
        "fov_deg": fov,
        "pose": {"yaw": target.yaw, "pitch": target.pitch, "roll": target.roll},
        "blendshapes": {k: v for k, v in target.blendshapes.items() if v > 0},
        "expression_model": shape.expression_model,
        "driver": str(driver) if driver else None,
        "keypoints": gen.keypoints.round(3).tolist(),
        "landmarks": gen.landmarks.round(3).tolist(),
    }
    (out / "landmarks.json").write_text(json.dumps(info, indent=1))

    if sweep:
        lo, hi = SWEEP_RANGES[sweep]
        tiles, labels = [], []
        for angle in np.linspace(lo, hi, sweep_steps):
            pose = {"yaw": target.yaw, "pitch": target.pitch, "roll": target.roll, sweep: float(angle)}
            t = make_target(**pose, blendshapes=target.blendshapes)
            gen_t = generate_landmarks(shape, t, size=canvas, placement=placement, fov_deg=fov)
            tiles.append(render_map(gen_t, style))
            labels.append(f"{sweep} {angle:+.0f}")
        grid_path = out / f"sweep_{sweep}.png"
        Image.fromarray(labelled_grid(tiles, labels)).save(grid_path)
        typer.echo(f"wrote {grid_path}")
