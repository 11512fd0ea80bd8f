"""3D-aware target landmarks: the references' face shape with the pose and expression the user asks for.

Public API::

    from hifi_portrait.landmarks import fit_identity_shape, make_target, generate_landmarks, render_map, Placement

    shape = fit_identity_shape(analyses)                     # FaceAnalysis list (or (478, 3) arrays) of one person
    target = make_target(yaw=30, pitch=-10, expression="smile:0.7")   # or blendshapes={...}, or driver=analysis
    gen = generate_landmarks(shape, target, size=(832, 1216), placement=Placement(center=(0.5, 0.45)))
    cond = render_map(gen, "hifi")                           # or "instantid", "mediapipe", "mesh"

Method, camera model, styles and limits: docs/landmarks.md.
"""

from hifi_portrait.landmarks.expression import (
    BLENDSHAPE_NAMES,
    PRESETS,
    expression_basis,
    parse_expression,
    preset_scores,
    scores_to_vector,
)
from hifi_portrait.landmarks.generate import (
    GeneratedLandmarks,
    Placement,
    TargetAttributes,
    generate_landmarks,
    make_target,
)
from hifi_portrait.landmarks.geometry import PinholeCamera, pose_from_rotation, rotation_from_pose
from hifi_portrait.landmarks.render import STYLES, overlay, render_map, warp_reference
from hifi_portrait.landmarks.shape import IdentityShape, align_to_canonical, fit_identity_shape, to_model_space

#: Alias of :data:`PRESETS` (name -> blendshape scores at intensity 1).
EXPRESSION_PRESETS = PRESETS

__all__ = [
    "BLENDSHAPE_NAMES",
    "EXPRESSION_PRESETS",
    "PRESETS",
    "STYLES",
    "GeneratedLandmarks",
    "IdentityShape",
    "PinholeCamera",
    "Placement",
    "TargetAttributes",
    "align_to_canonical",
    "expression_basis",
    "fit_identity_shape",
    "generate_landmarks",
    "make_target",
    "overlay",
    "parse_expression",
    "pose_from_rotation",
    "preset_scores",
    "render_map",
    "rotation_from_pose",
    "scores_to_vector",
    "to_model_space",
    "warp_reference",
]
