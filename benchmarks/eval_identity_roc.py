"""Same-person vs different-person separation of the evaluation recognizers on labelled real photos.

Usage::

    python benchmarks/eval_identity_roc.py [--ids tests/data/ids] [--insightface DIR] [--out benchmarks/results]
    python benchmarks/eval_identity_roc.py --quick   # seconds: 2 photos of 2 people + 1 distractor, no files (CI)

Every photo of ``--ids`` (one folder per person; ``_distractors/`` = one photo per extra person) is analysed;
every pair is labelled same/different person; the ROC AUC (Mann-Whitney) of the cosine similarity is reported per
recognizer, with the similarity ranges. Writes ``eval_identity_roc.{md,json}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from hifi_portrait.evaluation import Evaluator, cosine_similarity, roc_auc

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=Path, default=ROOT / "tests" / "data" / "ids")
    parser.add_argument("--insightface", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="seconds: smallest sizes, one round (CI checks it runs)")
    args = parser.parse_args()
    if args.quick:
        import tempfile

        args.out = Path(tempfile.mkdtemp(prefix="hp-roc-"))  # the committed results stay as they are

    from hifi_portrait.face import FaceAnalyzer, InsightFaceEmbedder, QualityConfig

    analyzer = FaceAnalyzer(quality=QualityConfig(on_unusable="warn"))
    recognizers = [analyzer.embedder] + ([InsightFaceEmbedder(args.insightface)] if args.insightface else [])
    evaluator = Evaluator(analyzer=analyzer, recognizers=recognizers, progress=False)
    photos = []
    for path in sorted(args.ids.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        person = path.stem if path.parent.name == "_distractors" else path.parent.name
        photos.append((person, path))
    if args.quick:
        people = sorted({p for p, path in photos if path.parent.name != "_distractors"})[:2]
        photos = [x for p in people for x in photos if x[0] == p][:4] + [
            x for x in photos if x[1].parent.name == "_distractors"
        ][:1]
    t0 = time.perf_counter()
    analysed = [(person, path, evaluator.analyze(path)) for person, path in photos]
    seconds = time.perf_counter() - t0
    failed = [str(p.relative_to(args.ids)) for _, p, a in analysed if a.face is None]
    usable = [(person, a) for person, _, a in analysed if a.face is not None]
    report = {
        "photos": len(photos),
        "people": len({p for p, _ in photos}),
        "faces_detected": len(usable),
        "detection_failures": failed,
        "analysis_seconds_per_photo": seconds / max(len(photos), 1),
        "recognizers": {},
    }
    for rec in evaluator.recognizers:
        scores, labels = [], []
        for (pa, a), (pb, b) in itertools.combinations(usable, 2):
            scores.append(float(cosine_similarity(a.identity[rec.name], b.identity[rec.name])[0, 0]))
            labels.append(pa == pb)
        s, lab = np.array(scores), np.array(labels)
        report["recognizers"][rec.name] = {
            "roc_auc": roc_auc(s, lab),
            "positive_pairs": int(lab.sum()),
            "negative_pairs": int((~lab).sum()),
            "same_person_sim_min_median": [float(s[lab].min()), float(np.median(s[lab]))],
            "different_person_sim_median_max": [float(np.median(s[~lab])), float(s[~lab].max())],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_identity_roc.json").write_text(json.dumps(report, indent=2))
    ids_name = args.ids.relative_to(ROOT) if args.ids.is_relative_to(ROOT) else args.ids
    lines = [
        "# Evaluation recognizers: same vs different person on labelled real photos",
        "",
        f"`python benchmarks/eval_identity_roc.py` on `{ids_name}`: "
        f"{report['photos']} photos of {report['people']} people, {report['faces_detected']} faces detected "
        f"({report['analysis_seconds_per_photo']:.2f} s/photo analysis on this CPU).",
        "",
        "| recognizer | ROC AUC | same-person pairs | different-person pairs | same: min / median "
        "| different: median / max |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["recognizers"].items():
        lines.append(
            f"| {name} | {r['roc_auc']:.4f} | {r['positive_pairs']} | {r['negative_pairs']} | "
            f"{r['same_person_sim_min_median'][0]:.3f} / {r['same_person_sim_min_median'][1]:.3f} | "
            f"{r['different_person_sim_median_max'][0]:.3f} / {r['different_person_sim_median_max'][1]:.3f} |"
        )
    if failed:
        lines += ["", f"No usable face in: {', '.join(failed)}"]
    (args.out / "eval_identity_roc.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
