"""The 478 -> 68 correspondence of the ``openpose`` map style, measured against dlib's 68-point shape predictor.

Usage::

    python benchmarks/openpose_face68.py [--markdown benchmarks/results/openpose_face68.md] [--fit]
    python benchmarks/openpose_face68.py --quick   # seconds: 2 calibration + 2 report photos, nothing written (CI)

For every face of the bundled photos (``tests/data/*.jpg|png`` and ``tests/data/ids/*/*.jpg``), our face analysis
(mediapipe's 478 landmarks) is mapped to the 68 iBUG 300-W points with
:func:`hifi_portrait.landmarks.openpose.face68` (the table :data:`~hifi_portrait.landmarks.openpose.IBUG68_FROM_MESH`
with the pose-aware jaw line of :func:`~hifi_portrait.landmarks.openpose.jaw_contour`) and compared with dlib's
``shape_predictor_68_face_landmarks.dat`` (``face_recognition_models``) run on dlib's own HOG face box of the same
face. NME = mean point-to-point distance / inter-ocular distance (dlib's outer eye corners 36 and 45, the 300-W
convention). Side by side: the fixed table alone (``face68(..., contour=False)``, the jaw on fixed vertices) and a
hand-made one-vertex-per-point table.

Split: everything was chosen on the calibration photos (``tests/data/ids/``, 30 faces); the report photos
(``tests/data/*``, 13 faces) were never used to choose it. ``--fit`` re-derives both parts on the calibration split
and says whether they equal the committed ones:

* the table: for each of the 68 points, the vertex, or blend ``t * a + (1 - t) * b`` of two vertices (t in 0.25,
  0.5, 0.75), of the anatomical region of that point (eyelid, lip contour, brow, nose; the jaw line may use any
  vertex) with the least mean NME (fixed table, no contour step);
* the jaw contour's parameters (``JAW_NORMAL_BLEND``, ``JAW_BAND_CM``, ``JAW_BEHIND_OVAL_CM``): the grid point with
  the least mean NME of all 68 points, the table fixed.

dlib is called directly here (``dlib.shape_predictor``); a shared wrapper (``face/dlib_landmarks.py``) is being
written separately and can replace :func:`dlib_68` once it lands.
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def _regions() -> list[np.ndarray]:
    """Candidate mesh vertices of each of the 68 points (anatomical region of the point)."""
    from hifi_portrait.landmarks import mesh as M

    outer_upper = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
    outer_lower = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
    inner_upper = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
    inner_lower = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
    nose = (1, 2, 4, 5, 6, 8, 9, 19, 45, 48, 64, 94, 97, 98, 115, 164, 168, 195, 197, 220, 240, 275, 278, 294, 326)
    nose += (327, 344, 440, 460, 75, 305, 60, 290, 99, 328)
    every = tuple(range(M.NUM_MESH))
    groups: list[tuple[int, ...]] = [every] * 17
    groups += [M.BROW_R] * 5 + [M.BROW_L] * 5 + [nose] * 9
    for upper, lower in ((M.UPPER_LID_R, M.LOWER_LID_R), (M.UPPER_LID_L, M.LOWER_LID_L)):
        # dlib, each eye: corner, 2 upper-lid points, corner, 2 lower-lid points
        groups += [upper + lower, upper, upper, upper + lower, lower, lower]
    groups += [outer_upper + outer_lower] + [outer_upper] * 5 + [outer_upper + outer_lower] + [outer_lower] * 5
    groups += [inner_upper + inner_lower] + [inner_upper] * 3 + [inner_upper + inner_lower] + [inner_lower] * 3
    assert len(groups) == 68
    return [np.array(sorted(set(g))) for g in groups]


#: Baseline printed side by side: one vertex per point picked by anatomical name alone (the usual hand-made
#: mediapipe -> 68 table: face-oval vertices for the jaw, upper brow contour, lid and lip contour vertices).
NAMED_VERTICES = (
    (127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356)
    + (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
    + (168, 197, 5, 4, 98, 97, 2, 326, 327)
    + (33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380)
    + (61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91)
    + (78, 82, 13, 312, 308, 317, 14, 87)
)


def dlib_68(image: np.ndarray, predictor, detector, bbox) -> np.ndarray | None:
    """dlib's 68 points ``(68, 2)`` for the face whose box (ours) is ``bbox``, or None when dlib finds no box near."""
    x1, y1, x2, y2 = bbox
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    for rect in detector(image, 1):
        c = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
        if np.linalg.norm(c - centre) < 0.3 * (x2 - x1):
            shape = predictor(image, rect)
            return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
    return None


def collect(paths: list[Path]) -> list[dict]:
    """Our 478 landmarks and dlib's 68 points of every face of the photos (faces dlib misses are listed apart)."""
    import dlib
    from PIL import Image

    from hifi_portrait.face import FaceAnalyzer
    from hifi_portrait.face.model_files import dlib_model

    analyzer = FaceAnalyzer()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model("shape_predictor_68_face_landmarks.dat")))
    rows = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        for face in analyzer.analyze_all(path):
            truth = dlib_68(image, predictor, detector, face.bbox)
            rows.append(
                {
                    "name": f"{path.relative_to(DATA)}" + (f" #{face.face_index}" if face.face_index else ""),
                    "calibration": "ids" in path.relative_to(DATA).parts,
                    "mesh": face.landmarks[:, :2],
                    "dlib": truth,
                    "pose": face.pose.as_array(),
                }
            )
    return rows


def nme(points68: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-point error ``(..., 68)`` / inter-ocular distance (outer corners 36-45 of ``truth``)."""
    iod = np.linalg.norm(truth[..., 36, :] - truth[..., 45, :], axis=-1)
    return np.linalg.norm(points68 - truth, axis=-1) / iod[..., None]


def fit(rows: list[dict]) -> list[tuple[int, int, float]]:
    """The ``(a, b, t)`` of each point (``t * a + (1 - t) * b``) with the least mean NME over ``rows``."""
    mesh = np.stack([r["mesh"] for r in rows])
    truth = np.stack([r["dlib"] for r in rows])
    iod = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=1)
    table = []
    for k, region in enumerate(_regions()):
        single = (np.linalg.norm(mesh[:, region] - truth[:, None, k], axis=2) / iod[:, None]).mean(0)
        cand = region[np.argsort(single)[:25]]
        best = (float(single.min()), int(region[single.argmin()]), int(region[single.argmin()]), 1.0)
        for ia, a in enumerate(cand):
            for b in cand[ia + 1 :]:
                for t in (0.25, 0.5, 0.75):
                    p = t * mesh[:, a] + (1 - t) * mesh[:, b]
                    e = float((np.linalg.norm(p - truth[:, k], axis=1) / iod).mean())
                    if e < best[0] - 1e-9:
                        best = (e, int(a), int(b), t)
        table.append(best[1:])
    return table


#: The grid ``--fit`` searches for the jaw contour's parameters (blend, band in cm, behind the oval in cm).
CONTOUR_GRID = {
    "blend": (0.0, 0.25, 0.5, 0.75, 1.0),
    "band_cm": (0.5, 0.8, 1.2),
    "behind_cm": (0.0, 0.5, 1.0, 1.5, 2.0),
}


def fit_contour(rows: list[dict]) -> tuple[float, float, float]:
    """The ``(blend, band_cm, behind_cm)`` of :data:`CONTOUR_GRID` with the least mean NME (68 points) on ``rows``."""
    import itertools

    from hifi_portrait.landmarks.openpose import face68, jaw_contour

    fixed = [face68(r["mesh"], contour=False) for r in rows]
    best = (np.inf, (0.0, 0.0, 0.0))
    for blend, band, behind in itertools.product(*CONTOUR_GRID.values()):
        total = 0.0
        for r, points in zip(rows, fixed, strict=True):
            points = points.copy()
            points[:17] = jaw_contour(r["mesh"], band_cm=band, blend=blend, behind_cm=behind)
            total += float(nme(points, r["dlib"]).mean())
        if total / len(rows) < best[0] - 1e-12:
            best = (total / len(rows), (blend, band, behind))
    return best[1]


def _markdown(rows, errors, fixed, named, fitted: dict[str, bool], missed: list[str]) -> str:
    import cv2
    import dlib

    from hifi_portrait.landmarks import openpose as O

    cal = np.array([r["calibration"] for r in rows])
    per_face, per_face_fixed, per_face_named = errors.mean(1), fixed.mean(1), named.mean(1)
    lines = [
        "# 478 -> 68 correspondence vs dlib's 68-point shape predictor",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, 2-core CPU VM, no GPU; python {platform.python_version()}, "
        f"dlib {dlib.__version__}, OpenCV {cv2.__version__}",
        "- command: `python benchmarks/openpose_face68.py --fit --markdown benchmarks/results/openpose_face68.md`",
        "- reference: dlib `shape_predictor_68_face_landmarks.dat` (face_recognition_models) on dlib's HOG box;"
        " ours: mediapipe FaceLandmarker 478 points mapped by `face68`: the table `IBUG68_FROM_MESH` with the"
        f" pose-aware jaw line `jaw_contour` (blend {O.JAW_NORMAL_BLEND}, band {O.JAW_BAND_CM} cm, behind the oval"
        f" {O.JAW_BEHIND_OVAL_CM} cm)",
        "- NME: mean point error / dlib's outer-eye-corner distance (36-45); side by side, the same faces mapped by"
        " the fixed table alone (`contour=False`: jaw on fixed vertices) and by `NAMED_VERTICES` (one vertex per"
        " point chosen by anatomical name, the usual hand-made table)",
    ]
    lines.append(
        "- split: the table and the contour's parameters were chosen on the calibration photos only; the contour"
        " rule's form (silhouette along fixed lines, the near side behind the oval, reading the points at the"
        " table's arc-length fractions) was designed while looking at the error patterns of all bundled faces,"
        " report faces included"
    )
    for what, equal in fitted.items():
        lines.append(f"- `--fit` on the calibration split reproduces the committed {what}: {equal}")
    if missed:
        lines.append(f"- faces dlib's HOG detector missed (not scored): {', '.join(missed)}")
    report_title = "Report photos (never used to choose the table or the contour's parameters)"
    for title, sel in ((report_title, ~cal), ("Calibration photos", cal)):
        lines += [
            "",
            f"## {title}",
            "",
            "| photo | yaw | pitch | roll | NME | worst point (NME) | NME, fixed table | NME, named vertices |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i in np.flatnonzero(sel):
            yaw, pitch, roll = rows[i]["pose"]
            worst = int(errors[i].argmax())
            lines.append(
                f"| {rows[i]['name']} | {yaw:.0f} | {pitch:.0f} | {roll:.0f} | {per_face[i]:.4f} | "
                f"{worst} ({errors[i, worst]:.3f}) | {per_face_fixed[i]:.4f} | {per_face_named[i]:.4f} |"
            )
        lines.append(
            f"| **mean** (median {np.median(per_face[sel]):.4f}, {int((per_face[sel] <= 0.05).sum())}/{int(sel.sum())}"
            f" faces <= 0.05) | | | | **{per_face[sel].mean():.4f}** | | {per_face_fixed[sel].mean():.4f}"
            f" ({int((per_face_fixed[sel] <= 0.05).sum())}/{int(sel.sum())}) | {per_face_named[sel].mean():.4f} |"
        )
    groups = {"jaw 0-16": range(17), "brows 17-26": range(17, 27), "nose 27-35": range(27, 36)}
    groups |= {"eyes 36-47": range(36, 48), "outer lips 48-59": range(48, 60), "inner lips 60-67": range(60, 68)}
    lines += ["", "## Per region (report photos)", ""]
    lines += ["| region | NME | NME, fixed table | NME, named vertices |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {errors[~cal][:, list(idx)].mean():.4f} | {fixed[~cal][:, list(idx)].mean():.4f} |"
        f" {named[~cal][:, list(idx)].mean():.4f} |"
        for name, idx in groups.items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from hifi_portrait.landmarks import openpose as O

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, help="write the results table here")
    parser.add_argument("--fit", action="store_true", help="re-derive the table on the calibration photos")
    parser.add_argument("--quick", action="store_true", help="seconds: 4 photos, no fit (CI checks it runs)")
    args = parser.parse_args()
    paths = sorted(p for p in DATA.rglob("*") if p.suffix in (".jpg", ".png"))
    if args.quick:
        args.fit, args.markdown = False, None
        calibration = [p for p in paths if "ids" in p.relative_to(DATA).parts]
        paths = calibration[:2] + [p for p in paths if p not in calibration][:2]
    rows = collect(paths)
    missed = [r["name"] for r in rows if r["dlib"] is None]
    rows = [r for r in rows if r["dlib"] is not None]
    errors = np.stack([nme(O.face68(r["mesh"]), r["dlib"]) for r in rows])
    fixed = np.stack([nme(O.face68(r["mesh"], contour=False), r["dlib"]) for r in rows])
    named = np.stack([nme(r["mesh"][list(NAMED_VERTICES)], r["dlib"]) for r in rows])
    fitted = {}
    if args.fit:
        calibration = [r for r in rows if r["calibration"]]
        table = fit(calibration)
        fitted["table"] = tuple(table) == tuple(O.IBUG68_FROM_MESH)
        if not fitted["table"]:
            print("fitted table (differs from the committed one):")
            print(table)
        params = fit_contour(calibration)
        committed = (O.JAW_NORMAL_BLEND, O.JAW_BAND_CM, O.JAW_BEHIND_OVAL_CM)
        fitted["jaw contour parameters (blend, band, behind the oval)"] = params == committed
        if params != committed:
            print(f"fitted jaw contour parameters {params} differ from the committed {committed}")
    text = _markdown(rows, errors, fixed, named, fitted, missed)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
