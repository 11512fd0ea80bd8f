"""Captions: a sentence from the analysed attributes (pose, expression) by default, or a user-supplied model.

A captioning model is plugged in with ``captioner: "package.module:function"`` in the config: the function is
called as ``function(image, record) -> str`` with the ``(H, W, 3)`` uint8 photo and the image's metadata record
(pose, blendshapes, ...). It may also be a class, instantiated once with no arguments, whose instances are callable.
The spec is resolved, and its signature checked, before the build starts; note that this imports and runs user code.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hifi_portrait.errors import ConfigError

Captioner = Callable[[np.ndarray, Mapping[str, Any]], str]


def describe_pose(yaw: float, pitch: float, roll: float) -> str:
    """Words for a head pose in degrees (sign convention of :mod:`hifi_portrait.face.types`)."""
    parts = []
    if abs(yaw) < 12 and abs(pitch) < 12:
        parts.append("facing the camera")
    else:
        if abs(yaw) >= 12:
            side = "right" if yaw > 0 else "left"
            amount = "in profile" if abs(yaw) > 55 else "turned" if abs(yaw) > 25 else "slightly turned"
            parts.append(f"head {amount} to the {side}" if amount != "in profile" else f"in profile facing {side}")
        if abs(pitch) >= 12:
            parts.append("looking up" if pitch > 0 else "looking down")
    if abs(roll) >= 15:
        parts.append("head tilted")
    return ", ".join(parts)


def describe_expression(blend: Mapping[str, float]) -> str:
    """Words for an expression from mediapipe blendshape scores in ``[0, 1]``."""

    def both(name: str) -> float:
        return 0.5 * (blend.get(f"{name}Left", 0.0) + blend.get(f"{name}Right", 0.0))

    smile, jaw, blink = both("mouthSmile"), blend.get("jawOpen", 0.0), both("eyeBlink")
    words = []
    if smile > 0.5:
        words.append("smiling broadly" if jaw > 0.25 else "smiling")
    elif smile > 0.2:
        words.append("with a slight smile")
    elif jaw > 0.35:
        words.append("with the mouth open")
    elif both("mouthFrown") > 0.3:
        words.append("frowning")
    else:
        words.append("with a neutral expression")
    if blink > 0.55:
        words.append("eyes closed")
    if blend.get("browInnerUp", 0.0) > 0.5:
        words.append("eyebrows raised")
    return ", ".join(words)


def template_caption(record: Mapping[str, Any]) -> str:
    """``"a photo of a person, <pose>, <expression>"`` from a record with ``pose`` and ``blendshapes``."""
    pose = record["pose"]
    return f"a photo of a person, {describe_pose(pose['yaw'], pose['pitch'], pose['roll'])}, " + describe_expression(
        record.get("blendshapes", {})
    )


def load_captioner(spec: str | None) -> Captioner | None:
    """Import ``"package.module:callable"`` (a function, or a class instantiated once); ``None`` -> ``None``.

    This imports and runs user code (the module's top level, and a class's ``__init__``): it is meant for the
    user's own config. The callable's signature is checked with :func:`inspect.signature` (it must accept
    ``(image, record)``) before any photo is analysed; it is not called here.

    Raises:
        ConfigError: malformed spec, module not importable (or failing on import), name missing, not a callable,
            or a callable that does not take ``(image, record)``.
    """
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"captioner {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"captioner {spec!r} could not be loaded ({exc}); check the module is installed") from None
    except Exception as exc:  # the user's module failed on import
        raise ConfigError(
            f"captioner {spec!r}: importing {module_name} failed ({type(exc).__name__}: {exc})"
        ) from None
    if not hasattr(module, attr):
        raise ConfigError(f"captioner {spec!r} could not be loaded: {module_name} has no {attr!r}")
    obj = getattr(module, attr)
    if isinstance(obj, type):
        _check_signature(obj, spec, (), f"class {attr} must be constructible with no arguments")
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(f"captioner {spec!r}: {attr}() failed ({type(exc).__name__}: {exc})") from None
    if not callable(obj):
        raise ConfigError(f"captioner {spec!r} is a {type(obj).__name__}, not a function (image, record) -> str")
    _check_signature(obj, spec, (None, None), "must take (image, record) and return a caption string")
    return obj


def _check_signature(obj: Any, spec: str, args: tuple[Any, ...], need: str) -> None:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        raise ConfigError(
            f"captioner {spec!r}: the signature of {obj!r} cannot be inspected (a builtin?); it {need}: wrap it in a "
            "Python function def caption(image, record) -> str"
        ) from None
    try:
        signature.bind(*args)
    except TypeError:
        raise ConfigError(f"captioner {spec!r} has the signature {signature}, but it {need}") from None
