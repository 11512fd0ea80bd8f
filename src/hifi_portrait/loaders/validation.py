"""Checks of untrusted weight-file headers, run before anything is allocated or built.

Used by the adapter loader (``adapter_file.py``) and the InstantID converter (``instantid.py``):

* :func:`strict_json`: JSON without duplicate keys, ``NaN``/``Infinity`` or runaway nesting;
* :func:`validate_config`: a model config is a JSON object (never a string: a string would be read by diffusers as
  a path or Hub id), with known keys only, each of the right type and within bounds (:data:`LIMITS`);
* :func:`check_dtype` / :func:`check_torch_dtype`: tensors are float16, bfloat16 or float32.

Every failure raises :class:`~hifi_portrait.errors.AdapterFormatError` naming the file and the field.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hifi_portrait.errors import AdapterFormatError
from hifi_portrait.utils.config_files import json_depth

__all__ = [
    "ALLOWED_DTYPES",
    "LIMITS",
    "Check",
    "boolean",
    "check_dtype",
    "check_torch_dtype",
    "choice",
    "integer",
    "int_list",
    "bool_list",
    "number",
    "short",
    "shown_key",
    "strict_json",
    "validate_config",
]

#: safetensors dtype names accepted in weight files, and their torch dtypes. Integer, bool, float64 and float8
#: tensors are refused: no trained weight of ours has them, and casting them silently hides a wrong file.
ALLOWED_DTYPES: dict[str, torch.dtype] = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}

#: Upper bounds on sizes read from a file header (they bound construction cost before the shapes are compared
#: with the tensors actually stored, which then bound memory by the file size).
LIMITS: dict[str, int] = {
    "id_tokens": 1024,  # num_tokens of the face refiner / ID attention / InstantID projection
    "width": 8192,  # any channel / hidden / embedding width
    "depth": 64,  # layers of a refiner or projection
    "levels": 8,  # UNet resolution levels of HiFi-Net
    "blocks_per_level": 16,
    "heads": 256,
    "patches": 4096,
    "ff_mult": 16,
    "ip_layers": 1024,  # ID attention layers listed in one file (SDXL has 70)
    "layer_name_chars": 256,
    "json_depth": 32,
    "json_chars": 1 << 20,  # one metadata JSON value (an SDXL adapter's largest, ip_attn_config, is ~10 KB)
}


class _Bad(ValueError):
    """A field failed its check (message completed with the file and field by the caller)."""


Check = Callable[[Any], Any]


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (values from a hostile file can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_key(key: Any, limit: int = 80) -> str:
    """A key as it is (a string), cut to ``limit`` characters, or the repr of a non-string key."""
    if not isinstance(key, str):
        return short(key, limit)
    return key if len(key) <= limit else key[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(lo: int, hi: int, nullable: bool = False) -> Check:
    """An int (not a bool, not a float such as ``2e9``) in ``[lo, hi]``; None too when ``nullable``."""

    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        if not _is_int(value):
            raise _Bad(f"must be an integer{' or null' if nullable else ''}, got {short(value)}")
        if not lo <= value <= hi:
            raise _Bad(f"must be between {lo} and {hi}, got {short(value)}")
        return value

    return check


def number(lo: float, hi: float, lo_open: bool = False) -> Check:
    """A finite int or float in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``)."""

    def check(value: Any) -> Any:
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise _Bad(f"must be a finite number, got {short(value)}")
        if value > hi or value < lo or (lo_open and value == lo):
            raise _Bad(f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {short(value)}")
        return value

    return check


def boolean() -> Check:
    def check(value: Any) -> Any:
        if not isinstance(value, bool):
            raise _Bad(f"must be true or false, got {short(value)}")
        return value

    return check


def choice(*values: Any) -> Check:
    def check(value: Any) -> Any:
        if isinstance(value, (bool, int, float)) or value not in values:
            raise _Bad(f"must be one of {', '.join(map(repr, values))}, got {short(value)}")
        return value

    return check


def _sequence(item: Check, min_len: int, max_len: int, what: str) -> Check:
    def check(value: Any) -> Any:
        if not isinstance(value, list):
            raise _Bad(f"must be a list of {what}, got {short(value)}")
        if not min_len <= len(value) <= max_len:
            raise _Bad(f"must have {min_len} to {max_len} entries, got {len(value)}")
        for i, v in enumerate(value):
            try:
                item(v)
            except _Bad as exc:
                raise _Bad(f"entry {i} {exc}") from None
        return tuple(value)

    return check


def int_list(lo: int, hi: int, min_len: int = 1, max_len: int = 8) -> Check:
    return _sequence(integer(lo, hi), min_len, max_len, "integers")


def bool_list(min_len: int = 1, max_len: int = 8) -> Check:
    return _sequence(boolean(), min_len, max_len, "booleans")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {short(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def strict_json(text: str, field: str, path: Path | str, hint: str = "") -> Any:
    """Parse the metadata string ``field`` of ``path``; raise :class:`AdapterFormatError` naming it when it is not
    strict JSON (syntax error, duplicate key, NaN/Infinity, integer of thousands of digits, nesting too deep) or
    longer than ``LIMITS["json_chars"]``."""
    if len(text) > LIMITS["json_chars"]:
        raise AdapterFormatError(
            f"{path}: metadata {field!r} is {len(text)} characters long, more than the {LIMITS['json_chars']} a "
            f"hifi-portrait config can need. {hint}".rstrip()
        )
    if json_depth(text) > LIMITS["json_depth"]:
        raise AdapterFormatError(
            f"{path}: metadata {field!r} is nested more than {LIMITS['json_depth']} levels deep; it is not a "
            f"hifi-portrait config. {hint}".rstrip()
        )
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, duplicates, constants, int digit limit
        raise AdapterFormatError(
            f"{path}: metadata {field!r} is not valid JSON ({short(str(exc), 120)}). {hint}".rstrip()
        ) from None


def _unknown(keys: list[str], known: list[str]) -> str:
    parts = []
    for key in sorted(keys)[:12]:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(shown_key(key, 40) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(parts) + (f" ... ({len(keys) - 12} more)" if len(keys) > 12 else "")


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {short(value)}")
    return value


def _string_list(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _Bad(f"must be a list of field names, got {short(value)}")
    return value


_PRIVATE: dict[str, Check] = {
    "_diffusers_version": _string,
    "_name_or_path": _string,
    "_use_default_values": _string_list,
}


def validate_config(
    config: Any,
    schema: dict[str, Check],
    field: str,
    path: Path | str,
    class_name: str | None = None,
    required: tuple[str, ...] = (),
    hint: str = "",
) -> dict[str, Any]:
    """Check a config parsed from metadata ``field`` of ``path`` against ``schema`` (``{key: check}``).

    Returns the config reduced to the schema's keys (lists of the schema turned into tuples); keys left out take the
    model's defaults unless listed in ``required``. diffusers' bookkeeping keys (``_class_name`` must equal
    ``class_name``, ``_diffusers_version``, ``_use_default_values``, ``_name_or_path``) are checked and dropped.

    Raises:
        AdapterFormatError: not a JSON object, an unknown or missing key, a value of the wrong type or out of bounds.
    """

    def fail(message: str) -> AdapterFormatError:
        return AdapterFormatError(f"{path}: {message}. {hint}".rstrip())

    if isinstance(config, str):
        raise fail(
            f"metadata {field!r} is a JSON string ({short(config)}), not a JSON object. Configs must be stored in "
            "the file itself: a string would be read as a path or a Hub id, which the loader never does"
        )
    if not isinstance(config, dict):
        raise fail(f"metadata {field!r} must be a JSON object, got {type(config).__name__} {short(config)}")
    unknown = [k for k in config if k not in schema and k not in _PRIVATE and k != "_class_name"]
    if unknown:
        raise fail(f"{field} has unknown keys: {_unknown(unknown, list(schema))}; known keys: {', '.join(schema)}")
    missing = [k for k in required if k not in config]
    if missing:
        raise fail(f"{field} lacks the required keys: {', '.join(missing)}")
    if "_class_name" in config and config["_class_name"] != class_name:
        raise fail(f"{field}._class_name is {short(config['_class_name'])}, expected {class_name!r}")
    clean = {}
    for key, value in config.items():
        check = schema.get(key) or _PRIVATE.get(key)
        if check is None:
            continue
        try:
            checked = check(value)
        except _Bad as exc:
            raise fail(f"{field}.{key} {exc}") from None
        if key in schema:
            clean[key] = checked
    return clean


def check_dtype(dtype: str, key: str, path: Path | str) -> torch.dtype:
    """The torch dtype of safetensors dtype name ``dtype`` of tensor ``key``, if float16/bfloat16/float32."""
    if dtype not in ALLOWED_DTYPES:
        raise AdapterFormatError(
            f"{path}: tensor {shown_key(key, 120)} is {dtype}; weights must be float16, bfloat16 or float32 (integer, "
            "bool, float64 and float8 tensors are refused rather than silently cast). Re-save the weights in one "
            "of these dtypes."
        )
    return ALLOWED_DTYPES[dtype]


def check_torch_dtype(tensor: torch.Tensor, key: str, path: Path | str) -> None:
    """Refuse a tensor that is not a dense float16/bfloat16/float32 tensor (for pickled checkpoints)."""
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type != "cpu":
        raise AdapterFormatError(
            f"{path}: tensor {shown_key(key, 120)} is not a dense CPU tensor ({tensor.layout}, {tensor.device}); "
            "weights must be plain dense tensors"
        )
    if tensor.dtype not in ALLOWED_DTYPES.values():
        raise AdapterFormatError(
            f"{path}: tensor {shown_key(key, 120)} is {tensor.dtype}; weights must be float16, bfloat16 or float32 "
            "(integer, bool, float64 tensors are refused rather than silently cast)"
        )
