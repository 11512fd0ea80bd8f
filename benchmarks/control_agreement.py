"""How well the independent control measurement (dlib's 68 points + PnP) agrees with mediapipe's, on real photos.

Usage::

    python benchmarks/control_agreement.py [--markdown benchmarks/results/control_agreement.md] [--quick]

Every face of the bundled photos (``tests/data/*.jpg|png``, ``tests/data/ids/*/*.jpg``) and of their mirrored
copies is measured twice: by our face analysis (mediapipe FaceLandmarker: pose from its transformation matrix,
52 blendshape scores) and by :class:`hifi_portrait.evaluation.dlib68.Dlib68Estimator` (dlib's HOG box, dlib's
68-point shape predictor, ``cv2.solvePnP`` against a generic 3D face; expression ratios on the 68 points).

Split: the calibration photos (``tests/data/ids/`` and mirrors) are the only ones used to choose anything: the PnP
point set (:data:`~hifi_portrait.evaluation.dlib68.POINT_SET_CHOICES`, least mean |yaw difference|; the script says
whether that reproduces the committed ``DEFAULT_POINT_SET``) and, upstream, the 478 -> 68 table from which the 3D
model is derived (``benchmarks/openpose_face68.py``). The report photos (``tests/data/*`` and mirrors) never were.
Nothing else is calibrated (no pitch offset, no depth scale, no focal length).

Reported per split: the signed mean (bias), mean, median and maximum of |dlib68 - mediapipe| per axis, the faces
beyond 5 degrees of yaw with objective diagnostics (the 68-point disagreement of the two landmark models as an
NME, the face cut by the image border, dlib's box fallback), each estimator's own mirror consistency
(``|yaw(photo) + yaw(mirror)|``, which needs no second estimator), every candidate point set on both splits,
and the Spearman correlation of each expression ratio with its mediapipe blendshape group. ``--quick``: two
photos and their mirrors, printed only (seconds; CI runs it).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
QUICK_PHOTOS = ("obama2.jpg", "biden.jpg")
AXES = ("yaw", "pitch", "roll")
LIMIT = 5.0


def _match_mirrored(faces, mirrored_faces, width: int) -> list[int | None]:
    """For each face of the mirrored photo, the index of the same face in the photo (mirrored box centres nearest;
    the "largest first" order of faces of equal size may differ between a photo and its mirror)."""
    centres = np.array([[(f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2] for f in faces])
    out: list[int | None] = []
    for f in mirrored_faces:
        c = np.array([width - (f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2])
        d = np.linalg.norm(centres - c, axis=1) if len(centres) else np.array([])
        out.append(
            int(faces[int(d.argmin())].face_index) if len(d) and d.min() < 0.2 * (f.bbox[2] - f.bbox[0]) else None
        )
    return out


def _row(path: Path, image: np.ndarray, face, index, mirrored: bool, estimator) -> dict:
    """Both measurements of one face."""
    from hifi_portrait.landmarks.openpose import face68

    h, w = image.shape[:2]
    t0 = time.perf_counter()
    m = estimator.measure(image, face.bbox, face.keypoints)
    seconds = time.perf_counter() - t0
    lm = np.asarray(face.landmarks)[:, :2]
    iod = np.linalg.norm(m.points[45] - m.points[36])
    return {
        "photo": str(path.relative_to(DATA)) + (f" #{index}" if index else ""),
        "key": (str(path), index),
        "mirrored": mirrored,
        "calibration": "ids" in path.relative_to(DATA).parts,
        "mp": face.pose.as_array(),
        "dlib": np.array([m.yaw, m.pitch, m.roll]),
        "points": m.points,
        "size": (w, h),
        "box": m.box_source,
        "nme": float(np.linalg.norm(face68(lm) - m.points, axis=1).mean() / iod),
        "cut": bool((lm < 0).any() or (lm[:, 0] >= w).any() or (lm[:, 1] >= h).any()),
        "ratios": m.ratios,
        "blendshapes": face.blendshapes,
        "seconds": seconds,
    }


def collect(paths: list[Path]) -> list[dict]:
    """Both measurements of every face of every photo and of its mirror (a mirrored face carries the index of the
    same face in the photo)."""
    from PIL import Image

    from hifi_portrait.evaluation.dlib68 import Dlib68Estimator
    from hifi_portrait.face import FaceAnalyzer

    analyzer, estimator = FaceAnalyzer(), Dlib68Estimator()
    rows = []
    for path in paths:
        photo = np.asarray(Image.open(path).convert("RGB"))
        mirror = np.ascontiguousarray(photo[:, ::-1])
        faces, mirrored_faces = analyzer.analyze_all(photo), analyzer.analyze_all(mirror)
        for face in faces:
            rows.append(_row(path, photo, face, face.face_index, False, estimator))
        matches = _match_mirrored(faces, mirrored_faces, photo.shape[1])
        for face, index in zip(mirrored_faces, matches, strict=True):
            index = f"mirror-only {face.face_index}" if index is None else index
            rows.append(_row(path, mirror, face, index, True, estimator))
    return rows


def spread(diff: np.ndarray) -> dict[str, np.ndarray]:
    a = np.abs(diff)
    return {"bias": diff.mean(0), "mean": a.mean(0), "median": np.median(a, 0), "max": a.max(0)}


def mirror_consistency(rows: list[dict], key: str) -> np.ndarray:
    """``|yaw(photo) + yaw(mirror)|`` per face matched between a photo and its mirror (same face index)."""
    by = {(r["key"], r["mirrored"]): r for r in rows}
    out = [abs(r[key][0] + by[(r["key"], True)][key][0]) for r in rows if not r["mirrored"] and (r["key"], True) in by]
    return np.array(out)


def candidates(rows: list[dict]) -> dict[str, dict[bool, dict[str, np.ndarray]]]:
    from hifi_portrait.evaluation.dlib68 import POINT_SET_CHOICES, pose_from_68

    out = {}
    for name in POINT_SET_CHOICES:
        out[name] = {}
        for cal in (True, False):
            sel = [r for r in rows if r["calibration"] == cal]
            if sel:
                d = np.array(
                    [np.array(pose_from_68(r["points"], r["size"], point_set=name)[:3]) - r["mp"] for r in sel]
                )
                out[name][cal] = spread(d)
    return out


def correlations(rows: list[dict]) -> list[tuple[str, str, int, float, int]]:
    from scipy.stats import spearmanr

    from hifi_portrait.evaluation.dlib68 import GROUP_NAMES, RATIO_BLENDSHAPES, blendshape_groups

    out = []
    for ratio, (_, sign) in RATIO_BLENDSHAPES.items():
        x = [r["ratios"][ratio] for r in rows]
        y = [blendshape_groups(r["blendshapes"])[GROUP_NAMES[ratio]] for r in rows]
        rho = float(spearmanr(x, y).statistic) if len(rows) > 2 else float("nan")
        out.append((ratio, GROUP_NAMES[ratio], sign, rho, len(rows)))
    return out


def _fmt3(v: np.ndarray) -> str:
    return " | ".join(f"{x:.2f}" for x in v)


def report(rows: list[dict], quick: bool) -> str:
    import cv2
    import dlib

    from hifi_portrait.evaluation.dlib68 import DEFAULT_POINT_SET

    cands = candidates(rows)
    chosen = min(cands, key=lambda n: cands[n][True]["mean"][0]) if any(True in c for c in cands.values()) else None
    cmd = "python benchmarks/control_agreement.py" + (" --quick" if quick else "")
    lines = [
        "# Independent pose/expression measurement (dlib68) vs mediapipe on real photos",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, 2-core CPU VM, no GPU; python {platform.python_version()}, "
        f"dlib {dlib.__version__}, OpenCV {cv2.__version__}",
        f"- command: `{cmd} --markdown benchmarks/results/control_agreement.md`",
        f"- faces: {len(rows)} ({sum(r['calibration'] for r in rows)} calibration: tests/data/ids + mirrors; "
        f"{sum(not r['calibration'] for r in rows)} report: tests/data/* + mirrors)",
        f"- PnP point set: `{DEFAULT_POINT_SET}` (committed default); chosen on the calibration split by least mean "
        f"|yaw difference|: `{chosen}` (reproduces the default: {chosen == DEFAULT_POINT_SET})",
        f"- dlib68 time per face (HOG box + 68 points + PnP): median {np.median([r['seconds'] for r in rows]):.3f} s",
        "- dlib box: dlib's HOG detector; " + f"{sum(r['box'] == 'ours' for r in rows)} face(s) fell back to our box",
        "",
        "Differences are dlib68 minus mediapipe, in degrees. Neither estimator is ground truth: a difference is a "
        "disagreement, and the mirror-consistency table shows which one is less self-consistent.",
    ]
    for title, cal in (("Report photos (never used to choose anything)", False), ("Calibration photos", True)):
        sel = [r for r in rows if r["calibration"] == cal]
        if not sel:
            continue
        d = np.array([r["dlib"] - r["mp"] for r in sel])
        s = spread(d)
        lines += ["", f"## {title}", "", "| | yaw | pitch | roll |", "|---|---|---|---|"]
        for k, label in (("bias", "mean signed difference"), ("mean", "mean abs"), ("median", "median abs")):
            lines.append(f"| {label} | {_fmt3(s[k])} |")
        lines.append(f"| max abs | {_fmt3(s['max'])} |")
        n_over = int((np.abs(d[:, 0]) > LIMIT).sum())
        lines.append(f"| faces with abs yaw difference <= {LIMIT:g} | {len(sel) - n_over}/{len(sel)} | | |")
        easy = np.array([abs(r["mp"][0]) <= 30 and not r["cut"] for r in sel])
        if easy.any():
            e = np.abs(d[easy])
            cells = " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(e.mean(0), e.max(0), strict=True))
            lines.append(
                f"| mean abs / max abs over the {int(easy.sum())} faces with mediapipe abs yaw <= 30, "
                f"not cut by the border | {cells} |"
            )
        lines += [
            "",
            "| photo | mirrored | yaw mp | yaw dlib68 | pitch mp | pitch dlib68 | roll mp | roll dlib68 | "
            "68-pt NME mp vs dlib | notes |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        partner = {(r["key"], r["mirrored"]): r for r in sel}
        for r, dd in zip(sel, d, strict=True):
            notes = []
            if abs(dd[0]) > LIMIT:
                notes.append(f"**yaw differs by {abs(dd[0]):.1f}**")
                other = partner.get((r["key"], not r["mirrored"]))
                for key, label in (("mp", "mediapipe"), ("dlib", "dlib68")):
                    if other is not None and abs(r[key][0] + other[key][0]) > LIMIT:
                        notes.append(
                            f"{label} disagrees with itself on the mirror by {abs(r[key][0] + other[key][0]):.1f}"
                        )
            if r["cut"]:
                notes.append("face cut by the image border")
            if r["box"] == "ours":
                notes.append("HOG found no face: our box")
            if abs(r["mp"][0]) > 30:
                notes.append("|yaw| > 30")
            lines.append(
                f"| {r['photo']} | {'yes' if r['mirrored'] else ''} | {r['mp'][0]:.1f} | {r['dlib'][0]:.1f} | "
                f"{r['mp'][1]:.1f} | {r['dlib'][1]:.1f} | {r['mp'][2]:.1f} | {r['dlib'][2]:.1f} | {r['nme']:.3f} | "
                f"{'; '.join(notes)} |"
            )
    lines += [
        "",
        "## Mirror consistency of each estimator (no second estimator needed)",
        "",
        "`|yaw(photo) + yaw(mirror)|` in degrees: 0 for a perfectly symmetric estimator.",
        "",
        "| estimator | split | mean | median | max |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("mp", "mediapipe"), ("dlib", "dlib68")):
        for cal, split in ((False, "report"), (True, "calibration")):
            c = mirror_consistency([r for r in rows if r["calibration"] == cal], key)
            if len(c):
                lines.append(f"| {label} | {split} | {c.mean():.2f} | {np.median(c):.2f} | {c.max():.2f} |")
    lines += [
        "",
        "## PnP point sets (candidates; only the calibration column was used to choose)",
        "",
        "| point set | calib. yaw mean abs / max | calib. pitch mean abs | calib. roll mean abs | "
        "report yaw mean abs / max | report pitch mean abs | report roll mean abs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in cands.items():
        cells = []
        for cal in (True, False):
            if cal in c:
                cells += [f"{c[cal]['mean'][0]:.2f} / {c[cal]['max'][0]:.2f}", f"{c[cal]['mean'][1]:.2f}"]
                cells.append(f"{c[cal]['mean'][2]:.2f}")
            else:
                cells += ["-", "-", "-"]
        lines.append(f"| `{name}`{' (default)' if name == DEFAULT_POINT_SET else ''} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Expression ratios vs mediapipe blendshapes (all faces, Spearman rank correlation)",
        "",
        "A ratio and a blendshape score measure related things on different scales: compare them as correlations.",
        "",
        "A mirrored copy is nearly the same face: the second column counts each face once.",
        "",
        "| dlib68 ratio | mediapipe group | expected sign | Spearman rho, photos + mirrors | rho, photos only |",
        "|---|---|---|---|---|",
    ]
    originals = correlations([r for r in rows if not r["mirrored"]])
    for (ratio, group, sign, rho, n), (*_, rho1, n1) in zip(correlations(rows), originals, strict=True):
        lines.append(f"| {ratio} | {group} | {'+' if sign > 0 else '-'} | {rho:+.3f} (n={n}) | {rho1:+.3f} (n={n1}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="two photos and their mirrors, seconds (CI)")
    args = parser.parse_args()
    if args.quick:
        paths = [DATA / name for name in QUICK_PHOTOS]
    else:
        paths = sorted(p for p in DATA.rglob("*") if p.suffix in (".jpg", ".png"))
    rows = collect(paths)
    text = report(rows, args.quick)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
