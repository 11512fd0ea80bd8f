"""A set of reference analyses of (supposedly) one person: similarity matrix, outliers, fused identity."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hifi_portrait.errors import ConfigError, NoUsableReferencesError
from hifi_portrait.face.identity import l2_normalize
from hifi_portrait.face.types import FaceAnalysis

logger = logging.getLogger(__name__)

#: Cosine similarity above which two unit identity vectors of a model are probably the same person (FaceSet's link
#: between references). dlib: calibrated by benchmarks/identity_calibration.py on the calibration half (20 people)
#: of tests/data/calib + tests/data/ids: the threshold that flags the most impostors (a photo of someone else among
#: 2-4 photos of a person) while flagging at most 5 % of the genuine photos: 100 % flagged, 0.2 % genuine flagged;
#: held-out half: 100 %, 0 %. Same-person pairs reach down to 0.895 and different people up to 0.936 on those
#: photos, so a single pair is never proof either way (clustering uses average linkage for that reason).
SAME_PERSON_THRESHOLDS = {"dlib-resnet-128": 0.905}
#: Threshold for insightface ArcFace models (``insightface-*``), the usual ArcFace verification range: NOT
#: calibrated here (no ArcFace model files offline).
ARCFACE_THRESHOLD = 0.35


def same_person_threshold(identity_model: str) -> float:
    """The default same-person cosine threshold of an identity model (see :data:`SAME_PERSON_THRESHOLDS`)."""
    if identity_model in SAME_PERSON_THRESHOLDS:
        return SAME_PERSON_THRESHOLDS[identity_model]
    if identity_model.startswith("insightface"):
        return ARCFACE_THRESHOLD
    raise ConfigError(f"no default same-person threshold for identity model {identity_model!r}; pass threshold=")


def _outliers(sim: np.ndarray, median: np.ndarray, thr: float) -> list[int]:
    """Indices outside the strictly largest group of references linked by similarity >= ``thr`` (see FaceSet)."""
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(sim >= thr, directed=False)
    sizes = np.bincount(labels)
    largest = sizes.max()
    if largest >= 2 and (sizes == largest).sum() == 1:
        return [int(i) for i in np.where(labels != sizes.argmax())[0]]
    return [int(i) for i in np.where(median < thr)[0]]


@dataclass
class FaceSet:
    """Reference analyses of one person and what is derived from them.

    Attributes:
        analyses: the references, in input order.
        similarity: ``(N, N)`` cosine similarity of their identity vectors.
        outliers: indices of references that are probably not the same person as the rest (needs N >= 3; with
            N = 2 nothing can be said about *which* one differs, so none is flagged and a warning is logged). The
            references are linked when their similarity reaches ``threshold``; the largest linked group is the
            person, the others are outliers. When no group is strictly the largest (e.g. two against two, or
            all different), a reference is an outlier when its median similarity to the others is below
            ``threshold``.
        threshold: the same-person cosine threshold used.
        fused_identity: ``(D,)`` unit vector: quality-weighted mean of the non-outlier identity vectors,
            renormalized (all of them if every reference is an outlier).
        identity_model: the model of every identity vector (mixing models is refused).
    """

    analyses: list[FaceAnalysis]
    similarity: np.ndarray
    outliers: list[int]
    threshold: float
    fused_identity: np.ndarray
    identity_model: str
    median_similarity: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def from_analyses(cls, analyses: list[FaceAnalysis], threshold: float | None = None) -> FaceSet:
        """Build the set: similarity matrix, outliers and fused identity.

        Raises:
            NoUsableReferencesError: ``analyses`` is empty.
            ConfigError: the analyses come from different identity models.
        """
        analyses = list(analyses)
        if not analyses:
            raise NoUsableReferencesError("no reference face to build a face set from; give at least one usable photo")
        models = {a.identity_model for a in analyses}
        if len(models) > 1:
            raise ConfigError(
                f"references were embedded with different identity models {sorted(models)}; re-run them "
                "with one FaceAnalyzer"
            )
        model = analyses[0].identity_model
        thr = same_person_threshold(model) if threshold is None else float(threshold)
        emb = np.stack([l2_normalize(a.identity) for a in analyses]).astype(np.float64)
        sim = emb @ emb.T
        n = len(analyses)
        if n >= 2:
            off = sim[~np.eye(n, dtype=bool)].reshape(n, n - 1)
            median = np.median(off, axis=1)
        else:
            median = np.ones(1)
        outliers: list[int] = []
        if n >= 3:
            outliers = _outliers(sim, median, thr)
        elif n == 2 and sim[0, 1] < thr:
            logger.warning(
                "the two references have identity similarity %.3f < %.3f: they are probably different people "
                "(add a third photo to tell which one differs)",
                sim[0, 1],
                thr,
            )
        keep = [i for i in range(n) if i not in outliers] or list(range(n))
        weights = np.array([max(analyses[i].quality.total, 1e-6) for i in keep])
        fused = l2_normalize((weights[:, None] * emb[keep]).sum(0))
        for i in outliers:
            logger.warning(
                "reference %s is probably not the same person as the others (median similarity %.3f < %.3f)",
                analyses[i].source,
                median[i],
                thr,
            )
        return cls(
            analyses=analyses,
            similarity=sim.astype(np.float32),
            outliers=outliers,
            threshold=thr,
            fused_identity=fused,
            identity_model=model,
            median_similarity=median.astype(np.float32),
        )

    def __len__(self) -> int:
        return len(self.analyses)

    @property
    def sources(self) -> list[str]:
        return [a.source for a in self.analyses]

    def without_outliers(self) -> FaceSet:
        """A new set without the outliers (recomputed). Raises NoUsableReferencesError if none would remain."""
        kept = [a for i, a in enumerate(self.analyses) if i not in self.outliers]
        if not kept:
            raise NoUsableReferencesError(
                "every reference was flagged as an outlier; check that the photos show one person"
            )
        return FaceSet.from_analyses(kept, threshold=self.threshold)

    # ------------------------------------------------------------------ serialization
    def summary(self) -> dict:
        """JSON-ready summary (sources, similarity matrix, outliers, threshold, model, per-face quality and pose)."""
        return {
            "identity_model": self.identity_model,
            "threshold": self.threshold,
            "sources": self.sources,
            "similarity": np.round(self.similarity.astype(np.float64), 6).tolist(),
            "median_similarity": np.round(self.median_similarity.astype(np.float64), 6).tolist(),
            "outliers": self.outliers,
            "outlier_sources": [self.analyses[i].source for i in self.outliers],
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``faceset.json`` + ``faceset.npz`` and every analysis as ``face_XXX.json/.npz`` in ``folder``."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        stems = []
        for i, analysis in enumerate(self.analyses):
            stem = f"face_{i:03d}"
            analysis.save(root / stem)
            stems.append(stem)
        meta = self.summary() | {"faces": stems}
        (root / "faceset.json").write_text(json.dumps(meta, indent=2))
        np.savez_compressed(
            root / "faceset.npz",
            similarity=self.similarity,
            fused_identity=self.fused_identity,
            median_similarity=self.median_similarity,
        )
        return root / "faceset.json"

    @classmethod
    def load(cls, folder: str | Path) -> FaceSet:
        """Read a set written by :meth:`save` (no recomputation: the stored values come back unchanged)."""
        root = Path(folder)
        meta = json.loads((root / "faceset.json").read_text())
        analyses = [FaceAnalysis.load(root / stem) for stem in meta["faces"]]
        with np.load(root / "faceset.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return cls(
            analyses=analyses,
            similarity=arrays["similarity"],
            outliers=[int(i) for i in meta["outliers"]],
            threshold=float(meta["threshold"]),
            fused_identity=arrays["fused_identity"],
            identity_model=meta["identity_model"],
            median_similarity=arrays["median_similarity"],
        )
