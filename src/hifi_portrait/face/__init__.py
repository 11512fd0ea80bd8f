"""Face analysis of reference photos: detection, 3D mesh and head pose, alignment, identity, mask, quality.

Public API::

    from hifi_portrait.face import FaceAnalyzer, FaceAnalysis, FaceSet, load_image

    analyzer = FaceAnalyzer()                      # default offline backends, models load lazily, reuse it
    faces = analyzer.detect(image)                 # [Detection(bbox, score, keypoints)], largest first
    fa = analyzer.analyze("photo.jpg")             # FaceAnalysis of the largest face (policy="largest")
    fas = analyzer.analyze_all("group.jpg")        # every face
    fset = FaceSet.from_analyses([fa, ...])        # similarity matrix, outliers, fused identity

Backends sit behind small protocols (:class:`FaceDetector`, :class:`Landmarker3D`, :class:`IdentityEmbedder`,
:class:`FaceMatting`); see docs/face_analysis.md.
"""

from hifi_portrait.face.alignment import ARCFACE_TEMPLATE, alignment_affine, umeyama_similarity
from hifi_portrait.face.analyzer import FaceAnalyzer
from hifi_portrait.face.detection import Detection, FaceDetector, RetinaFaceDetector
from hifi_portrait.face.face_set import FaceSet, same_person_threshold
from hifi_portrait.face.identity import DlibEmbedder, IdentityEmbedder, InsightFaceEmbedder
from hifi_portrait.face.matting import (
    MASK_METHODS,
    FaceMatting,
    LandmarkHullMatting,
    PersonMatting,
    SelfieHeadMatting,
    make_matting,
)
from hifi_portrait.face.mesh import Landmarker3D, MediaPipeLandmarker, MeshResult, pose_from_matrix
from hifi_portrait.face.quality import QualityConfig
from hifi_portrait.face.types import FaceAnalysis, HeadPose, QualityScore
from hifi_portrait.utils.image_io import load_image

__all__ = [
    "ARCFACE_TEMPLATE",
    "Detection",
    "DlibEmbedder",
    "FaceAnalysis",
    "FaceAnalyzer",
    "FaceDetector",
    "FaceMatting",
    "FaceSet",
    "HeadPose",
    "IdentityEmbedder",
    "InsightFaceEmbedder",
    "Landmarker3D",
    "LandmarkHullMatting",
    "MASK_METHODS",
    "MediaPipeLandmarker",
    "MeshResult",
    "PersonMatting",
    "QualityConfig",
    "QualityScore",
    "RetinaFaceDetector",
    "SelfieHeadMatting",
    "alignment_affine",
    "load_image",
    "make_matting",
    "pose_from_matrix",
    "same_person_threshold",
    "umeyama_similarity",
]
