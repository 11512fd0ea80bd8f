"""Evaluation of identity-preserving portrait generation, for our outputs and any other method's.

Public API::

    from hifi_portrait.evaluation import Evaluator, load_manifest, write_report

    result = Evaluator().evaluate(load_manifest("bench.yaml"), "outputs/ours", method="ours")
    write_report(result, "eval/ours")

Metric functions take arrays and are usable on their own (see docs/evaluation.md for their definitions):
identity (:func:`cosine_similarity`, :func:`identity_similarity`, :func:`copy_paste_score`, :func:`roc_auc`),
control (:func:`pose_error`, :func:`expression_error`, :func:`landmark_nme`; the independent dlib 68-point
measurement :class:`Dlib68Estimator`, :func:`pose_from_68`, :func:`expression_ratios`), sets
(:func:`fid_from_features`, :func:`kid_from_features`, :func:`mean_pairwise_dissimilarity`). Model-dependent parts
load only from local files: :class:`ClipScorer` (CLIP-T, diversity), :func:`load_fid_inception` (FID/KID).
"""

from hifi_portrait.evaluation.clip_score import ClipScorer
from hifi_portrait.evaluation.control import EYE_INDICES, expression_error, landmark_nme, pose_error
from hifi_portrait.evaluation.distribution import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    mean_pairwise_dissimilarity,
    mmd2_unbiased,
)
from hifi_portrait.evaluation.dlib68 import Dlib68Estimator, Dlib68Measurement, expression_ratios, pose_from_68
from hifi_portrait.evaluation.identity import (
    copy_paste_over_references,
    copy_paste_score,
    cosine_similarity,
    identity_similarity,
    roc_auc,
)
from hifi_portrait.evaluation.inception import FIDInceptionV3, inception_features, load_fid_inception
from hifi_portrait.evaluation.manifest import (
    Entry,
    Manifest,
    Target,
    load_manifest,
    manifest_from_folders,
    parse_manifest,
    resolve_generated,
    target_from_generated_landmarks,
)
from hifi_portrait.evaluation.report import control_table, markdown_table, write_comparison, write_report
from hifi_portrait.evaluation.runner import EvaluationResult, Evaluator

__all__ = [
    "EYE_INDICES",
    "ClipScorer",
    "Dlib68Estimator",
    "Dlib68Measurement",
    "Entry",
    "EvaluationResult",
    "Evaluator",
    "FIDInceptionV3",
    "Manifest",
    "Target",
    "control_table",
    "copy_paste_over_references",
    "copy_paste_score",
    "cosine_similarity",
    "expression_error",
    "expression_ratios",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "identity_similarity",
    "inception_features",
    "kid_from_features",
    "landmark_nme",
    "load_fid_inception",
    "load_manifest",
    "manifest_from_folders",
    "markdown_table",
    "mean_pairwise_dissimilarity",
    "mmd2_unbiased",
    "parse_manifest",
    "pose_error",
    "pose_from_68",
    "resolve_generated",
    "roc_auc",
    "target_from_generated_landmarks",
    "write_comparison",
    "write_report",
]
