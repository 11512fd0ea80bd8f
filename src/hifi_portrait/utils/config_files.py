"""Safe reading of config files (YAML or JSON), before anything is built from them.

A config file is a regular UTF-8 file of at most :data:`MAX_CONFIG_BYTES`. YAML is first scanned as a stream of
parser events, *before* anything is constructed, and refused (``ConfigError`` naming the file and line) if it has an
alias or anchor (``&a`` / ``*a``: the "billion laughs" expansion), an explicit tag (``!!python/object``,
``!!binary``, ``!!set`` ...), a duplicate key, a merge key (``<<``), a non-scalar key, more than one document,
nesting deeper than :data:`MAX_DEPTH` or more than :data:`MAX_ITEMS` entries in one mapping or list; only then is it
built by PyYAML's safe loader. JSON is refused on duplicate keys, ``NaN``/``Infinity``, excessive nesting and
oversized collections. Validation of the values is :mod:`hifi_portrait.utils.config`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml

from hifi_portrait.errors import ConfigError

#: Largest config file read (bytes); real configs are a few KiB.
MAX_CONFIG_BYTES = 1 << 20
#: Deepest nesting of mappings/lists in a config file (real configs use 3 levels).
MAX_DEPTH = 16
#: Most keys in one mapping / items in one list of a config file (real configs have tens).
MAX_ITEMS = 10_000
#: Where a value came from, by key path: ``"file.yaml, line 3"`` or ``"--set optim.learning_rate=1"``.
Origins = dict[tuple[str, ...], str]

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxdict = _short.maxtuple = _short.maxset = 4
_short.maxlevel = 2


def short_repr(value: Any) -> str:
    """``repr`` bounded in length and depth (safe for any parsed config value)."""
    return _short.repr(value)


# ---------------------------------------------------------------------------------------------------- reading
def read_config_text(path: str | Path, option: str = "--config") -> str:
    """The text of a config file: a regular file, at most :data:`MAX_CONFIG_BYTES`, UTF-8.

    Raises:
        ConfigError: missing, not a regular file (folder, FIFO, device), too large, unreadable or not UTF-8.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; pass an existing YAML or JSON file to {option}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"config file {path} cannot be read ({exc.strerror}); check the path and permissions"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"config file {path} is not a regular file (a folder, pipe or device); pass a YAML or JSON file"
        )
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is {info.st_size} bytes, more than the {MAX_CONFIG_BYTES} allowed for a config; "
            "is it the right file?"
        )
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check its permissions") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than the {MAX_CONFIG_BYTES} bytes allowed for a config")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML or JSON"
        ) from None


def read_config_file(path: str | Path, option: str = "--config") -> tuple[dict[str, Any], Origins]:
    """Parse a config file (``.json``: JSON, anything else: YAML) into a mapping and the line of every key.

    An empty file (or a YAML ``null``) is an empty mapping (all defaults).

    Raises:
        ConfigError: see :func:`read_config_text`, :func:`parse_yaml` and :func:`parse_json`.
    """
    path = Path(path)
    text = read_config_text(path, option)
    if path.suffix.lower() == ".json":
        data, origins = parse_json(text, str(path))
    else:
        data, origins = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys to values (key: value lines), "
            f"got {type(data).__name__} {short_repr(data)}"
        )
    return data, origins


#: PyYAML's safe loader (its C parser when libyaml is there): plain scalars, lists and mappings only.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _at(source: str, mark: Any) -> str:
    return f"{source}, line {mark.line + 1}" if mark is not None else source


@dataclasses.dataclass
class _Open:
    """An open YAML collection while scanning: a mapping (keys seen, with lines) or a list (items counted)."""

    mapping: bool
    path: tuple[str, ...]
    keys: dict[str, int] = dataclasses.field(default_factory=dict)
    expecting_key: bool = True
    key: str = ""
    items: int = 0


def scan_yaml_events(text: str, source: str) -> Origins:
    """Check a YAML text's parser events, before construction; returns the line of every mapping key path.

    Raises:
        ConfigError: alias, anchor, explicit tag, duplicate / merge / non-scalar key, several documents, nesting
            deeper than :data:`MAX_DEPTH`, a collection of more than :data:`MAX_ITEMS`, or a syntax error (each
            naming the line).
    """
    origins: Origins = {}
    stack: list[_Open] = []
    documents = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            where = _at(source, event.start_mark)
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise ConfigError(f"{where}: a config file holds one YAML document; remove the second '---'")
            elif isinstance(event, yaml.AliasEvent):
                raise ConfigError(
                    f"{where}: YAML aliases (*{event.anchor}) are not allowed in a config; write the value out"
                )
            elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
                _check_node(event, where)
                parent = stack[-1] if stack else None
                if parent is not None and parent.mapping and parent.expecting_key:
                    _add_key(parent, event, where, origins)
                    continue
                path = _child_path(parent, where) if parent is not None else ()
                if isinstance(event, yaml.CollectionStartEvent):
                    if len(stack) >= MAX_DEPTH:
                        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels; a config is not that deep")
                    stack.append(_Open(isinstance(event, yaml.MappingStartEvent), path))
            elif isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(f"{_at(source, mark)}: could not be parsed, not valid YAML ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} could not be parsed, not valid YAML ({exc})") from None
    return origins


def _check_node(event: Any, where: str) -> None:
    if event.anchor is not None:
        raise ConfigError(f"{where}: YAML anchors (&{event.anchor}) are not allowed in a config; write values out")
    if event.tag is not None:
        raise ConfigError(f"{where}: YAML tags ({event.tag}) are not allowed in a config; use plain values")


def _add_key(mapping: _Open, event: Any, where: str, origins: Origins) -> None:
    if not isinstance(event, yaml.ScalarEvent):
        raise ConfigError(f"{where}: mapping keys must be plain names, not lists or mappings")
    key = event.value
    if key == "<<":
        raise ConfigError(f"{where}: YAML merge keys (<<) are not allowed in a config")
    if key in mapping.keys:
        raise ConfigError(
            f"{where}: duplicate key {short_repr(key)} (first on line {mapping.keys[key]}); each key may appear once"
        )
    if len(mapping.keys) >= MAX_ITEMS:
        raise ConfigError(f"{where}: more than {MAX_ITEMS} keys in one mapping; is it a config?")
    mapping.keys[key] = event.start_mark.line + 1
    mapping.expecting_key, mapping.key = False, key
    origins[(*mapping.path, key)] = where


def _child_path(parent: _Open, where: str) -> tuple[str, ...]:
    """The key path of a value inside ``parent`` (a mapping's current key, or a list's index)."""
    if parent.mapping:
        parent.expecting_key = True
        return (*parent.path, parent.key)
    parent.items += 1
    if parent.items > MAX_ITEMS:
        raise ConfigError(f"{where}: more than {MAX_ITEMS} items in one list; is it a config?")
    return (*parent.path, str(parent.items - 1))


def parse_yaml(text: str, source: str) -> tuple[Any, Origins]:
    """Safely parse YAML: :func:`scan_yaml_events` first, then ``safe_load`` (plain values only)."""
    origins = scan_yaml_events(text, source)
    try:
        return yaml.load(text, Loader=_LOADER), origins  # a safe loader, and its events were checked above
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} could not be parsed, not valid YAML ({exc})") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. an integer of 5000 digits
        raise ConfigError(f"{source}: a value could not be read ({short_repr(str(exc))})") from None


def parse_json(text: str, source: str) -> tuple[Any, Origins]:
    """Parse JSON refusing duplicate keys, ``NaN``/``Infinity`` and nesting deeper than :data:`MAX_DEPTH`."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ConfigError(f"{source}{_json_line(text, key)}: duplicate key {short_repr(key)}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ConfigError(f"{source}: {name} is not a number a config accepts; use a finite number")

    if json_depth(text) > MAX_DEPTH:  # bound the nesting before json recurses
        raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels; a config is not that deep")
    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}, line {exc.lineno}: could not be parsed, not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{source}: a value could not be read ({short_repr(str(exc))})") from None
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)):
            if len(node) > MAX_ITEMS:
                raise ConfigError(f"{source}: more than {MAX_ITEMS} entries in one object or array; is it a config?")
            stack.extend(node.values() if isinstance(node, dict) else node)
    return data, {}


def json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside strings, found without parsing (so before ``json`` recurses)."""
    depth = current = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            current += 1
            depth = max(depth, current)
        elif char in "]}":
            current -= 1
    return depth


def _json_line(text: str, key: str) -> str:
    token = json.dumps(key)
    first = text.find(token)
    second = text.find(token, first + 1) if first >= 0 else -1
    return f", line {text.count(chr(10), 0, second) + 1}" if second >= 0 else ""


def parse_value(raw: str, source: str) -> Any:
    """One value given on the command line, read as YAML (``1e-4``, ``true``, ``[a, b]``) by the safe parser."""
    if not raw.strip():
        return None
    value, _ = parse_yaml(raw, source)
    return value
