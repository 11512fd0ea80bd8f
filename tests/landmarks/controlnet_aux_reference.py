"""controlnet_aux's own OpenPose and DWPose drawing functions, the reference the ``openpose`` styles must equal.

``controlnet_aux`` (a dev dependency, installed ``--no-deps`` by ``scripts/install.sh dev``) imports every detector
from its package ``__init__``, and those need torchvision and timm, which this project does not install. So the
package is mounted under a private name without running its ``__init__``: only ``open_pose/util.py`` (its body and
face drawing), ``dwpose/__init__.py`` (``draw_pose``) and ``dwpose/util.py`` are executed, unmodified.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np

_ALIAS = "_controlnet_aux_reference"


def _package_root() -> str:
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "controlnet_aux is not installed: it is a test dependency, `pip install --no-deps controlnet-aux==0.0.10` "
            "(scripts/install.sh dev does it)"
        )
    return spec.submodule_search_locations[0]


def _module(name: str):
    if _ALIAS not in sys.modules:
        package = types.ModuleType(_ALIAS)
        package.__path__ = [_package_root()]
        sys.modules[_ALIAS] = package
        open_pose = types.ModuleType(f"{_ALIAS}.open_pose")  # its __init__ imports the torchvision detectors
        open_pose.__path__ = [f"{_package_root()}/open_pose"]
        sys.modules[open_pose.__name__] = open_pose
    return importlib.import_module(f"{_ALIAS}.{name}")


def openpose_map(body: np.ndarray, face: np.ndarray, height: int, width: int, draw_body: bool = True) -> np.ndarray:
    """``open_pose.draw_poses`` of one person (body, no hands, face) from normalised ``(18, 2)`` / ``(70, 2)``
    keypoints (NaN body rows = missing), built as ``OpenposeDetector`` builds its ``PoseResult``."""
    util = _module("open_pose.util")
    keypoint = _module("open_pose.body").Keypoint
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if draw_body:
        body_kps = [None if np.isnan(x) else keypoint(x=float(x), y=float(y)) for x, y in body]
        canvas = util.draw_bodypose(canvas, body_kps)
    return util.draw_facepose(canvas, [keypoint(x=float(x), y=float(y)) for x, y in face])


def dwpose_map(body: np.ndarray, face: np.ndarray, height: int, width: int) -> np.ndarray:
    """``dwpose.draw_pose`` of one person from normalised ``(18, 2)`` / ``(68, 2)`` keypoints (NaN = missing), in the
    ``candidate`` / ``subset`` layout ``DWposeDetector`` passes it."""
    draw_pose = _module("dwpose").draw_pose
    subset = np.array([[-1 if np.isnan(x) else i for i, (x, _) in enumerate(body)]], dtype=np.float64)
    candidate = np.where(np.isnan(body), -1.0, body)
    pose = {
        "bodies": {"candidate": candidate, "subset": subset},
        "faces": face[None].astype(np.float64),
        "hands": np.zeros((0, 21, 2)),
    }
    return draw_pose(pose, height, width)


def detector_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(H, W)`` of the canvas the detectors draw on: controlnet_aux's own ``util.resize_image`` of a black image."""
    return _module("util").resize_image(np.zeros((height, width, 3), np.uint8), resolution).shape[:2]
