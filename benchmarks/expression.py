"""Expression control read back by mediapipe's blendshape model: the hand-designed and the fitted basis side by side.

Usage::

    python benchmarks/expression.py --markdown benchmarks/results/expression.md \
        --grid docs/images/expression_grid.png
    python benchmarks/expression.py --quick      # seconds: obama's 3 photos, yaw 0, no mirrored copies

On the photos of the people the fit never saw (``HELD_OUT_PEOPLE`` of ``hifi_portrait.landmarks.expression_data``):
each person's identity shape is fitted from their (unmirrored) photos with each expression model; every preset at
intensity 0.5 and 1.0, yaw -30, 0 and +30, is generated and read back by the blendshape model (worst |read - asked|
over all 51 scores, 0 asked included); monotonicity over intensities 0, 0.25, ..., 1 of every requested score;
neutral; driver round trip (each photo's own scores and pose on its person's shape fitted from their other photos,
mirrored photos with mirrored ones; mean |read - asked| over the 51 scores); identity residual (mean distance of
the neutralized references to the fitted shape, cm); mesh roughness (a plausibility measure that does not use the
reader: mean distance of each point to the mean of its mesh neighbours, cm, over every preset at intensity 1,
beside that of the held-out photos' own landmarks aligned the same way); generation time per target (process CPU
time, median).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MODELS = ("hand", "fitted")


def _faces(quick: bool):
    from hifi_portrait.landmarks.expression_data import HELD_OUT_PEOPLE, analyse_photos, bundled_photos

    photos = {p: v for p, v in bundled_photos(DATA).items() if p in HELD_OUT_PEOPLE}
    if quick:
        photos = {"obama": [DATA / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg")]}
    return analyse_photos(photos, mirror=not quick)


def _monotonic(reader, shape, preset: str) -> float:
    """Largest decrease of a requested score's read-back over increasing intensity (0 when monotonic)."""
    from hifi_portrait.landmarks.expression import preset_scores, scores_to_vector
    from hifi_portrait.landmarks.expression_check import read_back

    asked = scores_to_vector(preset_scores(preset, 1.0)) > 0
    if not asked.any():
        return 0.0
    series = np.stack([read_back(reader, shape, preset_scores(preset, t))[asked] for t in np.linspace(0, 1, 5)])
    return float(max(0.0, -np.diff(series, axis=0).min()))


def _rough(points: np.ndarray) -> float:
    """Mean distance (cm) of each mesh point to the mean of its neighbours in mediapipe's tesselation."""
    from hifi_portrait.landmarks import mesh as M

    edges = M.mediapipe_connections()["tesselation"]
    adj = np.zeros((M.NUM_MESH, M.NUM_MESH))
    adj[edges[:, 0], edges[:, 1]] = adj[edges[:, 1], edges[:, 0]] = 1.0
    adj /= adj.sum(1, keepdims=True)
    p = points[: M.NUM_MESH]
    return float(np.linalg.norm(p - adj @ p, axis=1).mean())


def _roughness(shape) -> float:
    """Mean roughness of the shape with every preset at intensity 1 (neutral included)."""
    from hifi_portrait.landmarks import PRESETS
    from hifi_portrait.landmarks.expression import apply_expression, preset_scores, scores_to_vector

    return float(
        np.mean(
            [
                _rough(apply_expression(shape.points, shape.basis, scores_to_vector(preset_scores(p, 1.0))))
                for p in PRESETS
            ]
        )
    )


def _time_ms(shape, repeats: int) -> float:
    from hifi_portrait.landmarks import PRESETS, generate_landmarks, make_target

    rng = np.random.default_rng(0)
    names = list(PRESETS)
    times = []
    for i in range(repeats):
        target = make_target(
            yaw=float(rng.uniform(-45, 45)), expression=f"{names[i % len(names)]}:{rng.uniform(0, 1):.2f}"
        )
        t0 = time.process_time()
        generate_landmarks(shape, target, size=(1024, 1024))
        times.append(time.process_time() - t0)
    return 1e3 * statistics.median(times)


def _grid(shapes: dict, path: Path) -> None:
    from PIL import Image

    from hifi_portrait.cli.landmarks import labelled_grid
    from hifi_portrait.landmarks import PRESETS, generate_landmarks, make_target, render_map

    tiles, labels = [], []
    for preset in PRESETS:
        for model in MODELS:
            for yaw in (0, 30):
                gen = generate_landmarks(shapes[model], make_target(yaw=yaw, expression=preset), size=(256, 256))
                tiles.append(render_map(gen, "mediapipe"))
                labels.append(f"{preset} {model} yaw {yaw}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labelled_grid(tiles, labels, max_tile=192, cols=4)).save(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="obama's 3 bundled photos, yaw 0 only (seconds)")
    parser.add_argument("--markdown", type=Path, help="write the results as markdown here")
    parser.add_argument("--grid", type=Path, help="write a grid image of the presets (both models) here")
    args = parser.parse_args()

    from hifi_portrait.face.blendshapes import BlendshapeReader
    from hifi_portrait.landmarks import BLENDSHAPE_NAMES, PRESETS, fit_identity_shape
    from hifi_portrait.landmarks.expression_check import driver_round_trips, preset_rows

    reader = BlendshapeReader()
    faces = _faces(args.quick)
    people = sorted({f.person for f in faces})
    yaws = (0.0,) if args.quick else (-30.0, 0.0, 30.0)
    rows, stats = {}, {}
    for model in MODELS:
        shapes = {
            p: fit_identity_shape([f for f in faces if f.person == p and not f.mirrored], expression_model=model)
            for p in people
        }
        rows[model] = preset_rows(reader, shapes, yaws=yaws)
        trips = driver_round_trips(reader, faces, expression_model=model)
        stats[model] = {
            "residual": {p: float(s.residuals.mean()) for p, s in shapes.items()},
            "trip_mae": float(np.mean([t.mae for t in trips])),
            "trip_max": float(max(t.mae for t in trips)),
            "trips": len(trips),
            "monotonic": max(_monotonic(reader, s, pr) for s in shapes.values() for pr in PRESETS),
            "rough": float(np.mean([_roughness(s) for s in shapes.values()])),
            "ms": _time_ms(next(iter(shapes.values())), 30 if args.quick else 200),
            "shapes": shapes,
        }

    from hifi_portrait.landmarks.shape import align_to_canonical, to_model_space

    photo_rough = float(np.mean([_rough(align_to_canonical(to_model_space(f.landmarks))[0]) for f in faces]))
    mirrored = "" if args.quick else ", mirrored copies included"
    lines = [
        f"# Expression read-back ({datetime.date.today().isoformat()})",
        "",
        f"Held-out people: {', '.join(people)} ({len(faces)} faces{mirrored}). "
        "Reader: mediapipe's blendshape model (LiteRT). Cells: worst |read - asked| over the 46 readable scores "
        "(cheekPuff, cheekSquint and noseSneer are never given by the reader) and the people, and which score it is "
        "(asked -> read). Acceptance: <= 0.10.",
        "",
        "| preset | intensity | yaw | hand (old) | fitted (new) |",
        "|---|---|---|---|---|",
    ]
    for preset in PRESETS:
        for intensity in (0.5, 1.0):
            for yaw in yaws:
                cells = []
                for model in MODELS:
                    sel = [r for r in rows[model] if (r.preset, r.intensity, r.yaw) == (preset, intensity, yaw)]
                    w = max(sel, key=lambda r: r.max_error)
                    name = BLENDSHAPE_NAMES[w.worst]
                    cells.append(f"{w.max_error:.3f} ({name} {w.asked[w.worst]:.2f} -> {w.read[w.worst]:.2f})")
                lines.append(f"| {preset} | {intensity} | {yaw:+.0f} | {cells[0]} | {cells[1]} |")
    passed = {m: sum(r.max_error <= 0.10 for r in rows[m]) for m in MODELS}
    lines += [
        "",
        "| summary | hand (old) | fitted (new) |",
        "|---|---|---|",
        "| preset cells within 0.10 | " + " | ".join(f"{passed[m]}/{len(rows[m])}" for m in MODELS) + " |",
        "| worst preset error | " + " | ".join(f"{max(r.max_error for r in rows[m]):.3f}" for m in MODELS) + " |",
        "| neutral: largest score read | "
        + " | ".join(f"{max(r.read.max() for r in rows[m] if r.preset == 'neutral'):.3f}" for m in MODELS)
        + " |",
        "| largest decrease with intensity (0 = monotonic) | "
        + " | ".join(f"{stats[m]['monotonic']:.3f}" for m in MODELS)
        + " |",
        f"| driver round trip MAE (mean / worst of {stats['fitted']['trips']}) | "
        + " | ".join(f"{stats[m]['trip_mae']:.4f} / {stats[m]['trip_max']:.4f}" for m in MODELS)
        + " |",
        "| identity residual, cm (per person) | "
        + " | ".join(", ".join(f"{v:.3f}" for v in stats[m]["residual"].values()) for m in MODELS)
        + " |",
        f"| mesh roughness over the presets, cm (reader-free plausibility; held-out photos: {photo_rough:.4f}) | "
        + " | ".join(f"{stats[m]['rough']:.4f}" for m in MODELS)
        + " |",
        "| generation ms per target (CPU, median) | " + " | ".join(f"{stats[m]['ms']:.2f}" for m in MODELS) + " |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown and not args.quick:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
        print(f"wrote {args.markdown}")
    if args.grid and not args.quick:
        obama = {m: stats[m]["shapes"]["obama"] for m in MODELS}
        _grid(obama, args.grid)


if __name__ == "__main__":
    main()
