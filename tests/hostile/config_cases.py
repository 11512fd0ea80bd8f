"""Generators of hostile config files for the bad-input corpus (tests/hostile/test_configs.py).

Every case is written at test time (no stored files). A case is ``(id, loader, make, expect)``: ``loader`` is
``"builder"`` (``hifi_portrait.data.load_config``) or ``"train"`` (``hifi_portrait.training.load_config``);
``make(folder)`` writes the config file and returns its path; ``expect`` is ``("error", pattern)`` (the loader
must raise ``ConfigError`` matching ``pattern``) or ``("ok", check)`` (``check(config)`` must hold).

Two families:

* :func:`field_cases`, generated from the config models themselves: for every field of both configs, values of a
  wrong type, values just outside each bound of its range (refused) and the bounds themselves (accepted).
* :func:`file_cases`, written by hand: the hostile files of issue 12 (billion laughs, duplicate keys, tags, merge
  keys, nan/inf, huge numbers, deep nesting, oversized and non-UTF-8 files, pipes and devices, ...).
"""

from __future__ import annotations

import json
import math
import os
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from hifi_portrait.data.config import BuilderConfig
from hifi_portrait.training.config import TrainingConfig
from hifi_portrait.utils.config_files import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_ITEMS

MODELS = {"builder": BuilderConfig, "train": TrainingConfig}
Case = tuple[str, str, Callable[[Path], Path], tuple[str, Any]]


def write(name: str, content: str | bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return make


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    return out


def get(config: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        config = getattr(config, key)
    return config


# ---------------------------------------------------------------------------------------------------- generated
def leaf_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, FieldInfo)`` of every non-section field of a config model, sections walked recursively."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaf_fields(annotation, (*prefix, name))
        else:
            yield (*prefix, name), info


def base_type(info: Any) -> Any:
    """The field's type without ``None``: int, float, bool, str, dict, list or a Literal."""
    annotation = info.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        annotation = args[0]
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return annotation
    return typing.get_origin(annotation) or annotation


def bounds(info: Any) -> dict[str, float]:
    """The field's range, from its own metadata or from an ``Annotated`` type (also inside ``X | None``)."""
    found = {}
    items = list(info.metadata)
    annotations = [info.annotation]
    while annotations:
        annotation = annotations.pop()
        if typing.get_origin(annotation) is typing.Annotated:
            items += typing.get_args(annotation)[1:]
            annotations.append(typing.get_args(annotation)[0])
        else:
            annotations += [a for a in typing.get_args(annotation) if a is not type(None)]
    for meta in items:
        for inner in [meta, *(getattr(meta, "metadata", None) or [])]:
            for key in ("ge", "gt", "le", "lt"):
                if getattr(inner, key, None) is not None:
                    found[key] = getattr(inner, key)
    return found


def allows_none(info: Any) -> bool:
    return type(None) in typing.get_args(info.annotation)


WRONG_TYPES: dict[Any, list[Any]] = {
    int: ["abc", True, 1.5, [1]],
    float: ["abc", True, [1.0], {"a": 1}],
    bool: ["maybe", 1, "true", None],
    str: [5, [1], {"a": 1}],
    dict: [[1, 2], "x", 3],
    list: ["x", 5, {"a": 1}],
}
#: accepted values next to the bounds need a partner value (min_refs <= max_refs)
PARTNERS = {("data", "min_refs"): ("max_refs", 64)}


def field_cases() -> list[Case]:
    cases: list[Case] = []
    for loader, model in MODELS.items():
        for path, info in leaf_fields(model):
            dotted = ".".join(path)
            kind = base_type(info)
            wrong = (
                ["not-a-choice", 3, True]
                if typing.get_origin(kind) is typing.Literal
                else [v for v in WRONG_TYPES[kind] if not (v is None and allows_none(info))]
            )
            for n, value in enumerate(wrong):
                cases.append(_case(f"{loader}-{dotted}-type{n}", loader, path, value, ("error", rf"{dotted} ")))
            if kind is float:
                for name, value in (("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)):
                    cases.append(_case(f"{loader}-{dotted}-{name}", loader, path, value, ("error", "finite number")))
            if kind is str and info.metadata:  # a bounded length
                cases.append(_case(f"{loader}-{dotted}-long", loader, path, "x" * 5000, ("error", dotted)))
            if kind in (int, float):
                cases += _range_cases(loader, path, kind, bounds(info))
    return cases


def _range_cases(loader: str, path: tuple[str, ...], kind: type, found: dict[str, float]) -> list[Case]:
    dotted = ".".join(path)
    step = 1 if kind is int else None
    cases = []
    for key, bound in found.items():
        below = key in ("ge", "gt")
        if key in ("gt", "lt"):
            refused = bound
        else:
            delta = step if step else max(abs(bound) * 1e-3, 1e-6)
            refused = bound - delta if below else bound + delta
        cases.append(_case(f"{loader}-{dotted}-{key}", loader, path, refused, ("error", rf"{dotted} must be in")))
        if key in ("ge", "le"):
            extra = PARTNERS.get(path)
            accepted = ("ok", lambda cfg, p=path, b=bound: get(cfg, p) == b)
            cases.append(_case(f"{loader}-{dotted}-at-{key}", loader, path, bound, accepted, extra))
    return cases


def _case(
    name: str, loader: str, path: tuple[str, ...], value: Any, expect: tuple[str, Any], partner: Any = None
) -> Case:
    data = nested(path, value)
    if partner is not None:
        data[path[0]][partner[0]] = partner[1]
    return name, loader, write("config.yaml", yaml.safe_dump(data)), expect


# ---------------------------------------------------------------------------------------------------- hand-written
def billion_laughs(levels: int = 12, width: int = 10) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _fifo(folder: Path) -> Path:
    path = folder / "pipe.yaml"
    os.mkfifo(path)
    return path


def _folder(folder: Path) -> Path:
    path = folder / "config.yaml"
    path.mkdir()
    return path


def _device(folder: Path) -> Path:
    return Path("/dev/zero")


def _missing(folder: Path) -> Path:
    return folder / "nope.yaml"


def _is(path: tuple[str, ...], value: Any) -> Callable[[Any], bool]:
    return lambda cfg: get(cfg, path) == value and type(get(cfg, path)) is type(value)


def _defaults(loader: str) -> Callable[[Any], bool]:
    return lambda cfg: cfg == MODELS[loader]()


def file_cases() -> list[Case]:
    b, t = "builder", "train"
    y, j = "config.yaml", "config.json"
    deep_yaml = "a: " + "[" * (MAX_DEPTH + 50) + "]" * (MAX_DEPTH + 50) + "\n"
    deep_json = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    many_keys = "".join(f"key_{i}: {i}\n" for i in range(60_000))[: MAX_CONFIG_BYTES - 10]
    many_keys = many_keys[: many_keys.rfind("\n") + 1]
    long_list = "validation:\n  prompts: [" + ", ".join(["x"] * (MAX_ITEMS + 1)) + "]\n"
    rows: list[tuple[str, str, str, str | bytes, tuple[str, Any]]] = [
        # ---- the cases, builder
        (
            "cluster-threshold-abc",
            b,
            y,
            "cluster:\n  threshold: abc\n",
            ("error", r"line 2: cluster\.threshold must be"),
        ),
        (
            "cluster-threshold--5",
            b,
            y,
            "cluster:\n  threshold: -5\n",
            ("error", r"cluster\.threshold must be in \(0, 1\)"),
        ),
        (
            "cluster-threshold-0",
            b,
            y,
            "cluster: {threshold: 0}\n",
            ("error", r"cluster\.threshold must be in \(0, 1\)"),
        ),
        ("cluster-threshold-1", b, y, "cluster: {threshold: 1.0}\n", ("error", r"cluster\.threshold must be in")),
        ("cluster-threshold-ok", b, y, "cluster: {threshold: 0.6}\n", ("ok", _is(("cluster", "threshold"), 0.6))),
        ("max-image-pixels-lots", b, y, "max_image_pixels: lots\n", ("error", r"max_image_pixels must be int")),
        ("max-image-pixels--1", b, y, "max_image_pixels: -1\n", ("error", r"max_image_pixels must be in \[4096")),
        (
            "min-face-size-big",
            b,
            y,
            "quality:\n  min_face_size: big\n",
            ("error", r"quality\.min_face_size must be float"),
        ),
        (
            "min-face-size--50",
            b,
            y,
            "quality: {min_face_size: -50}\n",
            ("error", r"quality\.min_face_size must be in"),
        ),
        (
            "jpeg-quality-1000",
            b,
            y,
            "output: {jpeg_quality: 1000}\n",
            ("error", r"output\.jpeg_quality must be in \[1, 100\]"),
        ),
        ("seed-abc", b, y, "seed: abc\n", ("error", r"seed must be int")),
        ("plots-maybe", b, y, "output: {plots: maybe}\n", ("error", r"output\.plots must be bool")),
        ("plots-1", b, y, "output: {plots: 1}\n", ("error", r"output\.plots must be bool")),
        ("plots-quoted-true", b, y, "output: {plots: 'true'}\n", ("error", r"output\.plots must be bool")),
        ("plots-yes-is-yaml-true", b, y, "output: {plots: yes}\n", ("ok", _is(("output", "plots"), True))),
        ("plots-off-is-yaml-false", b, y, "output: {plots: off}\n", ("ok", _is(("output", "plots"), False))),
        ("shard-size-true", b, y, "shard_size: true\n", ("error", r"shard_size must be int, got True")),
        ("shard-size-float", b, y, "shard_size: 8.0\n", ("error", r"shard_size must be int")),
        ("workers-huge", b, y, "workers: 1000000000000000000000000000000\n", ("error", r"workers must be in")),
        ("int-5000-digits", b, y, "seed: " + "9" * 5000 + "\n", ("error", r"could not be read|seed must be")),
        ("float-overflow", b, y, "quality: {min_sharpness: 1e400}\n", ("error", r"finite number")),
        ("yaml-nan", b, y, "quality: {min_det_score: .nan}\n", ("error", r"quality\.min_det_score must be a finite")),
        ("yaml-inf", b, y, "selection: {pose_scale: .inf}\n", ("error", r"finite number")),
        (
            "float-as-string-1e-4",
            t,
            y,
            "optim: {learning_rate: 1e-4}\n",
            ("ok", _is(("optim", "learning_rate"), 1e-4)),
        ),
        ("float-string-nan", t, y, "optim: {learning_rate: 'nan'}\n", ("error", r"finite number")),
        ("captioner-bad-form", b, y, "captioner: os system\n", ("error", r"captioner: must look like")),
        ("captioner-empty-name", b, y, "captioner: 'os:'\n", ("error", r"captioner: must look like")),
        ("captioner-os-system-form-ok", b, y, "captioner: 'os:system'\n", ("ok", _is(("captioner",), "os:system"))),
        ("labels-choice", b, y, "labels: maybe\n", ("error", r"labels must be one of")),
        (
            "unknown-key-suggestion",
            b,
            y,
            "shard_sise: 3\n",
            ("error", r"unknown key 'shard_sise'\. Did you mean 'shard_size'"),
        ),
        (
            "unknown-nested-key",
            b,
            y,
            "quality:\n  max_yaw: 3\n",
            ("error", r"line 2: unknown key 'max_yaw' in section 'quality'\. Did you mean 'max_abs_yaw'"),
        ),
        ("section-not-mapping", b, y, "cluster: [1, 2]\n", ("error", r"'cluster' must be a mapping")),
        ("section-null-is-defaults", b, y, "cluster:\n", ("ok", _defaults(b))),
        ("non-string-key", b, y, "1: 2\n", ("error", r"keys must be names")),
        ("many-keys", b, y, many_keys, ("error", rf"line {MAX_ITEMS + 1}: more than {MAX_ITEMS} keys")),
        ("long-list", t, y, long_list, ("error", rf"line 2: more than {MAX_ITEMS} items in one list")),
        ("some-unknown-keys", b, y, "".join(f"k{i}: 1\n" for i in range(20)), ("error", r"and 15 more problem")),
        # ---- the cases, training
        ("train-seed-abc", t, y, "train:\n  seed: abc\n", ("error", r"line 2: train\.seed must be int or null")),
        (
            "train-lr-negative",
            t,
            y,
            "optim: {learning_rate: -1}\n",
            ("error", r"optim\.learning_rate must be in \(0, 1\]"),
        ),
        (
            "train-min-refs-gt-max",
            t,
            y,
            "data: {min_refs: 5, max_refs: 4}\n",
            ("error", r"min_refs \(5\) must be <= max_refs"),
        ),
        ("train-resolution-not-8", t, y, "data: {resolution: 1001}\n", ("error", r"multiple of 8")),
        (
            "train-unknown-section",
            t,
            y,
            "optimizer: {}\n",
            ("error", r"unknown section 'optimizer'\. Did you mean 'optim'"),
        ),
        (
            "train-typo",
            t,
            y,
            "optim:\n  learning_rat: 1.0e-4\n",
            ("error", r"'learning_rat' in section 'optim'\. Did you mean 'learning_rate'"),
        ),
        (
            "train-prompts-not-strings",
            t,
            y,
            "validation: {prompts: [1, 2]}\n",
            ("error", r"validation\.prompts\.0 must be str"),
        ),
        (
            "train-id-recognizer-form",
            t,
            y,
            "loss: {id_recognizer: 'not a spec'}\n",
            ("error", r"loss\.id_recognizer: must look like"),
        ),
        ("train-kwargs-non-string-key", t, y, "model: {face_refiner: {1: 2}}\n", ("error", r"model\.face_refiner")),
        # ---- YAML structure
        ("billion-laughs", b, y, billion_laughs(), ("error", r"line 1: YAML anchors \(&a0\) are not allowed")),
        ("billion-laughs-train", t, y, billion_laughs(), ("error", r"YAML anchors")),
        ("alias-only", b, y, "seed: *x\n", ("error", r"line 1: .*YAML|not valid YAML")),
        ("anchor-only", b, y, "seed: &x 3\n", ("error", r"line 1: YAML anchors \(&x\)")),
        ("merge-key", b, y, "quality:\n  <<: {min_face_size: 3}\n", ("error", r"line 2: YAML merge keys")),
        ("python-tag", b, y, "!!python/object/apply:os.system ['echo pwned']\n", ("error", r"line 1: YAML tags")),
        (
            "python-tag-nested",
            t,
            y,
            "train:\n  seed: !!python/object/apply:os.getpid []\n",
            ("error", r"line 2: YAML tags"),
        ),
        ("binary-tag", b, y, "captioner: !!binary aGVsbG8=\n", ("error", r"YAML tags")),
        ("set-tag", b, y, "labels: !!set {a: null}\n", ("error", r"YAML tags")),
        ("explicit-str-tag", b, y, "labels: !!str auto\n", ("error", r"YAML tags")),
        ("custom-tag", b, y, "labels: !custom auto\n", ("error", r"YAML tags")),
        (
            "duplicate-top",
            b,
            y,
            "seed: 1\nworkers: 2\nseed: 3\n",
            ("error", r"line 3: duplicate key 'seed' \(first on line 1\)"),
        ),
        (
            "duplicate-nested",
            t,
            y,
            "optim:\n  learning_rate: 1.0e-4\n  learning_rate: 1.0\n",
            ("error", r"line 3: duplicate key"),
        ),
        ("duplicate-quoted", b, y, "seed: 1\n'seed': 2\n", ("error", r"duplicate key 'seed'")),
        ("duplicate-section", t, y, "optim: {}\ntrain: {}\noptim: {}\n", ("error", r"line 3: duplicate key 'optim'")),
        ("complex-key", b, y, "? [a, b]\n: 1\n", ("error", r"keys must be plain names")),
        ("two-documents", b, y, "seed: 1\n---\nseed: 2\n", ("error", r"one YAML document")),
        ("deep-nesting", t, y, deep_yaml, ("error", rf"nested deeper than {MAX_DEPTH}")),
        ("syntax-error", t, y, "train: [unclosed\n", ("error", r"not valid YAML")),
        ("tab-indent", b, y, "quality:\n\tmin_face_size: 3\n", ("error", r"line 2: could not be parsed")),
        ("top-level-list", b, y, "- a\n- b\n", ("error", r"top level must be a mapping")),
        ("top-level-scalar", t, y, "hello\n", ("error", r"top level must be a mapping")),
        ("empty-file", b, y, "", ("ok", _defaults(b))),
        ("comments-only", t, y, "# nothing set\n", ("ok", _defaults(t))),
        ("yaml-null", b, y, "null\n", ("ok", _defaults(b))),
        ("too-large", b, y, "#" * (MAX_CONFIG_BYTES + 1), ("error", r"more than the \d+ allowed")),
        ("not-utf8", b, y, b"seed: \xff\xfe\x00\x01\n", ("error", r"not UTF-8")),
        ("utf8-bom-ok", b, y, "\ufeffseed: 5\n".encode(), ("ok", _is(("seed",), 5))),
        # ---- JSON
        (
            "json-ok",
            b,
            j,
            json.dumps({"shard_size": 16, "output": {"format": "parquet"}}),
            ("ok", _is(("shard_size",), 16)),
        ),
        ("json-duplicate", b, j, '{"seed": 1,\n "seed": 2}', ("error", r"line 2: duplicate key 'seed'")),
        ("json-nan", b, j, '{"quality": {"min_sharpness": NaN}}', ("error", r"NaN is not a number")),
        ("json-infinity", t, j, '{"optim": {"learning_rate": Infinity}}', ("error", r"Infinity is not a number")),
        ("json-deep", b, j, deep_json, ("error", r"nested deeper than")),
        ("json-invalid", b, j, '{"seed": 1,}', ("error", r"line 1: could not be parsed, not valid JSON")),
        ("json-top-list", t, j, "[1, 2]", ("error", r"top level must be a mapping")),
        ("json-many-keys", b, j, json.dumps({f"k{i}": i for i in range(MAX_ITEMS + 1)}), ("error", r"more than")),
        ("json-bool-for-int", b, j, '{"shard_size": true}', ("error", r"shard_size must be int")),
    ]
    cases: list[Case] = [(name, loader, write(file, content), expect) for name, loader, file, content, expect in rows]
    cases += [
        ("fifo", b, _fifo, ("error", r"not a regular file")),
        ("folder", t, _folder, ("error", r"not a regular file")),
        ("device", b, _device, ("error", r"not a regular file")),
        ("missing", t, _missing, ("error", r"does not exist")),
    ]
    return cases


def load_config_cases() -> list[Case]:
    return file_cases() + field_cases()
