"""Captions: a sentence from the analysed attributes (pose, expression) by default, or a user-supplied model.

A captioning model is plugged in with ``captioner: "package.module:function"`` in the config: the function is
called as ``function(image, record) -> str`` with the ``(H, W, 3)`` uint8 photo and the image's metadata record
(pose, blendshapes, ...). It may also be a class, instantiated once with no arguments, whose instances are callable.
"""

from __future__ import annotations

import importlib
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

    Raises:
        ConfigError: malformed spec, module not importable, or name missing.
    """
    if not spec:
        return None
    if ":" not in spec:
        raise ConfigError(f"captioner {spec!r} must look like 'package.module:function'")
    module_name, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"captioner {spec!r} could not be loaded ({exc}); check the module is installed") from None
    return obj() if isinstance(obj, type) else obj
