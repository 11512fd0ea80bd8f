"""Generators of hostile InstantID checkpoints for the bad-input corpus (tests/hostile/test_convert_instantid.py).

Every case is made at test time from a tiny random checkpoint in InstantID's exact ``ip-adapter.bin`` layout
(``{"image_proj": Resampler state dict, "ip_adapter": {"<i>.to_k_ip.weight", ...}}``, written with torch.save) or
from nothing. A case is ``(id, make, api, expect)``: ``make(folder, good)`` writes the file and returns its path;
``api`` is ``"convert"`` (``convert_instantid_checkpoint``) or ``"read"`` (``read_instantid_file`` on a converted
file, what ``generate --instantid`` loads); ``expect`` is ``(error class, pattern)`` or ``("ok", None)``.
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hifi_portrait.errors import AdapterFormatError, WeightsMismatchError

TINY_PROJ = {"num_tokens": 4, "output_dim": 64, "hidden_dim": 32, "num_layers": 2, "num_heads": 2, "ff_mult": 2}
MARKER = "pwned"  # a malicious pickle would create this file next to itself


def instantid_state(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A random checkpoint in InstantID's layout for the tiny UNet of ``hifi_portrait.utils.testing``."""
    from hifi_portrait.loaders.instantid import instantid_ip_layers
    from hifi_portrait.models.instantid_projection import InstantIDImageProjection
    from hifi_portrait.utils.testing import get_dummy_unet

    torch.manual_seed(seed)
    proj = InstantIDImageProjection(**TINY_PROJ)
    unet = get_dummy_unet()
    modules = dict(unet.named_modules())
    ip = {}
    for i, layer in instantid_ip_layers(unet).items():
        shape = (modules[layer].to_k.out_features, modules[layer].to_k.in_features)
        ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = torch.randn(shape) * 0.2, torch.randn(shape) * 0.2
    return {"image_proj": {k: v.detach().clone() for k, v in proj.state_dict().items()}, "ip_adapter": ip}


def _bin(name: str, edit: Callable[[dict], Any]) -> Callable[[Path, dict], Path]:
    """A case that torch.saves ``edit(copy of the good checkpoint)`` (or the copy changed in place)."""

    def make(folder: Path, good: dict) -> Path:
        state = copy.deepcopy(good)
        out = edit(state)
        path = folder / name
        torch.save(state if out is None else out, path)
        return path

    return make


def _raw(name: str, data: Callable[[dict], bytes]) -> Callable[[Path, dict], Path]:
    def make(folder: Path, good: dict) -> Path:
        path = folder / name
        path.write_bytes(data(good))
        return path

    return make


def _saved(good: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(good, buf)
    return buf.getvalue()


class _System:
    """Pickles as a call of os.system (what a malicious checkpoint does)."""

    def __init__(self, folder: Path) -> None:
        self.command = f"touch {folder / MARKER}"

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, folder: Path) -> None:
        self.code = f"open({str(folder / MARKER)!r}, 'w')"

    def __reduce__(self):
        return (eval, (self.code,))


def _malicious(name: str, payload: type) -> Callable[[Path, dict], Path]:
    def make(folder: Path, good: dict) -> Path:
        state = copy.deepcopy(good)
        state["image_proj"]["latents"] = payload(folder)
        path = folder / name
        torch.save(state, path)
        return path

    return make


def proj(key: str, value: torch.Tensor | None) -> Callable[[dict], None]:
    """Set (or delete with None) ``image_proj[key]``."""

    def edit(state: dict) -> None:
        if value is None:
            del state["image_proj"][key]
        else:
            state["image_proj"][key] = value

    return edit


def ip(key: str, value: Any) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        if value is None:
            del state["ip_adapter"][key]
        else:
            state["ip_adapter"][key] = value

    return edit


def rename(part: str, old: str, new: str) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        state[part][new] = state[part].pop(old)

    return edit


def every(part: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        state[part] = {k: change(v) for k, v in state[part].items()}

    return edit


def copy_layer(src: int, dst: int) -> Callable[[dict], None]:
    """Add Resampler layer ``dst`` as a copy of layer ``src`` (leaving a gap when ``dst > depth``)."""

    def edit(state: dict) -> None:
        for key in [k for k in state["image_proj"] if k.startswith(f"layers.{src}.")]:
            state["image_proj"][f"layers.{dst}." + key.split(".", 2)[2]] = state["image_proj"][key].clone()

    return edit


def shared_kv(state: dict) -> None:
    """Every ip_adapter pair stored as one tensor (the pickle keeps the sharing; safetensors refuses shared memory)."""
    for key in [k for k in state["ip_adapter"] if "to_k_ip" in k]:
        state["ip_adapter"][key.replace("to_k_ip", "to_v_ip")] = state["ip_adapter"][key]


def first_ip(state: dict) -> str:
    return min(state["ip_adapter"], key=lambda k: int(k.split(".")[0]))


def _converted(name: str, edit: Callable[[dict[str, torch.Tensor], dict[str, str]], None]) -> Callable:
    """A case that converts the good checkpoint, then rewrites the converted file after ``edit(tensors, meta)``."""

    def make(folder: Path, good: dict) -> Path:
        from hifi_portrait.loaders.instantid import convert_instantid_checkpoint

        torch.save(good, folder / "good.bin")
        src = convert_instantid_checkpoint(folder / "good.bin", folder / "good.safetensors", overwrite=True)
        tensors = load_file(str(src))
        with safe_open(str(src), framework="pt") as f:
            meta = dict(f.metadata())
        edit(tensors, meta)
        path = folder / name
        save_file(tensors, str(path), metadata=meta)
        return path

    return make


def meta_config(change: Callable[[dict], Any]) -> Callable:
    def edit(tensors: dict, meta: dict) -> None:
        cfg = json.loads(meta["image_proj_config"])
        out = change(cfg)
        meta["image_proj_config"] = json.dumps(cfg if out is None else out)

    return edit


def meta_set(key: str, value: str | None) -> Callable:
    def edit(tensors: dict, meta: dict) -> None:
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value

    return edit


def tensor_set(key: str, change: Callable[[torch.Tensor | None], torch.Tensor]) -> Callable:
    def edit(tensors: dict, meta: dict) -> None:
        tensors[key] = change(tensors.get(key))

    return edit


NOT_READABLE = "not a readable torch checkpoint"


def instantid_cases() -> list[tuple[str, Callable, str, tuple]]:
    """The corpus of InstantID checkpoints (and converted files); see the module docstring."""
    A, W = AdapterFormatError, WeightsMismatchError
    sparse = torch.zeros(32, 512)
    sparse[0, 0] = 1.0
    pickles = [
        ("empty-file", _raw("empty.bin", lambda g: b""), A, NOT_READABLE),
        ("random-bytes", _raw("noise.bin", lambda g: os.urandom(4096)), A, NOT_READABLE),
        ("text-file", _raw("notes.bin", lambda g: b"not a checkpoint\n" * 40), A, NOT_READABLE),
        ("truncated-half", _raw("half.bin", lambda g: _saved(g)[: len(_saved(g)) // 2]), A, NOT_READABLE),
        ("safetensors-bytes", _raw("st.bin", lambda g: _st_bytes(g)), A, NOT_READABLE),
        ("malicious-os-system", _malicious("system.bin", _System), W, "NOT unpickled"),
        ("malicious-eval", _malicious("eval.bin", _Eval), W, "NOT unpickled"),
        ("top-level-list", _bin("list.bin", lambda s: [s["image_proj"]]), W, "holds a list"),
        ("top-level-tensor", _bin("tensor.bin", lambda s: torch.zeros(3)), W, "holds a Tensor"),
        ("missing-ip_adapter", _bin("half_parts.bin", lambda s: s.pop("ip_adapter") and None), W, "missing parts"),
        ("extra-part", _bin("extra.bin", lambda s: s.__setitem__("lora", {})), W, "unexpected parts: lora"),
        ("int-key-part", _bin("intkey.bin", lambda s: s.__setitem__(7, {})), W, "unexpected parts: 7"),
        (
            "image_proj-a-tensor",
            _bin("pt.bin", lambda s: s.__setitem__("image_proj", torch.zeros(2))),
            W,
            "must be a dict",
        ),
        ("non-tensor-entry", _bin("nt.bin", _set_latents(3)), W, "not tensors: image_proj.latents"),
        ("non-string-key", _bin("nsk.bin", ip(5, torch.zeros(2))), W, "not tensors: ip_adapter.5"),
    ]
    layout = [
        (
            "proj_in-1d",
            _bin("p1d.bin", proj("proj_in.weight", torch.zeros(32))),
            A,
            r"wrong rank.*proj_in\.weight \(1-d",
        ),
        ("latents-4d", _bin("l4d.bin", proj("latents", torch.zeros(1, 1, 4, 32))), A, r"image_proj\.latents \(4-d"),
        (
            "latents-batch-2",
            _bin("lb2.bin", proj("latents", torch.zeros(2, 4, 32))),
            A,
            r"latents must be \(1, T, dim\)",
        ),
        (
            "layers-60000",
            _bin("deep.bin", proj("layers.60000.0.to_q.weight", torch.zeros(128, 32))),
            A,
            "layer index 60000",
        ),
        ("layer-gap", _bin("gap.bin", copy_layer(1, 5)), A, r"lacks layers \[2, 3, 4\]"),
        (
            "seven-digit-index",
            _bin("d7.bin", proj("layers.1234567.0.to_q.weight", torch.zeros(2, 2))),
            W,
            r"unexpected keys: image_proj\.layers\.1234567",
        ),
        (
            "renamed-key",
            _bin("ren.bin", rename("image_proj", "layers.1.0.to_q.weight", "layers.1.0.q.weight")),
            W,
            r"missing keys: image_proj\.layers\.1\.0\.to_q\.weight",
        ),
        (
            "wrong-shape",
            _bin("ws.bin", proj("proj_out.weight", torch.zeros(64, 16))),
            W,
            r"wrong shapes: image_proj\.proj_out\.weight",
        ),
        (
            "heads-not-a-multiple",
            _bin("hd.bin", proj("layers.0.0.to_q.weight", torch.zeros(100, 32))),
            W,
            "not a multiple of head_dim",
        ),
        (
            "tokens-5000",
            _bin("t5k.bin", proj("latents", torch.zeros(1, 5000, 32))),
            A,
            "num_tokens must be between 1 and 1024",
        ),
        (
            "width-10000",
            _bin("w10k.bin", proj("latents", torch.zeros(1, 4, 10000))),
            A,
            "hidden_dim must be between 1 and 8192",
        ),
        ("int8-tensor", _bin("i8.bin", proj("latents", torch.zeros(1, 4, 32, dtype=torch.int8))), A, "is torch.int8"),
        ("float64-tensor", _bin("f64.bin", every("image_proj", lambda t: t.double())), A, "is torch.float64"),
        (
            "bool-tensor",
            _bin("bool.bin", ip("1.to_k_ip.weight", torch.ones(64, 64, dtype=torch.bool))),
            A,
            "is torch.bool",
        ),
        ("sparse-tensor", _bin("sparse.bin", proj("proj_in.weight", sparse.to_sparse())), A, "not a dense CPU tensor"),
        (
            "ip-index-60000",
            _bin(
                "ipdeep.bin",
                both(ip("60000.to_k_ip.weight", torch.zeros(64, 64)), ip("60000.to_v_ip.weight", torch.zeros(64, 64))),
            ),
            A,
            "index 60000 is out of range",
        ),
        (
            "ip-index-leading-zero",
            _bin("ip0.bin", rename("ip_adapter", "1.to_k_ip.weight", "01.to_k_ip.weight")),
            W,
            r"unexpected ip_adapter keys ip_adapter\.01\.to_k_ip",
        ),
        (
            "ip-unpaired",
            _bin("ipu.bin", ip("1.to_v_ip.weight", None)),
            W,
            r"missing keys ip_adapter\.1\.to_v_ip\.weight",
        ),
        ("ip-1d", _bin("ip1d.bin", ip("1.to_k_ip.weight", torch.zeros(64))), A, "pairs of equal"),
        (
            "ip-width-not-output-dim",
            _bin("ipw.bin", every("ip_adapter", lambda t: torch.zeros(64, 32))),
            A,
            r"pairs of equal \(hidden, 64\)",
        ),
        ("ip-k-v-differ", _bin("ipkv.bin", ip("1.to_v_ip.weight", torch.zeros(32, 64))), A, "pairs of equal"),
        ("ip-empty", _bin("ipe.bin", lambda s: s.__setitem__("ip_adapter", {})), W, "ip_adapter part is empty"),
    ]
    converted = [
        (
            "converted-config-string",
            _converted("c0.safetensors", meta_set("image_proj_config", '"config.json"')),
            A,
            "JSON string",
        ),
        (
            "converted-config-num_layers-200000",
            _converted("c1.safetensors", meta_config(lambda c: c.__setitem__("num_layers", 200_000))),
            A,
            "num_layers must be between 1 and 64",
        ),
        (
            "converted-config-missing",
            _converted("c2.safetensors", meta_set("image_proj_config", None)),
            A,
            "no 'image_proj_config'",
        ),
        (
            "converted-config-not-json",
            _converted("c3.safetensors", meta_set("image_proj_config", "{oops")),
            A,
            "not valid JSON",
        ),
        (
            "converted-config-extra-key",
            _converted("c4.safetensors", meta_config(lambda c: c.__setitem__("evil", 1))),
            A,
            "unknown keys: evil",
        ),
        (
            "converted-config-not-the-files",
            _converted("c5.safetensors", meta_config(lambda c: c.__setitem__("num_tokens", 8))),
            W,
            r"wrong shapes: image_proj\.latents",
        ),
        (
            "converted-int8-tensor",
            _converted("c6.safetensors", tensor_set("image_proj.latents", lambda t: t.to(torch.int8))),
            A,
            "is I8",
        ),
        (
            "converted-wrong-format",
            _converted("c7.safetensors", meta_set("format", "hifi-portrait-adapter")),
            A,
            "not a converted InstantID file",
        ),
        (
            "converted-stray-key",
            _converted("c8.safetensors", tensor_set("lora.up", lambda t: torch.zeros(2))),
            W,
            r"outside image_proj\./ip_adapter\.: lora\.up",
        ),
        (
            "converted-ip-index-60000",
            _converted(
                "c9.safetensors",
                both2(
                    tensor_set("ip_adapter.60000.to_k_ip.weight", lambda t: torch.zeros(64, 64)),
                    tensor_set("ip_adapter.60000.to_v_ip.weight", lambda t: torch.zeros(64, 64)),
                ),
            ),
            A,
            "index 60000 is out of range",
        ),
        ("converted-truncated", _truncated_converted, A, "not a readable .safetensors"),
    ]
    oks = [
        ("shared-storage", _bin("shared.bin", shared_kv), "ok", None),
        (
            "float16",
            _bin("f16.bin", lambda s: {p: {k: v.half() for k, v in sd.items()} for p, sd in s.items()}),
            "ok",
            None,
        ),
        (
            "bfloat16",
            _bin("bf16.bin", lambda s: {p: {k: v.bfloat16() for k, v in sd.items()} for p, sd in s.items()}),
            "ok",
            None,
        ),
    ]
    out = [(n, m, "convert", (k, w)) for n, m, k, w in pickles + layout + oks]
    return out + [(n, m, "read", (k, w)) for n, m, k, w in converted]


def both(*edits: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        for e in edits:
            e(state)

    return edit


def both2(*edits: Callable) -> Callable:
    def edit(tensors: dict, meta: dict) -> None:
        for e in edits:
            e(tensors, meta)

    return edit


def _set_latents(value: Any) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        state["image_proj"]["latents"] = value

    return edit


def _st_bytes(good: dict) -> bytes:
    from safetensors.torch import save

    return save({f"image_proj.{k}": v for k, v in good["image_proj"].items()})


def _truncated_converted(folder: Path, good: dict) -> Path:
    path = _converted("whole.safetensors", lambda t, m: None)(folder, good)
    cut = folder / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    return cut
