"""One strict config layer for every YAML/JSON config (``build-dataset --config``, ``train --config``).

Two jobs, both before any work starts:

* **Reading**: :mod:`hifi_portrait.utils.config_files` (size-bounded, UTF-8; YAML without aliases, anchors, tags
  or duplicate keys, checked before construction; JSON without duplicate keys or ``NaN``).
* **Validating** (:class:`ConfigModel`): pydantic v2 models in strict mode. Every field has a type and a range;
  unknown keys are an error with a "did you mean" suggestion; ``bool`` fields take only real booleans (YAML
  ``true``/``false``; PyYAML also reads ``yes``/``no``/``on``/``off`` as booleans), never ``1`` or ``"maybe"``;
  ``int`` fields refuse booleans and floats; ``float`` fields take integers, numeric strings (PyYAML reads
  ``1e-4`` as a string) and refuse ``nan``/``inf``. Construction, :meth:`ConfigModel.from_dict` and attribute
  assignment all validate, and raise :class:`~hifi_portrait.errors.ConfigError` naming the field (and the line,
  or the command-line option, it came from).

pydantic was chosen over extending our own checker: strict types, ranges, nan/inf refusal and assignment
validation are declared per field (one line each) and enforced by a tested library, not re-implemented per loader.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from hifi_portrait.errors import ConfigError
from hifi_portrait.utils.config_files import Origins, parse_value, read_config_file, short_repr

#: Most problems listed in one error message.
MAX_LISTED_ERRORS = 5


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str] | None, origins: Origins | None = None, min_parts: int = 1
) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values read by :func:`parse_value`) to ``data`` in place.

    Raises:
        ConfigError: an override without ``=``, with fewer than ``min_parts`` dotted parts, or below a value that
            is not a mapping.
    """
    for item in overrides or []:
        dotted, sep, raw = item.partition("=")
        keys = tuple(part.strip() for part in dotted.split("."))
        if not sep or len(keys) < min_parts or not all(keys):
            example = "section.key=value (e.g. optim.learning_rate=1e-4)" if min_parts > 1 else "key=value"
            raise ConfigError(f"--set: override {short_repr(item)} must look like {example}")
        set_path(data, keys, parse_value(raw, f"--set {item}"), origins, f"--set {item}")
    return data


def set_path(data: dict[str, Any], keys: tuple[str, ...], value: Any, origins: Origins | None, origin: str) -> None:
    """``data[k0][k1]...[kn] = value``, creating mappings on the way; records ``origin`` for the path."""
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys[: depth + 1])} is not a mapping, cannot set {keys[-1]!r}")
        node = child
    node[keys[-1]] = value
    if origins is not None:
        origins[keys] = origin


# ---------------------------------------------------------------------------------------------------- models
def _number_from_string(value: Any) -> Any:
    """PyYAML reads ``1e-4`` (no dot) as a string: accept a string that is clearly a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


_IMPORT_SPEC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def _check_import_spec(value: str) -> str:
    if not _IMPORT_SPEC.fullmatch(value):
        raise ValueError("must look like 'package.module:function' (a module path, a colon, a name)")
    return value


#: ``"package.module:name"``: user code imported (and run) by the builder or the trainer; checked for form here.
ImportSpec = Annotated[str, AfterValidator(_check_import_spec)]

#: A float field: also takes ints and numeric strings; ``nan``/``inf`` are refused by the models' config.
Float = Annotated[float, BeforeValidator(_number_from_string)]

_TYPE_WORDS = {
    "int_type": "int",
    "int_from_float": "int",
    "float_type": "float (a number)",
    "bool_type": "bool (true or false)",
    "string_type": "str (text)",
    "list_type": "a list",
    "dict_type": "a mapping of keys to values",
    "model_type": "a mapping of keys to values",
}
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


class ConfigModel(BaseModel):
    """Base of every config section: strict types, ranges, unknown keys refused, validated on assignment.

    Subclasses set ``_docs`` (where the keys are documented) and, for a top level made of sections,
    ``_sections = True`` (unknown top-level keys are then called sections in messages).
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        validate_assignment=True,
        validate_default=False,
        revalidate_instances="never",
    )
    _docs: ClassVar[str] = ""
    _sections: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, data: Any) -> Any:
        """A section left empty in YAML (``optim:`` with every key commented out) reads as null: the defaults."""
        return {} if data is None else data

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, type(self), "config", {})) from None

    # as pydantic's RootModel does: a plain wrapper, so nested sections are validated by the core (with full paths)
    # and never through this __init__
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, type(self), "config", {})) from None

    @classmethod
    def from_dict(cls, data: Any, source: str = "config", origins: Origins | None = None) -> Any:
        """Validate a nested mapping; ``source`` (a file name) and ``origins`` (key lines) name it in errors."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: the top level must be a mapping of keys to values, got {type(data).__name__} "
                f"{short_repr(data)}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, cls, source, origins or {})) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every value, defaults included (YAML/JSON-serializable)."""
        return self.model_dump(mode="python")


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any]:
    """The model owning the last element of ``loc`` and that field's info (``None`` where not a model field)."""
    owner: type[BaseModel] | None = model
    info = None
    for part in loc:
        if owner is None or not isinstance(part, str) or part not in owner.model_fields:
            return (owner if part == loc[-1] else None), None
        info = owner.model_fields[part]
        if part == loc[-1]:
            return owner, info
        annotation = info.annotation
        owner = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return owner, info


def _problem(error: Mapping[str, Any], model: type[ConfigModel]) -> tuple[tuple[str, ...], str]:
    loc = tuple(str(part) for part in error["loc"])
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    name = ".".join(loc) or "the top level"
    owner, info = _field_at(model, loc)
    if kind == "extra_forbidden":
        known = list(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        if len(loc) == 1:
            what = "section" if model._sections else "key"
            text = f"unknown {what} {loc[0]!r}.{hint} Known {what}s: {', '.join(known)}."
        else:
            text = f"unknown key {loc[-1]!r} in section {'.'.join(loc[:-1])!r}.{hint} Known keys: {', '.join(known)}."
        return loc, text
    if kind == "invalid_key":
        return loc, f"keys must be names (text), got {short_repr(loc[-1])} in {'.'.join(loc[:-1]) or 'the top level'}"
    nullable = info is not None and _allows_none(info.annotation)
    or_null = " or null" if nullable else ""
    if kind == "model_type":
        what = "section" if len(loc) == 1 and model._sections else "key"
        text = f"{what} {name!r} must be a mapping of keys to values{or_null}, got {short_repr(value)}"
    elif kind in _TYPE_WORDS:
        text = f"{name} must be {_TYPE_WORDS[kind]}{or_null}, got {short_repr(value)} ({type(value).__name__})"
    elif kind == "finite_number":
        text = f"{name} must be a finite number, got {short_repr(value)}"
    elif kind == "literal_error":
        text = f"{name} must be one of {ctx.get('expected', '?')}; got {short_repr(value)}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        text = f"{name} must be {_range_text(info, ctx)}{or_null}, got {short_repr(value)}"
    elif kind in ("string_too_long", "too_long", "string_too_short", "too_short", "string_pattern_mismatch"):
        text = f"{name} {error['msg'].lower()}, got {short_repr(value)}"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        text = f"{name}: {message}" + (f", got {short_repr(value)}" if loc and value is not None else "")
    description = getattr(info, "description", None)
    if description and kind != "model_type":
        text += f" ({name.rsplit('.', 1)[-1]}: {description})"
    return loc, text


def _range_text(info: Any, ctx: Mapping[str, Any]) -> str:
    """``"in [0, 1]"``, ``"in (0, 1)"``, ``">= 1"`` from a field's bounds (or the failed one from ``ctx``)."""
    bounds = field_bounds(info) or {k: v for k, v in ctx.items() if k in _BOUNDS}
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = (bounds["le"], "]") if "le" in bounds else (bounds["lt"], ")") if "lt" in bounds else None
    if low and high:
        return f"in {low[0]}{_num(low[1])}, {_num(high[0])}{high[1]}"
    return " and ".join(f"{_BOUNDS[k]} {_num(v)}" for k, v in bounds.items()) or "in range"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def field_bounds(info: Any) -> dict[str, Any]:
    """``{"ge"|"gt"|"le"|"lt": bound}`` of a field, also from an ``Annotated`` type inside ``X | None``."""
    found: dict[str, Any] = {}

    def visit(items: Iterable[Any]) -> None:
        for item in items:
            for key in _BOUNDS:
                if (bound := getattr(item, key, None)) is not None:
                    found.setdefault(key, bound)
            if hasattr(item, "metadata") and isinstance(item.metadata, list):
                visit(item.metadata)

    visit(getattr(info, "metadata", []))
    stack = [getattr(info, "annotation", None)]
    while stack:
        annotation = stack.pop()
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Annotated:
            visit(args[1:])
            stack.append(args[0])
        elif args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
            stack.extend(args)
    return found


def _allows_none(annotation: Any) -> bool:
    return annotation is type(None) or type(None) in typing.get_args(annotation)


def describe_errors(exc: ValidationError, model: type[ConfigModel], source: str, origins: Origins) -> str:
    """One message for a pydantic ``ValidationError``: each problem with its field, line or option, and value."""
    lines = []
    errors = exc.errors(include_url=False)
    for error in errors[:MAX_LISTED_ERRORS]:
        loc, text = _problem(error, model)
        origin = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), source)
        lines.append(f"{origin}: {text}")
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more problem(s)")
    docs = f" (see {model._docs})" if model._docs else ""
    return "\n".join(lines) + docs


def load_model(
    model: type[ConfigModel],
    path: str | Path | None,
    overrides: Iterable[tuple[tuple[str, ...], Any, str]] = (),
    set_overrides: Iterable[str] | None = None,
    min_parts: int = 1,
) -> Any:
    """Read ``path`` (or nothing: defaults), apply overrides, validate: the one entry point of both loaders.

    Args:
        model: the top-level config model.
        path: YAML/JSON file, or ``None``.
        overrides: ``(key path, value, origin)`` triples, e.g. from command-line options (``origin`` names the
            option in errors).
        set_overrides: ``dotted.key=value`` strings (``--set``), values read as YAML.
        min_parts: dotted parts a ``--set`` key needs (2 for ``section.key``).
    """
    data: dict[str, Any] = {}
    origins: Origins = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data, origins = read_config_file(path)
    for keys, value, origin in overrides:
        set_path(data, keys, value, origins, origin)
    apply_overrides(data, set_overrides, origins, min_parts=min_parts)
    return model.from_dict(data, source=source, origins=origins)


# ---------------------------------------------------------------------------------------------------- docs
def _type_text(info: Any) -> str:
    annotation = info.annotation
    names = []
    for arg in (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else [annotation]
    ):
        while typing.get_origin(arg) is typing.Annotated:
            arg = typing.get_args(arg)[0]
        if arg is type(None):
            names.append("null")
        elif typing.get_origin(arg) is typing.Literal:
            names.append(" \\| ".join(str(v) for v in typing.get_args(arg)))
        else:
            names.append(getattr(typing.get_origin(arg) or arg, "__name__", str(arg)))
    return " or ".join(names)


def reference_table(model: type[BaseModel], prefix: str = "") -> str:
    """A Markdown table of every key of a config model: type, range, default, meaning (for the docs)."""
    rows = [] if prefix else ["| key | type | range | default | meaning |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.append(reference_table(annotation, f"{prefix}{name}."))
            continue
        bounds = field_bounds(info)
        span = _range_text(info, {}) if bounds else ""
        default = info.get_default(call_default_factory=True)
        rows.append(
            f"| `{prefix}{name}` | {_type_text(info)} | {span.removeprefix('in ')} | `{json.dumps(default)}` "
            f"| {info.description or ''} |"
        )
    return "\n".join(rows)
